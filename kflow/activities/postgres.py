"""The ``postgres_query`` and ``postgres_transaction`` activities of the ``std`` worker.

PROTOCOL §9. Both need psycopg 3 (the ``postgres`` or ``std`` extra); it is
imported only when an activity first runs (the registry builder only checks
that it is installed, see :func:`postgres_available`), so ``kflow.activities``
imports without it and a worker that never runs them does not load libpq.
Parameter validation lives in ``_postgres_params``, the psycopg code (run in a worker thread) in
``_postgres_driver``, the JSON conversion of values in ``_postgres_values``.

``postgres_query {db_url, query, params?, max_rows?}`` runs one statement in
autocommit mode. Output ``result``:

- a statement that returns rows (``SELECT``, ``... RETURNING``):
  ``{"rows": [{column: value}, ...], "row_count": n, "columns": [...]}``;
- any other statement: ``{"rows_affected": n}`` (0 for DDL and the like).

``postgres_transaction {db_url, statements, isolation_level?, max_rows?}``
runs ``statements`` — each ``{"query", "params"?}`` or a plain string — in one
transaction. Output ``result``: ``{"results": [one result as above per
statement], "committed": true, "success": true, "statements_executed": n}``
(the last two as the reference engine reports them). Any error rolls the
whole transaction back. ``isolation_level`` is ``read_committed``,
``repeatable_read`` or ``serializable``; absent, the database's default.

Parameters are always bound by the server, never put into the SQL text:

- ``params`` a list → positional ``%s`` placeholders; or PostgreSQL's own
  ``$1, $2 ...`` when the query has ``$n`` and no ``%`` placeholder (the
  reference engine's style);
- ``params`` an object → named ``%(name)s`` placeholders;
- no or empty ``params`` → the query text is sent as is (``%`` needs no
  escaping); with params, write a literal ``%`` as ``%%``.

A parameter value that is an object — or a list holding objects — is sent as
``jsonb``; other lists become PostgreSQL arrays. A query string holding more
than one statement is refused by the server (the extended protocol is used).

Result values become JSON: numbers, text and booleans as they are; numeric →
decimal string (no float rounding); ``timestamptz`` → ISO 8601 in UTC with
``Z``; ``timestamp``/``date``/``time`` → ISO 8601; ``±infinity`` dates →
``"infinity"``/``"-infinity"``; ``interval`` → an ISO 8601 duration (months
count as 30 days); ``uuid`` → string; ``bytea`` → **base64** text; json/jsonb →
the parsed value; arrays → lists; non-finite floats → ``"NaN"``,
``"Infinity"``, ``"-Infinity"``; anything else (inet, ranges, geometry,
money, ...) → its text form. Repeated column names get ``_2``, ``_3`` ...
suffixes so no value is lost.

More than ``max_rows`` rows (default 10,000; counted over all statements of a
transaction) fails with ``TOO_MANY_ROWS`` instead of truncating. The rows
reach the worker before they are counted, so add ``LIMIT`` for large tables.

Connections: one short-lived connection per attempt (no pool: an activity
names its database per call; a connection costs a few ms against a query
that crosses the worker anyway), with ``prepare_threshold`` off so it also
works behind PgBouncer in transaction mode. ``statement_timeout`` and
``idle_in_transaction_session_timeout`` are set to the attempt's timeout
(``ctx.timeout_seconds``), connecting waits at most 10 s. When the attempt
is cancelled (timeout, lost lease) the running statement is cancelled on the
server, best effort. A retried attempt may repeat work whose commit was not
confirmed (a connection lost during ``COMMIT``): make statements idempotent.

Errors (``ActivityError``): ``INVALID_PARAMETERS`` naming the field (not
retryable); ``POSTGRES_UNAVAILABLE`` — cannot connect, connection lost, server
shutting down or out of resources (retryable; libpq reports bad credentials
or a missing database the same way, so those retry too);
``POSTGRES_RETRYABLE`` — serialization failure, deadlock, lock timeout
(retryable); ``TIMEOUT`` — statement timeout or cancelled (retryable);
``POSTGRES_ERROR`` — any other SQL error, with the SQLSTATE and the server's
message (not retryable); ``TOO_MANY_ROWS`` (not retryable). The password of
``db_url`` never appears in an error or a log (the URL is masked).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import trio

from kflow.activities._postgres_params import (
    DEFAULT_MAX_ROWS,
    PostgresRequest,
    parse_query_params,
    parse_transaction_params,
)
from kflow.errors import ActivityError
from kflow.worker.activity import Activity, ActivityResult
from kflow.worker.context import ActivityContext

DEFAULT_TIMEOUT_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 10.0
CANCEL_TIMEOUT_SECONDS = 5.0


def postgres_available() -> bool:
    """Whether psycopg 3 is installed here.

    Found without importing it: psycopg and its libpq cost a worker about
    8 MiB, paid only when a postgres activity first runs. A libpq too old for
    pipeline mode is reported then (``MISSING_DEPENDENCY``).
    """
    try:
        return importlib.util.find_spec("psycopg") is not None
    except (ImportError, ValueError):
        return False


class _PostgresActivity(Activity):
    def __init__(
        self,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.connect_timeout = connect_timeout
        self.max_rows = max_rows

    async def _run(
        self, req: PostgresRequest, ctx: ActivityContext, transaction: bool
    ) -> list[dict[str, Any]]:
        """Run ``req`` in a worker thread; on cancellation, cancel it on the server too.

        Raises:
            ActivityError: as listed in the module docstring.
        """
        try:
            import kflow.activities._postgres_driver as driver
        except ImportError as exc:
            raise ActivityError(
                f"psycopg 3 is not usable here ({exc}); install kflow[postgres]",
                code="MISSING_DEPENDENCY",
                retryable=False,
            ) from exc
        if not driver.pipeline_supported():
            raise ActivityError(
                "the libpq psycopg uses here has no pipeline mode (libpq 14 or later is "
                "needed); install kflow[postgres], which brings its own",
                code="MISSING_DEPENDENCY",
                retryable=False,
            )
        limit = ctx.timeout_seconds or self.timeout_seconds
        started = time.monotonic()
        session = driver.Session(
            target=req.target, deadline=started + limit, connect_timeout=self.connect_timeout
        )
        try:
            results: list[dict[str, Any]] = await ctx.run_sync(
                driver.run, session, req, transaction
            )
        except trio.Cancelled:
            error: str | None = "the cancel request timed out"
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT_SECONDS):
                error = await trio.to_thread.run_sync(session.cancel, abandon_on_cancel=True)
            ctx.logger.info(f"{self.name}.cancelled", server=req.target.masked, cancel_error=error)
            raise
        ctx.logger.info(
            f"{self.name}.finished",
            server=req.target.masked,
            statements=len(results),
            rows=sum(r.get("row_count", 0) for r in results),
            rows_affected=sum(r.get("rows_affected", 0) for r in results),
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return results


class PostgresQueryActivity(_PostgresActivity):
    """``postgres_query``: one statement, autocommit. ``timeout_seconds`` applies when the
    context has no timeout; ``max_rows`` is the default row cap."""

    name = "postgres_query"

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Run the statement; output ``result``.

        Raises:
            ActivityError: see the module docstring for codes and retry flags.
        """
        req = parse_query_params(params, default_max_rows=self.max_rows)
        results = await self._run(req, ctx, transaction=False)
        return ActivityResult.value("result", results[0])


class PostgresTransactionActivity(_PostgresActivity):
    """``postgres_transaction``: statements in one transaction, all or nothing."""

    name = "postgres_transaction"

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Run the statements and commit; output ``result``.

        Raises:
            ActivityError: see the module docstring; on any error nothing is committed.
        """
        req = parse_transaction_params(params, default_max_rows=self.max_rows)
        results = await self._run(req, ctx, transaction=True)
        return ActivityResult.value(
            "result",
            {
                "results": results,
                "committed": True,
                "success": True,
                "statements_executed": len(results),
            },
        )
