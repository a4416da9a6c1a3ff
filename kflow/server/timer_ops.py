"""Timed transitions: due activities, expired leases, signal and workflow timeouts.

The scheduler calls these; each processes a bounded batch in one transaction
and reports how many items it handled, so a backlog drains in several short
transactions instead of one long one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from kflow._types import ActivityStatus
from kflow.server.engine import Effects, Engine
from kflow.server.persistence import record_attempt
from kflow.server.state import ActivityFailed, ErrorInfo, SignalTimedOut, WorkflowTimedOut
from kflow.store.base import Tx
from kflow.store.codec import load_time

BATCH = 200

#: A queue counts as polled when a worker asked for work within this window.
WORKER_SEEN_WINDOW = dt.timedelta(seconds=90)


class TimerOps:
    """Transitions driven by the clock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def promote_due(self) -> int:
        """Move waiting activities whose time has come into their queues."""
        engine = self.engine
        now = engine.clock.now()

        def promote_tx(tx: Tx, effects: Effects) -> int:
            rows = tx.all("promote_due_activities", now=tx.time(now), limit=BATCH)
            for row in rows:
                effects.queues.add(row["queue"])
                effects.workflows.add(uuid.UUID(str(row["workflow_id"])))
            return len(rows)

        count: int = await engine.write(promote_tx)
        return count

    async def expire_leases(self) -> int:
        """Fail attempts whose worker stopped heartbeating (retryable ``LEASE_EXPIRED``)."""
        engine = self.engine
        now = engine.clock.now()

        def expire_tx(tx: Tx, effects: Effects) -> int:
            rows = tx.all("expired_leases", now=tx.time(now), limit=BATCH)
            for row in rows:
                current = tx.one("activity_by_key", workflow_id=row["workflow_id"], key=row["key"])
                if current is None or current["attempt_id"] != row["attempt_id"]:
                    continue
                expired_at = load_time(row["lease_expires_at"])
                error = ErrorInfo(
                    code="LEASE_EXPIRED",
                    retryable=True,
                    message=f"worker {row['worker_id']!r} stopped reporting; its lease expired "
                    f"at {expired_at:%Y-%m-%dT%H:%M:%SZ}",
                )
                record_attempt(
                    tx,
                    attempt_id=str(row["attempt_id"]),
                    row=current,
                    outcome="lease_expired",
                    now=now,
                    error=error,
                )
                key = row["key"]
                engine.transition_row(
                    tx,
                    effects,
                    row["workflow_id"],
                    lambda _, k=key, e=error: ActivityFailed(key=k, error=e),
                    now,
                )
            return len(rows)

        count: int = await engine.write(expire_tx)
        return count

    async def signal_timeouts(self) -> int:
        """Apply ``on_timeout`` to activities that waited too long for a signal."""
        engine = self.engine
        now = engine.clock.now()

        def signal_tx(tx: Tx, effects: Effects) -> int:
            rows = tx.all("due_signal_timeouts", now=tx.time(now), limit=BATCH)
            for row in rows:
                key = row["key"]
                engine.transition_row(
                    tx, effects, row["workflow_id"], lambda _, k=key: SignalTimedOut(key=k), now
                )
            return len(rows)

        count: int = await engine.write(signal_tx)
        return count

    async def workflow_timeouts(self) -> int:
        """Fail runs past ``settings.timeout`` with a reason naming what was stuck."""
        engine = self.engine
        now = engine.clock.now()

        def timeout_tx(tx: Tx, effects: Effects) -> int:
            rows = tx.all("due_workflow_timeouts", now=tx.time(now), limit=BATCH)
            for row in rows:
                state = engine.load_state(tx, engine.lock(tx, row["id"]))
                reason = stuck_reason(tx, state, now)
                engine.transition(tx, effects, state, WorkflowTimedOut(reason=reason), now)
            return len(rows)

        count: int = await engine.write(timeout_tx)
        return count

    async def next_due(self) -> dt.datetime | None:
        """The earliest time any timer is due, or None when nothing waits."""

        def next_tx(tx: Tx) -> dt.datetime | None:
            times = [
                load_time(tx.one(q)["at"])
                for q in (  # type: ignore[index]
                    "next_due_activity",
                    "next_lease_expiry",
                    "next_signal_timeout",
                    "next_workflow_timeout",
                )
            ]
            found = [t for t in times if t is not None]
            return min(found) if found else None

        result: dt.datetime | None = await self.engine.store.read(next_tx)
        return result


def stuck_reason(tx: Tx, state: Any, now: dt.datetime) -> str:
    """Why a run did not finish in time, naming its unfinished activities."""
    timeout = state.definition.settings.timeout_seconds
    parts: list[str] = []
    for key, act in state.activities.items():
        queue = state.definition.activity(key).worker
        if act.status == ActivityStatus.PENDING:
            seen = load_time(tx.one("queue_last_seen", queue=queue)["at"])
            if seen is None or now - seen > WORKER_SEEN_WINDOW:
                parts.append(f"no worker polls queue {queue!r} (activity {key!r} is pending)")
            else:
                parts.append(f"activity {key!r} is still queued in {queue!r}; its workers are busy")
        elif act.status == ActivityStatus.RUNNING:
            parts.append(f"activity {key!r} is still running")
        elif act.status == ActivityStatus.WAITING and act.wait_signal:
            parts.append(f"activity {key!r} waits for signal {act.wait_signal!r}")
        elif act.status == ActivityStatus.WAITING:
            parts.append(f"activity {key!r} is delayed until {act.available_at:%Y-%m-%dT%H:%M:%SZ}")
    head = f"workflow timed out after {timeout:g} s"
    return head + (": " + "; ".join(parts) if parts else "")
