"""The built-in workers' short way to the worker routes.

``kflow serve`` runs its ``std`` and ``py-std`` workers in its own process.
Their poll, heartbeat, complete and fail requests do not need an HTTP client,
a transport, the ASGI middleware stack and the router between two functions
in one process: profiles of the embedded server showed a fifth of its CPU
spent there. :class:`InProcessWorkerApi` calls those four route functions
directly with a request built for them, and keeps everything the routes
decide: the bearer token is verified, the body is parsed and validated,
the JSON body limit applies, errors become the same envelopes (through the
application's exception handlers), and requests are counted in the metrics.
Every other call (server info, files) still goes through the application.

The JSON bodies stay bytes on both sides, so a report is serialised exactly
as it would be for a remote server and its durable outbox copy is the same.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import structlog
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from kflow.errors import PayloadTooLargeError
from kflow.ids import new_id
from kflow.server.context import ServerContext
from kflow.server.errors import EXCEPTION_HANDLERS
from kflow.server.routes import workers as worker_routes
from kflow.worker.api import WorkerApi
from kflow.worker.config import WorkerConfig

Handler = Callable[[Request, Exception], Awaitable[Response]]


def _handler_for(exc: Exception) -> Handler:
    """The application's exception handler for ``exc`` (most specific class first)."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return EXCEPTION_HANDLERS[Exception]


class InProcessWorkerApi(WorkerApi):
    """A :class:`~kflow.worker.api.WorkerApi` for a worker inside the server process.

    ``http`` must reach ``app`` (an ``httpx.ASGITransport``): it carries the
    calls that are not worker-protocol routes.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: WorkerConfig,
        *,
        app: Starlette,
        ctx: ServerContext,
    ) -> None:
        super().__init__(http, config)
        self._app = app
        self._ctx = ctx
        self._routes: list[Route] = list(worker_routes.routes)

    #: A poll is a function call here: nothing to save by streaming it.
    streams_polls = False

    def batch_reports(self, **options: Any) -> None:
        """Nothing to share: reports of an in-process worker are function calls."""

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str,
        limits: httpx.Timeout | None,
        token: str | None,
    ) -> httpx.Response:
        full_path, _, query = ("/api/v1" + path).partition("?")
        scope = self._scope(method, full_path, body, content_type, token)
        scope["query_string"] = query.encode("ascii")
        for route in self._routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                return await self._call(route, scope, body or b"")
        return await super()._request(method, path, body, content_type, limits, token)

    def _scope(
        self, method: str, path: str, body: bytes | None, content_type: str, token: str | None
    ) -> dict[str, Any]:
        headers = [(b"accept", b"application/json")]
        if body is not None:
            headers.append((b"content-type", content_type.encode("latin-1")))
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode("latin-1")))
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("ascii"),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": None,
            "server": None,
            "app": self._app,
            "state": {"request_id": new_id().hex},
        }

    def _check_size(self, body: bytes) -> None:
        """Raises:
        PayloadTooLargeError: ``body`` is above the server's JSON body limit.
        """
        limit = self._ctx.config.json_body_limit
        if len(body) > limit:
            raise PayloadTooLargeError(
                f"request body exceeds the limit of {limit} bytes",
                details={"limit_bytes": limit},
            )

    async def _call(self, route: Route, scope: dict[str, Any], body: bytes) -> httpx.Response:
        delivered = False

        async def receive() -> MutableMapping[str, Any]:
            # The body once; after that the "client" never disconnects — a long
            # poll is ended by its deadline or by cancelling the caller.
            nonlocal delivered
            if delivered:
                await trio.sleep_forever()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request(scope, receive)
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=scope["state"]["request_id"]):
            try:
                self._check_size(body)
                response = await route.endpoint(request)
            except Exception as exc:  # answered as the application would answer it
                response = await _handler_for(exc)(request, exc)
        self._ctx.metrics.observe_request(
            scope["method"], route.path, response.status_code, time.perf_counter() - started
        )
        return httpx.Response(
            response.status_code,
            content=bytes(response.body),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
        )
