"""Pure ASGI middleware: request ids, body-size limits, access metrics.

* ``X-Request-ID`` is echoed (or generated) and bound into the logs of the
  request.
* Bodies above the limit are refused with a 413 envelope — up front when
  ``Content-Length`` says so, otherwise as soon as the streamed body passes
  the limit. File routes have their own, larger limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog

from kflow._serde import dumps
from kflow.errors import PayloadTooLargeError
from kflow.ids import new_id
from kflow.server.http import envelope

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = structlog.get_logger("kflow.http")


def _is_file_route(path: str) -> bool:
    return "/files/" in path


class RequestContextMiddleware:
    """Request id, body limits and an access log line at debug level."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        json_limit: int,
        file_limit: int,
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.json_limit = json_limit
        self.file_limit = file_limit
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or new_id().hex
        limit = self.file_limit if _is_file_route(scope["path"]) else self.json_limit
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(send_with_id, limit)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(
                        f"request body exceeds the limit of {limit} bytes",
                        details={"limit_bytes": limit},
                    )
            return message

        scope.setdefault("state", {})["request_id"] = request_id
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, limited_receive, send_with_id)
            finally:
                if self.observe is not None:
                    route = scope.get("route")
                    path: str = scope["path"]
                    name = getattr(route, "path", path) if route else "unmatched"
                    self.observe(
                        scope["method"],
                        name,
                        status_holder["status"],
                        time.perf_counter() - started,
                    )

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        body = dumps(
            envelope(
                "PAYLOAD_TOO_LARGE",
                f"request body exceeds the limit of {limit} bytes",
                {"limit_bytes": limit},
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
