"""The ``kflow`` subcommands (argument parsing lives in :mod:`kflow.cli`).

Each ``cmd_<name>(args, console)`` runs inside ``trio.run`` and returns the
process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import signal
from typing import TYPE_CHECKING, Any

import trio

from kflow._gc import freeze_startup_objects
from kflow.activities.hardening import protect_process_memory
from kflow.cli import EXIT_FAILED, EXIT_OK, parse_input
from kflow.client import AsyncClient, ClientConfig
from kflow.config import ServerConfig, script_pool_settings, server_config
from kflow.errors import ConfigError
from kflow.worker.config import WorkerConfig
from kflow.worker.manager import WorkerManager
from kflow.worker.registry import ActivityRegistry

if TYPE_CHECKING:
    from rich.console import Console


async def _signals_to(shutdown: trio.Event, cancel: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: orderly shutdown; second: cancel everything."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if shutdown.is_set():
                cancel.cancel()
                return
            shutdown.set()


# ---- server side ------------------------------------------------------------------


async def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from kflow.server.auth import INTERNAL_CLIENT
    from kflow.server.serve import RunningServer, serve

    config = server_config(
        host=args.host,
        port=args.port,
        database_url=args.db,
        run_workers=False if args.no_worker else None,
        insecure_dev=args.insecure_dev,
        seed_client=args.seed_client,
        deploy_paths=tuple(args.deploy) or None,
    )
    run_input = parse_input(args.input) if args.run else {}
    if "py-std" in config.builtin_workers:
        protect_process_memory()  # scripts must not read the server's secrets
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals_to, shutdown, nursery.cancel_scope)
        async with trio.open_nursery() as server:
            running: RunningServer = await server.start(_serve_task, serve, config, shutdown)
            freeze_startup_objects()  # short full collections from now on (kflow._gc)
            server.start_soon(_announce_stop, shutdown, console)
            workers = ", ".join(config.builtin_workers) or "none built in"
            console.print(
                f"[bold green]kflow {running.url}[/]  database {_db_label(config)}  "
                f"workers {workers}  — Ctrl-C to stop",
                highlight=False,
            )
            if args.run:
                token = (
                    None
                    if config.insecure_dev
                    else running.context.auth.mint(INTERNAL_CLIENT, {"admin"}, ttl_seconds=3600)
                )
                async with AsyncClient(config=ClientConfig(api_url=running.url, token=token)) as kf:
                    await _run_file(kf, args.run, run_input, console)
                console.print(
                    f"\n[bold]The server keeps running at {running.url}[/] — API "
                    f"docs at {running.url}/api/v1/openapi.json. Press Ctrl-C to stop.",
                    highlight=False,
                )
        # the server has stopped; the signal watcher is all that is left
        nursery.cancel_scope.cancel()
    return EXIT_OK


async def _announce_stop(shutdown: trio.Event, console: Console) -> None:
    await shutdown.wait()
    console.print("stopping: finishing in-flight work…")


async def _serve_task(
    serve: Any,
    config: ServerConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(config, shutdown=shutdown, task_status=task_status)


def _db_label(config: ServerConfig) -> str:
    url = config.database_url
    if "@" in url:  # hide credentials
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://…@{rest.split('@', 1)[1]}"
    return url


async def _open_store(db: str | None) -> Any:
    from kflow.server.serve import open_store

    return await open_store(server_config(database_url=db))


async def cmd_migrate(args: argparse.Namespace, console: Console) -> int:
    store = await _open_store(args.db)
    try:
        applied = await store.migrate()
    finally:
        await store.aclose()
    console.print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return EXIT_OK


async def cmd_clients(args: argparse.Namespace, console: Console) -> int:
    from kflow.server.auth import client_summary, create_client_in_tx, hash_secret, parse_scopes

    store = await _open_store(args.db)
    try:
        await store.migrate()
        now = _now()
        if args.clients_command == "create":
            scopes = parse_scopes(args.scopes)
            secret = args.secret or _new_secret()
            hashed = await trio.to_thread.run_sync(hash_secret, secret)
            client = await store.write(
                lambda tx: create_client_in_tx(
                    tx,
                    client_id=args.client_id,
                    secret=secret,
                    secret_hash=hashed,
                    scopes=scopes,
                    description=args.description,
                    now=now,
                )
            )
            console.print(
                f"client_id:     {client.client_id}\nclient_secret: {client.secret}\n"
                f"scopes:        {' '.join(sorted(client.scopes))}\n"
                "(the secret is shown once; only its hash is stored)",
                highlight=False,
            )
        elif args.clients_command == "list":
            rows = await store.read(lambda tx: tx.all("list_clients"))
            from rich.table import Table

            table = Table("client_id", "scopes", "created", "disabled", "description")
            for row in rows:
                item = client_summary(row)
                table.add_row(
                    str(item["client_id"]),
                    " ".join(item["scopes"]),  # type: ignore[arg-type]
                    str(item["created_at"]),
                    "yes" if item["disabled"] else "",
                    str(item["description"] or ""),
                )
            console.print(table)
        else:
            changed = await store.write(
                lambda tx: tx.run("disable_client", client_id=args.client_id, now=tx.time(now))
            )
            if not changed:
                raise ConfigError(f"no enabled client named {args.client_id!r}")
            console.print(f"client {args.client_id} disabled")
    finally:
        await store.aclose()
    return EXIT_OK


def _now() -> Any:
    from kflow.clock import SystemClock

    return SystemClock().now()


def _new_secret() -> str:
    import secrets

    return secrets.token_urlsafe(32)


# ---- worker -----------------------------------------------------------------------------


def load_registry(spec: str) -> ActivityRegistry:
    """``package.module:name`` → the ActivityRegistry it names (or that a function returns).

    Raises:
        ConfigError: the module or attribute is missing or not a registry.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"worker registry {spec!r} must look like package.module:registry")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    target = getattr(module, attribute, None)
    if inspect.isroutine(target):
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, ActivityRegistry):
        raise ConfigError(f"{spec} is not an ActivityRegistry (got {type(target).__name__})")
    return target


async def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    from kflow.activities import (
        ScriptPool,
        aclose_registry,
        load_plugins,
        py_std_registry,
        std_registry,
    )

    if bool(args.registry) + bool(args.std) + bool(args.py_std) != 1:
        raise ConfigError("give exactly one of MODULE:REGISTRY, --std or --py-std")
    queue = args.worker
    pool: ScriptPool | None = None
    if args.std:
        registry, queue = std_registry(), queue or "std"
        load_plugins(registry, queue)
    elif args.py_std:
        settings = script_pool_settings()
        pool = ScriptPool(size=settings.size, memory_limit_mb=settings.memory_mb or None)
        registry, queue = py_std_registry(pool), queue or "py-std"
    else:
        registry = load_registry(args.registry)
        if queue is None and len(registry.workers()) == 1:
            queue = registry.workers()[0]
    config = WorkerConfig.from_env(
        api_url=args.api_url, worker=queue, max_activities=args.concurrency
    )
    protect_process_memory()  # activities (and scripts) must not read our credentials
    if not registry.names(config.worker):
        raise ConfigError(
            f"the registry serves no activity for worker {config.worker!r}; it "
            f"serves {', '.join(registry.activity_types()) or 'nothing'}"
        )
    manager = WorkerManager(config, registry)
    freeze_startup_objects()  # short full collections from now on (kflow._gc)
    try:
        if pool is not None:
            async with pool:
                await manager.run_until_shutdown()
        else:
            await manager.run_until_shutdown()
    finally:
        with trio.CancelScope(shield=True):
            await aclose_registry(registry)
    return EXIT_OK


# ---- client side -----------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AsyncClient:
    return AsyncClient(config=ClientConfig.from_env(api_url=args.api_url))


async def _run_file(kf: AsyncClient, path: Any, inputs: dict[str, Any], console: Console) -> int:
    deployed = await kf.deploy(path)
    note = "unchanged" if deployed.get("unchanged") else "deployed"
    console.print(f"{note} {deployed['name']} version {deployed['version']}", highlight=False)
    started = await kf.start(deployed["name"], inputs, version=deployed["version"])
    from kflow._progress import follow_run

    run = await follow_run(kf, started["workflow_id"], console)
    return EXIT_OK if run["status"] == "completed" else EXIT_FAILED


async def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """Deploy, start and follow a run.

    Raises:
        httpx.TransportError: the server cannot be reached (``main`` exits 3).
    """
    inputs = parse_input(args.input)
    async with _client(args) as kf:
        return await _run_file(kf, args.file, inputs, console)


async def cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    async with _client(args) as kf:
        for path in args.files:
            result = await kf.deploy(path)
            state = "unchanged" if result.get("unchanged") else "deployed"
            console.print(
                f"{state} {result['name']} version {result['version']} ({path})", highlight=False
            )
    return EXIT_OK


async def cmd_start(args: argparse.Namespace, console: Console) -> int:
    async with _client(args) as kf:
        started = await kf.start(
            args.name, parse_input(args.input), version=args.version, unique_key=args.unique_key
        )
        console.print(started["workflow_id"], highlight=False)
        if args.wait:
            from kflow._progress import follow_run

            run = await follow_run(kf, started["workflow_id"], console)
            return EXIT_OK if run["status"] == "completed" else EXIT_FAILED
    return EXIT_OK


#: Commands that add-ons provide (``kflow.commands`` entry points), with the extra
#: that installs each.
PLUGIN_COMMANDS = {"prices": "llm"}


async def cmd_prices(args: argparse.Namespace, console: Console) -> int:
    return await _plugin_command("prices", args, console)


async def _plugin_command(name: str, args: argparse.Namespace, console: Console) -> int:
    """Run the command an add-on registered as entry point ``name`` of ``kflow.commands``.

    Raises:
        ConfigError: no installed add-on provides it, or it fails to load.
    """
    found = importlib.metadata.entry_points(group="kflow.commands", name=name)
    if not found:
        extra = PLUGIN_COMMANDS.get(name, "")
        raise ConfigError(
            f"'kflow {name}' comes with an add-on that is not installed here; "
            f"install it with: pip install 'kflow[{extra}]'"
        )
    entry = next(iter(found))
    try:
        command = entry.load()
    except Exception as exc:
        raise ConfigError(f"the add-on providing 'kflow {name}' failed to load: {exc}") from exc
    result: int = await command(args, console)
    return result


async def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from kflow._progress import cost_line, render_run

    async with _client(args) as kf:
        if args.workflow_id is None:
            listing = await kf.list_workflows(limit=20)
            table = Table("workflow_id", "definition", "status", "created", "cost")
            for run in listing["workflows"]:
                table.add_row(
                    run["id"],
                    run["definition_name"],
                    run["status"],
                    run["created_at"],
                    run["total_cost_usd"],
                )
            console.print(table)
            return EXIT_OK
        run = await kf.status(args.workflow_id)
        cost = await kf.cost(args.workflow_id)
    if args.json:
        console.print_json(data={**run, "cost": cost})
    else:
        console.print(render_run(run, 0.0))
        console.print(cost_line(cost), highlight=False)
        if run.get("error_message"):
            console.print(f"[red]{run['error_message']}[/]", highlight=False)
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    async with _client(args) as kf:
        result = await kf.cancel(args.workflow_id)
    console.print(f"workflow {result['workflow_id']} {result['status']}", highlight=False)
    return EXIT_OK
