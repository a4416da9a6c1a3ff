"""A transaction whose appends, activity updates and next-step claims wait and go out together.

A report group (:mod:`kflow.server.report_group`) applies many reports in
one transaction. Each report appends its attempt to the audit trail and its
events to its run's history, updates its run's activities and may claim the
run's next activity — one statement each. Wrapped in :class:`DeferredWrites`,
those statements are kept and written together: all attempts in one
statement, all events in another (in the order they were appended) — on
PostgreSQL both in one — all activity updates in one, all claims in one
(claims the transaction decided itself, naming their attempts, in one more —
on PostgreSQL none: such a claim rides in the kept update that makes its
activity pending, which writes the activity running at once, one row version
instead of two), all run status changes in one.
Nothing else changes: every other statement goes straight through, in
order, after whatever was kept that it might see.

- Appends are written before any statement not named in
  :data:`BLIND_TO_APPENDS` (ones that neither read nor write the
  ``attempts`` and ``events`` tables), and at the end.
- Run status changes are written before any statement not named in
  :data:`BLIND_TO_WORKFLOWS` (ones that never name the ``workflows`` table),
  and at the end; a second change of the same run writes the first.
- Activity updates and claims are written before any statement not named in
  :data:`BLIND_TO_ACTIVITIES` (ones that never name the ``activities``
  table), when a claim's rows are asked for, and at the end — updates first,
  then claims, each in the order they came. Only writes of different runs
  are merged: an update of an activity already waiting to be written, or
  anything for a run with a claim waiting, writes what waits first. Claims of
  different runs and updates of other runs commute, so the merged order ends
  as the one-by-one order would.

A test checks the sets against the SQL of every dialect; a statement
missing from a set only costs the merge, never correctness.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from kflow.store.base import Row, Tx

#: Statements that read or write only runs and definitions: blind to everything kept.
_RUNS_AND_DEFINITIONS = frozenset(
    {
        "insert_workflow",
        "set_workflow_status",
        "mark_workflows_running",
        "set_workflow_cost",
        "get_workflow",
        "latest_definition",
        "get_definition",
    }
)

#: Statements that never touch the attempts or events tables: the kept appends
#: need not be written before them. (tests/unit/server/test_deferred_writes.py
#: checks this against the SQL of every dialect.)
BLIND_TO_APPENDS = _RUNS_AND_DEFINITIONS | {
    "insert_activities",
    "insert_workflow_with_activities",
    "claim_run_activities",
    "claim_next_of_runs",
    "claim_known_activities",
    "lock_workflow_of_attempt",
    "lock_workflows_of_attempts",
    "workflow_activities",
    "activities_of_workflows",
    "update_activity",
    "update_activities_of_runs",
    "run_reservations",
}

#: Statements that never touch the activities table: kept activity updates and
#: claims need not be written before them (checked like BLIND_TO_APPENDS).
BLIND_TO_ACTIVITIES = _RUNS_AND_DEFINITIONS | {
    "insert_attempts",
    "insert_events_of_runs",
    "insert_event",
    "insert_events",
    "delete_signal",
}

#: Statements that never name the workflows table: kept run status changes
#: need not be written before them (checked like BLIND_TO_APPENDS).
BLIND_TO_WORKFLOWS = frozenset(
    {
        "latest_definition",
        "get_definition",
        "insert_activities",
        "claim_run_activities",
        "claim_next_of_runs",
        "claim_known_activities",
        "workflow_activities",
        "activities_of_workflows",
        "update_activity",
        "update_activities_of_runs",
        "run_reservations",
        "insert_attempts",
        "insert_events_of_runs",
        "insert_appends_of_runs",
        "insert_event",
        "insert_events",
        "delete_signal",
    }
)

#: Statements that only insert a run created in this transaction and its
#: activities: rows no kept write can name yet (a run's updates and claims
#: follow its insert), so nothing kept need be written before them. (The test
#: checks that their SQL inserts and reads no table.)
NEW_RUN_INSERTS = frozenset({"insert_activities", "insert_workflow_with_activities"})


@attrs.define
class _KeptClaim:
    """A claim of one run's next activity, waiting to be written with the others."""

    workflow_id: str
    values: dict[str, Any]
    #: Once written: the function that returns the claims' rows (all runs).
    rows: Callable[[], list[Row]] | None = None


class DeferredWrites:
    """A :class:`~kflow.store.base.Tx` over ``tx`` that keeps attempt records,
    history events, activity updates and next-step claims (see the module
    docstring); :meth:`flush` writes them."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.dialect: str = tx.dialect
        self._attempts: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._updated: set[tuple[str, str]] = set()
        self._claims: list[_KeptClaim] = []
        self._known: list[dict[str, Any]] = []
        self._claimed_runs: set[str] = set()
        self._statuses: list[dict[str, Any]] = []

    # ---- what persistence keeps -------------------------------------------------------

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

    def update_activities(
        self, workflow_id: str, rows: Iterable[Mapping[str, Any]], now: Any
    ) -> None:
        """Keep updates of activities of ``workflow_id``: ``rows`` as
        ``update_activities_of_runs`` binds them, without run and time (values
        converted by ``tx``, each activity once); ``now`` converted by ``tx``."""
        rows = list(rows)
        keys = {(workflow_id, str(row["key"])) for row in rows}
        if keys & self._updated or workflow_id in self._claimed_runs:
            self._write_activities()
        for row in rows:
            self._updates.append({**row, "workflow_id": workflow_id, "now": now})
        self._updated |= keys

    def _keep_status(self, params: Mapping[str, Any]) -> None:
        """Keep a ``set_workflow_status`` (its parameters, converted by ``tx``); a
        second one for the same run writes what waits first."""
        if any(kept["id"] == params["id"] for kept in self._statuses):
            self._write_statuses()
        self._statuses.append(
            {k: params[k] for k in ("id", "status", "error_message", "finished", "now")}
        )

    def _write_statuses(self) -> None:
        statuses, self._statuses = self._statuses, []
        if len(statuses) == 1:
            self._tx.send("set_workflow_status", **statuses[0])
        elif statuses:
            self._tx.send("set_workflows_status", statuses=self._tx.json(statuses))

    def claim_known(self, values: Mapping[str, Any]) -> None:
        """Keep a claim of an activity named by its attempt id, as
        ``claim_known_activities`` binds one (values converted by ``tx``): written
        with the other claims, after the updates, and never waited for."""
        workflow_id = str(values["workflow_id"])
        if workflow_id in self._claimed_runs:
            self._write_activities()
        update = self._update_making_pending(workflow_id, values)
        if update is not None:
            update["claim"] = {
                key: values[key]
                for key in ("worker_id", "client_id", "now", "lease_expires_at", "claimed_with")
            }
        else:
            self._known.append(dict(values))
        self._claimed_runs.add(workflow_id)

    def _update_making_pending(
        self, workflow_id: str, claim: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The kept update that makes the activity ``claim`` names pending with the
        attempt it names (PostgreSQL: the claim then rides in that update)."""
        if self.dialect != "postgres":
            return None
        key, attempt_id = str(claim["key"]), str(claim["attempt_id"])
        for update in self._updates:
            if (
                update["workflow_id"] == workflow_id
                and str(update["key"]) == key
                and update.get("status") == "pending"
                and str(update.get("new_attempt_id")) == attempt_id
            ):
                return update
        return None

    def _keep_claim(self, params: Mapping[str, Any]) -> Callable[[], list[Row]]:
        workflow_id = str(params["workflow_id"])
        if workflow_id in self._claimed_runs:
            self._write_activities()
        claim = _KeptClaim(
            workflow_id,
            {
                key: params[key]
                for key in (
                    "workflow_id",
                    "queue",
                    "worker_id",
                    "client_id",
                    "now",
                    "lease_grace_micros",
                    "claimed_with",
                )
            },
        )
        self._claims.append(claim)
        self._claimed_runs.add(workflow_id)

        def answer() -> list[Row]:
            if claim.rows is None:
                self._write_activities()
            assert claim.rows is not None
            return [row for row in claim.rows() if str(row["workflow_id"]) == workflow_id]

        return answer

    # ---- writing what was kept --------------------------------------------------------

    def _write_appends(self) -> None:
        attempts, self._attempts = self._attempts, []
        events, self._events = self._events, []
        if attempts and events and self.dialect == "postgres":  # see insert_appends_of_runs
            self._tx.send(
                "insert_appends_of_runs",
                attempts=self._tx.json(attempts),
                events=self._tx.json(events),
            )
            return
        if attempts:
            self._tx.send("insert_attempts", attempts=self._tx.json(attempts))
        if events:
            self._tx.send("insert_events_of_runs", events=self._tx.json(events))

    def _write_activities(self) -> None:
        """The kept updates in one statement, then the kept claims in one (their
        rows asked for when a claim's answer is)."""
        if self._updates:
            updates, self._updates = self._updates, []
            self._tx.send("update_activities_of_runs", activities=self._tx.json(updates))
        if self._known:
            known, self._known = self._known, []
            self._tx.send("claim_known_activities", claims=self._tx.json(known))
        if self._claims:
            claims, self._claims = self._claims, []
            later = self._tx.all_later(
                "claim_next_of_runs", claims=self._tx.json([c.values for c in claims])
            )
            answered: list[list[Row]] = []

            def rows() -> list[Row]:  # asked for by each claim: fetched once
                if not answered:
                    answered.append(later())
                return answered[0]

            for claim in claims:
                claim.rows = rows
        self._updated.clear()
        self._claimed_runs.clear()

    def flush(self) -> None:
        """Write everything kept: activity updates, claims, attempts, events, run
        statuses."""
        self._write_activities()
        self._write_appends()
        self._write_statuses()

    def _before(self, query: str) -> None:
        if query not in BLIND_TO_WORKFLOWS and query not in NEW_RUN_INSERTS:
            self._write_statuses()
        if query not in BLIND_TO_ACTIVITIES and query not in NEW_RUN_INSERTS:
            self._write_activities()
        if query not in BLIND_TO_APPENDS:
            self._write_appends()

    # ---- Tx ---------------------------------------------------------------------------

    def one(self, query: str, /, **params: Any) -> Row | None:
        self._before(query)
        return self._tx.one(query, **params)

    def all(self, query: str, /, **params: Any) -> list[Row]:
        self._before(query)
        return self._tx.all(query, **params)

    def all_later(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        """As :meth:`Tx.all_later`; a claim of one activity of a run
        (``claim_run_activities`` with ``limit`` 1) is kept with the others."""
        if query == "claim_run_activities" and params.get("limit") == 1:
            return self._keep_claim(params)  # blind to appends, like the statement
        self._before(query)
        return self._tx.all_later(query, **params)

    def read_with_commit(self, query: str, /, **params: Any) -> Callable[[], list[Row]]:
        self.flush()  # it must see everything kept
        return self._tx.read_with_commit(query, **params)

    def run(self, query: str, /, **params: Any) -> int:
        self._before(query)
        return self._tx.run(query, **params)

    def run_many(self, query: str, rows: Iterable[Mapping[str, Any]], /) -> None:
        self._before(query)
        self._tx.run_many(query, rows)

    def send(self, query: str, /, **params: Any) -> None:
        if query == "set_workflow_status":
            self._keep_status(params)  # blind to what else is kept, like the statement
            return
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
