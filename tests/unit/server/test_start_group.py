"""Starts made at the same time share transactions; each answer is its own."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from kflow.errors import NotFoundError
from kflow.server.start_group import LANES, StartGroups
from kflow.server.transitions import Effects


class _Tx:
    """What a start unit writes, as (statement, params) pairs; no database."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, query: str, /, **params: Any) -> None:
        self.sent.append((query, params))

    def one(self, query: str, /, **params: Any) -> dict[str, Any]:
        self.sent.append((query, params))
        return {"name": params.get("name")}

    def json(self, value: Any) -> Any:
        return value


class _Engine:
    """Runs each unit of work in a transaction that takes a second; keeps what
    committed (a unit that raises commits nothing)."""

    def __init__(self) -> None:
        self.committed: list[list[tuple[str, dict[str, Any]]]] = []
        #: The task that called each write (a group's leader).
        self.callers: list[trio.lowlevel.Task] = []

    async def write(self, fn: Any) -> Any:
        self.callers.append(trio.lowlevel.current_task())
        tx = _Tx()
        await trio.sleep(1)  # the transaction's round trips
        result = fn(tx, Effects())
        self.committed.append(tx.sent)
        return result


def _start(n: int, *, fails: bool = False) -> Any:
    def unit(tx: Any, effects: Effects) -> int:
        tx.one("latest_definition", name="d")
        if fails:
            raise NotFoundError(f"start {n} has no definition")
        tx.send("insert_workflow", id=n)
        return n

    return unit


async def test_starts_arriving_while_groups_are_at_work_go_together_in_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    engine = _Engine()
    groups = StartGroups(engine)  # type: ignore[arg-type]
    answers: dict[int, int] = {}
    finished_at: dict[int, float] = {}

    async def start(n: int) -> None:
        answers[n] = await groups.start(_start(n))
        finished_at[n] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for n in range(10):  # one after another: each is waiting before the next
            nursery.start_soon(start, n)
            await trio.testing.wait_all_tasks_blocked()
    assert answers == {n: n for n in range(10)}
    # The first LANES starts find free lanes and go at once, alone; the rest wait
    # for a lane and then share one transaction, which reads the definition once.
    assert [len(c) for c in engine.committed] == [2] * LANES + [1 + (10 - LANES)]
    assert [q for q, _ in engine.committed[-1]].count("latest_definition") == 1
    assert {finished_at[n] for n in range(LANES)} == {1}
    assert {finished_at[n] for n in range(LANES, 10)} == {2}


async def test_a_group_with_a_failing_start_runs_each_start_alone(
    autojump_clock: trio.abc.Clock,
) -> None:
    engine = _Engine()
    groups = StartGroups(engine)  # type: ignore[arg-type]
    answers: dict[int, Any] = {}

    async def start(n: int) -> None:
        try:
            answers[n] = await groups.start(_start(n, fails=n == 4))
        except NotFoundError as exc:
            answers[n] = exc

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(start, n)
    assert isinstance(answers.pop(4), NotFoundError)
    assert answers == {n: n for n in (0, 1, 2, 3, 5)}
    # Nothing of the broken group committed; each of its starts committed alone.
    inserted = [p["id"] for c in engine.committed for q, p in c if q == "insert_workflow"]
    assert sorted(inserted) == [0, 1, 2, 3, 5]


async def test_a_start_cancelled_while_it_waits_is_never_applied(
    autojump_clock: trio.abc.Clock,
) -> None:
    engine = _Engine()
    groups = StartGroups(engine)  # type: ignore[arg-type]
    answers: dict[int, int] = {}

    async def start(n: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            answers[n] = await groups.start(_start(n))

    waiting = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        for n in range(LANES):
            nursery.start_soon(start, n)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(start, 99, waiting)
        nursery.start_soon(start, LANES)
        await trio.sleep(0.5)
        waiting.cancel()
    assert sorted(answers) == [*range(LANES), LANES]
    inserted = [p["id"] for c in engine.committed for q, p in c if q == "insert_workflow"]
    assert 99 not in inserted


async def test_a_cancelled_caller_does_not_take_the_others_of_its_group_with_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    engine = _Engine()
    groups = StartGroups(engine)  # type: ignore[arg-type]
    answers: dict[int, int] = {}
    cancelled: list[int] = []
    callers: dict[trio.lowlevel.Task, int] = {}

    async def start(n: int, scope: trio.CancelScope) -> None:
        callers[trio.lowlevel.current_task()] = n
        with scope:
            answers[n] = await groups.start(_start(n))
        if scope.cancelled_caught:
            cancelled.append(n)

    scopes = {n: trio.CancelScope() for n in range(LANES + 3)}
    async with trio.open_nursery() as nursery:
        for n, scope in scopes.items():
            nursery.start_soon(start, n, scope)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1.5)  # the lanes' first starts are done; the rest are in one group
        leader = callers[engine.callers[-1]]
        assert leader >= LANES
        scopes[leader].cancel()  # the caller that applies that group
    # The group went on to its commit: the others of the group have their
    # answers, and so has the cancelled caller (its start committed with them).
    assert cancelled == []
    assert answers == {n: n for n in scopes}
    inserted = [p["id"] for c in engine.committed for q, p in c if q == "insert_workflow"]
    assert sorted(inserted) == sorted(scopes)


@pytest.mark.parametrize("lanes_busy", [0, LANES])
async def test_a_start_alone_raises_its_own_error(
    autojump_clock: trio.abc.Clock, lanes_busy: int
) -> None:
    engine = _Engine()
    groups = StartGroups(engine)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for n in range(lanes_busy):
            nursery.start_soon(groups.start, _start(n))
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(NotFoundError, match="start 7"):
            await groups.start(_start(7, fails=True))
