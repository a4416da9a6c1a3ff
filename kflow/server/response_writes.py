"""One socket write per HTTP/1.1 response that has a body of known length.

hypercorn turns each h11 event into its own write: a response's header block
goes out as soon as the application starts the response, its body as a
second write, the end of the message (nothing, with ``Content-Length``) as a
third call. On loopback each write is a system call that also runs the
receiver's TCP processing, and the receiving client wakes twice — once for
the header block, once for the body. Workers and clients exchange small JSON
messages with the server, so those writes were ~10 % of the server's CPU under
load (bench/README.md).

:func:`install` makes hypercorn's HTTP/1.1 protocol hold the header block of
a response that declares a non-zero ``Content-Length`` and send it together
with the first part of the body, or at the end of the message when no body
follows (``HEAD``, ``304``). Every other response — chunked ones such as the
held start, whose status line and ``Location`` must reach the caller at once,
bodiless ones, informational ones — is written as before. Nothing is
reordered or dropped: held bytes always travel with the next write of the
same response.

The wrapped method is private to hypercorn (``H11Protocol._send_h11_event``,
the one path by which its HTTP/1.1 bytes leave); tests/unit/server/
test_response_writes.py drives hypercorn's own protocol object and fails if
a hypercorn release changes that.
"""

from __future__ import annotations

from typing import Any

import h11
import structlog
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol

log = structlog.get_logger("kflow.server")

#: The attribute that keeps a held header block on a protocol instance.
_HELD = "_kflow_held_head"


def _declares_body(event: h11.Response) -> bool:
    """Whether the response says a body of non-zero length follows."""
    for name, value in event.headers:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


async def send_h11_event(self: Any, event: Any) -> None:
    """Drop-in for ``H11Protocol._send_h11_event``: the same encoding and error
    handling, with the header block of a response with a body held for the
    body's first write.

    Raises:
        h11.LocalProtocolError: the event does not fit the connection's state
            (unless the peer already broke the protocol, as hypercorn does).
    """
    try:
        data = self.connection.send(event)
    except h11.LocalProtocolError:
        if self.connection.their_state != h11.ERROR:
            raise
        return
    if isinstance(event, h11.Response) and _declares_body(event):
        setattr(self, _HELD, data)
        return
    held = getattr(self, _HELD, None)
    if held is not None:
        setattr(self, _HELD, None)
        data = held + (data or b"")
    if data:
        await self.send(RawData(data=data))


def install() -> bool:
    """Route hypercorn's HTTP/1.1 writes through :func:`send_h11_event` (idempotent).

    Returns whether it is installed; a hypercorn without the expected method
    is left as it is (and says so in the log) — responses are then correct,
    only written in more pieces.
    """
    current = getattr(H11Protocol, "_send_h11_event", None)
    if current is send_h11_event:
        return True
    if current is None:
        log.warning("server.response_writes_unavailable", reason="hypercorn changed")
        return False
    setattr(H11Protocol, "_send_h11_event", send_h11_event)  # noqa: B010 (a method)
    return True
