"""Schedules with two real server processes on one PostgreSQL database."""

from __future__ import annotations

import collections
import itertools

import pytest
import trio

from tests.processes import Cluster, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Nobody polls this queue: the runs stay pending, so every period's run lives on.
PARKED = "name: tick\nactivities:\n  - {key: t, worker: nobody, activity_name: echo}\n"


async def test_two_servers_fire_each_period_once_even_when_one_dies(
    pg_cluster: Cluster,
) -> None:
    cluster = pg_cluster
    first = await cluster.serve("--no-worker", name="server-a")
    second_port = free_port()
    await cluster.serve("--no-worker", port=second_port, name="server-b")
    async with cluster.client() as kf:
        await kf.deploy(PARKED)
        created = await kf._call(
            "POST",
            "/schedules",
            {
                "json": {
                    "name": "every-second",
                    "definition_name": "tick",
                    "interval_seconds": 1,
                    "overlap_policy": "allow",
                }
            },
        )
        await trio.sleep(6)
        first.kill()  # server a dies; b must carry on alone
        await first.wait(10)
        await trio.sleep(6)
    async with cluster.client(cluster.url_of(second_port)) as on_b:
        await on_b._call("PATCH", f"/schedules/{created['id']}", {"json": {"enabled": False}})
        schedule = await on_b._call("GET", f"/schedules/{created['id']}")

    rows = await trio.to_thread.run_sync(
        cluster.query, "SELECT unique_key FROM workflows WHERE definition_name = 'tick'"
    )
    keys = collections.Counter(row[0] for row in rows)
    periods = sorted(int(key.rsplit(":", 1)[1]) for key in keys)
    print(
        f"[schedules] {len(periods)} periods fired over ~12 s by two servers, one killed "
        f"after 6 s; missed={schedule['missed_count']}"
    )
    assert all(count == 1 for count in keys.values()), keys
    assert len(periods) >= 9  # ~12 s of 1-second periods, minus start-up and the kill
    gaps = [b - a for a, b in itertools.pairwise(periods)]
    # consecutive periods, except where the killed server held the firing at that moment
    assert sum(gap - 1 for gap in gaps) == schedule["missed_count"], (gaps, schedule)
    fired_events = await trio.to_thread.run_sync(
        cluster.query, "SELECT COUNT(*) FROM events WHERE type = 'schedule.fired'"
    )
    assert fired_events[0][0] == len(periods)
