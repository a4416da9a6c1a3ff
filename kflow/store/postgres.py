"""PostgreSQL store: psycopg 3 (synchronous API) driven from the Trio thread.

Each unit of work — a plain function over a :class:`PgTx` — runs on a pooled
connection inside one transaction, in a greenlet (:mod:`kflow.store.pg_green`):
where psycopg would block on the socket, the Trio thread waits for it and
serves other requests meanwhile. No worker threads: handing each statement's
result back across the GIL from a busy event loop cost more than the
statements (see bench/README.md).

Transitions lock their workflow row (``SELECT ... FOR UPDATE``), claims use
``FOR UPDATE SKIP LOCKED``, so work on different runs never waits on each
other and two servers never hand out the same activity. A unit of work that
hits a deadlock or a serialization failure is retried from the start, which
is why units of work must not have side effects outside the transaction.

Notifications (:meth:`PgTx.notify`) are sent with ``pg_notify`` inside the
transaction: PostgreSQL delivers them to listeners only if it commits.

A write unit runs in psycopg's pipeline mode, transaction included:
``BEGIN`` travels with the unit's first statement that needs an answer;
statements whose answer nobody needs (:meth:`PgTx.send`, ``run_many``,
notifications) travel with the next one that does; whatever is still
queued travels with ``COMMIT``. A unit that reads once and writes waits for
PostgreSQL twice. A pooled connection that died meanwhile is found at the
first answer, before anything could commit, and the unit runs again on
another; a connection lost once ``COMMIT`` is on its way is an error (the
outcome is unknown), never a retry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import structlog
from psycopg import pq
from psycopg import sql as psycopg_sql
from psycopg.adapt import Loader
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from kflow._serde import dumps_str
from kflow.errors import (
    ConflictError,
    KflowError,
    StaleReadError,
    StoreError,
    StoreUnavailableError,
)
from kflow.store.base import Row
from kflow.store.pg_green import GreenPool, run_unit
from kflow.store.queries import load_queries, migration_files

T = TypeVar("T")

log = structlog.get_logger("kflow.store")

#: Advisory lock key that serialises migrations across processes ("kflow" in hex).
MIGRATION_LOCK = 0x6B666C6F77
#: How often a unit of work hitting a deadlock or serialization failure is retried.
RETRIES = 5

_IDLE = pq.TransactionStatus.IDLE

_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class _JsonAsText(Loader):
    """Load json/jsonb as text: kflow decodes JSON itself, as it does on SQLite."""

    def load(self, data: Any) -> str:
        return bytes(data).decode()


class _UuidAsText(Loader):
    """Load uuid as its text, as SQLite stores it: rows are alike in both dialects,
    and the ids that go back into statements or out in answers need no
    conversion (``UUID`` objects were ~4 % of the server's CPU)."""

    def load(self, data: Any) -> str:
        return bytes(data).decode()


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("jsonb", _JsonAsText)
    conn.adapters.register_loader("json", _JsonAsText)
    conn.adapters.register_loader("uuid", _UuidAsText)


class PgTx:
    """A :class:`~kflow.store.base.Tx` over one psycopg connection in a transaction."""

    dialect = "postgres"

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        queries: Mapping[str, str],
        *,
        writable: bool = True,
        pipeline: psycopg.Pipeline | None = None,
    ) -> None:
        self._conn = conn
        self._queries = queries
        self._writable = writable
        #: Write units run in pipeline mode: :meth:`send` statements and
        #: notifications travel with the next statement that needs an answer.
        self._pipeline = pipeline
        #: Whether PostgreSQL has answered anything in this unit (the
        #: connection was alive when the unit started).
        self.answered = False
        #: Whether the unit's ``COMMIT`` is queued or sent (a lost connection
        #: leaves the outcome unknown from then on).
        self.committing = False
        #: How many times the pipeline waited for PostgreSQL in this unit.
        self._syncs = 0

    def _execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        """Execute and wait for the answer (sending whatever was queued before with it)."""
        cursor = self._conn.execute(sql, params)
        if self._pipeline is not None:
            self._sync()
        return cursor

    def _sync(self) -> None:
        assert self._pipeline is not None
        self._pipeline.sync()
        self._syncs += 1
        self.answered = True

    def all_later(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        """As :meth:`all`; in a write unit the query is only queued, and the first
        of such queries whose rows are asked for waits for all of them at once."""
        if self._pipeline is None:
            found = self.all(query, **params)
            return lambda: found
        cursor = self._conn.execute(self._sql(query), params)
        sent_before = self._syncs

        def answer() -> list[Row]:
            if self._syncs == sent_before:
                self._sync()
            return cursor.fetchall()

        return answer

    def read_with_commit(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        """As :meth:`all_later`, but never waited for inside the unit: in a write
        unit its answer comes with ``COMMIT``'s (the function may be called only
        after the unit committed)."""
        if self._pipeline is None:
            found = self.all(query, **params)
            return lambda: found
        cursor = self._conn.execute(self._sql(query), params)
        return cursor.fetchall

    def _writing(self, what: str) -> None:
        # Reads run in autocommit: a write there would commit on its own, so refuse it.
        if not self._writable:
            raise StoreError(f"{what} in a read-only unit of work")

    def _sql(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise StoreError(f"no query named {name!r} for postgres") from None

    def one(self, query: str, /, **params: Any) -> Row | None:
        cursor = self._execute(self._sql(query), params)
        row: Row | None = cursor.fetchone() if cursor.description else None
        return row

    def raw(self, sql: str) -> Row | None:
        """First row of a literal statement without parameters (schema checks)."""
        row: Row | None = self._execute(sql).fetchone()
        return row

    def all(self, query: str, /, **params: Any) -> list[Row]:
        return self._execute(self._sql(query), params).fetchall()

    def run(self, query: str, /, **params: Any) -> int:
        self._writing(f"statement {query!r}")
        return self._execute(self._sql(query), params).rowcount

    def send(self, query: str, /, **params: Any) -> None:
        self._writing(f"statement {query!r}")
        self._conn.execute(self._sql(query), params)

    def run_many(self, query: str, rows: Iterable[Mapping[str, Any]], /) -> None:
        self._writing(f"statement {query!r}")
        with self._conn.cursor() as cursor:
            cursor.executemany(self._sql(query), list(rows))

    def time(self, value: dt.datetime | None) -> dt.datetime | None:
        return value

    def json(self, value: Any) -> Jsonb | None:
        return None if value is None else Jsonb(value, dumps=dumps_str)

    def money(self, value: decimal.Decimal) -> decimal.Decimal:
        return value

    def notify(self, channel: str, payload: str) -> None:
        """Queue a notification for ``channel``; sent only if the transaction commits."""
        self._writing("a notification")
        self._conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))  # sent with the commit


def _begin(conn: psycopg.Connection[Any], mode: str, inside: contextlib.ExitStack) -> None:
    """Set ``conn`` up for a ``read`` (autocommit) or a ``locking-read`` unit (one
    transaction, ``BEGIN READ ONLY`` — no separate ``SET TRANSACTION`` round trip).

    Raises:
        psycopg.OperationalError: the connection is lost.
    """
    if conn.broken:
        raise psycopg.OperationalError("the connection is lost")
    autocommit = mode == "read"
    if conn.autocommit != autocommit:
        conn.autocommit = autocommit
    if not autocommit:
        if not conn.read_only:
            conn.read_only = True
        inside.enter_context(conn.transaction())


#: SQLSTATE of the checks a transaction sends for values it took from a cache
#: (``kflow_expect_latest_definition``, migration 0007).
STALE_READ = "KF001"


def _translate(exc: psycopg.Error) -> KflowError:
    if exc.sqlstate == STALE_READ:
        return StaleReadError(str(exc.diag.message_primary or exc))
    if isinstance(exc, psycopg.errors.UniqueViolation):
        # Two servers racing to insert the same thing (a client, a unique_key).
        return ConflictError("it already exists (created concurrently)")
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailableError(f"PostgreSQL is unavailable: {exc}")
    return StoreError(f"PostgreSQL error: {type(exc).__name__}")


class PostgresStore:
    """kflow state in a PostgreSQL database. Build with :meth:`open`, close with :meth:`aclose`."""

    dialect = "postgres"

    def __init__(
        self, url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 30.0
    ) -> None:
        self.url = url
        self._queries = load_queries("postgres")
        self._min_size = min_size
        self._pool = GreenPool(url, max_size=max_size, timeout=timeout, configure=_configure)
        self._closed = False

    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresStore:
        """Connect (making the first connections now).

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
        """
        store = cls(url, **options)
        try:
            await store._pool.open(store._min_size)
        except BaseException:
            store._pool.close()
            raise
        return store

    async def _transact(self, fn: Callable[[PgTx], T], mode: str) -> T:
        """Run ``fn`` on a pooled connection: ``mode`` is ``write`` (one transaction),
        ``read`` (autocommit, read only by convention) or ``locking-read`` (one
        read-only transaction). Deadlocks and serialization failures run it again;
        so does a connection found lost before anything was written.
        """
        self._check_open()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._pool.connection() as conn:
                    return await run_unit(self._unit, conn, fn, mode)
            except _LostBeforeWriting as lost:
                # Say a database restart killed the pooled connections: the pool drops
                # this one and the unit runs on another — cheaper than testing every
                # connection on checkout.
                if attempt > self._pool.max_size:
                    raise _translate(lost.error) from lost.error
                log.info("store.reconnect", reason=str(lost.error).strip()[:200])
            except _RETRYABLE as exc:
                if attempt >= RETRIES:
                    raise _translate(exc) from exc
                log.info("store.retry", reason=type(exc).__name__, attempt=attempt)
            except psycopg.Error as exc:
                raise _translate(exc) from exc

    def _unit(self, conn: psycopg.Connection[Any], fn: Callable[[PgTx], T], mode: str) -> T:
        """The synchronous part of :meth:`_transact`, run by :func:`run_unit`."""
        if mode == "write":
            return self._write_unit(conn, fn)
        with contextlib.ExitStack() as inside:
            try:
                _begin(conn, mode, inside)
            except psycopg.OperationalError as exc:
                if conn.broken:
                    raise _LostBeforeWriting(exc) from exc
                raise
            return fn(PgTx(conn, self._queries, writable=False))

    def _write_unit(self, conn: psycopg.Connection[Any], fn: Callable[[PgTx], T]) -> T:
        """``fn`` in one transaction whose ``BEGIN`` and ``COMMIT`` ride in the pipeline.

        The connection stays in autocommit mode and the transaction is spelled
        out: psycopg's own transaction handling would wait for ``BEGIN`` and
        for ``COMMIT`` separately. On any failure the transaction is rolled
        back before the connection goes back to the pool.
        """
        tx = PgTx(conn, self._queries)
        try:
            if not conn.autocommit:
                conn.autocommit = True
            with conn.pipeline() as pipeline:
                tx._pipeline = pipeline
                conn.execute("BEGIN")
                result = fn(tx)
                tx.committing = True
                conn.execute("COMMIT")
            return result
        except psycopg.OperationalError as exc:
            if conn.broken and not (tx.answered or tx.committing):
                raise _LostBeforeWriting(exc) from exc
            raise
        finally:
            _roll_back_leftover(conn)

    async def write(self, fn: Callable[[PgTx], T]) -> T:
        """Run ``fn`` in a read-write transaction and commit (retrying deadlocks).

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached; nothing committed.
            ConflictError: a unique constraint was hit (a concurrent insert won).
            StoreError: another database error.
            Exception: whatever ``fn`` raised (rolled back).
        """
        return await self._transact(fn, "write")

    async def read(self, fn: Callable[[PgTx], T], *, locking: bool = False) -> T:
        """Run ``fn`` statement by statement (autocommit), or with ``locking`` in one
        read-only transaction that holds its transaction-scoped locks.

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
            StoreError: another database error.
            Exception: whatever ``fn`` raised.
        """
        return await self._transact(fn, "locking-read" if locking else "read")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction under an advisory lock,
        so servers starting together apply each migration once.

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
            StoreError: a migration failed (it is rolled back).
        """
        self._check_open()
        try:
            async with self._pool.connection() as conn:
                return await run_unit(_migrate, conn)
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    async def schema_version(self) -> int:
        """The newest applied migration (0 for an empty database)."""

        def version(tx: PgTx) -> int:
            exists = tx.raw("SELECT to_regclass('kflow_schema') AS t")
            if not exists or exists["t"] is None:
                return 0
            row = tx.raw("SELECT COALESCE(MAX(version), 0) AS v FROM kflow_schema")
            return int(row["v"]) if row else 0

        return await self.read(version)

    async def table_stats(self, tables: Iterable[str]) -> list[Row]:
        """PostgreSQL's statistics of ``tables`` in this schema (``table_upkeep_stats``);
        a table PostgreSQL has no statistics for yet is left out.

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
            StoreError: another database error.
        """
        names = list(tables)
        return await self.read(lambda tx: tx.all("table_upkeep_stats", tables=names))

    async def tidy_table(self, table: str, *, vacuum: bool) -> None:
        """``ANALYZE`` ``table`` — ``VACUUM (ANALYZE)`` when ``vacuum`` — outside any
        transaction, skipping it if another session holds a conflicting lock (an
        autovacuum at work, another server's upkeep).

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
            StoreError: another database error.
        """
        self._check_open()
        template = self._queries["vacuum_analyze_table" if vacuum else "analyze_table"]
        statement = psycopg_sql.SQL(template).format(table=psycopg_sql.Identifier(table))

        def tidy(conn: psycopg.Connection[Any]) -> None:
            if not conn.autocommit:
                conn.autocommit = True
            try:
                conn.execute(statement)
            except Exception:
                raise
            except BaseException:  # cancelled half-way (shutdown): stop it, drop the connection
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=2.0)
                conn.close()
                raise

        try:
            async with self._pool.connection() as conn:
                # Cancellable: a server shutting down does not wait out a long VACUUM.
                await run_unit(tidy, conn, cancellable=True)
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    def connect(self) -> psycopg.Connection[Any]:
        """A new dedicated connection (autocommit), e.g. for LISTEN. The caller closes it.

        Raises:
            psycopg.OperationalError: PostgreSQL cannot be reached.
        """
        conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        _configure(conn)
        return conn

    async def aclose(self) -> None:
        """Close the pool. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._pool.close()


def _roll_back_leftover(conn: psycopg.Connection[Any]) -> None:
    """End a write unit's transaction that a failure left open (or aborted)."""
    if conn.broken or conn.closed or conn.pgconn.transaction_status == _IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()  # the pool drops it


class _LostBeforeWriting(Exception):
    """The connection was lost before the unit wrote anything: safe to run again."""

    def __init__(self, error: psycopg.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


def _migrate(conn: psycopg.Connection[Any]) -> list[str]:
    applied: list[str] = []
    conn.autocommit = False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kflow_schema (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    for version, name, sql in migration_files("postgres"):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            done = conn.execute("SELECT 1 FROM kflow_schema WHERE version = %s", (version,))
            if done.fetchone():
                continue
            conn.execute(sql)
            conn.execute(
                "INSERT INTO kflow_schema (version, name) VALUES (%s, %s)", (version, name)
            )
        applied.append(name)
    return applied
