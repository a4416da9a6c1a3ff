"""The worker side of the engine: claim, heartbeat, complete, fail (PROTOCOL §3).

Each operation is one transaction. A claim marks activities ``running``
under a lease owned by the polling ``worker_id``; only that worker may then
heartbeat, complete or fail the attempt (its id is the wire's
``activity_id``). Reports are idempotent for the worker that made them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from kflow.errors import ConflictError, KflowError, NotFoundError, TemplateError
from kflow.server.engine import Effects, Engine
from kflow.server.persistence import append_events, record_attempt
from kflow.server.state import ZERO, ActivityCompleted, ActivityFailed, Emit, ErrorInfo
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_time
from kflow.templates import reveal_secrets

log = structlog.get_logger("kflow.engine")


def holds_lease(row: Row, worker_id: str, client_id: str) -> bool:
    """Whether ``worker_id`` of ``client_id`` holds the lease recorded in ``row``."""
    return row["worker_id"] == worker_id and row["lease_client"] in (None, client_id)


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


class WorkerOps:
    """Claims and reports of workers."""

    def __init__(self, engine: Engine, *, touch_interval_seconds: float = 5.0) -> None:
        self.engine = engine
        self._touch_interval = dt.timedelta(seconds=touch_interval_seconds)
        self._last_touch: dict[str, dt.datetime] = {}

    # ---- poll --------------------------------------------------------------------

    async def claim(
        self, queue: str, worker_id: str, limit: int, client_id: str = "dev"
    ) -> list[dict[str, Any]]:
        """Claim up to ``limit`` ready activities of ``queue`` for ``worker_id``.

        The lease belongs to ``worker_id`` *and* the authenticated ``client_id``.
        Secrets are substituted inside the claim's transaction: an activity
        naming a secret the server does not know fails (``TEMPLATE_ERROR``)
        instead of being handed out or left leased.
        """
        engine = self.engine
        now = engine.clock.now()
        grace = int(engine.settings.lease_grace_seconds * 1_000_000)
        touch = self._should_touch(worker_id, now)

        def claim_tx(tx: Tx, effects: Effects) -> list[dict[str, Any]]:
            rows = tx.all(
                "claim_activities",
                queue=queue,
                worker_id=worker_id,
                client_id=client_id,
                now=tx.time(now),
                limit=limit,
                lease_grace_micros=grace,
            )
            if touch:
                tx.run("touch_worker", worker_id=worker_id, queue=queue, now=tx.time(now))
            items: list[dict[str, Any]] = []
            for row in rows:
                try:
                    items.append(self._poll_item(row))
                except TemplateError as exc:
                    self._fail_unsendable(tx, effects, row, now, str(exc))
            for workflow_id in {item["workflow_id"] for item in items}:
                tx.run("mark_workflow_running", id=workflow_id, now=tx.time(now))
                events = [
                    Emit(
                        type="activity.started",
                        activity_key=i["activity_key"],
                        data={"attempt": i["attempt"], "worker_id": worker_id},
                    )
                    for i in items
                    if i["workflow_id"] == workflow_id
                ]
                append_events(tx, uuid.UUID(workflow_id), events, now)
                effects.workflows.add(uuid.UUID(workflow_id))
            return items

        claimed: list[dict[str, Any]] = await engine.write(claim_tx)
        return claimed

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

    async def release(self, items: list[dict[str, Any]], worker_id: str) -> int:
        """Put claimed activities back in their queue (the claimer never got them).

        Used when a poll's caller disconnected or was cancelled after the
        claim committed; the attempt is not counted as used.
        """
        engine = self.engine
        now = engine.clock.now()

        def release_tx(tx: Tx, effects: Effects) -> int:
            released = 0
            for item in items:
                if tx.run(
                    "release_claim",
                    attempt_id=item["activity_id"],
                    worker_id=worker_id,
                    now=tx.time(now),
                ):
                    released += 1
                    workflow_id = uuid.UUID(item["workflow_id"])
                    append_events(
                        tx,
                        workflow_id,
                        [
                            Emit(
                                type="activity.released",
                                activity_key=item["activity_key"],
                                data={"worker_id": worker_id, "reason": "the poll was abandoned"},
                            )
                        ],
                        now,
                    )
                    effects.workflows.add(workflow_id)
                    effects.queues.add(item["worker"])
            return released

        count: int = await engine.write(release_tx)
        return count

    def _should_touch(self, worker_id: str, now: dt.datetime) -> bool:
        last = self._last_touch.get(worker_id)
        if last is not None and now - last < self._touch_interval:
            return False
        if len(self._last_touch) > 10_000:
            self._last_touch.clear()
        self._last_touch[worker_id] = now
        return True

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
                self._finished_attempt(tx, attempt_id, worker_id, "heartbeat")
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

    # ---- reports -------------------------------------------------------------------------

    async def complete(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        output: Mapping[str, Any],
        cost_usd: decimal.Decimal | None,
        usage: Sequence[Mapping[str, Any]],
        client_id: str = "dev",
    ) -> dict[str, Any]:
        """Record a finished attempt's outputs and move the run forward.

        Raises:
            NotFoundError: unknown attempt.
            ConflictError: another worker holds the lease or the attempt already
                finished differently.
        """
        cost = total_cost(cost_usd, usage)

        def event(key: str) -> ActivityCompleted:
            return ActivityCompleted(key=key, outputs=dict(output), cost_usd=cost)

        return await self._report(attempt_id, worker_id, client_id, "completed", event, cost, usage)

    async def fail(
        self,
        attempt_id: uuid.UUID,
        worker_id: str,
        error: ErrorInfo,
        cost_usd: decimal.Decimal | None,
        usage: Sequence[Mapping[str, Any]],
        client_id: str = "dev",
    ) -> dict[str, Any]:
        """Record a failed attempt; the engine retries it if policy allows.

        Raises:
            NotFoundError: unknown attempt.
            ConflictError: another worker holds the lease or the attempt already
                finished differently.
        """
        cost = total_cost(cost_usd, usage)

        def event(key: str) -> ActivityFailed:
            return ActivityFailed(key=key, error=error, cost_usd=cost)

        return await self._report(
            attempt_id, worker_id, client_id, "failed", event, cost, usage, error=error
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
    ) -> dict[str, Any]:
        engine = self.engine
        now = engine.clock.now()

        def report_tx(tx: Tx, effects: Effects) -> dict[str, Any]:
            row = tx.one("activity_by_attempt", attempt_id=str(attempt_id))
            if row is None or (row["status"] != "running" and row["status"] != "cancelled"):
                self._finished_attempt(tx, attempt_id, worker_id, outcome)
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
                record_attempt(
                    tx,
                    attempt_id=str(attempt_id),
                    row=row,
                    outcome="cancelled",
                    now=now,
                    error=error,
                    cost=cost,
                    usage=list(usage),
                )
                engine.transition_row(
                    tx, effects, row["workflow_id"], lambda _: make_event(row["key"]), now
                )
                return {
                    "acknowledged": True,
                    "will_retry": False,
                    "warnings": ["the workflow was cancelled; this result was discarded"],
                }
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
            result = engine.transition_row(
                tx, effects, row["workflow_id"], lambda _: make_event(row["key"]), now
            )
            put = result.put_for(row["key"])
            will_retry = bool(put is not None and put.new_attempt)
            return {"acknowledged": True, "will_retry": will_retry, "warnings": []}

        try:
            answer: dict[str, Any] = await engine.write(report_tx)
        except KflowError:
            raise
        except Exception as exc:
            answer = await self._report_after_engine_error(
                attempt_id, worker_id, client_id, outcome, error, cost, usage, exc
            )
        if outcome == "completed":
            answer.pop("will_retry", None)
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

    @staticmethod
    def _finished_attempt(tx: Tx, attempt_id: uuid.UUID, worker_id: str, action: str) -> None:
        """Accept a repeat of what this worker already reported; refuse anything else.

        Raises:
            NotFoundError: the attempt never existed.
            ConflictError: it finished otherwise or belonged to another worker.
        """
        past = tx.one("get_attempt", id=str(attempt_id))
        if past is None:
            current = tx.one("activity_by_attempt", attempt_id=str(attempt_id))
            if current is None:
                raise NotFoundError(f"activity {attempt_id} not found")
            raise ConflictError(
                f"activity {attempt_id} is {current['status']}, not running",
                details={"status": current["status"]},
            )
        same_worker = past["worker_id"] == worker_id
        if same_worker and (
            past["outcome"] == action
            or (action == "heartbeat" and past["outcome"] in ("completed", "failed"))
        ):
            return
        if past["outcome"] == "lease_expired":
            raise ConflictError(
                f"the lease of activity {attempt_id} expired and the work was "
                "handed to another attempt",
                details={"outcome": "lease_expired"},
            )
        raise ConflictError(
            f"activity {attempt_id} already finished as {past['outcome']}",
            details={"outcome": past["outcome"]},
        )
