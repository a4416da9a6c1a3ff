"""Work handed to parked long-polls by the transaction that made it ready (PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from kflow.store.base import Tx
from tests.integration.conftest import Api

pytestmark = pytest.mark.parametrize(
    "api", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

CHAIN = """
name: chain
activities:
  - key: a
    activity_name: echo
  - key: b
    activity_name: echo
    depends_on: [a]
"""

FAN = """
name: fan
activities:
  - key: first
    activity_name: echo
  - {key: p1, activity_name: echo, depends_on: [first]}
  - {key: p2, activity_name: echo, depends_on: [first]}
  - {key: p3, activity_name: echo, depends_on: [first]}
  - {key: p4, activity_name: echo, depends_on: [first]}
  - {key: p5, activity_name: echo, depends_on: [first]}
"""


def _count_claims(api: Api) -> list[str]:
    """Record every claim transaction a poll makes (the worker id of each)."""
    made: list[str] = []
    claim = api.ctx.worker_ops.claim

    async def counted(queue: str, worker_id: str, limit: int, client_id: str = "dev") -> Any:
        made.append(worker_id)
        return await claim(queue, worker_id, limit, client_id)

    api.ctx.worker_ops.claim = counted  # type: ignore[method-assign]
    return made


async def _parked(api: Api, worker_id: str, n: int = 10) -> tuple[Any, dict[str, Any]]:
    """Start a long-poll of ``worker_id`` and return once it is parked."""
    got: dict[str, Any] = {}

    async def poll(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            got["scope"] = scope
            task_status.started()
            got["items"] = await api.poll(worker_id=worker_id, n=n, wait=20)

    return poll, got


async def _events(api: Api, workflow_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(
        f"/api/v1/workflows/{workflow_id}/events",
        params={"from_event_id": 0},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    return list(response.json())


async def _until_parked(api: Api, count: int) -> None:
    with trio.fail_after(5):
        while sum(len(p) for p in api.ctx.dispatcher._parked.values()) < count:
            await trio.sleep(0.01)


async def test_a_start_hands_its_first_activity_to_one_parked_poll(api: Api) -> None:
    await api.deploy(CHAIN)
    claims = _count_claims(api)
    first, got_first = await _parked(api, "w1")
    second, got_second = await _parked(api, "w2")
    async with trio.open_nursery() as nursery:
        await nursery.start(first)
        await _until_parked(api, 1)
        await nursery.start(second)
        await _until_parked(api, 2)
        assert claims == ["w1"]  # w2 parked without a claim: w1's found the queue empty
        workflow_id = await api.start("chain")
        with trio.fail_after(5):
            while "items" not in got_first:
                await trio.sleep(0.01)
        [item] = got_first["items"]
        assert (item["workflow_id"], item["activity_key"]) == (workflow_id, "a")
        await trio.sleep(0.2)
        assert "items" not in got_second  # nothing was made for it: not even woken
        assert claims == ["w1"]  # the start's own transaction claimed it
        assert api.ctx.dispatcher.waiting_queues() == ["std"]
        got_second["scope"].cancel()
    run = await api.run(workflow_id)
    assert run["status"] == "running"
    started = [e for e in await _events(api, workflow_id) if e["type"] == "activity.started"]
    assert [(e["activity_key"], e["data"]["worker_id"]) for e in started] == [("a", "w1")]
    # The worker reports as after any claim; the run goes on.
    response = await api.complete(item, worker_id="w1", value=1)
    assert response.status_code == 200, response.text
    [b] = await api.poll(worker_id="w1")
    assert b["activity_key"] == "b"


async def test_work_beyond_what_parked_polls_take_wakes_the_queue(api: Api) -> None:
    await api.deploy(FAN)
    workflow_id = await api.start("fan")
    [first] = await api.poll(worker_id="w1")
    claims = _count_claims(api)
    poll, got = await _parked(api, "w2", n=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(poll)
        await _until_parked(api, 1)
        response = await api.complete(first, worker_id="w1")  # makes five ready
        assert response.status_code == 200, response.text
    assert len(got["items"]) == 2  # as many as it asked for, from the completion
    assert claims == ["w2"]  # its claim before parking only
    rest = await api.poll(worker_id="w3", n=10)  # the queue was woken for the others
    keys = [i["activity_key"] for i in got["items"] + rest]
    assert sorted(keys) == ["p1", "p2", "p3", "p4", "p5"]
    started = [e for e in await _events(api, workflow_id) if e["type"] == "activity.started"]
    assert sorted(e["activity_key"] for e in started) == ["first", "p1", "p2", "p3", "p4", "p5"]


@pytest.mark.parametrize("failing", ["the hand-over claim", "the commit"])
async def test_a_transaction_that_does_not_commit_hands_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    await api.deploy(CHAIN)
    engine = api.ctx.engine

    def break_it() -> None:
        if failing == "the hand-over claim":

            def hand_out_fails(*args: Any, **kwargs: Any) -> list[Any]:
                raise RuntimeError("rolled back while the hand-over was claimed")

            monkeypatch.setattr(api.ctx.worker_ops, "_hand_out", hand_out_fails)
            return
        write = api.ctx.store.write

        async def write_then_fail(unit: Any) -> Any:
            def unit_then_fail(tx: Tx) -> Any:
                unit(tx)
                raise RuntimeError("rolled back after the hand-over was claimed")

            return await write(unit_then_fail)

        monkeypatch.setattr(api.ctx.store, "write", write_then_fail)

    poll, got = await _parked(api, "w1")
    with trio.fail_after(10):  # a reservation never released would hold the poll forever
        async with trio.open_nursery() as nursery:
            await nursery.start(poll)
            await _until_parked(api, 1)
            break_it()
            with pytest.raises(RuntimeError, match="rolled back"):
                await engine.start("chain")
            # The undone claim woke the queue: the poll claims again (unbroken
            # now), finds nothing and parks again.
            monkeypatch.undo()
            await trio.sleep(0.2)
            await _until_parked(api, 1)
            assert "items" not in got  # released: still parked, and free again
            [parked] = api.ctx.dispatcher._parked["std"]
            if parked.reserved:  # the poll would wait for it forever: stop here
                api.ctx.dispatcher.release(parked)
                got["scope"].cancel()
                pytest.fail("the reservation of the rolled-back transaction was kept")
            workflow_id = await api.start("chain")
    [item] = got["items"]
    assert item["workflow_id"] == workflow_id
    listed = await api.client.get("/api/v1/workflows")
    assert [w["workflow_id"] for w in listed.json()["workflows"]] == [workflow_id]


async def test_a_poll_cancelled_as_work_is_handed_to_it_puts_the_work_back(api: Api) -> None:
    await api.deploy(CHAIN)
    poll, got = await _parked(api, "w1")
    async with trio.open_nursery() as nursery:
        await nursery.start(poll)
        await _until_parked(api, 1)
        started = await api.ctx.engine.start("chain")  # delivered to the poll on commit
        got["scope"].cancel()  # before the poll could answer
    assert "items" not in got
    workflow_id = str(started.id)
    events = await _events(api, workflow_id)
    assert [e["type"] for e in events if e["activity_key"] == "a"] == [
        "activity.scheduled",
        "activity.started",
        "activity.released",
    ]
    [item] = await api.poll(worker_id="w2")  # back in the queue, attempt unused
    assert (item["workflow_id"], item["activity_key"], item["attempt"]) == (workflow_id, "a", 1)


async def test_a_poll_that_parked_without_a_claim_claims_before_answering_empty(
    api: Api,
) -> None:
    """Work made ready without a wake (as after a lost notification) still reaches
    a poll that parked on a queue known to be empty: it claims at its deadline."""
    await api.deploy(CHAIN)
    engine = api.ctx.engine
    assert await api.poll(worker_id="w1", wait=0.2) == []  # finds the queue empty
    assert api.ctx.dispatcher.known_empty("std")

    def start_unannounced(tx: Tx, effects: Any) -> str:
        started = engine.start_in_tx(tx, effects, "chain", now=engine.clock.now())
        effects.queues.clear()  # nobody is told
        effects.own_runs.clear()
        return str(started.id)

    workflow_id = await engine.write(start_unannounced)
    claims = _count_claims(api)
    with trio.fail_after(5):
        started = trio.current_time()
        [item] = await api.poll(worker_id="w2", wait=1)
    assert trio.current_time() - started >= 1  # parked first, then claimed
    assert claims == ["w2"]
    assert item["workflow_id"] == workflow_id


async def test_a_claim_that_rolls_back_wakes_the_polls_that_skipped_its_rows(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # w1's claim locks the ready row, then its transaction fails. Meanwhile w2's
    # poll claims, skips the locked row (SKIP LOCKED), finds the queue empty and
    # parks. The row is ready again after the rollback: w2 must hear of it now,
    # not at the end of its 20-second wait.
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    ops = api.ctx.worker_ops
    hand_out = ops._hand_out
    locked = trio.Event()

    def breaking(tx: Any, effects: Any, rows: Any, worker_id: str, now: Any, **kw: Any) -> Any:
        if worker_id != "w1":
            return hand_out(tx, effects, rows, worker_id, now, **kw)
        assert [row["key"] for row in rows] == ["a"]
        locked.set()
        tx.raw("SELECT pg_sleep(0.5)")  # w2 polls while the row is held
        raise RuntimeError("the claim breaks after locking its rows")

    monkeypatch.setattr(ops, "_hand_out", breaking)
    claims = _count_claims(api)
    poll, got = await _parked(api, "w2")

    async def broken_claim() -> None:
        with pytest.raises(RuntimeError, match="breaks after locking"):
            await ops.claim("std", "w1", 1)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broken_claim)
            await locked.wait()
            await nursery.start(poll)
            await _until_parked(api, 1)  # its claim skipped the row: the queue looked empty
            while "items" not in got:
                await trio.sleep(0.01)
    [item] = got["items"]
    assert (item["workflow_id"], item["activity_key"]) == (workflow_id, "a")
    assert claims == ["w1", "w2", "w2"]  # w2 claimed again once w1's claim was undone
    started = [e for e in await _events(api, workflow_id) if e["type"] == "activity.started"]
    assert [(e["activity_key"], e["data"]["worker_id"]) for e in started] == [("a", "w2")]


async def test_a_claim_run_again_wakes_the_queue_its_first_try_held(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store runs a unit again after a deadlock or a lost connection: the
    # first try's claim was undone, and polls may have skipped its rows then.
    await api.deploy(CHAIN)
    await api.start("chain")
    write = api.ctx.store.write

    async def write_twice(unit: Any) -> Any:
        def first_try(tx: Tx) -> Any:
            unit(tx)
            raise RuntimeError("deadlock detected (as the store would retry it)")

        with pytest.raises(RuntimeError, match="deadlock"):
            await write(first_try)
        return await write(unit)

    monkeypatch.setattr(api.ctx.store, "write", write_twice)
    woken: list[str] = []
    wake = api.ctx.engine.hooks.wake

    def spy(queue: str) -> None:
        woken.append(queue)
        wake(queue)

    monkeypatch.setattr(api.ctx.engine.hooks, "wake", spy)
    [item] = await api.ctx.worker_ops.claim("std", "w1", 5)
    assert item["activity_key"] == "a"
    assert woken == ["std"]


async def test_a_start_handed_to_a_parked_poll_waits_for_nothing_before_its_commit(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start's own run and its ready work are known to it (nobody else can see
    them before the commit): the claim names the rows and needs no answer. The
    definition's newest version is known to the server (it deployed it): a check
    goes with the writes instead of a read."""
    from kflow.store.postgres import PgTx

    await api.deploy(CHAIN)
    await api.start("chain")  # the definition is in the cache, the poll below gets this one
    [_] = await api.poll(worker_id="w0")
    poll, got = await _parked(api, "w1")
    waits: list[str] = []
    original = PgTx._sync

    def counting(self: PgTx) -> None:
        waits.append("sync")
        original(self)

    async with trio.open_nursery() as nursery:
        await nursery.start(poll)
        await _until_parked(api, 1)
        monkeypatch.setattr(PgTx, "_sync", counting)
        workflow_id = await api.start("chain")
        monkeypatch.undo()
        with trio.fail_after(5):
            while "items" not in got:
                await trio.sleep(0.01)
    [item] = got["items"]
    assert item["workflow_id"] == workflow_id
    # The check, the claim and the commit all ride on the pipeline's end.
    assert waits == []
    assert (await api.run(workflow_id))["status"] == "running"
