"""Firing schedules on a clock the test controls (SQLite and PostgreSQL): overlap
policies, disabling, downtime, DST, the period key guard and a broken schedule."""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from kflow._serde import parse_datetime
from kflow.server.schedule_firing import FireOutcome
from kflow.server.schedule_times import period_key
from tests.integration.conftest import DIALECTS, Api, database_for, make_config
from tests.integration.schedules_support import PENDING, START, ManualClock, runs_by_key, server_on

URL = "/api/v1/schedules"


@attrs.define
class Clocked:
    api: Api
    clock: ManualClock

    async def create(self, **fields: Any) -> dict[str, Any]:
        values = {"name": "s", "definition_name": "pending", "input": {"n": 1}}
        values.update(fields)
        response = await self.api.client.post(URL, json=values)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def get(self, schedule_id: str) -> dict[str, Any]:
        response = await self.api.client.get(f"{URL}/{schedule_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def patch(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        response = await self.api.client.patch(f"{URL}/{schedule_id}", json=changes)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def tick(self, seconds: float) -> list[FireOutcome]:
        """Move the clock, then run one firing step; returns what it did."""
        self.clock.advance(seconds)
        return await self.api.ctx.timer_ops.schedules.fire_due()

    async def runs(self, name: str = "s") -> dict[str, int]:
        return dict(await runs_by_key(self.api.ctx.store, f"schedule:{name}:"))


@pytest.fixture(params=DIALECTS)
async def clocked(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Clocked]:
    config = make_config(tmp_path, database_url=database_for(request, tmp_path))
    clock = ManualClock()
    async with server_on(config, clock) as api:
        await api.deploy(PENDING)
        yield Clocked(api=api, clock=clock)


def kinds(outcomes: list[FireOutcome]) -> list[str]:
    return [o.kind for o in outcomes]


async def test_the_scheduler_arms_itself_for_the_next_schedule_time(clocked: Clocked) -> None:
    created = await clocked.create(interval_seconds=300)
    assert parse_datetime(created["next_fire_at"]) == START + dt.timedelta(minutes=5)
    assert await clocked.api.ctx.timer_ops.next_due() == START + dt.timedelta(minutes=5)
    clocked.clock.advance(300)
    await clocked.api.ctx.scheduler.run_due()  # the scheduler's own pass fires it
    assert await clocked.runs() == {period_key("s", START + dt.timedelta(minutes=5)): 1}
    assert await clocked.api.ctx.timer_ops.next_due() == START + dt.timedelta(minutes=10)


async def test_overlap_skip_waits_for_the_previous_run(clocked: Clocked) -> None:
    created = await clocked.create(interval_seconds=60)
    assert kinds(await clocked.tick(60)) == ["fired"]
    first = (await clocked.get(created["id"]))["last_run_id"]
    assert kinds(await clocked.tick(60)) == ["skipped"]  # the first run is still pending
    state = await clocked.get(created["id"])
    assert parse_datetime(state["last_skipped_at"]) == START + dt.timedelta(minutes=2)
    assert state["skipped_count"] == 1
    assert parse_datetime(state["next_fire_at"]) == START + dt.timedelta(minutes=3)
    assert state["last_run_id"] == first
    assert len(await clocked.runs()) == 1

    cancelled = await clocked.api.client.post(f"/api/v1/workflows/{first}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert kinds(await clocked.tick(60)) == ["fired"]
    assert len(await clocked.runs()) == 2


async def test_overlap_allow_starts_anyway(clocked: Clocked) -> None:
    await clocked.create(interval_seconds=60, overlap_policy="allow")
    for _ in range(3):
        assert kinds(await clocked.tick(60)) == ["fired"]
    assert await clocked.runs() == {
        period_key("s", START + dt.timedelta(minutes=m)): 1 for m in (1, 2, 3)
    }


async def test_disabling_stops_firing_and_enabling_resumes_from_now(clocked: Clocked) -> None:
    created = await clocked.create(interval_seconds=60, overlap_policy="allow")
    assert kinds(await clocked.tick(60)) == ["fired"]
    await clocked.patch(created["id"], enabled=False)
    for _ in range(3):
        assert await clocked.tick(60) == []
    assert len(await clocked.runs()) == 1
    clocked.clock.advance(15)
    enabled = await clocked.patch(created["id"], enabled=True)
    # The next period after now, not the periods that passed while disabled.
    assert parse_datetime(enabled["next_fire_at"]) == START + dt.timedelta(minutes=5)
    assert await clocked.tick(44) == []
    assert kinds(await clocked.tick(1)) == ["fired"]
    assert (await clocked.get(created["id"]))["missed_count"] == 0


async def test_downtime_fires_once_then_continues(clocked: Clocked) -> None:
    created = await clocked.create(interval_seconds=60, overlap_policy="allow")
    [outcome] = await clocked.tick(10 * 60 + 30)  # the server was down for ten periods
    assert outcome.kind == "fired"
    assert outcome.period == START + dt.timedelta(minutes=10)
    assert outcome.missed == 9
    state = await clocked.get(created["id"])
    assert state["missed_count"] == 9
    assert parse_datetime(state["last_fired_at"]) == START + dt.timedelta(minutes=10)
    assert parse_datetime(state["next_fire_at"]) == START + dt.timedelta(minutes=11)
    assert await clocked.tick(0) == []  # no storm
    assert kinds(await clocked.tick(30)) == ["fired"]
    assert len(await clocked.runs()) == 2
    assert (await clocked.get(created["id"]))["missed_count"] == 9


async def test_cron_fires_at_local_time_across_dst(clocked: Clocked) -> None:
    clocked.clock.at = dt.datetime(2026, 3, 28, 6, tzinfo=dt.UTC)
    created = await clocked.create(cron="0 9 * * *", timezone="Europe/Paris")
    first = dt.datetime(2026, 3, 28, 8, tzinfo=dt.UTC)  # 09:00 CET
    assert parse_datetime(created["next_fire_at"]) == first
    assert kinds(await clocked.tick(2 * 3600)) == ["fired"]
    second = dt.datetime(2026, 3, 29, 7, tzinfo=dt.UTC)  # 09:00 CEST
    assert parse_datetime((await clocked.get(created["id"]))["next_fire_at"]) == second
    runs = await clocked.api.client.get("/api/v1/workflows")
    await clocked.api.client.post(f"/api/v1/workflows/{runs.json()['workflows'][0]['id']}/cancel")
    clocked.clock.at = second
    assert kinds(await clocked.api.ctx.timer_ops.schedules.fire_due()) == ["fired"]
    assert set(await clocked.runs()) == {period_key("s", first), period_key("s", second)}


async def test_a_period_whose_key_is_taken_counts_as_fired(clocked: Clocked) -> None:
    created = await clocked.create(interval_seconds=60)
    period = START + dt.timedelta(minutes=1)
    held = await clocked.api.start("pending", {"n": 0}, unique_key=period_key("s", period))
    [outcome] = await clocked.tick(60)
    assert (outcome.kind, outcome.workflow_id) == ("already_fired", held)
    state = await clocked.get(created["id"])
    assert state["last_run_id"] == held
    assert state["last_error"] is None
    assert parse_datetime(state["next_fire_at"]) == period + dt.timedelta(minutes=1)
    assert await clocked.runs() == {period_key("s", period): 1}


async def test_a_broken_schedule_advances_and_does_not_block_others(
    clocked: Clocked, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = clocked.api.ctx.engine
    original = engine.start_in_tx

    def start_in_tx(tx: Any, effects: Any, name: str, **kw: Any) -> Any:
        if kw.get("input") == {"n": "boom"}:
            raise RuntimeError("engine trouble")
        return original(tx, effects, name, **kw)

    monkeypatch.setattr(engine, "start_in_tx", start_in_tx)
    broken = await clocked.create(name="broken", interval_seconds=60, input={"n": "boom"})
    await clocked.create(name="fine", interval_seconds=60)
    outcomes = await clocked.api.ctx.timer_ops.schedules.fire_due()
    assert outcomes == []
    outcomes = await clocked.tick(60)
    assert sorted((o.name, o.kind) for o in outcomes) == [("broken", "failed"), ("fine", "fired")]
    state = await clocked.get(broken["id"])
    assert "engine trouble" in state["last_error"]
    assert parse_datetime(state["next_fire_at"]) == START + dt.timedelta(minutes=2)
    assert await clocked.runs("broken") == {}
    monkeypatch.setattr(engine, "start_in_tx", original)
    await clocked.tick(60)
    state = await clocked.get(broken["id"])
    assert state["last_error"] is None
    assert len(await clocked.runs("broken")) == 1
