"""``kflow serve``: the server process — API, scheduler and in-process workers.

:func:`serve` opens the store (migrating it), builds the server context and
runs, in one nursery: the scheduler, on PostgreSQL the listener of other
servers' notifications (:mod:`kflow.server.listener`), hypercorn on Trio
serving the API, and (unless ``run_workers`` is off) the built-in ``std`` and
``py-std`` workers, which talk to the API through an in-process transport —
the same requests and code path as any external worker, without a socket.

Shutdown is orderly: when ``shutdown`` is set, the in-process workers stop
polling and finish (or report) their in-flight work, hypercorn closes its
connections, then the scheduler stops and the store closes.
"""

from __future__ import annotations

import datetime as dt
import functools
import pathlib
import uuid
from collections.abc import Iterable
from typing import Any

import attrs
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette

from kflow.clock import Clock, SystemClock
from kflow.config import ServerConfig, sqlite_path
from kflow.errors import ConfigError, ConflictError, DefinitionError
from kflow.model.loader import load_definition
from kflow.server import response_writes
from kflow.server.app import build_app
from kflow.server.auth import Authenticator, create_client_in_tx, expand, hash_secret
from kflow.server.context import ServerContext
from kflow.server.dispatcher import Dispatcher
from kflow.server.engine import Engine, EngineSettings
from kflow.server.events import EventHub, finished_key
from kflow.server.handoff import ParkedHandOff
from kflow.server.metrics import Metrics
from kflow.server.scheduler import Scheduler
from kflow.server.timer_ops import TimerOps
from kflow.server.worker_ops import WorkerOps
from kflow.store.base import Store, Tx
from kflow.store.sqlite import SqliteStore

log = structlog.get_logger("kflow.serve")


@attrs.frozen(kw_only=True)
class RunningServer:
    """What :func:`serve` reports once it accepts requests."""

    url: str
    context: ServerContext
    app: Starlette


async def open_store(config: ServerConfig) -> Store:
    """Open the database named by ``config.database_url``.

    Raises:
        ConfigError: an unsupported URL.
        kflow.errors.StoreUnavailableError: the database cannot be opened.
    """
    path = sqlite_path(config.database_url)
    if path is not None:
        synchronous = "normal" if config.sqlite_synchronous == "normal" else "full"
        return await SqliteStore.open(path, synchronous=synchronous)
    try:
        from kflow.store.postgres import PostgresStore
    except ImportError as exc:
        raise ConfigError(
            "PostgreSQL needs the postgres extra: pip install 'kflow[postgres]'"
        ) from exc
    store: Store = await PostgresStore.open(
        config.database_url, min_size=min(2, config.db_pool_size), max_size=config.db_pool_size
    )
    return store


class _Hooks:
    """Routes engine notifications to the dispatcher, scheduler and event hub."""

    def __init__(self, dispatcher: Dispatcher, hub: EventHub) -> None:
        self.dispatcher = dispatcher
        self.hub = hub
        self.scheduler: Scheduler | None = None

    def wake(self, queue: str) -> None:
        self.dispatcher.wake(queue)

    def arm(self, at: dt.datetime) -> None:
        if self.scheduler is not None:
            self.scheduler.arm(at)

    def notify(
        self,
        workflow_id: uuid.UUID,
        *,
        finished: bool = False,
        final: dict[str, Any] | None = None,
    ) -> None:
        self.hub.notify(workflow_id, finished=finished, final=final)

    def wants_final(self, workflow_id: uuid.UUID) -> bool:
        return self.hub.watched(finished_key(workflow_id))


async def build_context(
    config: ServerConfig, store: Store, *, clock: Clock | None = None
) -> ServerContext:
    """Wire the engine, its timers and auth around ``store``."""
    clock = clock or SystemClock()
    dispatcher = Dispatcher()
    hub = EventHub()
    hooks = _Hooks(dispatcher, hub)
    engine = Engine(
        store,
        clock=clock,
        hooks=hooks,
        settings=EngineSettings(
            lease_grace_seconds=config.lease_grace_seconds,
            heartbeat_interval_seconds=config.heartbeat_interval_seconds,
            secrets=dict(config.secrets),
        ),
    )
    timer_ops = TimerOps(engine)
    scheduler = Scheduler(timer_ops, clock, max_sleep=config.scheduler_max_sleep)
    hooks.scheduler = scheduler
    key = await Authenticator.signing_key(store, config.jwt_secret)
    auth = Authenticator(
        store, key, insecure_dev=config.insecure_dev, token_ttl_seconds=config.token_ttl_seconds
    )
    worker_ops = WorkerOps(engine)
    if store.dialect == "postgres":  # see kflow.server.handoff for why not on SQLite
        engine.handoff = ParkedHandOff(dispatcher, worker_ops)
    return ServerContext(
        config=config,
        store=store,
        engine=engine,
        worker_ops=worker_ops,
        timer_ops=timer_ops,
        dispatcher=dispatcher,
        hub=hub,
        scheduler=scheduler,
        auth=auth,
        metrics=Metrics(),
        started_at=clock.now(),
    )


async def seed_client(
    ctx: ServerContext, client_id: str, secret: str, scopes: Iterable[str] = ("admin",)
) -> bool:
    """Create the seed client with ``scopes`` unless it exists; returns True if created.

    Implied scopes are stored too (``admin``, the default, is every scope;
    ``workflows:write`` adds ``workflows:read``). An existing client is left
    as it is, scopes included.
    """
    hashed = await trio.to_thread.run_sync(hash_secret, secret)
    now = ctx.engine.clock.now()

    def seed_tx(tx: Tx) -> bool:
        if tx.one("get_client", client_id=client_id) is not None:
            return False
        create_client_in_tx(
            tx,
            client_id=client_id,
            secret=secret,
            secret_hash=hashed,
            scopes=expand(scopes),
            description="seeded by kflow serve",
            now=now,
        )
        return True

    try:
        created: bool = await ctx.store.write(seed_tx)
    except ConflictError:
        return False
    return created


def definition_files(paths: Iterable[pathlib.Path]) -> list[pathlib.Path]:
    """YAML/JSON files named by ``paths`` (directories are searched, not recursively).

    Raises:
        ConfigError: a path does not exist.
    """
    found: list[pathlib.Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"--deploy: {path} does not exist")
    return found


async def deploy_files(ctx: ServerContext, paths: Iterable[pathlib.Path]) -> list[str]:
    """Deploy every definition file; returns ``name@version`` of each.

    Raises:
        ConfigError: a file is not a valid definition (the message names the
            file and every field error).
    """
    deployed = []
    for path in definition_files(paths):
        text = await trio.Path(path).read_text()
        try:
            definition = load_definition(text)
        except DefinitionError as exc:
            problems = "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.field_errors.items())
            raise ConfigError(f"{path}: invalid workflow definition: {problems}") from exc
        loaded, created = await ctx.engine.deploy(definition)
        log.info(
            "definition.deployed",
            name=loaded.name,
            version=loaded.version,
            file=str(path),
            new=created,
        )
        deployed.append(f"{loaded.name}@{loaded.version}")
    return deployed


def hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hconfig = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hconfig.bind = [f"{host}:{config.port}"]
    hconfig.accesslog = None
    hconfig.errorlog = None
    hconfig.graceful_timeout = 5.0
    hconfig.keep_alive_timeout = 75.0
    hconfig.h11_max_incomplete_size = 64 * 1024
    return hconfig


async def serve(
    config: ServerConfig,
    *,
    shutdown: trio.Event | None = None,
    clock: Clock | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until ``shutdown`` is set (or the task is cancelled).

    Raises:
        ConfigError: unsafe or invalid configuration.
        kflow.errors.StoreUnavailableError: the database cannot be opened.
        OSError: the address cannot be bound.
    """
    config.check()
    response_writes.install()
    shutdown = shutdown if shutdown is not None else trio.Event()
    store = await open_store(config)
    try:
        applied = await store.migrate()
        if applied:
            log.info("store.migrated", applied=applied, dialect=store.dialect)
        ctx = await build_context(config, store, clock=clock)
        seed = (config.seed_client_id, config.seed_client_secret)
        scopes = config.seed_client_scopes
        if seed[0] and seed[1] and await seed_client(ctx, seed[0], seed[1], scopes):
            log.info("client.seeded", client_id=seed[0], scopes=sorted(scopes))
        if config.deploy_paths:
            await deploy_files(ctx, config.deploy_paths)
        app = build_app(ctx)
        async with trio.open_nursery() as background:
            await background.start(ctx.scheduler.serve)
            if store.dialect == "postgres":
                from kflow.server.listener import Listener
                from kflow.server.peers import PeerWatch

                await background.start(Listener(ctx).serve, config.database_url)
                await background.start(PeerWatch(ctx).serve)
                if config.table_upkeep_seconds > 0:
                    from kflow.server.table_upkeep import TableUpkeep

                    upkeep = TableUpkeep(store, config.table_upkeep_seconds)
                    await background.start(upkeep.serve)
            async with trio.open_nursery() as front:
                binds = await front.start(
                    functools.partial(
                        hypercorn_serve,
                        # hypercorn's Framework type wants its own Scope/event TypedDicts;
                        # Starlette types the same ASGI callable with plain mappings.
                        app,  # type: ignore[arg-type]
                        hypercorn_config(config),
                        shutdown_trigger=shutdown.wait,
                    )
                )
                url = _url_of(binds, config)
                if config.builtin_workers:
                    from kflow.server.inprocess import run_inprocess_workers

                    await front.start(run_inprocess_workers, ctx, app, shutdown)
                log.info(
                    "server.started",
                    url=url,
                    database=store.dialect,
                    workers=", ".join(config.builtin_workers) or "none",
                    insecure_dev=config.insecure_dev,
                )
                task_status.started(RunningServer(url=url, context=ctx, app=app))
            background.cancel_scope.cancel()
        log.info("server.stopped")
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def _url_of(binds: list[str], config: ServerConfig) -> str:
    if not binds:
        return config.public_url
    url = binds[0]
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
