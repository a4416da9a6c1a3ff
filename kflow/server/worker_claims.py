"""What a claim hands a worker: the items of just-claimed activities.

Shared by the poll's claim (:class:`~kflow.server.worker_ops.WorkerOps`) and
by a report that asks for its run's next activity in the same transaction
(:meth:`WorkerClaims.claim_next`, used by
:class:`~kflow.server.worker_reports.WorkerReports`): each claimed row
becomes a poll item with its secrets substituted, its run is marked
running, the run's remaining budget is handed out, and ``activity.started``
is appended under the run's lock. An activity whose parameters cannot be
completed fails (``TEMPLATE_ERROR``) instead of being handed out.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kflow._types import ActivityStatus
from kflow.errors import TemplateError
from kflow.server.budgets import available, run_budget
from kflow.server.deferred_writes import DeferredWrites
from kflow.server.engine import Effects, Engine
from kflow.server.persistence import append_events, record_attempt
from kflow.server.state import ActivityFailed, Emit, ErrorInfo, PutActivity, WakeQueue
from kflow.server.transitions import Transition
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_time
from kflow.templates import reveal_secrets


class WorkerClaims:
    """Turns claimed activity rows into what the worker receives (see the module)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _hand_out(
        self,
        tx: Tx,
        effects: Effects,
        rows: list[Row],
        worker_id: str,
        now: dt.datetime,
        *,
        locked: Row | None = None,
        hold_events: list[Emit] | None = None,
        runs_of: Mapping[str, Row] | None = None,
    ) -> list[dict[str, Any]]:
        """The poll items of just-claimed ``rows``, with their runs marked running,
        budgets handed out and ``activity.started`` appended (inside ``tx``).

        ``locked``: the row of the one run all ``rows`` belong to, locked earlier
        in ``tx`` and running (a report's run): not locked again; its
        ``activity.started`` events go to ``hold_events`` when given (the
        caller appends them).

        ``runs_of``: the rows of runs this transaction holds locked already (read
        by the caller, by id), among them every run of ``rows``: not locked again.
        """
        items: list[dict[str, Any]] = []
        for row in rows:
            try:
                items.append(self._poll_item(row))
            except TemplateError as exc:
                if hold_events:  # the run's history stays in order
                    self._append_held(tx, effects, row["workflow_id"], hold_events, now)
                self._fail_unsendable(tx, effects, row, now, str(exc))
        # Events of a run are appended only under the run's row lock (sorted, so
        # two claims cannot deadlock on each other): a run's history then
        # commits in id order, and a stream reading "after id N" never skips.
        if locked is not None:
            runs = {str(locked["id"]): locked} if items else {}
        else:
            of_items = {str(item["workflow_id"]) for item in items}
            if runs_of is not None:
                runs = {w: runs_of[w] for w in sorted(of_items)}
            else:
                runs = self.engine.lock_many(tx, of_items)
            created = [w for w, run in runs.items() if run["status"] == "created"]
            if created:
                tx.send("mark_workflows_running", ids=tx.json(created), now=tx.time(now))
        # The runs' activity.started events go out together, in one statement.
        appending = tx if isinstance(tx, DeferredWrites) else DeferredWrites(tx)
        for workflow_id, run in runs.items():
            self._hand_out_budget(
                tx,
                run,
                [i for i in items if i["workflow_id"] == workflow_id],
                reread=locked is not None,
            )
            events = [
                Emit(
                    type="activity.started",
                    activity_key=i["activity_key"],
                    data={"attempt": i["attempt"], "worker_id": worker_id},
                )
                for i in items
                if i["workflow_id"] == workflow_id
            ]
            if hold_events is not None and locked is not None:
                hold_events.extend(events)
                continue
            append_events(appending, uuid.UUID(workflow_id), events, now)
            effects.workflows.add(uuid.UUID(workflow_id))
        if appending is not tx:
            appending.flush()
        return items

    @staticmethod
    def _append_held(
        tx: Tx, effects: Effects, workflow_id: Any, held: list[Emit], now: dt.datetime
    ) -> None:
        """Append the events held so far (and forget them), before others follow."""
        run = uuid.UUID(str(workflow_id))
        if append_events(tx, run, held, now):
            effects.workflows.add(run)
        held.clear()

    def claim_next(
        self,
        tx: Tx,
        effects: Effects,
        transition: Transition,
        run: Row,
        activities: list[Row],
        queue: str,
        worker_id: str,
        client_id: str,
        now: dt.datetime,
        *,
        reported: str,
        queue_woken_before: bool,
        hold_events: list[Emit] | None = None,
    ) -> Callable[[], list[dict[str, Any]]]:
        """Inside a report's transaction: claim for the reporting worker one ready
        activity of the same run and queue (for the slot its report frees).

        The claim is sent at once, possibly without waiting for its answer
        (:meth:`~kflow.store.base.Tx.all_later`); the returned function hands
        the claimed activity out (its poll item, at most one) — call it before
        anything else changes the run, as a report group does after the other
        reports of its transaction claimed theirs.

        ``run`` and ``activities`` are the run's rows as read under its lock
        before ``transition``: the run is not locked again, and the claim is
        not even tried when neither they nor ``transition`` have a pending
        activity in ``queue``. When the activity claimed is the one activity
        ``transition`` made pending in ``queue`` (and nothing earlier in ``tx``
        woke that queue), the queue is not woken: no poller would find
        anything there. ``reported``: the report's attempt id, kept with the
        claim (``claimed_with``) for :meth:`release_unseen_next`.
        ``hold_events``: as for :meth:`_hand_out`.
        """
        wakes = sum(1 for c in transition.commands if isinstance(c, WakeQueue) and c.queue == queue)
        if not wakes and not any(
            a["status"] == "pending" and a["queue"] == queue for a in activities
        ):
            return _nothing_claimed
        effects.claimed_queues.add(queue)
        grace_micros = int(self.engine.settings.lease_grace_seconds * 1_000_000)
        made_pending = {
            c.activity.key
            for c in transition.commands
            if isinstance(c, PutActivity) and c.activity.status is ActivityStatus.PENDING
        }
        known = (
            self._known_claim(transition, activities, queue, now, grace_micros)
            if tx.dialect == "postgres"  # SQLite answers at once: nothing to save
            else None
        )
        if known is not None:
            claim_known(tx, known, worker_id, client_id, now, claimed_with=reported)

            def claimed() -> list[Row]:
                return [known]

        else:
            claimed = tx.all_later(
                "claim_run_activities",
                workflow_id=str(transition.state.id),
                queue=queue,
                worker_id=worker_id,
                client_id=client_id,
                now=tx.time(now),
                limit=1,
                lease_grace_micros=grace_micros,
                claimed_with=reported,
            )

        def hand_out() -> list[dict[str, Any]]:
            rows = claimed()
            if not rows:
                return []
            items = self._hand_out(
                tx, effects, rows, worker_id, now, locked=run, hold_events=hold_events
            )
            if wakes == 1 and rows[0]["key"] in made_pending and not queue_woken_before:
                effects.queues.discard(queue)
            return items

        return hand_out

    def _known_claim(
        self,
        transition: Transition,
        activities: list[Row],
        queue: str,
        now: dt.datetime,
        grace_micros: int,
    ) -> Row | None:
        """The row the run's next-step claim would return, when ``transition``
        decides it alone: the one activity of the run pending in ``queue`` and due
        by ``now`` is one ``transition`` just made pending with a new attempt (no
        other transaction can see, let alone claim, that attempt before this one
        commits). None otherwise — the claim then asks the database, as it
        always did. Deciding here saves waiting for the claim's answer before the
        commit (PostgreSQL only). An item whose parameters cannot be completed
        fails in the hand-out, after the claim, as with the database's claim.

        ``activities``: the run's rows as read under its lock before ``transition``.
        """
        puts = {
            c.activity.key: c.activity for c in transition.commands if isinstance(c, PutActivity)
        }
        due: list[tuple[Row, Any]] = []
        for row in activities:
            if row["queue"] != queue:
                continue
            state = puts.get(row["key"])
            status = state.status.value if state is not None else row["status"]
            if status != ActivityStatus.PENDING.value:
                continue
            available = state.available_at if state is not None else load_time(row["available_at"])
            if available is None or available > now:
                continue
            due.append((row, state))
            if len(due) > 1:
                return None
        if len(due) != 1:
            return None
        row, state = due[0]
        attempt_id = transition.attempt_ids.get(row["key"])
        if state is None or attempt_id is None:
            return None
        predicted: Row = {
            "workflow_id": row["workflow_id"],
            "key": row["key"],
            "attempt_id": attempt_id,
            "queue": queue,
            "activity_name": row["activity_name"],
            "timeout_seconds": row["timeout_seconds"],
            "settings": row["settings"],
            "output_definitions": row["output_definitions"],
            "parameters": state.parameters,
            "signal_data": state.signal_data,
            "heartbeat_details": None if state.attempt <= 1 else row["heartbeat_details"],
            "attempt": state.attempt,
            "iteration": state.iteration,
            "lease_expires_at": now
            + dt.timedelta(seconds=int(row["timeout_seconds"]), microseconds=grace_micros),
        }
        return predicted

    def release_unseen_next(
        self,
        tx: Tx,
        effects: Effects,
        activities: list[Row],
        past: Row,
        worker_id: str,
        client_id: str,
        now: dt.datetime,
    ) -> None:
        """A repeated report: put back what its first application claimed.

        A worker repeats a report only when it never got the answer — so it
        never saw the next step that report claimed for it (``claim_next``)
        either, and that activity would wait for its lease to expire. It is
        the one among the run's ``activities`` (read under the run's lock)
        still running under this worker's lease with ``claimed_with`` naming
        the reported attempt (``past``: its attempt row); it goes back to its
        queue, its attempt unused.
        """
        reported = str(past["id"])
        unseen = [
            a
            for a in activities
            if a["status"] == "running"
            and a["claimed_with"] is not None
            and str(a["claimed_with"]) == reported
            and a["worker_id"] == worker_id
            and a["lease_client"] == client_id
        ]
        for act in unseen:
            self.release_claimed(
                tx, effects, act["workflow_id"], act["key"], act["attempt_id"], act["queue"],
                worker_id, "the report that claimed it was repeated", now,
            )  # fmt: skip

    def release_claimed(
        self,
        tx: Tx,
        effects: Effects,
        workflow_id: Any,
        key: str,
        attempt_id: Any,
        queue: str,
        worker_id: str,
        reason: str,
        now: dt.datetime,
    ) -> bool:
        """Put one activity claimed by ``worker_id`` back in ``queue``, its attempt
        unused, and append ``activity.released`` (the caller holds the run's lock).
        False when it is no longer running under that worker's claim."""
        if not tx.run(
            "release_claim", attempt_id=str(attempt_id), worker_id=worker_id, now=tx.time(now)
        ):
            return False
        run = uuid.UUID(str(workflow_id))
        released = Emit(
            type="activity.released",
            activity_key=key,
            data={"worker_id": worker_id, "reason": reason},
        )
        append_events(tx, run, [released], now)
        effects.workflows.add(run)
        effects.queues.add(queue)
        return True

    def _hand_out_budget(
        self, tx: Tx, run: Row, items: list[dict[str, Any]], *, reread: bool = False
    ) -> None:
        """Tell each claimed attempt what its run may still spend (runs with a budget).

        ``reread``: ``run`` was read under its lock earlier in ``tx``, before
        writes of this transaction (its spend) — read it again for the budget.
        """
        budget = run_budget(tx, self.engine.definitions, run)
        if budget is None:
            return
        if reread:
            run = self.engine.lock(tx, run["id"])  # same transaction: sees its own writes
        remaining = max(available(tx, run, budget.limit), decimal.Decimal(0))
        for item in items:
            item["budget_remaining_usd"] = remaining

    def _fail_unsendable(
        self, tx: Tx, effects: Effects, row: Row, now: dt.datetime, message: str
    ) -> None:
        """Fail a just-claimed activity whose parameters cannot be completed."""
        error = ErrorInfo(code="TEMPLATE_ERROR", message=message, retryable=False)
        current = tx.one("activity_by_attempt", attempt_id=str(row["attempt_id"]))
        if current is not None:
            record_attempt(
                tx,
                attempt_id=str(row["attempt_id"]),
                row=current,
                outcome="failed",
                now=now,
                error=error,
            )
        self.engine.transition_row(
            tx,
            effects,
            row["workflow_id"],
            lambda _: ActivityFailed(key=row["key"], error=error),
            now,
        )

    def _poll_item(self, row: Row) -> dict[str, Any]:
        parameters = reveal_secrets(
            load_json(row["parameters"]) or {}, self.engine.settings.secrets
        )
        item: dict[str, Any] = {
            "activity_id": str(row["attempt_id"]),
            "workflow_id": str(row["workflow_id"]),
            "activity_key": row["key"],
            "worker": row["queue"],
            "activity_name": row["activity_name"],
            "parameters": parameters,
            "settings": load_json(row["settings"]) or {},
            "timeout_seconds": int(row["timeout_seconds"]),
            "attempt": int(row["attempt"]),
            "iteration": int(row["iteration"]),
            "lease_expires_at": load_time(row["lease_expires_at"]),
        }
        outputs = load_json(row["output_definitions"])
        if outputs:
            item["output_definitions"] = outputs
        signal = load_json(row["signal_data"])
        if signal is not None:
            item["signal_data"] = signal
        details = load_json(row["heartbeat_details"])
        if details is not None:
            item["heartbeat_details"] = details
        return item


def _nothing_claimed() -> list[dict[str, Any]]:
    return []


def claim_known(
    tx: Tx,
    row: Row,
    worker_id: str,
    client_id: str,
    now: dt.datetime,
    *,
    claimed_with: str | None,
) -> None:
    """Claim for ``worker_id`` the activity of ``row`` (as a claim would return it,
    its lease included) by its attempt id (``claim_known_activities``): kept
    with a :class:`DeferredWrites`' other claims, or sent without waiting."""
    values = {
        "workflow_id": str(row["workflow_id"]),
        "key": row["key"],
        "attempt_id": str(row["attempt_id"]),
        "worker_id": worker_id,
        "client_id": client_id,
        "now": tx.time(now),
        "lease_expires_at": tx.time(row["lease_expires_at"]),
        "claimed_with": claimed_with,
    }
    if isinstance(tx, DeferredWrites):
        tx.claim_known(values)
    else:
        tx.send("claim_known_activities", claims=tx.json([values]))
