"""Timed transitions: due activities, expired leases, signal and workflow timeouts,
and recurring schedules.

The scheduler calls these. Each step reads a bounded batch of due items and
then handles every item in its own transaction (one transition per
transaction), re-checking inside it that the item is still due — another
server, or a report that just arrived, may have dealt with it. If handling
one item fails unexpectedly, its run is failed directly (with the error
named) so that one bad run can never block the timers of all the others.
Schedules are fired by :class:`~kflow.server.schedule_firing.ScheduleFirer`.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from kflow._types import ActivityStatus
from kflow.errors import KflowError
from kflow.server.engine import Effects, Engine
from kflow.server.persistence import record_attempt
from kflow.server.schedule_firing import ScheduleFirer
from kflow.server.state import (
    ActivityFailed,
    ErrorInfo,
    SignalTimedOut,
    WorkflowState,
    WorkflowTimedOut,
)
from kflow.store.base import Row, Tx
from kflow.store.codec import load_time

BATCH = 200

#: A queue counts as polled when a worker asked for work within this window.
WORKER_SEEN_WINDOW = dt.timedelta(seconds=90)

log = structlog.get_logger("kflow.scheduler")

Handler = Callable[..., None]


class TimerOps:
    """Transitions driven by the clock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.schedules = ScheduleFirer(engine)

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

    async def _each_due(self, query: str, what: str, handle: Handler) -> int:
        """Handle every row of ``query`` in its own transaction; returns how many were due."""
        engine = self.engine
        now = engine.clock.now()
        rows: list[Row] = await engine.store.read(
            lambda tx: tx.all(query, now=tx.time(now), limit=BATCH)
        )
        for row in rows:
            try:
                await engine.write(functools.partial(handle, row=row, now=now))
            except KflowError:
                raise
            except Exception as exc:
                workflow_id = row.get("workflow_id") or row["id"]
                log.exception(
                    "scheduler.transition_failed",
                    what=what,
                    workflow_id=str(workflow_id),
                    activity_key=row.get("key"),
                )
                subject = f" of activity {row['key']!r}" if row.get("key") else ""
                await engine.fail_run_directly(
                    workflow_id,
                    f"internal error while handling the {what}{subject}: "
                    f"{type(exc).__name__}: {exc}"[:2000],
                )
        return len(rows)

    async def expire_leases(self) -> int:
        """Fail attempts whose worker stopped heartbeating (retryable ``LEASE_EXPIRED``)."""
        return await self._each_due("expired_leases", "lease expiry", self._expire_one)

    def _expire_one(self, tx: Tx, effects: Effects, *, row: Row, now: dt.datetime) -> None:
        self.engine.lock(tx, row["workflow_id"])  # then re-read under the run's lock
        current = tx.one("activity_by_key", workflow_id=row["workflow_id"], key=row["key"])
        expired_at = None if current is None else load_time(current["lease_expires_at"])
        if (
            current is None
            or expired_at is None
            or expired_at > now
            or current["attempt_id"] != row["attempt_id"]
            or current["status"] != "running"
        ):
            return  # reported, re-leased or extended meanwhile
        error = ErrorInfo(
            code="LEASE_EXPIRED",
            retryable=True,
            message=f"worker {current['worker_id']!r} stopped reporting; its lease expired "
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
        self.engine.transition_row(
            tx,
            effects,
            row["workflow_id"],
            functools.partial(_lease_expired, row["key"], error),
            now,
        )

    async def signal_timeouts(self) -> int:
        """Apply ``on_timeout`` to activities that waited too long for a signal."""
        return await self._each_due("due_signal_timeouts", "signal timeout", self._signal_one)

    def _signal_one(self, tx: Tx, effects: Effects, *, row: Row, now: dt.datetime) -> None:
        self.engine.lock(tx, row["workflow_id"])  # then re-read under the run's lock
        current = tx.one("activity_by_key", workflow_id=row["workflow_id"], key=row["key"])
        if current is None or current["status"] != "waiting" or current["wait_signal"] is None:
            return  # the signal arrived meanwhile
        self.engine.transition_row(
            tx, effects, row["workflow_id"], functools.partial(_signal_timed_out, row["key"]), now
        )

    async def workflow_timeouts(self) -> int:
        """Fail runs past ``settings.timeout`` with a reason naming what was stuck."""
        return await self._each_due("due_workflow_timeouts", "workflow timeout", self._timeout_one)

    def _timeout_one(self, tx: Tx, effects: Effects, *, row: Row, now: dt.datetime) -> None:
        engine = self.engine
        state = engine.load_state(tx, engine.lock(tx, row["id"]))
        if state.status.is_terminal:
            return
        reason = stuck_reason(tx, state, now)
        engine.transition(tx, effects, state, WorkflowTimedOut(reason=reason), now)

    async def fire_schedules(self) -> int:
        """Fire due schedules (at most one run per schedule and period, across servers);
        returns how many were due."""
        return len(await self.schedules.fire_due(BATCH))

    async def next_due(self) -> dt.datetime | None:
        """The earliest time any timer (or schedule) is due, or None when nothing waits."""

        def next_tx(tx: Tx) -> dt.datetime | None:
            times = [
                _aggregate_time(tx, q)
                for q in (
                    "next_due_activity",
                    "next_lease_expiry",
                    "next_signal_timeout",
                    "next_workflow_timeout",
                    "next_schedule_fire",
                )
            ]
            found = [t for t in times if t is not None]
            return min(found) if found else None

        result: dt.datetime | None = await self.engine.store.read(next_tx)
        return result


def _lease_expired(key: str, error: ErrorInfo, _state: WorkflowState) -> ActivityFailed:
    return ActivityFailed(key=key, error=error)


def _signal_timed_out(key: str, _state: WorkflowState) -> SignalTimedOut:
    return SignalTimedOut(key=key)


def _aggregate_time(tx: Tx, query: str, **params: Any) -> dt.datetime | None:
    """The ``at`` column of a one-row ``MIN``/``MAX`` query (None when there is no time)."""
    row = tx.one(query, **params)
    return None if row is None else load_time(row["at"])


def stuck_reason(tx: Tx, state: Any, now: dt.datetime) -> str:
    """Why a run did not finish in time, naming its unfinished activities."""
    timeout = state.definition.settings.timeout_seconds
    parts: list[str] = []
    for key, act in state.activities.items():
        queue = state.definition.activity(key).worker
        if act.status == ActivityStatus.PENDING:
            seen = _aggregate_time(tx, "queue_last_seen", queue=queue)
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
