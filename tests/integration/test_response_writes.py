"""Response writes through hypercorn with :mod:`kflow.server.response_writes`
installed: the bytes the server writes to a real socket, recorded per write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import hypercorn.config
import hypercorn.trio
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kflow.server import response_writes


async def _json(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


async def _empty(request: Request) -> Response:
    return Response(status_code=204)


async def _held(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        await request.app.state.held.wait()
        yield b'{"done": true}'

    return StreamingResponse(body(), media_type="application/json")


ROUTES = [
    Route("/json", _json, methods=["GET", "HEAD"]),
    Route("/empty", _empty),
    Route("/held", _held),
]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the server makes (the client's start with a method, not ``HTTP/``)."""
    found: list[bytes] = []
    send_all = trio.SocketStream.send_all

    async def recording(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        if not bytes(data).startswith((b"GET ", b"HEAD ")):
            found.append(bytes(data))
        await send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", recording)
    return found


@pytest.fixture
def held() -> trio.Event:
    """Set to let the held (chunked) response send its body."""
    return trio.Event()


@pytest.fixture
async def address(nursery: trio.Nursery, held: trio.Event) -> tuple[str, int]:
    assert response_writes.install()
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    app = Starlette(routes=ROUTES)
    app.state.held = held
    binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
    host, port = str(binds[0]).removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def _exchange(address: tuple[str, int], request: bytes, until: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        seen = b""
        with trio.fail_after(10):
            while until not in seen:
                chunk = await stream.receive_some()
                assert chunk, f"connection closed after {seen!r}"
                seen += chunk
        return seen


async def test_a_response_with_a_body_is_one_write(
    address: tuple[str, int], writes: list[bytes]
) -> None:
    answer = await _exchange(address, b"GET /json HTTP/1.1\r\nhost: t\r\n\r\n", b"world")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert len(writes) == 1
    head, body = writes[0].split(b"\r\n\r\n", 1)
    assert b"content-length: 17" in head.lower()
    assert body == b'{"hello":"world"}'


async def test_head_and_bodiless_answers_still_go_out(
    address: tuple[str, int], writes: list[bytes]
) -> None:
    # HEAD declares the body's length but sends none: the held header block
    # travels with the end of the message.
    answer = await _exchange(address, b"HEAD /json HTTP/1.1\r\nhost: t\r\n\r\n", b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 17" in answer.lower()
    answer = await _exchange(address, b"GET /empty HTTP/1.1\r\nhost: t\r\n\r\n", b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 204 ")
    assert len(writes) == 2
    assert all(w.endswith(b"\r\n\r\n") for w in writes)


async def test_a_chunked_response_sends_its_head_at_once(
    address: tuple[str, int], writes: list[bytes], held: trio.Event
) -> None:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"GET /held HTTP/1.1\r\nhost: t\r\n\r\n")
        with trio.fail_after(10):
            head = await stream.receive_some()
        # The status line arrived while the body is still being made.
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding: chunked" in head.lower()
        assert not held.is_set()
        held.set()
        seen = head
        with trio.fail_after(10):
            while b"0\r\n\r\n" not in seen:
                seen += await stream.receive_some()
    assert b'{"done": true}' in seen
    assert writes[0].startswith(b"HTTP/1.1 200 ")
    assert writes[0].endswith(b"\r\n\r\n")
