"""The worker side of the engine: claim, heartbeat, complete, fail (PROTOCOL §3).

Each operation is one transaction. A claim marks activities ``running``
under a lease owned by the polling ``worker_id``; only that worker may then
heartbeat, complete or fail the attempt (its id is the wire's
``activity_id``). Reports are idempotent for the worker that made them.

Claims, releases and the items a poll hands out are here; heartbeats and
reports are :mod:`kflow.server.worker_reports`, lease ownership
:mod:`kflow.server.worker_leases`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from kflow.errors import TemplateError
from kflow.server.budgets import available, run_budget
from kflow.server.engine import Effects, Engine
from kflow.server.persistence import append_events, record_attempt
from kflow.server.state import ActivityFailed, Emit, ErrorInfo
from kflow.server.worker_leases import holds_lease
from kflow.server.worker_reports import WorkerReports, total_cost
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_time
from kflow.templates import reveal_secrets


class WorkerOps(WorkerReports):
    """Claims and reports of workers (the reports are :class:`WorkerReports`)."""

    def __init__(self, engine: Engine, *, touch_interval_seconds: float = 5.0) -> None:
        super().__init__(engine)
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
                tx.send("touch_worker", worker_id=worker_id, queue=queue, now=tx.time(now))
            items: list[dict[str, Any]] = []
            for row in rows:
                try:
                    items.append(self._poll_item(row))
                except TemplateError as exc:
                    self._fail_unsendable(tx, effects, row, now, str(exc))
            # Events of a run are appended only under the run's row lock (sorted, so
            # two claims cannot deadlock on each other): a run's history then
            # commits in id order, and a stream reading "after id N" never skips.
            runs = self.engine.lock_many(tx, {item["workflow_id"] for item in items})
            for workflow_id, run in runs.items():
                if run["status"] == "created":
                    tx.send("mark_workflow_running", id=workflow_id, now=tx.time(now))
                self._hand_out_budget(
                    tx, run, [i for i in items if i["workflow_id"] == workflow_id]
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
                append_events(tx, uuid.UUID(workflow_id), events, now)
                effects.workflows.add(uuid.UUID(workflow_id))
            return items

        claimed: list[dict[str, Any]] = await engine.write(claim_tx)
        return claimed

    def _hand_out_budget(self, tx: Tx, run: Row, items: list[dict[str, Any]]) -> None:
        """Tell each claimed attempt what its run may still spend (runs with a budget)."""
        budget = run_budget(tx, self.engine.definitions, run)
        if budget is None:
            return
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

    async def release(self, items: list[dict[str, Any]], worker_id: str) -> int:
        """Put claimed activities back in their queue (the claimer never got them).

        Used when a poll's caller disconnected or was cancelled after the
        claim committed; the attempt is not counted as used.
        """
        engine = self.engine
        now = engine.clock.now()

        def release_tx(tx: Tx, effects: Effects) -> int:
            released = 0
            for item in sorted(items, key=lambda i: i["workflow_id"]):
                self.engine.lock(tx, item["workflow_id"])  # events only under the run's lock
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


__all__ = ["WorkerOps", "holds_lease", "total_cost"]
