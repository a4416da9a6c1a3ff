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
