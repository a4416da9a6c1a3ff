"""Two servers on one database never fire a schedule's period twice (SQLite and PostgreSQL).

Two server contexts, each with its own store (connections) and its own clock
— one seven seconds ahead of the other — run their firing steps concurrently,
two at a time each, over a simulated hour. Every period of every schedule
must produce exactly one run, decided by the compare-and-set on
``next_fire_at`` (the ``unique_key`` guard never has to step in).
"""

from __future__ import annotations

import collections
import datetime as dt
import pathlib

import attrs
import pytest
import trio

from kflow.model.loader import load_definition
from kflow.server.schedule_firing import FireOutcome
from kflow.server.schedule_ops import create_schedule
from kflow.server.schedule_times import next_after, period_key
from kflow.server.schedules import ScheduleSpec
from tests.integration.conftest import DIALECTS, Api, database_for, make_config
from tests.integration.schedules_support import (
    PENDING,
    START,
    ManualClock,
    SkewedClock,
    runs_by_key,
    server_on,
)

SKEW = 7.0
STEP = 20.0
HOUR = 3600.0

#: ``allow``: every period starts a run, although no run ever finishes here.
SPECS = [
    ScheduleSpec(name="each-minute", definition_name="pending", interval_seconds=60),
    ScheduleSpec(name="cron-minute", definition_name="pending", cron="* * * * *"),
    ScheduleSpec(name="paris", definition_name="pending", cron="*/15 * * * *", timezone="CET"),
    ScheduleSpec(name="every-45s", definition_name="pending", interval_seconds=45),
]
SPECS = [attrs.evolve(spec, overlap_policy="allow", input={"n": 1}) for spec in SPECS]


def expected_keys(spec: ScheduleSpec, after: dt.datetime, until: dt.datetime) -> set[str]:
    keys = set()
    period = next_after(spec.cadence(), after)
    while period <= until:
        keys.add(period_key(spec.name, period))
        period = next_after(spec.cadence(), period)
    return keys


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    return database_for(request, tmp_path)


async def test_two_servers_fire_each_period_exactly_once(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    config = make_config(tmp_path, database_url=database_url)
    clock = ManualClock()
    outcomes: list[FireOutcome] = []

    async def passes(server: Api, count: int) -> None:
        for _ in range(count):
            outcomes.extend(await server.ctx.timer_ops.schedules.fire_due())

    async with (
        server_on(config, clock) as one,
        server_on(config, SkewedClock(clock, SKEW)) as two,
    ):
        await one.ctx.engine.deploy(load_definition(PENDING))
        for spec in SPECS:
            await create_schedule(one.ctx.engine, spec)
        with trio.fail_after(240):
            while clock.now() < START + dt.timedelta(seconds=HOUR):
                clock.advance(STEP)
                async with trio.open_nursery() as nursery:
                    for server in (one, two, one, two):
                        nursery.start_soon(passes, server, 2)
        final = clock.now() + dt.timedelta(seconds=SKEW)
        runs = await runs_by_key(one.ctx.store)
        failed = await runs_by_key(one.ctx.store, status="failed")

    assert failed == {}  # every run holds its key (a failed run would release it)
    expected = set().union(*(expected_keys(spec, START, final) for spec in SPECS))
    assert len(expected) > 4 * 45  # a real hour of periods
    duplicates = {key: n for key, n in runs.items() if n != 1}
    assert duplicates == {}
    assert set(runs) == expected
    by_kind = collections.Counter(o.kind for o in outcomes)
    assert by_kind["fired"] == len(expected)
    assert by_kind["already_fired"] == 0  # the compare-and-set decided, not the unique key
    assert by_kind["failed"] == 0
    assert by_kind["moved"] == 0
    assert {o.missed for o in outcomes} <= {0}
