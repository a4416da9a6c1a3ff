"""What workers say about the attempts they hold: heartbeat, complete, fail.

Each report is one transaction: check the lease, record the attempt (its
outputs or error, cost and usage), and let the engine decide what follows.
A report may ask for its run's next activity: if the decision made one ready
in the same queue, it is claimed for the reporting worker in the same
transaction and returned with the answer (``activities``) — the slot the
report frees goes straight to the run's next step, without a poll. A report
on a run that was cancelled meanwhile is recorded and discarded. If
applying a report breaks the engine, the result is kept, the run is failed
and the report is still acknowledged, so the worker does not report again
for ever.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from kflow.errors import ConflictError, KflowError, NotFoundError
from kflow.server.budgets import available, run_budget
from kflow.server.engine import Effects
from kflow.server.persistence import append_events, record_attempt
from kflow.server.report_group import Loaded, ReportAnswer, ReportSlot, settled
from kflow.server.state import ZERO, ActivityCompleted, ActivityFailed, Emit, ErrorInfo
from kflow.server.transitions import Transition
from kflow.server.worker_claims import WorkerClaims
from kflow.server.worker_leases import finished_attempt, holds_lease
from kflow.store.base import Row, Tx
from kflow.store.codec import load_money

log = structlog.get_logger("kflow.engine")


def total_cost(
    cost_usd: decimal.Decimal | None, usage: Sequence[Mapping[str, Any]]
) -> decimal.Decimal:
    """``cost_usd`` (the part usage does not cover) plus every usage entry's cost."""
    total = cost_usd or ZERO
    for entry in usage:
        value = entry.get("cost_usd")
        if value is not None:
            total += decimal.Decimal(str(value))
    return total


class WorkerReports(WorkerClaims):
    """Heartbeats and reports of workers about their leased attempts."""

    # ---- heartbeat ---------------------------------------------------------------------

    async def heartbeat(
        self, attempt_id: uuid.UUID, worker_id: str, details: Any | None, client_id: str = "dev"
    ) -> dict[str, Any]:
        """Extend the lease of a running attempt and keep ``details``.

        Raises:
            NotFoundError: unknown attempt.
            ConflictError: another worker holds it, the lease was lost, or the
                run was cancelled — the worker should stop the activity.
        """
        engine = self.engine
        now = engine.clock.now()
        interval = engine.settings.heartbeat_interval_seconds
        extend_to = now + dt.timedelta(seconds=3 * interval + engine.settings.lease_grace_seconds)

        def heartbeat_tx(tx: Tx, effects: Effects) -> dict[str, Any]:
            row = tx.one("activity_by_attempt", attempt_id=str(attempt_id))
            if row is None:
                finished_attempt(tx, attempt_id, worker_id, "heartbeat")
                return {"acknowledged": True, "next_heartbeat_seconds": interval}
            status = row["status"]
            if status == "running":
                if not holds_lease(row, worker_id, client_id):
                    raise ConflictError(f"activity {attempt_id} is leased by another worker")
                tx.run(
                    "extend_lease",
                    attempt_id=str(attempt_id),
                    worker_id=worker_id,
                    lease_expires_at=tx.time(extend_to),
                    details=tx.json(details),
                    now=tx.time(now),
                )
                return {"acknowledged": True, "next_heartbeat_seconds": interval}
            if status in ("completed", "failed"):
                return {"acknowledged": True, "next_heartbeat_seconds": interval}
            raise ConflictError(
                f"activity {attempt_id} is {status}; stop working on it", details={"status": status}
            )

        result: dict[str, Any] = await engine.write(heartbeat_tx)
        return result

    # ---- budget reservations ---------------------------------------------------------------

    async def reserve(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        amount: decimal.Decimal,
        client_id: str = "dev",
    ) -> dict[str, Any]:
        """Set aside ``amount`` of the run's budget for this running attempt
        (replacing its previous reservation) if it fits; see :mod:`kflow.server.budgets`.

        Returns ``granted``, ``reserved_usd`` (what the attempt now holds),
        ``budget_limit_usd`` and ``budget_remaining_usd`` (what is left for
        others; None without a run budget, when every amount is granted).

        Raises:
            NotFoundError: unknown attempt.
            ConflictError: the attempt is not running or is leased by another worker.
        """
        engine = self.engine
        now = engine.clock.now()

        def reserve_tx(tx: Tx, effects: Effects) -> dict[str, Any]:
            row = tx.one("activity_by_attempt", attempt_id=str(attempt_id))
            if row is None:
                raise NotFoundError(f"activity {attempt_id} not found or already finished")
            if row["status"] != "running":
                raise ConflictError(
                    f"activity {attempt_id} is {row['status']}; nothing to reserve for",
                    details={"status": row["status"]},
                )
            if not holds_lease(row, worker_id, client_id):
                raise ConflictError(f"activity {attempt_id} is leased by another worker")
            run = engine.lock(tx, row["workflow_id"])
            budget = run_budget(tx, engine.definitions, run)
            if budget is None:
                return {
                    "granted": True,
                    "reserved_usd": ZERO,
                    "budget_limit_usd": None,
                    "budget_remaining_usd": None,
                }
            left = available(tx, run, budget.limit, besides=attempt_id)
            granted = amount <= left
            if granted:
                tx.run(
                    "set_reservation",
                    attempt_id=str(attempt_id),
                    amount=tx.money(amount),
                    now=tx.time(now),
                )
            return {
                "granted": granted,
                "reserved_usd": amount if granted else load_money(row["reserved_usd"]),
                "budget_limit_usd": budget.limit,
                "budget_remaining_usd": left - amount if granted else left,
            }

        result: dict[str, Any] = await engine.write(reserve_tx)
        return result

    # ---- reports -------------------------------------------------------------------------

    async def complete(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        output: Mapping[str, Any],
        cost_usd: decimal.Decimal | None,
        usage: Sequence[Mapping[str, Any]],
        client_id: str = "dev",
        *,
        claim_next: bool = False,
        slot: ReportSlot | None = None,
    ) -> dict[str, Any]:
        """Record a finished attempt's outputs and move the run forward; with
        ``claim_next`` the answer's ``activities`` holds the run's next activity
        in the same queue, claimed for ``worker_id`` (none if there is none).
        With ``slot`` the report is applied with the other reports of its batch
        (see :mod:`kflow.server.report_group`).

        Raises:
            NotFoundError: unknown attempt.
            ConflictError: another worker holds the lease or the attempt already
                finished differently.
        """
        cost = total_cost(cost_usd, usage)

        def event(key: str) -> ActivityCompleted:
            return ActivityCompleted(key=key, outputs=dict(output), cost_usd=cost)

        return await self._report(
            attempt_id,
            worker_id,
            client_id,
            "completed",
            event,
            cost,
            usage,
            claim_next=claim_next,
            slot=slot,
        )

    async def fail(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        error: ErrorInfo,
        cost_usd: decimal.Decimal | None,
        usage: Sequence[Mapping[str, Any]],
        client_id: str = "dev",
        *,
        claim_next: bool = False,
        slot: ReportSlot | None = None,
    ) -> dict[str, Any]:
        """Record a failed attempt; the engine retries it if policy allows.
        ``claim_next`` and ``slot`` as for :meth:`complete` (a retry due at once
        is such a next activity).

        Raises:
            NotFoundError: unknown attempt.
            ConflictError: another worker holds the lease or the attempt already
                finished differently.
        """
        cost = total_cost(cost_usd, usage)

        def event(key: str) -> ActivityFailed:
            return ActivityFailed(key=key, error=error, cost_usd=cost)

        return await self._report(
            attempt_id,
            worker_id,
            client_id,
            "failed",
            event,
            cost,
            usage,
            error=error,
            claim_next=claim_next,
            slot=slot,
        )

    async def _report(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        client_id: str,
        outcome: str,
        make_event: Any,
        cost: decimal.Decimal,
        usage: Sequence[Mapping[str, Any]],
        error: ErrorInfo | None = None,
        *,
        claim_next: bool = False,
        slot: ReportSlot | None = None,
    ) -> dict[str, Any]:
        engine = self.engine
        now = engine.clock.now()

        def report_tx(tx: Tx, effects: Effects, loaded: Loaded | None = None, /) -> ReportAnswer:
            # Lock the run first, then read its activities: a transition of another
            # server (a lease expiry, a cancel) may have changed them just before.
            # The same rows serve the transition (recording the attempt changes none).
            # A report group may have locked and read both already (``loaded``).
            run: Row | None
            if loaded is not None:
                run, activities = loaded
            else:
                run = tx.one("lock_workflow_of_attempt", attempt_id=str(attempt_id))
                activities = (
                    tx.all("workflow_activities", workflow_id=str(run["id"])) if run else []
                )
            if run is not None:  # locked: what the report makes ready may go to parked polls
                effects.own_runs.add(uuid.UUID(str(run["id"])))
            wanted = str(attempt_id)
            row = next((a for a in activities if str(a["attempt_id"]) == wanted), None)

            def record_and_decide(
                recorded: str, row: Row, run: Row, held: list[Emit] | None = None
            ) -> Transition:
                """Keep the attempt as ``recorded``, then let the engine decide its event
                (its events go to ``held`` when given)."""
                record_attempt(
                    tx,
                    attempt_id=str(attempt_id),
                    row=row,
                    outcome=recorded,
                    now=now,
                    error=error,
                    cost=cost,
                    usage=list(usage),
                )
                return engine.transition_row(
                    tx,
                    effects,
                    row["workflow_id"],
                    lambda _: make_event(row["key"]),
                    now,
                    locked=run,
                    activities=activities,
                    hold_events=held,
                )

            if run is None or row is None or row["status"] not in ("running", "cancelled"):
                recorded = finished_attempt(tx, attempt_id, worker_id, outcome)
                if run is not None:
                    self.release_unseen_next(
                        tx, effects, activities, recorded, worker_id, client_id, now
                    )
                return {
                    "acknowledged": True,
                    "will_retry": False,
                    "warnings": [f"attempt already reported as {outcome}"],
                }
            if not holds_lease(row, worker_id, client_id):
                raise ConflictError(
                    f"activity {attempt_id} is leased by another worker",
                    details={"status": row["status"]},
                )
            if row["status"] == "cancelled":
                past = tx.one("get_attempt", id=str(attempt_id))
                if past is not None:  # this cancelled attempt was reported already
                    same_kind = (past["error"] is None) == (error is None)
                    if past["worker_id"] != worker_id or not same_kind:
                        raise ConflictError(
                            f"activity {attempt_id} was already reported differently",
                            details={"outcome": past["outcome"]},
                        )
                    return {
                        "acknowledged": True,
                        "will_retry": False,
                        "warnings": ["the workflow was cancelled; this result was discarded"],
                    }
                record_and_decide("cancelled", row, run)
                return {
                    "acknowledged": True,
                    "will_retry": False,
                    "warnings": ["the workflow was cancelled; this result was discarded"],
                }
            queue_woken_before = row["queue"] in effects.queues
            # The transition's events and those of the claimed next step (if any)
            # are appended together, in that order, in one statement.
            held: list[Emit] = []
            result = record_and_decide(outcome, row, run, held)
            put = result.put_for(row["key"])
            will_retry = bool(put is not None and put.new_attempt)
            answer: dict[str, Any] = {
                "acknowledged": True,
                "will_retry": will_retry,
                "warnings": [],
            }
            hand_out = (
                self.claim_next(
                    tx,
                    effects,
                    result,
                    run,
                    activities,
                    row["queue"],
                    worker_id,
                    client_id,
                    now,
                    reported=str(attempt_id),
                    queue_woken_before=queue_woken_before,
                    hold_events=held,
                )
                if claim_next
                else None
            )

            def finish() -> dict[str, Any]:
                # The claim went out with the transition; a report group asks
                # for its answer once every report of the group has claimed.
                if hand_out is not None:
                    answer["activities"] = hand_out()
                if append_events(tx, result.state.id, held, now):
                    effects.workflows.add(result.state.id)
                return answer

            return finish

        try:
            if slot is None:
                answer: dict[str, Any] = await engine.write(
                    lambda tx, effects: settled(report_tx(tx, effects))
                )
            else:
                answer = await slot.write(str(attempt_id), report_tx)
        except KflowError:
            raise
        except Exception as exc:
            answer = await self._report_after_engine_error(
                attempt_id, worker_id, client_id, outcome, error, cost, usage, exc
            )
        if outcome == "completed":
            answer.pop("will_retry", None)
        if claim_next:
            answer.setdefault("activities", [])
        return answer

    async def _report_after_engine_error(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        client_id: str,
        outcome: str,
        error: ErrorInfo | None,
        cost: decimal.Decimal,
        usage: Sequence[Mapping[str, Any]],
        exc: Exception,
    ) -> dict[str, Any]:
        """The transition after a report broke: keep the result, fail the run, acknowledge.

        Acknowledging matters: a worker that got an error would report again
        (or, after its lease expired, the work would run again) for ever.
        """
        engine = self.engine
        now = engine.clock.now()
        log.exception("engine.report_failed", activity_id=str(attempt_id), outcome=outcome)

        def keep_tx(tx: Tx, effects: Effects) -> str | None:
            row = tx.one("activity_by_attempt", attempt_id=str(attempt_id))
            if row is None or not holds_lease(row, worker_id, client_id):
                return None
            record_attempt(
                tx,
                attempt_id=str(attempt_id),
                row=row,
                outcome=outcome,
                now=now,
                error=error,
                cost=cost,
                usage=list(usage),
            )
            return str(row["workflow_id"])

        workflow_id = await engine.write(keep_tx)
        if workflow_id is None:
            raise exc
        reason = (
            f"internal error while recording the result of activity {attempt_id}: "
            f"{type(exc).__name__}: {exc}"
        )[:2000]
        await engine.fail_run_directly(workflow_id, reason)
        return {
            "acknowledged": True,
            "will_retry": False,
            "warnings": [
                "the engine could not apply this result; the workflow was failed "
                "(see its error_message)"
            ],
        }
