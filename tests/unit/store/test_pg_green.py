"""The greenlet driver answers "ready to write?" without a trip through Trio."""

from __future__ import annotations

import socket

import pytest
from psycopg.waiting import Ready, Wait

from kflow.store.pg_green import _ready_now


def test_ready_now_reports_only_what_is_asked_and_ready() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert _ready_now(left.fileno(), Wait.W) == Ready.W
        assert _ready_now(left.fileno(), Wait.RW) == Ready.W  # nothing to read yet
        right.sendall(b"x")
        assert _ready_now(left.fileno(), Wait.RW) == Ready.R | Ready.W
        assert _ready_now(left.fileno(), Wait.W) == Ready.W  # reading was not asked


def test_ready_now_handles_descriptors_above_1023() -> None:
    """A busy server's PostgreSQL sockets get high descriptors; ``select`` refuses them."""
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = min(soft - 1, 1500)
    assert high > 1023, "this machine's descriptor limit is too low for the check"
    left, right = socket.socketpair()
    with left, right:
        os.dup2(left.fileno(), high)
        try:
            right.sendall(b"x")
            assert _ready_now(high, Wait.RW) == Ready.R | Ready.W
        finally:
            os.close(high)


async def test_a_connection_made_for_a_caller_that_gave_up_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shutdown cancels a connect still in libpq; the connection it then makes is
    closed, not left to the garbage collector (a ResourceWarning)."""
    import threading

    import trio

    from kflow.store import pg_green

    release = threading.Event()

    class Made:
        closed = False

        def close(self) -> None:
            self.closed = True

    made = Made()

    def slow_connect(*args: object, **kwargs: object) -> Made:
        release.wait(5)
        return made

    monkeypatch.setattr(pg_green.GreenConnection, "connect", slow_connect)
    with trio.move_on_after(0.05) as scope:
        await pg_green.connect("postgresql://nowhere", timeout=1)
    assert scope.cancelled_caught
    release.set()
    with trio.fail_after(5):
        while not made.closed:
            await trio.sleep(0.01)
