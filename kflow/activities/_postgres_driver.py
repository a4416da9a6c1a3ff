"""The psycopg side of the postgres activities: blocking code run in a worker thread.

Imported only when a postgres activity runs (psycopg is an optional extra).
:func:`run` connects, executes and converts, and raises ``ActivityError``
with the codes of :mod:`kflow.activities.postgres`; :meth:`Session.cancel`
is the one call made from another thread.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import attrs
import psycopg
from psycopg import pq
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader
from psycopg.types.json import Jsonb

from kflow.activities._postgres_params import DbTarget, PostgresRequest, Statement
from kflow.activities._postgres_values import to_json_value, unique_columns
from kflow.errors import ActivityError

Connection = psycopg.Connection[tuple[Any, ...]]

_LEVELS = {
    "read_committed": psycopg.IsolationLevel.READ_COMMITTED,
    "repeatable_read": psycopg.IsolationLevel.REPEATABLE_READ,
    "serializable": psycopg.IsolationLevel.SERIALIZABLE,
}
#: SQLSTATEs worth another attempt → the code reported (anything else: POSTGRES_ERROR).
_RETRYABLE = {
    "40001": "POSTGRES_RETRYABLE",  # serialization_failure
    "40P01": "POSTGRES_RETRYABLE",  # deadlock_detected
    "40003": "POSTGRES_RETRYABLE",  # statement_completion_unknown
    "55P03": "POSTGRES_RETRYABLE",  # lock_not_available (lock_timeout, NOWAIT)
    "57014": "TIMEOUT",  # query_canceled (statement_timeout or a cancel request)
    "57P01": "POSTGRES_UNAVAILABLE",  # admin_shutdown
    "57P02": "POSTGRES_UNAVAILABLE",  # crash_shutdown
    "57P03": "POSTGRES_UNAVAILABLE",  # cannot_connect_now
    "25P03": "POSTGRES_UNAVAILABLE",  # idle_in_transaction_session_timeout
}
#: SQLSTATE classes worth another attempt: connection exception, insufficient
#: resources, system error (08P01 protocol_violation is excluded below).
_RETRYABLE_CLASSES = {
    "08": "POSTGRES_UNAVAILABLE",
    "53": "POSTGRES_UNAVAILABLE",
    "58": "POSTGRES_UNAVAILABLE",
}


def pipeline_supported() -> bool:
    """Whether the libpq psycopg loaded has pipeline mode (libpq 14+)."""
    return bool(psycopg.Pipeline.is_supported())


def classify_sqlstate(sqlstate: str) -> tuple[str, bool]:
    """``(code, retryable)`` for an error the server reported with ``sqlstate``."""
    if sqlstate in _RETRYABLE:
        return _RETRYABLE[sqlstate], True
    if sqlstate[:2] in _RETRYABLE_CLASSES and sqlstate != "08P01":
        return _RETRYABLE_CLASSES[sqlstate[:2]], True
    return "POSTGRES_ERROR", False


def translate_error(
    exc: psycopg.Error, target: DbTarget, where: str, params_field: str | None = None
) -> ActivityError:
    """A psycopg error → ``ActivityError`` (password scrubbed from the message).

    ``params_field`` is set while a statement is being sent: client-side errors
    then come from binding its parameters and are reported as INVALID_PARAMETERS.
    """
    if exc.sqlstate:
        code, retryable = classify_sqlstate(exc.sqlstate)
        text = (
            f"{where}: SQLSTATE {exc.sqlstate} ({type(exc).__name__}): "
            f"{exc.diag.message_primary or str(exc).strip()}"
        )
        if exc.diag.message_detail:
            text += f" DETAIL: {exc.diag.message_detail}"
        if exc.diag.message_hint:
            text += f" HINT: {exc.diag.message_hint}"
        if "multiple commands" in text:
            text += " (one statement per query: use postgres_transaction for several)"
        return ActivityError(target.scrub(text), code=code, retryable=retryable)
    reason = target.scrub(" ".join(str(exc).split()) or type(exc).__name__)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return ActivityError(f"{where}: {reason}", code="POSTGRES_UNAVAILABLE", retryable=True)
    if params_field and isinstance(exc, psycopg.ProgrammingError | psycopg.DataError):
        hint = " (write a literal % as %%)" if "allowed as placeholders" in reason else ""
        return ActivityError(
            f"{where}: invalid parameter {params_field!r}: {reason}{hint}",
            code="INVALID_PARAMETERS",
            retryable=False,
        )
    return ActivityError(
        f"{where}: {type(exc).__name__}: {reason}", code="POSTGRES_ERROR", retryable=False
    )


class _InfinityDateLoader(DateLoader):
    def load(self, data: Any) -> Any:
        return _infinity(data) or super().load(data)


class _InfinityTimestampLoader(TimestampLoader):
    def load(self, data: Any) -> Any:
        return _infinity(data) or super().load(data)


class _InfinityTimestamptzLoader(TimestamptzLoader):
    def load(self, data: Any) -> Any:
        return _infinity(data) or super().load(data)


def _infinity(data: Any) -> str | None:
    text = bytes(data)
    return text.decode() if text in (b"infinity", b"-infinity") else None


@attrs.define
class Session:
    """One attempt: where to connect, until when, and how to cancel from outside."""

    target: DbTarget
    deadline: float  # time.monotonic()
    connect_timeout: float
    _canceller: pq.abc.PGcancel | None = attrs.field(default=None, init=False)
    _cancelled: bool = attrs.field(default=False, init=False)
    _finished: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def remaining(self, where: str) -> float:
        """Seconds left.

        Raises:
            ActivityError: ``TIMEOUT`` when none are left or the attempt was cancelled.
        """
        left = self.deadline - time.monotonic()
        if left <= 0 or self._cancelled:
            why = "cancelled" if self._cancelled else "the attempt's time is up"
            raise ActivityError(f"{where}: {why}", code="TIMEOUT", retryable=True)
        return left

    def attach(self, conn: Connection, where: str) -> None:
        """Remember how to cancel ``conn``'s statements (called in the owning thread).

        Raises:
            ActivityError: ``TIMEOUT`` if the attempt was cancelled while connecting.
        """
        with self._lock:
            self._canceller = conn.pgconn.get_cancel()
        self.remaining(where)

    def finish(self) -> None:
        """The connection is closed: :meth:`cancel` does nothing from now on."""
        with self._lock:
            self._finished = True

    def cancel(self) -> str | None:
        """Stop the attempt: no further statement starts, and the running one is
        cancelled on the server (thread-safe, blocking; best effort).

        Returns None, or why the cancel request could not be sent.
        """
        with self._lock:
            self._cancelled = True
            canceller = None if self._finished else self._canceller
        if canceller is None:
            return None
        try:
            canceller.cancel()
        except psycopg.Error as exc:
            return self.target.scrub(str(exc))
        return None


def _connect(session: Session) -> Connection:
    where = f"connecting to {session.target.masked}"
    remaining = session.remaining(where)
    try:
        info = psycopg.conninfo.conninfo_to_dict(session.target.url)
    except psycopg.ProgrammingError as exc:
        reason = session.target.scrub(" ".join(str(exc).split()))
        raise ActivityError(
            f"invalid parameter 'db_url': {reason}", code="INVALID_PARAMETERS", retryable=False
        ) from exc
    if not all(p.strip().isdigit() or not p.strip() for p in str(info.get("port", "")).split(",")):
        raise ActivityError(
            "invalid parameter 'db_url': the port is not a number",
            code="INVALID_PARAMETERS",
            retryable=False,
        )
    timeout_ms = max(1, math.ceil(remaining * 1000))
    options = " ".join(
        filter(
            None,
            [
                str(info.get("options") or ""),
                f"-c statement_timeout={timeout_ms}",
                f"-c idle_in_transaction_session_timeout={timeout_ms}",
            ],
        )
    )
    try:
        conn = psycopg.connect(
            session.target.url,
            autocommit=True,
            prepare_threshold=None,
            options=options,
            connect_timeout=max(1, math.ceil(min(session.connect_timeout, remaining))),
            application_name=str(info.get("application_name") or "kflow"),
        )
    except psycopg.Error as exc:
        raise translate_error(exc, session.target, where) from exc
    for name, loader in (
        ("date", _InfinityDateLoader),
        ("timestamp", _InfinityTimestampLoader),
        ("timestamptz", _InfinityTimestamptzLoader),
    ):
        conn.adapters.register_loader(name, loader)
    return conn


def _bind(value: Any) -> Any:
    if isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, dict) for v in value)
    ):
        return Jsonb(value)
    return value


def _execute(
    conn: Connection, stmt: Statement, target: DbTarget, where: str, max_rows: int, used: int = 0
) -> dict[str, Any]:
    """Run one statement (extended protocol: exactly one statement) → its result."""
    cursor = psycopg.RawCursor(conn) if stmt.dollar_style else conn.cursor()
    params: Any = None
    if isinstance(stmt.params, dict):
        params = {k: _bind(v) for k, v in stmt.params.items()}
    elif stmt.params is not None:
        params = [_bind(v) for v in stmt.params]
    with cursor:
        try:
            with conn.pipeline():  # PQsendQueryParams: a single statement, unnamed
                cursor.execute(stmt.query, params)
        except psycopg.Error as exc:
            raise translate_error(exc, target, where, stmt.params_field) from exc
        except TypeError as exc:  # psycopg: the params' shape does not fit the placeholders
            raise ActivityError(
                f"{where}: invalid parameter {stmt.params_field!r}: {exc}",
                code="INVALID_PARAMETERS",
                retryable=False,
            ) from exc
        if cursor.description is None:
            return {"rows_affected": max(cursor.rowcount, 0)}
        if used + cursor.rowcount > max_rows:
            earlier = f" after {used} rows from earlier statements" if used else ""
            raise ActivityError(
                f"{where}: {cursor.rowcount} rows{earlier} exceed max_rows={max_rows}; "
                "add a LIMIT or raise max_rows",
                code="TOO_MANY_ROWS",
                retryable=False,
            )
        columns = unique_columns([c.name for c in cursor.description])
        try:
            rows = [
                dict(zip(columns, map(to_json_value, row), strict=True))
                for row in cursor.fetchall()
            ]
        except psycopg.Error as exc:
            error = translate_error(exc, target, f"{where}: cannot convert a result value")
            raise ActivityError(
                f"{error.message} (cast the column to text in the query)",
                code=error.code,
                retryable=error.retryable,
            ) from exc
    return {"rows": rows, "row_count": len(rows), "columns": columns}


def run(session: Session, req: PostgresRequest, transaction: bool) -> list[dict[str, Any]]:
    """Blocking: run ``req`` on a new connection, closed before returning.

    Without ``transaction`` the single statement runs in autocommit mode;
    with it, all statements run in one transaction that commits only if every
    statement succeeded.

    Raises:
        ActivityError: as listed in :mod:`kflow.activities.postgres`.
    """
    target = req.target
    conn = _connect(session)
    try:
        if not transaction:
            where = f"postgres_query on {target.masked}"
            session.attach(conn, where)
            return [_execute(conn, req.statements[0], target, where, req.max_rows)]
        if req.isolation_level:
            conn.isolation_level = _LEVELS[req.isolation_level]
        results: list[dict[str, Any]] = []
        total = len(req.statements)
        where = f"postgres_transaction on {target.masked}"
        session.attach(conn, where)
        try:
            with conn.transaction():
                for i, stmt in enumerate(req.statements):
                    step = f"{where}, statement {i + 1} of {total} ({stmt.field})"
                    session.remaining(step)
                    used = sum(r.get("row_count", 0) for r in results)
                    results.append(_execute(conn, stmt, target, step, req.max_rows, used))
        except psycopg.Error as exc:  # BEGIN or COMMIT failed
            raise translate_error(exc, target, f"{where}: not committed") from exc
        except ActivityError as exc:
            raise ActivityError(
                f"{exc.message}; the transaction was rolled back",
                code=exc.code,
                retryable=exc.retryable,
            ) from exc
        return results
    finally:
        session.finish()
        conn.close()
