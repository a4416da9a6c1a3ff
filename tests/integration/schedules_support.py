"""Helpers of the schedule tests: clocks the test moves, servers built on them,
and the runs a schedule started."""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from kflow.clock import Clock
from kflow.config import ServerConfig
from kflow.server.app import build_app
from kflow.server.serve import build_context, open_store
from kflow.store.base import Store, Tx
from tests.integration.conftest import Api

#: A definition whose activity stays pending: nobody polls the ``nobody`` queue.
PENDING = """
name: pending
activities:
  - key: work
    activity_name: echo
    worker: nobody
    parameters: {n: "{{ INPUT.n }}"}
"""

START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class ManualClock:
    """Wall time that moves only when the test says so."""

    def __init__(self, start: dt.datetime = START) -> None:
        self.at = start

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, seconds: float) -> dt.datetime:
        self.at += dt.timedelta(seconds=seconds)
        return self.at


class SkewedClock:
    """Another server's view of ``base``: off by ``skew`` seconds."""

    def __init__(self, base: ManualClock, skew: float) -> None:
        self.base = base
        self.skew = dt.timedelta(seconds=skew)

    def now(self) -> dt.datetime:
        return self.base.now() + self.skew


@asynccontextmanager
async def server_on(config: ServerConfig, clock: Clock) -> AsyncIterator[Api]:
    """A server context on ``config``'s (migrated) database with ``clock``; no scheduler
    task runs — the test drives the scheduler's passes itself."""
    store = await open_store(config)
    try:
        await store.migrate()
        ctx = await build_context(config, store, clock=clock)
        transport = httpx.ASGITransport(app=build_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://kflow.test") as client:
            yield Api(ctx=ctx, client=client)
    finally:
        await store.aclose()


async def runs_by_key(
    store: Store, prefix: str = "schedule:", *, status: str | None = None
) -> collections.Counter[str]:
    """How many runs (of ``status``, if given) hold each ``unique_key`` starting with ``prefix``."""

    def read(tx: Tx) -> collections.Counter[str]:
        keys: collections.Counter[str] = collections.Counter()
        offset = 0
        while rows := tx.all(
            "list_workflows",
            status=status,
            definition_name=None,
            created_after=None,
            created_before=None,
            limit=500,
            offset=offset,
        ):
            for row in rows:
                run = tx.one("get_workflow", id=str(row["id"]))
                assert run is not None
                if (run["unique_key"] or "").startswith(prefix):
                    keys[run["unique_key"]] += 1
            offset += len(rows)
        return keys

    found: collections.Counter[str] = await store.read(read)
    return found


def as_uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(str(value))
