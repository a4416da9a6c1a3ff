"""The built-in ``std`` and ``py-std`` workers, run inside ``kflow serve``.

They are ordinary :class:`~kflow.worker.WorkerManager` instances speaking
the public HTTP API — only the transport differs: the worker-protocol routes
are called as functions (:mod:`kflow.server.inprocess_api`) and the rest
through ``httpx.ASGITransport``, so a request takes no socket. Their
credential is an internal token signed by the server for the ``worker``
scope; it never leaves the process.
"""

from __future__ import annotations

import functools
import os
import pathlib
import socket

import httpx
import structlog
import trio
from starlette.applications import Starlette

from kflow.activities import (
    ScriptPool,
    aclose_registry,
    load_plugins,
    py_std_registry,
    std_registry,
)
from kflow.config import sqlite_path
from kflow.server.auth import INTERNAL_CLIENT
from kflow.server.context import ServerContext
from kflow.server.inprocess_api import InProcessWorkerApi
from kflow.worker.config import WorkerConfig, default_state_dir
from kflow.worker.manager import WorkerManager

log = structlog.get_logger("kflow.serve")

INTERNAL_URL = "http://kflow.internal"
#: Internal tokens live as long as the process could; they are never written anywhere.
INTERNAL_TOKEN_TTL = 10 * 365 * 86_400


def _state_dir(ctx: ServerContext) -> pathlib.Path:
    path = sqlite_path(ctx.config.database_url)
    return (path.parent / "worker-state") if path is not None else default_state_dir()


async def run_inprocess_workers(
    ctx: ServerContext,
    app: Starlette,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the built-in workers (``config.inprocess_workers``) until ``shutdown`` is set,
    then drain them."""
    config = ctx.config
    token = ctx.auth.mint(INTERNAL_CLIENT, {"worker"}, ttl_seconds=INTERNAL_TOKEN_TTL)
    host = socket.gethostname()
    timeout = httpx.Timeout(config.max_wait_seconds + 30.0)
    # A server error must reach the worker as a 500 answer, exactly as over a socket.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url=INTERNAL_URL, timeout=timeout
    ) as http:
        std = std_registry()
        load_plugins(std, "std")
        pool = ScriptPool(
            size=config.script_pool_size, memory_limit_mb=config.script_memory_mb or None
        )
        managers = []
        registries = {"std": std, "py-std": py_std_registry(pool)}
        for queue in config.inprocess_workers:
            registry = registries[queue]
            worker_config = WorkerConfig(
                api_url=INTERNAL_URL,
                access_token=token,
                worker=queue,
                worker_id=f"{host}-{os.getpid()}-serve-{queue}",
                max_activities=config.worker_concurrency,
                claim_next=config.worker_claim_next,
                poll_max_activities=min(config.worker_concurrency, 100),
                long_poll_seconds=min(20.0, config.max_wait_seconds),
                state_dir=_state_dir(ctx),
            )
            managers.append(
                WorkerManager(
                    worker_config,
                    registry,
                    http=http,
                    api_factory=functools.partial(InProcessWorkerApi, app=app, ctx=ctx),
                )
            )
        try:
            async with pool, trio.open_nursery() as nursery:
                for manager in managers:
                    await nursery.start(manager.run)
                task_status.started()
                await shutdown.wait()
                log.info("serve.workers_draining")
                for manager in managers:
                    manager.request_shutdown()
        finally:
            with trio.CancelScope(shield=True):
                await aclose_registry(std)
