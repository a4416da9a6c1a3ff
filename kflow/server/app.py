"""The ASGI application: routes, error table and middleware around a ServerContext."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from kflow.server.context import ServerContext
from kflow.server.errors import EXCEPTION_HANDLERS
from kflow.server.middleware import RequestContextMiddleware
from kflow.server.routes import (
    costs,
    definitions,
    events,
    events_ws,
    files,
    health,
    oauth,
    schedules,
    workers,
    workflows,
)


def build_app(ctx: ServerContext) -> Starlette:
    """The kflow API for ``ctx`` (no global state: the context lives on ``app.state``)."""
    routes = [
        *health.routes,
        *oauth.routes,
        *definitions.routes,
        *workflows.routes,
        *costs.routes,
        *schedules.routes,
        *events.routes,
        *events_ws.routes,
        *workers.routes,
        *files.routes,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(
                RequestContextMiddleware,
                json_limit=ctx.config.json_body_limit,
                file_limit=ctx.config.file_body_limit,
                observe=ctx.metrics.observe_request,
            )
        ],
    )
    app.state.kflow = ctx
    return app
