"""The event hub's wake-ups, including "this run finished", and how they cross servers."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
import trio

from kflow.server.events import EventHub, finished_key
from kflow.server.transitions import Effects

RUN = uuid.UUID("01900000-0000-7000-8000-000000000001")
OTHER = uuid.UUID("01900000-0000-7000-8000-000000000002")


async def test_a_finished_waiter_sleeps_through_intermediate_news(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub = EventHub()
    seen = hub.version(finished_key(RUN))
    before = hub.version(RUN)
    woke_at: list[float] = []

    async def waiter() -> None:
        assert await hub.wait(finished_key(RUN), seen, 60)
        woke_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        for _ in range(3):
            await trio.sleep(1)
            hub.notify(RUN)  # the run moved on, still going
            hub.notify(OTHER, finished=True)  # another run finished
        await trio.sleep(1)
        assert woke_at == []
        hub.notify(RUN, finished=True)
    assert woke_at == [4]
    # Every notification moves the run's own version (its streams look each time).
    assert hub.version(RUN) != before


async def test_a_finished_waiter_times_out_and_any_run_waiters_see_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub = EventHub()
    assert not await hub.wait(finished_key(RUN), 0, 5)
    assert trio.current_time() == 5
    before = hub.version(None)
    hub.notify(RUN, finished=True)
    assert hub.version(None) != before


async def test_notify_all_wakes_finished_waiters_too(autojump_clock: trio.abc.Clock) -> None:
    hub = EventHub()
    woken: list[object] = []

    async def waiter(key: object) -> None:
        if await hub.wait(key, hub.version(key), 60):
            woken.append(key)

    async with trio.open_nursery() as nursery:
        for key in (finished_key(RUN), RUN, None):
            nursery.start_soon(waiter, key)
        await trio.sleep(1)
        hub.notify_all()
    assert sorted(map(str, woken)) == sorted(map(str, [finished_key(RUN), RUN, None]))
    assert trio.current_time() == 1


async def test_a_version_taken_before_a_run_exists_sees_its_finish(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A held start takes the baseline before its run exists; the finish may come
    # before its wait begins, or while it waits.
    hub = EventHub()
    hub.notify(OTHER, finished=True)
    seen = hub.baseline()
    assert hub.version(finished_key(RUN)) == seen
    hub.notify(RUN, finished=True)
    assert await hub.wait(finished_key(RUN), seen, 60)
    assert trio.current_time() == 0


async def test_forgetting_keys_moves_every_version_taken_before(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Too many keys: those nobody waits on are forgotten. A version taken
    # before (a caller between its read and its wait) must not come back, or
    # that caller would sleep through a finish it was never told about.
    monkeypatch.setattr("kflow.server.events.KEEP_KEYS", 10)
    hub = EventHub()
    hub.notify(RUN)
    seen_run = hub.version(finished_key(RUN))
    seen_baseline = hub.baseline()
    hub.notify(RUN, finished=True)  # the finish lands before the wait ...
    for i in range(20):  # ... and is forgotten with the other unwatched keys
        hub.notify(uuid.UUID(int=i))
    assert hub.version(finished_key(RUN)) not in (seen_run, seen_baseline)
    assert await hub.wait(finished_key(RUN), seen_run, 60)
    assert await hub.wait(finished_key(RUN), seen_baseline, 60)
    assert trio.current_time() == 0
    # A watched key is kept, and it still wakes only for news of its own.
    woke: list[float] = []

    async def waiter() -> None:
        seen = hub.version(finished_key(OTHER))
        if await hub.wait(finished_key(OTHER), seen, 60):
            woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        for i in range(20, 40):
            hub.notify(uuid.UUID(int=i))
        await trio.sleep(1)
        hub.notify(OTHER, finished=True)
    assert woke == [2]


async def test_notify_all_moves_versions_not_yet_waited_with(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A reconnected listener cannot say what it missed: a caller that took a
    # version but is not waiting yet must wake too.
    hub = EventHub()
    seen = hub.version(finished_key(RUN))
    fresh = hub.baseline()
    hub.notify_all()
    assert await hub.wait(finished_key(RUN), seen, 60)
    assert await hub.wait(finished_key(OTHER), fresh, 60)
    assert trio.current_time() == 0


def test_the_notification_payload_names_finished_runs() -> None:
    effects = Effects()
    effects.workflows.add(OTHER)
    effects.finish(RUN)
    effects.queues.add("std")
    effects.timers.append(dt.datetime(2026, 11, 22, tzinfo=dt.UTC))
    payload = json.loads(effects.payload("me"))
    assert payload == {
        "s": "me",
        "q": ["std"],
        "w": sorted([str(RUN), str(OTHER)]),
        "f": [str(RUN)],
        "t": "2026-11-22T00:00:00+00:00",
    }
    many = Effects()
    for i in range(60):
        many.finish(uuid.UUID(int=i))
    assert json.loads(many.payload("me"))["w"] == json.loads(many.payload("me"))["f"] == "*"
    effects.clear()
    assert not effects
    assert not effects.finished


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def wake(self, queue: str) -> None:
        self.calls.append(("wake", queue))

    def wake_all(self) -> None:
        self.calls.append("wake_all")

    def arm(self, at: dt.datetime) -> None:
        self.calls.append(("arm", at))


class _Ctx:
    def __init__(self) -> None:
        self.hub = EventHub()
        self.dispatcher = _Recorder()
        self.scheduler = _Recorder()
        self.engine = type("Engine", (), {"instance_id": "me"})()


@pytest.fixture
def listener() -> Any:
    pytest.importorskip("psycopg", reason="optional dependency: the postgres extra")
    from kflow.server.listener import Listener

    return Listener(_Ctx())


def test_another_servers_finished_runs_wake_local_finished_waiters(listener: Any) -> None:
    hub: EventHub = listener.ctx.hub
    untouched = hub.baseline()
    payload = {"s": "other", "q": ["std"], "w": [str(RUN), str(OTHER)], "f": [str(RUN)]}
    listener.handle(json.dumps(payload))
    finished_version = hub.version(finished_key(RUN))
    assert finished_version != untouched
    assert hub.version(finished_key(OTHER)) == untouched
    assert hub.version(OTHER) != untouched
    assert listener.ctx.dispatcher.calls == [("wake", "std")]
    # Our own notifications were applied locally already; an older server's
    # payload without "f" only wakes the run's streams.
    run_version = hub.version(RUN)
    listener.handle(json.dumps({**payload, "s": "me"}))
    assert hub.version(RUN) == run_version
    listener.handle(json.dumps({"s": "old", "w": [str(RUN)]}))
    assert hub.version(finished_key(RUN)) == finished_version
    assert hub.version(RUN) != run_version


def test_our_own_payloads_are_ignored_without_decoding(
    listener: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    effects = Effects()
    effects.finish(RUN)
    effects.queues.add("std")
    own = effects.payload("me")
    other = effects.payload("mel")  # another server whose id begins like ours
    monkeypatch.setattr(
        "kflow.server.listener.loads", lambda _: pytest.fail("decoded our own payload")
    )
    listener.handle(own)
    assert listener.ctx.dispatcher.calls == []
    monkeypatch.undo()
    listener.handle(other)
    assert listener.ctx.dispatcher.calls == [("wake", "std")]
    assert listener.ctx.hub.version(finished_key(RUN)) != listener.ctx.hub.baseline()


async def _waiters_take_finals(
    hub: EventHub, runs: list[uuid.UUID], per_run: int, announce: Any, *, take: bool = True
) -> dict[uuid.UUID, list[Any]]:
    """``per_run`` tasks wait for each run to finish; ``announce()`` runs once all
    wait; each woken task takes the final detail (when ``take``). What each got."""
    got: dict[uuid.UUID, list[Any]] = {run: [] for run in runs}

    async def waiter(run: uuid.UUID) -> None:
        key = finished_key(run)
        assert await hub.wait(key, hub.version(key), 60)
        if take:
            got[run].append(hub.final(run, hub.version(key)))

    async with trio.open_nursery() as nursery:
        for run in runs:
            for _ in range(per_run):
                nursery.start_soon(waiter, run)
        await trio.sleep(1)
        assert all(hub.watched(finished_key(run)) for run in runs)
        announce()
    return got


async def test_a_finish_carries_the_final_detail_to_each_waiter_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub = EventHub()
    assert not hub.watched(finished_key(RUN))

    def announce() -> None:
        hub.notify(RUN, finished=True, final={"status": "completed"})

    got = await _waiters_take_finals(hub, [RUN], 2, announce)
    assert got[RUN] == [{"status": "completed"}, {"status": "completed"}]
    key = finished_key(RUN)
    assert not hub.watched(key)
    assert hub.final(RUN, hub.version(key)) is None  # both took it: forgotten
    # A finish nobody waits for keeps nothing.
    hub.notify(OTHER, finished=True, final={"status": "completed"})
    assert hub.final(OTHER, hub.version(finished_key(OTHER))) is None


async def test_a_waiter_that_gave_up_leaves_the_run_unwatched(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub = EventHub()
    key = finished_key(RUN)
    assert not await hub.wait(key, hub.version(key), 5)
    assert not hub.watched(key)
    with trio.move_on_after(1):
        await hub.wait(key, hub.version(key), 60)  # the caller hung up
    assert not hub.watched(key)


async def test_any_later_news_of_a_finish_sends_waiters_back_to_the_database(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub = EventHub()

    def other_news_then_finished_again() -> None:
        hub.notify(RUN, finished=True, final={"status": "failed"})
        hub.notify(RUN)  # news that is not a finish keeps the detail of the finish
        hub.notify(OTHER, finished=True, final={"status": "completed"})
        hub.notify(OTHER, finished=True)  # finished again, told by another server

    got = await _waiters_take_finals(hub, [RUN, OTHER], 1, other_news_then_finished_again)
    assert got == {RUN: [{"status": "failed"}], OTHER: [None]}

    def finish_then_reconnect() -> None:
        hub.notify(RUN, finished=True, final={"status": "completed"})
        hub.notify_all()  # a reconnection: anything may have changed

    got = await _waiters_take_finals(hub, [RUN], 1, finish_then_reconnect)
    assert got == {RUN: [None]}


async def test_final_details_nobody_takes_are_kept_for_the_newest_finishes_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    from kflow.server.events import KEEP_FINALS

    hub = EventHub()
    runs = [uuid.UUID(int=n + 1) for n in range(KEEP_FINALS + 1)]

    def announce() -> None:
        for run in runs:
            hub.notify(run, finished=True, final={"n": run.int})

    await _waiters_take_finals(hub, runs, 1, announce, take=False)  # woken, never took it
    assert hub.final(runs[0], hub.version(finished_key(runs[0]))) is None
    newest = runs[-1]
    assert hub.final(newest, hub.version(finished_key(newest))) == {"n": newest.int}
