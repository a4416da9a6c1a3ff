"""The storage seam: a ``Store`` runs units of work, a ``Tx`` runs named queries.

A unit of work is a plain synchronous function ``fn(tx) -> T``. The store runs
it inside one database transaction and commits, or rolls back if ``fn``
raises. Neither store uses worker threads for it: SQLite runs units on the
Trio thread and group-commits them; PostgreSQL runs each unit in a greenlet
that waits for the server through Trio (:mod:`kflow.store.pg_green`).
SQL never appears in Python: ``tx.one("claim_activities", queue=...)`` looks
the statement up among the dialect's named queries (``store/sql/<dialect>``).

Values cross the seam in Python types; each dialect encodes them:
``tx.time(datetime)``, ``tx.json(obj)``, ``tx.money(Decimal)`` for parameters,
and :mod:`kflow.store.codec` decodes what rows hold.

Cancellation: a unit of work that has started always runs to commit or
rollback; cancelling the awaiting task does not interrupt the transaction.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Row = Mapping[str, Any]


class Tx(Protocol):
    """One open transaction. Only valid inside the unit of work it was given to."""

    dialect: str

    def one(self, query: str, /, **params: Any) -> Row | None:
        """First row of a named query, or None."""
        ...

    def all(self, query: str, /, **params: Any) -> list[Row]:
        """Every row of a named query."""
        ...

    def all_later(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        """Execute a named query now; the returned function gives its rows.

        A store may hold the query back and send it with the next statement
        that needs an answer (PostgreSQL does): several such queries then wait
        for the database once, when the first of their rows is asked for.
        Statements sent after it see its effects either way.
        """
        ...

    def read_with_commit(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        """Execute a named query as the last statement before the transaction
        commits (call it once the unit's writes are done: it sees all of them);
        the returned function gives its rows once the store's ``write`` returned.

        PostgreSQL sends it with ``COMMIT``: no wait of its own.
        """
        ...

    def run(self, query: str, /, **params: Any) -> int:
        """Execute a named statement; returns the number of rows it changed."""
        ...

    def run_many(self, query: str, rows: Iterable[Mapping[str, Any]], /) -> None:
        """Execute a named statement once per parameter mapping (like :meth:`send`:
        an error may surface at a later statement or at commit)."""
        ...

    def send(self, query: str, /, **params: Any) -> None:
        """Execute a named statement whose outcome the caller does not need.

        A store may send it together with the next statement that needs an
        answer, or with the commit (PostgreSQL does: one round trip fewer), so
        an error in it may surface there instead; the transaction fails either way.
        """
        ...

    def time(self, value: dt.datetime | None) -> Any:
        """Encode a timestamp parameter for this dialect."""
        ...

    def json(self, value: Any) -> Any:
        """Encode a JSON parameter for this dialect (None stays NULL)."""
        ...

    def money(self, value: decimal.Decimal) -> Any:
        """Encode a money parameter for this dialect."""
        ...

    def notify(self, channel: str, payload: str) -> None:
        """Tell other server processes about this transaction, once it commits."""
        ...


class Store(Protocol):
    """A database holding kflow's state."""

    dialect: str

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a read-write transaction and commit.

        Raises:
            kflow.errors.StoreUnavailableError: the database cannot be reached
                or stayed locked; nothing was committed.
            kflow.errors.StoreError: the database failed otherwise.
            Exception: whatever ``fn`` raised (the transaction is rolled back).
        """
        ...

    async def read(self, fn: Callable[[Tx], T], *, locking: bool = False) -> T:
        """Run ``fn`` read-only against committed data.

        SQLite reads one snapshot. PostgreSQL runs each statement on its own
        (autocommit: no ``BEGIN``/``COMMIT`` round trips), each seeing everything
        committed before it started — what a ``READ COMMITTED`` transaction gives
        too. ``locking=True`` is for ``fn`` that takes transaction-scoped locks
        (``pg_advisory_xact_lock``): it then runs in one read-only transaction
        that holds them until ``fn`` returns.
        """
        ...

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns the names applied."""
        ...

    async def schema_version(self) -> int:
        """The version of the newest applied migration (0 for an empty database)."""
        ...

    async def aclose(self) -> None:
        """Close every connection. Safe to call twice."""
        ...
