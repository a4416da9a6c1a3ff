"""The durable outbox: storage and claims, and results surviving an unreachable server."""

from __future__ import annotations

import pathlib
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import trio
from structlog.testing import capture_logs

from kflow.worker import ActivityContext, ActivityRegistry, ActivityResult, WorkerManager, activity
from kflow.worker.outbox import Outbox
from kflow.worker.wire import Report

MakeManager = Callable[..., WorkerManager]


def report(worker_id: str = "w-1") -> Report:
    return Report.complete(uuid.uuid4(), worker_id, {"r": 1}, "0.5")


async def test_put_claim_release_delete(make_outbox: Callable[..., Outbox]) -> None:
    now = [1000.0]
    async with make_outbox(owner="a", claim_seconds=60, clock=lambda: now[0]) as outbox:
        first = await outbox.put(report())
        second = await outbox.put(report("w-2"))
        assert first.outbox_id is not None
        assert await outbox.claim() == []  # the writer holds its own entries
        await outbox.release(first, second)
        claimed = await outbox.claim()
        assert [r.outbox_id for r in claimed] == [first.outbox_id, second.outbox_id]
        assert claimed[1].worker_id == "w-2"
        assert claimed[1].body == second.body
        assert claimed[0].created_at == first.created_at.replace(
            microsecond=first.created_at.microsecond
        )
        await outbox.delete(claimed[0])
        assert [r.outbox_id for r in await outbox.entries()] == [second.outbox_id]


async def test_claims_are_exclusive_across_processes_until_they_expire(
    make_outbox: Callable[..., Outbox],
) -> None:
    now = [1000.0]
    one = make_outbox(owner="p1", claim_seconds=60, clock=lambda: now[0])
    two = make_outbox(owner="p2", claim_seconds=60, clock=lambda: now[0])
    async with one, two:
        for _ in range(3):
            await one.release(await one.put(report()))
        got_one = await one.claim(limit=2)
        got_two = await two.claim()
        assert len(got_one) == 2
        assert len(got_two) == 1
        assert {r.outbox_id for r in got_one}.isdisjoint({r.outbox_id for r in got_two})
        assert await two.claim() == []
        await two.release(*got_one)  # not its claims: no effect
        assert await two.claim() == []
        now[0] += 30
        await two.release(*got_two)
        now[0] += 31  # p1 crashed: its claims expire
        assert len(await two.claim()) == 3


async def test_the_file_is_durable_sqlite(state_dir: pathlib.Path) -> None:
    async with Outbox.in_dir(state_dir) as outbox:  # real worker threads here
        await outbox.put(report())
    conn = sqlite3.connect(state_dir / "outbox.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    finally:
        conn.close()


runs: list[str] = []


@activity("work")
async def work(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
    runs.append(params["name"])
    await trio.sleep(params.get("seconds", 5))
    return ActivityResult.value("done", params["name"]).with_cost("0.25")


def registry() -> ActivityRegistry:
    reg = ActivityRegistry()
    reg.register(work)
    return reg


async def test_result_survives_an_outage_and_a_restart(
    make_manager: MakeManager,
    make_outbox: Callable[..., Outbox],
    fake: Any,
    autojump_clock: trio.abc.Clock,
) -> None:
    runs.clear()
    act = fake.enqueue("work", {"name": "a"})
    first = make_manager(registry(), report_timeout=30)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await trio.sleep(2)
            fake.unreachable = True  # the server goes away while the activity runs
            await trio.sleep(60)  # the report is deferred, then left to the outbox
            first.request_shutdown()
    events = [e["event"] for e in logs]
    assert "worker.report.deferred" in events
    assert "worker.report.pending" in events
    assert fake.activities[act].result is None
    async with make_outbox() as outbox:
        [entry] = await outbox.entries()
    assert (entry.activity_id, entry.worker_id, entry.kind) == (act, "host-1-42-abcdef", "complete")

    fake.unreachable = False  # the server is back; a new process starts
    second = make_manager(registry(), worker_id="host-2-7-123456", burst=True)
    await second.run()
    record = fake.activities[act]
    assert record.status == "completed"
    assert record.result["worker_id"] == "host-1-42-abcdef"  # the lease holder speaks
    assert record.result["output"] == {"done": "a"}
    assert record.result["cost_usd"] == "0.25"
    assert runs == ["a"]  # not run again
    order = [(m, p) for m, p, _, _ in fake.requests if not p.endswith("/oauth/token")]
    complete_at = order.index(("POST", f"/api/v1/activities/{act}/complete"))
    polls_of_second = [i for i, call in enumerate(order) if call[1] == "/api/v1/workers/poll"][-1]
    assert complete_at < polls_of_second  # the outbox goes first
    async with make_outbox() as outbox:
        assert await outbox.entries() == []


async def test_a_short_outage_is_bridged_by_the_runner(
    make_manager: MakeManager,
    make_outbox: Callable[..., Outbox],
    fake: Any,
    autojump_clock: trio.abc.Clock,
) -> None:
    act = fake.enqueue("work", {"name": "b", "seconds": 1})
    fake.fault("POST", "/complete", 503, times=3)
    manager = make_manager(registry(), burst=True)
    with capture_logs() as logs:
        await manager.run()
    assert fake.activities[act].status == "completed"
    events = [e["event"] for e in logs]
    assert "worker.report.deferred" in events
    assert "worker.report.pending" not in events
    async with make_outbox() as outbox:
        assert await outbox.entries() == []


async def test_the_background_drain_delivers_without_a_restart(
    make_manager: MakeManager,
    make_outbox: Callable[..., Outbox],
    fake: Any,
    autojump_clock: trio.abc.Clock,
) -> None:
    act = fake.enqueue("work", {"name": "c", "seconds": 1})
    fake.fault("POST", "/complete", None, times=1000)  # only reports fail
    manager = make_manager(registry(), report_timeout=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(30)
        assert fake.activities[act].result is None
        fake.faults.clear()
        await trio.sleep(15)
        assert fake.activities[act].status == "completed"
        manager.request_shutdown()
    async with make_outbox() as outbox:
        assert await outbox.entries() == []


async def test_a_definitive_answer_drops_the_entry(
    make_manager: MakeManager,
    make_outbox: Callable[..., Outbox],
    fake: Any,
    autojump_clock: trio.abc.Clock,
) -> None:
    stale = report("gone-worker")
    async with make_outbox() as outbox:
        await outbox.release(await outbox.put(stale))
    with capture_logs() as logs:
        await make_manager(registry(), burst=True).run()
    assert [e["outcome"] for e in logs if e["event"] == "worker.outbox.reported"] == [
        "unknown_activity"
    ]
    async with make_outbox() as outbox:
        assert await outbox.entries() == []
