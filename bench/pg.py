"""PostgreSQL for the bench: fresh databases created and dropped, backend pids, counters.

The server is named by ``KFLOW_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); every configuration gets
a database of its own, ``kflow_bench_<random>``, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import urllib.parse
from typing import Any

import trio

from bench.procs import Unavailable

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("KFLOW_BENCH_POSTGRES_URL") or DEFAULT_URL


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise Unavailable("psycopg is not installed (the postgres extra)") from exc
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise Unavailable(f"PostgreSQL unreachable at {_safe(url)}: {exc}".strip()) from exc


def _safe(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def server_version() -> str:
    """``SHOW server_version`` of the bench's server.

    Raises:
        Unavailable: it cannot be reached.
    """
    with _connect(admin_url()) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


def create_database(prefix: str = "kflow_bench") -> tuple[str, str]:
    """Create a fresh database; returns ``(name, url)``.

    Raises:
        Unavailable: the server cannot be reached or refuses.
    """
    name = f"{prefix}_{secrets.token_hex(4)}"
    with _connect(admin_url()) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, with_database(admin_url(), name)


def drop_database(name: str) -> None:
    with _connect(admin_url()) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postmaster_started() -> str:
    """When the PostgreSQL server last (re)started: a change means a restart."""
    with _connect(admin_url()) as conn:
        return str(conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0])


def next_transaction_id() -> int:
    """The cluster's next transaction id (``pg_snapshot_xmax`` of a current
    snapshot; reading it assigns none). Every write transaction takes one when
    it first writes, committed or not; read-only ones take none. The difference
    across a scenario counts its write transactions at once and exactly — the
    statistics behind ``pg_stat_database.xact_commit`` reach it a second, or
    when contended ten, after the backends go idle. Only the bench's database
    writes meanwhile."""
    with _connect(admin_url()) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
    return int(row[0])


class BackendWatcher:
    """Keeps the pids of a database's backends fresh (for the :class:`Sampler`),
    over one connection of its own (a new one every half second would make
    PostgreSQL start a backend each time, on the machine being measured)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pids: list[int] = []
        self._conn: Any = None

    def __call__(self) -> list[int]:
        return list(self.pids)

    def _refresh(self) -> list[int]:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(admin_url())
        try:
            rows = self._conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            ).fetchall()
        except Exception as exc:
            self._conn.close()
            raise Unavailable(f"backend pids of {self.name}: {exc}") from exc
        return [int(r[0]) for r in rows]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self.pids = await trio.to_thread.run_sync(self._refresh)
            task_status.started()
            while True:
                await trio.sleep(0.5)
                with contextlib.suppress(Unavailable):
                    self.pids = await trio.to_thread.run_sync(self._refresh)
        finally:
            if self._conn is not None:
                self._conn.close()
