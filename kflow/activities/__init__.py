"""The standard activities and the registries of the standard workers.

- :func:`std_registry` — worker ``std``: ``echo``, ``http_request``, ``email_send``,
  and ``postgres_query`` / ``postgres_transaction`` when psycopg 3 is installed
  (the ``postgres`` or ``std`` extra; see :func:`postgres_available`).
- :func:`py_std_registry` — worker ``py-std``: ``script`` on a shared :class:`ScriptPool`.
- :func:`load_plugins` — add activities offered by installed packages through
  the entry-point group ``kflow.activities`` (how ``kflow_llm`` adds
  ``llm_prompt`` without the core importing it).

Resource ownership: whoever creates a resource closes it. When
:func:`std_registry` is given no ``httpx.AsyncClient`` it creates one, owned
by its ``http_request`` activity; close it with :func:`aclose_registry` (or
build the registry with :func:`open_std_registry`). A client passed in stays
the caller's. The :class:`ScriptPool` given to :func:`py_std_registry` stays
the caller's too (``async with ScriptPool() as pool``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog

from kflow.activities.echo import EchoActivity
from kflow.activities.email_send import EmailSendActivity
from kflow.activities.http_request import (
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpRequestActivity,
    new_http_client,
)
from kflow.activities.postgres import (
    PostgresQueryActivity,
    PostgresTransactionActivity,
    postgres_available,
)
from kflow.activities.script import ScriptActivity
from kflow.activities.script_pool import ScriptOutcome, ScriptPool
from kflow.worker.registry import ActivityRegistry

ENTRY_POINT_GROUP = "kflow.activities"

_log = structlog.get_logger("kflow.activities")


def std_registry(
    *,
    http: httpx.AsyncClient | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> ActivityRegistry:
    """The ``std`` worker's registry: echo, http_request, email_send, and
    postgres_query / postgres_transaction when :func:`postgres_available`.

    Without ``http`` the ``http_request`` activity creates its own client
    when it first runs and owns it: call :func:`aclose_registry` when done.
    """
    registry = ActivityRegistry(default_worker="std")
    registry.register(EchoActivity())
    registry.register(HttpRequestActivity(http, max_response_bytes=max_response_bytes))
    registry.register(EmailSendActivity())
    if postgres_available():  # psycopg is an optional extra, imported only here
        registry.register(PostgresQueryActivity())
        registry.register(PostgresTransactionActivity())
    return registry


@asynccontextmanager
async def open_std_registry(
    *, http: httpx.AsyncClient | None = None
) -> AsyncIterator[ActivityRegistry]:
    """:func:`std_registry` as an async context manager that closes what it created."""
    registry = std_registry(http=http)
    try:
        yield registry
    finally:
        await aclose_registry(registry)


def py_std_registry(pool: ScriptPool) -> ActivityRegistry:
    """The ``py-std`` worker's registry: ``script`` running on ``pool`` (not closed here)."""
    registry = ActivityRegistry(default_worker="py-std")
    registry.register(ScriptActivity(pool))
    return registry


async def aclose_registry(registry: ActivityRegistry) -> None:
    """Close resources the registry's activities own: each distinct activity with an
    ``async aclose()`` method is awaited once. Activities without one are skipped."""
    seen: set[int] = set()
    for _, _, act in registry:
        aclose = getattr(act, "aclose", None)
        if aclose is None or id(act) in seen:
            continue
        seen.add(id(act))
        await aclose()


def _check_no_clash(registry: ActivityRegistry, scratch: ActivityRegistry) -> None:
    for queue, name, act in scratch:
        existing = registry.get(queue, name)
        if existing is not None and existing is not act:
            raise ValueError(f"activity {name!r} is already registered for worker {queue!r}")


def load_plugins(registry: ActivityRegistry, worker: str) -> list[str]:
    """Load the ``kflow.activities`` entry points into ``registry`` for ``worker``.

    Each entry point names ``register(registry, worker) -> None``. A plugin
    registers into a scratch registry first and is merged only if it loaded
    completely and clashes with nothing, so a failing plugin changes nothing.
    A failure is logged (``activities.plugin_failed`` with the plugin's name)
    and the plugin skipped; this function never raises for a plugin's fault.
    Returns the names of the plugins loaded, in name order.
    """
    loaded: list[str] = []
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for point in sorted(points, key=lambda p: p.name):
        scratch = ActivityRegistry(default_worker=registry.default_worker)
        try:
            register = point.load()
            register(scratch, worker)
            _check_no_clash(registry, scratch)
        except Exception as exc:
            _log.warning(
                "activities.plugin_failed",
                plugin=point.name,
                target=point.value,
                error=f"{type(exc).__name__}: {exc}",
            )
            continue
        registry.merge(scratch)
        loaded.append(point.name)
        _log.info(
            "activities.plugin_loaded",
            plugin=point.name,
            activities=[f"{q}.{n}" for q, n, _ in scratch],
        )
    return loaded


__all__ = [
    "ENTRY_POINT_GROUP",
    "EchoActivity",
    "EmailSendActivity",
    "HttpRequestActivity",
    "PostgresQueryActivity",
    "PostgresTransactionActivity",
    "ScriptActivity",
    "ScriptOutcome",
    "ScriptPool",
    "aclose_registry",
    "load_plugins",
    "new_http_client",
    "open_std_registry",
    "postgres_available",
    "py_std_registry",
    "std_registry",
]
