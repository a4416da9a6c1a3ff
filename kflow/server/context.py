"""Everything a request handler may use, built once per server process.

Handlers reach it as ``request.app.state.kflow``; there is no global state.
"""

from __future__ import annotations

import datetime as dt

import attrs
from starlette.requests import Request

from kflow.config import ServerConfig
from kflow.server.auth import Authenticator, Principal
from kflow.server.dispatcher import Dispatcher
from kflow.server.engine import Engine
from kflow.server.events import EventHub
from kflow.server.metrics import Metrics
from kflow.server.scheduler import Scheduler
from kflow.server.timer_ops import TimerOps
from kflow.server.worker_ops import WorkerOps
from kflow.store.base import Store


@attrs.define(kw_only=True)
class ServerContext:
    """The server's collaborators."""

    config: ServerConfig
    store: Store
    engine: Engine
    worker_ops: WorkerOps
    timer_ops: TimerOps
    dispatcher: Dispatcher
    hub: EventHub
    scheduler: Scheduler
    auth: Authenticator
    metrics: Metrics
    started_at: dt.datetime

    async def principal(self, request: Request, scope: str) -> Principal:
        """Authenticate the request and require ``scope``.

        Raises:
            kflow.errors.UnauthorizedError: no or bad token.
            kflow.errors.ForbiddenError: the token lacks ``scope``.
        """
        principal = await self.auth.authenticate(request.headers.get("authorization"))
        principal.require(scope)
        return principal


def context_of(request: Request) -> ServerContext:
    """The server context of a request."""
    ctx: ServerContext = request.app.state.kflow
    return ctx
