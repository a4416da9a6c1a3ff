"""SQLite store: WAL, one writer, a small pool of readers.

Durability: the database runs in WAL mode with ``synchronous=FULL`` by
default, so a transition that has been acknowledged survives a crash of the
process *and* of the machine (power loss). ``synchronous=NORMAL`` (opt-in)
survives process crashes but may lose the last transactions on power loss.

Writes are serialised through one connection (SQLite allows one writer at a
time anyway) and run in a worker thread, one thread hop per unit of work.
Reads use separate connections, which WAL lets run beside the writer.
"""

from __future__ import annotations

import datetime as dt
import decimal
import pathlib
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import trio

from kflow._serde import dumps_str, format_decimal
from kflow.errors import ConflictError, StoreError, StoreUnavailableError
from kflow.store.base import Row
from kflow.store.codec import time_to_micros
from kflow.store.queries import load_queries, migration_files

T = TypeVar("T")

Synchronous = Literal["full", "normal"]


class SqliteTx:
    """A :class:`~kflow.store.base.Tx` over one sqlite3 connection."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, queries: Mapping[str, str]) -> None:
        self._conn = conn
        self._queries = queries

    def _sql(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise StoreError(f"no query named {name!r} for sqlite") from None

    def one(self, query: str, /, **params: Any) -> Row | None:
        row: Row | None = self._conn.execute(self._sql(query), params).fetchone()
        return row

    def all(self, query: str, /, **params: Any) -> list[Row]:
        return self._conn.execute(self._sql(query), params).fetchall()

    def run(self, query: str, /, **params: Any) -> int:
        return self._conn.execute(self._sql(query), params).rowcount

    def run_many(self, query: str, rows: Iterable[Mapping[str, Any]], /) -> None:
        self._conn.executemany(self._sql(query), rows)

    def time(self, value: dt.datetime | None) -> int | None:
        return None if value is None else time_to_micros(value)

    def json(self, value: Any) -> str | None:
        return None if value is None else dumps_str(value)

    def money(self, value: decimal.Decimal) -> str:
        return format_decimal(value)

    def notify(self, channel: str, payload: str) -> None:
        """No-op: one SQLite file has one server process, which wakes itself."""


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class SqliteStore:
    """kflow state in one SQLite file.

    Use :meth:`open` (async) to build one; close it with :meth:`aclose`.
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str | pathlib.Path,
        *,
        synchronous: Synchronous = "full",
        readers: int = 4,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self.path = pathlib.Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._queries = load_queries("sqlite")
        self._writer: sqlite3.Connection | None = None
        self._write_limiter = trio.CapacityLimiter(1)
        self._readers: list[sqlite3.Connection] = []
        self._reader_count = readers
        self._read_limiter = trio.CapacityLimiter(readers)
        self._closed = False

    @classmethod
    async def open(cls, path: str | pathlib.Path, **options: Any) -> SqliteStore:
        """Open (creating if needed) the database file and its WAL.

        Raises:
            StoreUnavailableError: the file cannot be opened or created.
        """
        store = cls(path, **options)
        await trio.to_thread.run_sync(store._connect_writer)
        return store

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.row_factory = _dict_row
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
        return conn

    def _connect_writer(self) -> None:
        conn = self._connect()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or next(iter(mode.values())).lower() != "wal":
            conn.close()
            raise StoreUnavailableError(f"SQLite database {self.path} cannot use WAL mode")
        self._writer = conn

    def _transact(self, conn: sqlite3.Connection, begin: str, fn: Callable[[SqliteTx], T]) -> T:
        try:
            conn.execute(begin)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite database is busy: {exc}") from exc
        try:
            result = fn(SqliteTx(conn, self._queries))
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailableError(f"SQLite database is busy: {exc}") from exc
            raise StoreError(f"SQLite error: {exc}") from exc
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            if "UNIQUE" in str(exc):
                raise ConflictError("it already exists") from exc
            raise StoreError(f"SQLite error: {exc}") from exc
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"SQLite error: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailableError(f"SQLite commit failed: {exc}") from exc
        return result

    async def write(self, fn: Callable[[SqliteTx], T]) -> T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction on the writer and commit.

        Raises:
            StoreUnavailableError: the database stayed locked or cannot commit.
            StoreError: another SQLite error.
            Exception: whatever ``fn`` raised, after rollback.
        """
        conn = self._require_writer()
        return await trio.to_thread.run_sync(
            self._transact, conn, "BEGIN IMMEDIATE", fn, limiter=self._write_limiter
        )

    async def read(self, fn: Callable[[SqliteTx], T]) -> T:
        """Run ``fn`` in a read transaction on a reader connection."""
        self._require_writer()
        async with self._read_limiter:
            conn = self._readers.pop() if self._readers else None
            try:
                if conn is None:
                    conn = await trio.to_thread.run_sync(self._connect)
                return await trio.to_thread.run_sync(self._transact, conn, "BEGIN", fn)
            finally:
                if conn is not None:
                    if self._closed:
                        conn.close()
                    else:
                        self._readers.append(conn)

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None or self._closed:
            raise StoreError("the SQLite store is closed")
        return self._writer

    async def migrate(self) -> list[str]:
        """Apply migrations newer than ``PRAGMA user_version``; returns their names.

        Each migration runs in its own ``BEGIN IMMEDIATE`` transaction and
        re-checks the version inside it, so two processes starting together
        apply each migration once.
        """
        conn = self._require_writer()
        return await trio.to_thread.run_sync(self._migrate, conn, limiter=self._write_limiter)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> list[str]:
        applied: list[str] = []
        for version, name, sql in migration_files("sqlite"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("PRAGMA user_version").fetchone()["user_version"]
                if current >= version:
                    conn.execute("COMMIT")
                    continue
                for statement in _split_statements(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(version)}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            applied.append(name)
        return applied

    async def schema_version(self) -> int:
        """The version of the newest applied migration (0 for an empty file)."""
        conn = self._require_writer()

        def version() -> int:
            return int(conn.execute("PRAGMA user_version").fetchone()["user_version"])

        return await trio.to_thread.run_sync(version, limiter=self._write_limiter)

    async def aclose(self) -> None:
        """Close the writer and reader connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        async with self._write_limiter:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        while self._readers:
            self._readers.pop().close()


def _split_statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (sqlite3.complete_statement)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.strip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise StoreError("migration ends with an incomplete statement")
    return statements
