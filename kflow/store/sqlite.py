"""SQLite store: WAL, one writer connection with group commit, one reader connection.

Durability: the database runs in WAL mode with ``synchronous=FULL`` by
default, so a transition that has been acknowledged survives a crash of the
process *and* of the machine (power loss). ``synchronous=NORMAL`` (opt-in)
survives process crashes but may lose the last transactions on power loss.

Execution: SQLite statements take microseconds, so units of work run on the
Trio thread itself — a hop to a worker thread per unit of work (and the GIL
hand-offs it causes) cost several times more than the work (measured: about
1.8 ms of CPU per activity; see bench/README.md). Writes are *group
committed*: units of work that arrive while the writer is busy, or in the
same scheduler round, run in one ``BEGIN IMMEDIATE`` transaction, each in
its own savepoint, and share one ``COMMIT`` (one fsync). A unit that raises
is rolled back to its savepoint and fails alone; no caller sees its result
before the commit. Reads use a second connection, which WAL keeps
consistent beside the writer.

A write that has been requested always runs: cancelling the caller only
stops it from waiting for the result.
"""

from __future__ import annotations

import datetime as dt
import decimal
import pathlib
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Literal, TypeVar

import outcome
import trio

from kflow._serde import dumps_str, format_decimal
from kflow.errors import ConflictError, StoreError, StoreUnavailableError
from kflow.store.base import Row
from kflow.store.codec import time_to_micros
from kflow.store.queries import load_queries, migration_files

T = TypeVar("T")

Synchronous = Literal["full", "normal"]

#: How long a write waits for another *process* holding the database's write lock.
BUSY_WAIT_SECONDS = 10.0


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

    def all_later(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        rows = self.all(query, **params)
        return lambda: rows

    def read_with_commit(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        rows = self.all(query, **params)  # the unit's writes are done: it sees them
        return lambda: rows

    def run(self, query: str, /, **params: Any) -> int:
        return self._conn.execute(self._sql(query), params).rowcount

    def run_many(self, query: str, rows: Iterable[Mapping[str, Any]], /) -> None:
        self._conn.executemany(self._sql(query), rows)

    def send(self, query: str, /, **params: Any) -> None:
        self._conn.execute(self._sql(query), params)

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


def _translate(exc: sqlite3.Error) -> Exception:
    """A sqlite3 error as the store error it means."""
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in message:
        return ConflictError("it already exists")
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in message or "busy" in message):
        return StoreUnavailableError(f"SQLite database is busy: {message}")
    return StoreError(f"SQLite error: {message}")


class _Unit(Generic[T]):
    """One requested unit of work and, once its batch committed, its outcome."""

    __slots__ = ("done", "fn", "result")

    def __init__(self, fn: Callable[[SqliteTx], T]) -> None:
        self.fn = fn
        self.result: outcome.Outcome[T] | None = None
        self.done = trio.Event()


class SqliteStore:
    """kflow state in one SQLite file. Build with :meth:`open`, close with :meth:`aclose`."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str | pathlib.Path,
        *,
        synchronous: Synchronous = "full",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self.path = pathlib.Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._queries = load_queries("sqlite")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._pending: list[_Unit[Any]] = []
        self._flushing = False
        self._idle: trio.Event | None = None  # set while no flush runs
        self._closed = False
        #: Units of work committed and batches used (for benchmarks and tests).
        self.units = 0
        self.batches = 0

    @classmethod
    async def open(cls, path: str | pathlib.Path, **options: Any) -> SqliteStore:
        """Open (creating if needed) the database file and its WAL.

        Raises:
            StoreUnavailableError: the file cannot be opened or created.
        """
        store = cls(path, **options)
        await trio.to_thread.run_sync(store._connect_all)
        return store

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=busy_timeout_ms / 1000,
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.row_factory = _dict_row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
        return conn

    def _connect_all(self) -> None:
        # The writer never waits inside SQLite (that would stall the event loop):
        # a database locked by another process is waited for with trio.sleep.
        writer = self._connect(busy_timeout_ms=0)
        mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or next(iter(mode.values())).lower() != "wal":
            writer.close()
            raise StoreUnavailableError(f"SQLite database {self.path} cannot use WAL mode")
        self._writer = writer
        self._reader = self._connect(busy_timeout_ms=self._busy_timeout_ms)
        self._reader.execute("PRAGMA query_only = ON")  # a read unit cannot write

    def _require(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self._writer is None or self._reader is None or self._closed:
            raise StoreError("the SQLite store is closed")
        return self._writer, self._reader

    # ---- writes: group commit on the Trio thread -------------------------------------

    async def write(self, fn: Callable[[SqliteTx], T]) -> T:
        """Run ``fn`` in a transaction (possibly shared with concurrent units) and commit.

        Raises:
            StoreUnavailableError: the database stayed locked by another process,
                or the commit failed; nothing of this unit was committed.
            ConflictError: a unique constraint was hit.
            StoreError: another SQLite error.
            Exception: whatever ``fn`` raised (its changes are rolled back).
        """
        self._require()
        unit: _Unit[T] = _Unit(fn)
        self._pending.append(unit)
        if not self._flushing:
            self._flushing = True
            self._idle = trio.Event()
            try:
                with trio.CancelScope(shield=True):
                    await trio.lowlevel.checkpoint()  # let this round's writers join in
                    await self._flush()
            finally:
                self._flushing = False
                self._idle.set()
        await unit.done.wait()
        assert unit.result is not None
        return unit.result.unwrap()

    async def _flush(self) -> None:
        deadline = trio.current_time() + BUSY_WAIT_SECONDS
        delay = 0.002
        while self._pending:
            batch, self._pending = self._pending, []
            if self._commit(batch):
                continue
            if trio.current_time() > deadline:  # another process holds the lock
                self._finish(
                    batch,
                    StoreUnavailableError(
                        f"SQLite database {self.path} stayed locked by another process"
                    ),
                )
                continue
            self._pending[:0] = batch
            await trio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _commit(self, batch: list[_Unit[Any]]) -> bool:
        """Run ``batch`` in one transaction; False if the write lock was not free."""
        conn, _ = self._require()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            self._finish(batch, _translate(exc))
            return True
        tx = SqliteTx(conn, self._queries)
        shared = len(batch) > 1
        results: list[outcome.Outcome[Any]] = []
        for unit in batch:
            if shared:
                conn.execute("SAVEPOINT unit")
            try:
                value = unit.fn(tx)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
                    conn.execute("ROLLBACK")
                    self._finish(batch, StoreError("interrupted"))
                    raise
                error = _translate(exc) if isinstance(exc, sqlite3.Error) else exc
                if error is not exc:
                    error.__cause__ = exc
                conn.execute("ROLLBACK TO unit" if shared else "ROLLBACK")
                if shared:
                    conn.execute("RELEASE unit")
                results.append(outcome.Error(error))
                continue
            if shared:
                conn.execute("RELEASE unit")
            results.append(outcome.Value(value))
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                failed = StoreUnavailableError(f"SQLite commit failed: {exc}")
                results = [
                    r if isinstance(r, outcome.Error) else outcome.Error(failed) for r in results
                ]
        self.batches += 1
        self.units += len(batch)
        for unit, result in zip(batch, results, strict=True):
            unit.result = result
            unit.done.set()
        return True

    @staticmethod
    def _finish(batch: list[_Unit[Any]], error: Exception) -> None:
        for unit in batch:
            unit.result = outcome.Error(error)
            unit.done.set()

    # ---- reads ----------------------------------------------------------------------------

    async def read(self, fn: Callable[[SqliteTx], T], *, locking: bool = False) -> T:
        """Run ``fn`` in a read transaction on the reader connection (a consistent snapshot).

        ``locking`` changes nothing here: SQLite has no transaction-scoped locks to take.

        Raises:
            StoreError: an SQLite error (translated as for :meth:`write`).
            Exception: whatever ``fn`` raised.
        """
        _, conn = self._require()
        await trio.lowlevel.checkpoint()
        conn.execute("BEGIN")
        try:
            return fn(SqliteTx(conn, self._queries))
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        finally:
            conn.execute("COMMIT")

    # ---- schema -------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply migrations newer than ``PRAGMA user_version``; returns their names.

        Each migration runs in its own ``BEGIN IMMEDIATE`` transaction and
        re-checks the version inside it, so two processes starting together
        apply each migration once.
        """
        self._require()
        # A separate connection that may wait for the lock (this runs in a thread).
        return await trio.to_thread.run_sync(self._migrate_in_thread)

    def _migrate_in_thread(self) -> list[str]:
        conn = self._connect(busy_timeout_ms=self._busy_timeout_ms)
        try:
            return self._migrate(conn)
        finally:
            conn.close()

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
        _, conn = self._require()
        await trio.lowlevel.checkpoint()
        return int(conn.execute("PRAGMA user_version").fetchone()["user_version"])

    async def aclose(self) -> None:
        """Close both connections. Safe to call twice; pending writes finish first."""
        if self._closed:
            return
        if self._idle is not None:
            await self._idle.wait()  # a flush always drains every pending unit
        self._closed = True
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None


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
