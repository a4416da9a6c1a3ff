"""``http_request`` against a real HTTP server (hypercorn + starlette) on 127.0.0.1."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any
from uuid import uuid4

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route

from kflow.activities import (
    aclose_registry,
    open_std_registry,
    postgres_available,
    std_registry,
)
from kflow.activities.http_request import HttpRequestActivity
from kflow.errors import ActivityError
from kflow.worker.context import ActivityContext


async def _echo(request: Request) -> Response:
    return JSONResponse(
        {
            "method": request.method,
            "query": sorted(request.query_params.multi_items()),
            "content_type": request.headers.get("content-type"),
            "x_token": request.headers.get("x-token"),
            "body": (await request.body()).decode(),
        }
    )


async def _slow(request: Request) -> Response:
    await trio.sleep(30)
    return PlainTextResponse("too late")


async def _stream(scope: dict, receive: Any, send: Any) -> None:
    """Raw ASGI: a 64 KiB body in 1 KiB chunks, without content-length."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    for _ in range(64):
        await send({"type": "http.response.body", "body": b"y" * 1024, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


ROUTES = [
    Route("/echo", _echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    Route("/json", lambda r: JSONResponse({"hello": "world"})),
    Route(
        "/problem",
        lambda r: Response(b'{"title": "x"}', 422, media_type="application/problem+json"),
    ),
    Route("/text", lambda r: PlainTextResponse("plain text", headers={"x-a": "1"})),
    Route("/missing", lambda r: JSONResponse({"error": "nope"}, status_code=404)),
    Route("/binary", lambda r: Response(bytes(range(256)), media_type="image/png")),
    Route("/big", lambda r: Response(b"x" * 4096, media_type="text/plain")),
    Mount("/stream", app=_stream),
    Route("/redirect", lambda r: RedirectResponse("/json")),
    Route("/loop", lambda r: RedirectResponse("/loop")),
    Route("/slow", _slow),
]


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(partial(hypercorn.trio.serve, Starlette(routes=ROUTES), config))
    return str(binds[0])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=True, max_redirects=3) as client:
        yield client


def ctx() -> ActivityContext:
    return ActivityContext(
        workflow_id=uuid4(), activity_id=uuid4(), activity_key="k", timeout_seconds=5
    )


async def call(http: httpx.AsyncClient, params: dict, **kwargs) -> dict:
    result = await HttpRequestActivity(http, **kwargs).execute(params, ctx())
    assert not result.is_error
    return result.to_output_dict()["response"]


async def test_get_json(http, base_url) -> None:
    response = await call(http, {"method": "GET", "url": f"{base_url}/json"})
    assert response["status"] == 200
    assert response["success"] is True
    assert response["body"] == {"hello": "world"}
    assert response["body_encoding"] == "json"
    assert response["headers"]["content-type"] == "application/json"


async def test_post_dict_body_is_json_with_headers_and_query(http, base_url) -> None:
    response = await call(
        http,
        {
            "method": "post",
            "url": f"{base_url}/echo",
            "headers": {"X-Token": "abc"},
            "query": {"a": 1, "b": ["x", "y"], "flag": True},
            "body": {"n": [1, 2]},
        },
    )
    assert response["body"] == {
        "method": "POST",
        "query": [["a", "1"], ["b", "x"], ["b", "y"], ["flag", "true"]],
        "content_type": "application/json",
        "x_token": "abc",
        "body": '{"n":[1,2]}',
    }


async def test_string_body_is_sent_as_is(http, base_url) -> None:
    response = await call(
        http,
        {
            "method": "PUT",
            "url": f"{base_url}/echo",
            "body": "raw ü",
            "headers": {"content-type": "text/plain; charset=utf-8"},
        },
    )
    assert response["body"]["body"] == "raw ü"
    assert response["body"]["method"] == "PUT"


async def test_text_and_json_suffix(http, base_url) -> None:
    text = await call(http, {"method": "GET", "url": f"{base_url}/text"})
    assert (text["body"], text["body_encoding"], text["headers"]["x-a"]) == (
        "plain text",
        "text",
        "1",
    )
    problem = await call(http, {"method": "GET", "url": f"{base_url}/problem"})
    assert (problem["status"], problem["success"], problem["body"]) == (422, False, {"title": "x"})


async def test_404_is_a_result_not_an_error(http, base_url) -> None:
    response = await call(http, {"method": "GET", "url": f"{base_url}/missing"})
    assert (response["status"], response["success"], response["body"]) == (
        404,
        False,
        {"error": "nope"},
    )


async def test_binary_body_is_base64(http, base_url) -> None:
    response = await call(http, {"method": "GET", "url": f"{base_url}/binary"})
    assert response["body_encoding"] == "base64"
    assert base64.b64decode(response["body"]) == bytes(range(256))


async def test_head_has_empty_body(http, base_url) -> None:
    response = await call(http, {"method": "HEAD", "url": f"{base_url}/json"})
    assert (response["status"], response["body"]) == (200, "")


async def test_redirect_is_followed_and_bounded(http, base_url) -> None:
    response = await call(http, {"method": "GET", "url": f"{base_url}/redirect"})
    assert response["body"] == {"hello": "world"}
    with pytest.raises(ActivityError) as info:
        await call(http, {"method": "GET", "url": f"{base_url}/loop"})
    assert (info.value.code, info.value.retryable) == ("HTTP_ERROR", False)


async def test_timeout(http, base_url) -> None:
    with pytest.raises(ActivityError) as info:
        await call(http, {"method": "GET", "url": f"{base_url}/slow", "timeout_seconds": 0.3})
    assert (info.value.code, info.value.retryable) == ("TIMEOUT", True)
    assert "/slow" in info.value.message


@pytest.mark.parametrize("path", ["/big", "/stream/"])
async def test_response_too_large(http, base_url, path) -> None:
    with pytest.raises(ActivityError) as info:
        await call(http, {"method": "GET", "url": f"{base_url}{path}"}, max_response_bytes=1024)
    assert (info.value.code, info.value.retryable) == ("RESPONSE_TOO_LARGE", False)


async def test_head_of_a_large_resource_is_not_too_large(http, base_url) -> None:
    response = await call(
        http, {"method": "HEAD", "url": f"{base_url}/big"}, max_response_bytes=1024
    )
    assert (response["status"], response["headers"]["content-length"]) == (200, "4096")


async def test_connection_refused_is_retryable_http_error(http) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:hunter2@127.0.0.1:{port}/x"
    with pytest.raises(ActivityError) as info:
        await call(http, {"method": "GET", "url": url})
    assert (info.value.code, info.value.retryable) == ("HTTP_ERROR", True)
    assert f"127.0.0.1:{port}/x" in info.value.message
    assert "hunter2" not in info.value.message


async def test_std_registry_owns_and_closes_its_client(base_url) -> None:
    registry = std_registry()
    postgres = ["postgres_query", "postgres_transaction"] if postgres_available() else []
    assert registry.names("std") == ["echo", "email_send", "http_request", *postgres]
    act = registry.get("std", "http_request")
    result = await act.execute({"method": "GET", "url": f"{base_url}/json"}, ctx())
    assert result.to_output_dict()["response"]["body"] == {"hello": "world"}
    await aclose_registry(registry)
    assert act.http.is_closed


async def test_injected_client_is_not_closed(http) -> None:
    async with open_std_registry(http=http) as registry:
        assert registry.get("std", "http_request").http is http
    assert not http.is_closed


async def test_streamed_body_under_the_cap(http, base_url) -> None:
    response = await call(http, {"method": "GET", "url": f"{base_url}/stream/"})
    assert (response["status"], response["body"]) == (200, "y" * 64 * 1024)


async def test_without_a_client_one_is_made_on_first_use_and_closed(base_url) -> None:
    activity = HttpRequestActivity()
    await activity.aclose()  # never used: nothing was created, nothing to close
    assert activity._http is None
    result = await activity.execute({"method": "GET", "url": f"{base_url}/json"}, ctx())
    assert result.to_output_dict()["response"]["body"] == {"hello": "world"}
    client = activity._http
    assert client is not None
    await activity.aclose()
    assert client.is_closed


async def test_an_injected_client_is_left_open(http, base_url) -> None:
    activity = HttpRequestActivity(http)
    await activity.execute({"method": "GET", "url": f"{base_url}/json"}, ctx())
    await activity.aclose()
    assert not http.is_closed
