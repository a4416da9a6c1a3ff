"""The greenlet driver answers "ready to write?" without a trip through Trio."""

from __future__ import annotations

import socket

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
