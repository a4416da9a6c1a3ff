"""Health, readiness, server info, the OpenAPI document and metrics (PROTOCOL §8)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kflow._version import __version__
from kflow.errors import StoreError
from kflow.server.context import context_of
from kflow.server.http import JSONResponse
from kflow.server.metrics import CONTENT_TYPE
from kflow.server.openapi import build_openapi

FEATURES = [
    "cancel",
    "events_sse",
    "events_ws",
    "files",
    "heartbeat_details",
    "lease_ownership",
    "long_poll",
    "poll_stream",
    "loops",
    "report_batch",
    "report_claim_next",
    "schedules",
    "scopes",
    "signals",
    "unique_key",
]


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Readiness: database, dispatcher and scheduler all work."""
    ctx = context_of(request)
    checks: dict[str, Any] = {}
    try:
        await ctx.store.read(lambda tx: tx.one("get_meta", key="jwt_signing_key"))
        checks["database"] = {"status": "ok", "dialect": ctx.store.dialect}
    except StoreError as exc:
        checks["database"] = {"status": "error", "message": exc.message}
    checks["dispatcher"] = {"status": "ok", "waiting_queues": ctx.dispatcher.waiting_queues()}
    checks["scheduler"] = {
        "status": "ok" if ctx.scheduler.healthy else "error",
        "last_run": ctx.scheduler.last_run,
    }
    healthy = all(c["status"] == "ok" for c in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )


async def info(request: Request) -> JSONResponse:
    """Server version, API version and the protocol extensions it offers."""
    ctx = context_of(request)
    return JSONResponse(
        {
            "name": "kflow",
            "version": __version__,
            "api_version": "v1",
            "features": FEATURES,
            "database": ctx.store.dialect,
            "max_wait_seconds": ctx.config.max_wait_seconds,
            "started_at": ctx.started_at,
        }
    )


async def openapi(request: Request) -> JSONResponse:
    """This API described as OpenAPI 3.1."""
    return JSONResponse(build_openapi(request.app.routes))


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this server process (needs the ``workflows:read`` scope)."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/api/v1/info", info, methods=["GET"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
