"""Parked polls: wake-ups by queue, and work handed to one poll by a transaction."""

from __future__ import annotations

import pytest
import trio

from kflow.server.dispatcher import Dispatcher, ParkedPoll

ITEM = {"activity_id": "a1", "workflow_id": "w1"}


async def _park(
    dispatcher: Dispatcher, parked: ParkedPoll, outcome: list[object], deadline: float = 60
) -> None:
    woken = await dispatcher.wait("q", dispatcher.sequence("q"), deadline, parked)
    outcome.append((woken, await parked.settled()))


async def test_a_hand_over_wakes_only_the_poll_it_was_given_to(
    autojump_clock: trio.abc.Clock,
) -> None:
    dispatcher = Dispatcher()
    first, second = ParkedPoll("w1", "c", 4), ParkedPoll("w2", "c", 4)
    got_first: list[object] = []
    got_second: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_park, dispatcher, first, got_first)
        await trio.sleep(1)
        nursery.start_soon(_park, dispatcher, second, got_second)
        await trio.sleep(1)
        reserved = dispatcher.reserve("q")
        assert reserved is first  # the longest parked
        assert dispatcher.reserve("q") is second  # a reserved poll is not offered again
        dispatcher.release(second)
        await trio.sleep(1)
        assert got_first == []  # a reservation wakes nobody
        assert got_second == []
        dispatcher.deliver(first, [ITEM])
        await trio.sleep(1)
        assert got_first == [(True, [ITEM])]
        assert got_second == []  # still parked: nothing was made for it
        assert dispatcher.waiting_queues() == ["q"]
        dispatcher.wake("q")
    assert got_second == [(True, [])]
    assert dispatcher.waiting_queues() == []


async def test_a_released_reservation_leaves_the_poll_waiting_and_free(
    autojump_clock: trio.abc.Clock,
) -> None:
    dispatcher = Dispatcher()
    parked = ParkedPoll("w1", "c", 1)
    outcome: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_park, dispatcher, parked, outcome, 30)
        await trio.sleep(1)
        assert dispatcher.reserve("q") is parked
        dispatcher.release(parked)  # that transaction rolled back
        await trio.sleep(1)
        assert outcome == []
        assert dispatcher.reserve("q") is parked  # the next one may hand it work
        dispatcher.deliver(parked, [ITEM])
    assert outcome == [(True, [ITEM])]


@pytest.mark.parametrize("then", ["deliver", "release"])
async def test_a_poll_whose_wait_ends_while_reserved_waits_for_the_outcome(
    autojump_clock: trio.abc.Clock, then: str
) -> None:
    dispatcher = Dispatcher()
    parked = ParkedPoll("w1", "c", 1)
    outcome: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_park, dispatcher, parked, outcome, 5)
        await trio.sleep(1)
        assert dispatcher.reserve("q") is parked
        await trio.sleep(10)  # the deadline passed while the transaction ran
        assert outcome == []  # the poll may not answer before it knows
        assert dispatcher.waiting_queues() == []  # but it is parked no more
        if then == "deliver":
            dispatcher.deliver(parked, [ITEM])
        else:
            dispatcher.release(parked)
    assert outcome == [(False, [ITEM] if then == "deliver" else [])]


async def test_a_plain_wait_is_never_handed_work(autojump_clock: trio.abc.Clock) -> None:
    dispatcher = Dispatcher()
    woke: list[bool] = []

    async def plain() -> None:
        woke.append(await dispatcher.wait("q", dispatcher.sequence("q"), 10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(plain)
        await trio.sleep(1)
        assert dispatcher.reserve("q") is None
    assert woke == [False]


async def test_a_wake_before_the_wait_is_not_lost(autojump_clock: trio.abc.Clock) -> None:
    dispatcher = Dispatcher()
    seen = dispatcher.sequence("q")
    dispatcher.wake("q")  # work committed between the claim and the park
    with trio.fail_after(1):
        assert await dispatcher.wait("q", seen, 30, ParkedPoll("w1", "c", 1))


def test_a_queue_is_known_empty_until_work_is_announced() -> None:
    dispatcher = Dispatcher()
    assert not dispatcher.known_empty("q")  # never claimed from: anything may be there
    seen = dispatcher.sequence("q")
    dispatcher.drained("q", seen)
    assert dispatcher.known_empty("q")
    assert not dispatcher.known_empty("other")
    dispatcher.wake("q")
    assert not dispatcher.known_empty("q")
    seen = dispatcher.sequence("q")
    dispatcher.wake("q")  # work announced while that claim ran
    dispatcher.drained("q", seen)
    assert not dispatcher.known_empty("q")
    dispatcher.drained("q", dispatcher.sequence("q"))
    dispatcher.wake_all()  # a reconnection: anything may have happened
    assert not dispatcher.known_empty("q")
