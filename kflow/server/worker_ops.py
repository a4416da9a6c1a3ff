"""The worker side of the engine: claim, heartbeat, complete, fail (PROTOCOL §3).

Each operation is one transaction. A claim marks activities ``running``
under a lease owned by the polling ``worker_id``; only that worker may then
heartbeat, complete or fail the attempt (its id is the wire's
``activity_id``). Reports are idempotent for the worker that made them.

Claims and releases are here; the items a claim hands out are
:mod:`kflow.server.worker_claims`, heartbeats and reports
:mod:`kflow.server.worker_reports`, lease ownership
:mod:`kflow.server.worker_leases`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kflow.server.engine import Effects, Engine
from kflow.server.worker_leases import holds_lease
from kflow.server.worker_reports import WorkerReports, total_cost
from kflow.store.base import Tx


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
            effects.claimed_queues.add(queue)
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
            return self._hand_out(tx, effects, rows, worker_id, now)

        claimed: list[dict[str, Any]] = await engine.write(claim_tx)
        return claimed

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
                released += self.release_claimed(
                    tx, effects, item["workflow_id"], item["activity_key"], item["activity_id"],
                    item["worker"], worker_id, "the poll was abandoned", now,
                )  # fmt: skip
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


__all__ = ["WorkerOps", "holds_lease", "total_cost"]
