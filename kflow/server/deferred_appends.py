"""A transaction whose history appends wait and go out together.

A report group (:mod:`kflow.server.report_group`) applies many reports in
one transaction; each report appends its attempt to the audit trail and its
events to its run's history, one statement each. Wrapped in
:class:`DeferredAppends`, those appends are kept and written together — all
attempts in one statement, all events in another, in the order they were
appended — before the first statement that might read them and at the end,
before ``COMMIT``. Nothing else changes: every other statement goes straight
through, in order.

Only statements named in :data:`BLIND_TO_APPENDS` — ones that neither read
nor write the ``attempts`` and ``events`` tables (a test checks their SQL) —
run without the kept appends written first; any other statement writes them
first. A statement missing from that set only costs the merge, never
correctness.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kflow.store.base import Row, Tx

#: Statements that never touch the attempts or events tables: the kept appends
#: need not be written before them. (tests/unit/server/test_deferred_appends.py
#: checks this against the SQL of every dialect.)
BLIND_TO_APPENDS = frozenset(
    {
        "claim_run_activities",
        "lock_workflow_of_attempt",
        "lock_workflows_of_attempts",
        "workflow_activities",
        "activities_of_workflows",
        "update_activities",
        "update_activity",
        "set_workflow_status",
        "mark_workflow_running",
        "set_workflow_cost",
        "get_workflow",
        "latest_definition",
        "get_definition",
        "run_reservations",
    }
)


class DeferredAppends:
    """A :class:`~kflow.store.base.Tx` over ``tx`` that keeps attempt records and
    history events (see the module docstring); :meth:`flush` writes them."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.dialect: str = tx.dialect
        self._attempts: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []

    # ---- what persistence appends -----------------------------------------------------

    def append_attempt(self, values: Mapping[str, Any]) -> None:
        """Keep an ``insert_attempt`` (its parameters, already converted by ``tx``)."""
        self._attempts.append(dict(values))

    def append_events(
        self, workflow_id: str, events: Iterable[Mapping[str, Any]], now: Any
    ) -> None:
        """Keep events ``{type, activity_key, data}`` of ``workflow_id`` (``now``
        converted by ``tx``), in order."""
        for event in events:
            self._events.append({**event, "workflow_id": workflow_id, "now": now})

    def flush(self) -> None:
        """Write what was kept: the attempts in one statement, then the events in one."""
        if self._attempts:
            attempts, self._attempts = self._attempts, []
            self._tx.send("insert_attempts", attempts=self._tx.json(attempts))
        if self._events:
            events, self._events = self._events, []
            self._tx.send("insert_events_of_runs", events=self._tx.json(events))

    def _before(self, query: str) -> None:
        if query not in BLIND_TO_APPENDS:
            self.flush()

    # ---- Tx ---------------------------------------------------------------------------

    def one(self, query: str, /, **params: Any) -> Row | None:
        self._before(query)
        return self._tx.one(query, **params)

    def all(self, query: str, /, **params: Any) -> list[Row]:
        self._before(query)
        return self._tx.all(query, **params)

    def all_later(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        self._before(query)
        return self._tx.all_later(query, **params)

    def run(self, query: str, /, **params: Any) -> int:
        self._before(query)
        return self._tx.run(query, **params)

    def run_many(self, query: str, rows: Iterable[Mapping[str, Any]], /) -> None:
        self._before(query)
        self._tx.run_many(query, rows)

    def send(self, query: str, /, **params: Any) -> None:
        self._before(query)
        self._tx.send(query, **params)

    def time(self, value: dt.datetime | None) -> Any:
        return self._tx.time(value)

    def json(self, value: Any) -> Any:
        return self._tx.json(value)

    def money(self, value: decimal.Decimal) -> Any:
        return self._tx.money(value)

    def notify(self, channel: str, payload: str) -> None:
        self._tx.notify(channel, payload)
