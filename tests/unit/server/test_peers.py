"""Whether a server notifies others (kflow.server.peers), and the listener's
second wake-up once the others have counted it (autojump clock, no database)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from kflow.errors import StoreError
from kflow.server.events import EventHub
from kflow.server.peers import CHECK_SECONDS, SETTLE_SECONDS, PeerWatch, listener_name


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def wake_all(self) -> None:
        self.calls.append("wake_all")

    def arm(self, at: Any) -> None:
        self.calls.append("arm")


class _Tx:
    def __init__(self, store: _Store) -> None:
        self.store = store

    def one(self, query: str, /, **params: Any) -> dict[str, Any]:
        self.store.asked.append((query, params))
        if isinstance(self.store.answer, Exception):
            raise self.store.answer
        return {"listeners": self.store.answer}


class _Store:
    def __init__(self) -> None:
        self.answer: int | Exception = 0
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def read(self, fn: Any) -> Any:
        return fn(_Tx(self))


class _Ctx:
    def __init__(self) -> None:
        self.store = _Store()
        self.hub = EventHub()
        self.dispatcher = _Recorder()
        self.scheduler = _Recorder()
        self.engine = type(
            "Engine",
            (),
            {"instance_id": "0123456789abcdef", "notify_peers": True, "clock": _Clock()},
        )()


class _Clock:
    def now(self) -> Any:
        return None


async def test_a_lone_server_stops_notifying_and_starts_again_when_a_peer_listens() -> None:
    ctx = _Ctx()
    watch = PeerWatch(ctx)
    await watch.check()
    assert ctx.engine.notify_peers is False
    assert ctx.store.asked == [
        ("other_listeners", {"prefix": "kflow-listener-%", "own": "kflow-listener-0123456789ab"})
    ]
    ctx.store.answer = 2
    await watch.check()
    assert ctx.engine.notify_peers is True
    ctx.store.answer = 0
    await watch.check()
    assert ctx.engine.notify_peers is False


async def test_a_failing_count_means_notify(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = _Ctx()
    watch = PeerWatch(ctx)
    await watch.check()
    assert ctx.engine.notify_peers is False
    ctx.store.answer = StoreError("connection refused")
    await watch.check()
    await watch.check()
    assert ctx.engine.notify_peers is True
    assert capsys.readouterr().out.count("peers.check_failed") == 1  # said once, not per check


async def test_the_watch_checks_every_interval_and_not_before_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ctx = _Ctx()
    ctx.store.answer = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(PeerWatch(ctx).serve)
        await trio.sleep(CHECK_SECONDS * 0.9)
        assert ctx.engine.notify_peers is True
        assert ctx.store.asked == []
        await trio.sleep(CHECK_SECONDS * 2)
        assert ctx.engine.notify_peers is False
        assert len(ctx.store.asked) == 2
        nursery.cancel_scope.cancel()


def test_listener_names_are_what_the_count_excludes() -> None:
    assert listener_name("0123456789abcdef") == "kflow-listener-0123456789ab"


async def test_the_listener_wakes_everything_again_once_peers_have_counted_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pytest.importorskip("psycopg", reason="optional dependency: the postgres extra")
    from kflow.server import listener as listener_module

    ctx = _Ctx()
    listener = listener_module.Listener(ctx)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener._wake_after_settling)
        await trio.sleep(10)
        assert ctx.dispatcher.calls == []  # not before a connection
        listener.handle(listener_module._CONNECTED)
        assert ctx.dispatcher.calls == ["wake_all"]
        await trio.sleep(SETTLE_SECONDS - 0.1)
        assert ctx.dispatcher.calls == ["wake_all"]
        await trio.sleep(0.2)
        assert ctx.dispatcher.calls == ["wake_all", "wake_all"]
        listener.handle(listener_module._CONNECTED)  # a reconnection: the same again
        await trio.sleep(SETTLE_SECONDS + 0.1)
        assert ctx.dispatcher.calls == ["wake_all"] * 4
        nursery.cancel_scope.cancel()
