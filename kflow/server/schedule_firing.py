"""Firing schedules: one transaction per due schedule, and never twice per period.

For each enabled schedule whose ``next_fire_at`` has passed, one transaction

1. locks the schedule row and re-checks that it is still due at the time read;
2. collapses everything due into one firing for the most recent period
   (:func:`~kflow.server.schedule_times.plan_firing`) — no storm after downtime;
3. advances ``next_fire_at`` with a compare-and-set on the old value: only the
   server whose update changed the row goes on;
4. starts the run through the engine (``Engine.start_in_tx``) in that same
   transaction, with ``unique_key = "schedule:<name>:<epoch seconds>"``. A run
   already holding the key means the period fired before: not an error.

With ``overlap_policy: skip`` a period whose previous run has not finished
(created or running) is skipped instead (``last_skipped_at``). A schedule
whose run cannot be started (its pinned definition version is gone, the
engine failed) still advances, with ``last_error`` set, so one broken
schedule never blocks the others or the other timers.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import attrs
import structlog

from kflow._serde import format_datetime
from kflow.errors import ConflictError, KflowError, StoreError, StoreUnavailableError
from kflow.server.engine import Effects, Engine
from kflow.server.persistence import append_events
from kflow.server.schedule_times import Firing, period_key, plan_firing
from kflow.server.schedules import Schedule
from kflow.server.state import Emit
from kflow.store.base import Tx
from kflow.store.codec import load_time

log = structlog.get_logger("kflow.schedules")

#: Schedules fired per batch.
BATCH = 200
_UNFINISHED = ("created", "running")


@attrs.frozen(kw_only=True)
class FireOutcome:
    """What one attempt to fire a due schedule did.

    ``kind``: ``fired`` (a run started), ``skipped`` (overlap), ``already_fired``
    (the period's key was taken), ``moved`` (no period to fire, next time set),
    ``failed`` (the run could not start; advanced with ``last_error``) or
    ``lost`` (another server handled it, or it changed meanwhile).
    """

    kind: str
    schedule_id: str
    name: str | None = None
    period: dt.datetime | None = None
    next_fire_at: dt.datetime | None = None
    missed: int = 0
    workflow_id: str | None = None
    error: str | None = None

    def log(self) -> None:
        """Log the outcome (``schedule.<kind>``); ``lost`` is not worth a line."""
        if self.kind == "lost":
            return
        fields: dict[str, Any] = {
            "schedule": self.name,
            "schedule_id": self.schedule_id,
            "period": self.period,
            "next_fire_at": self.next_fire_at,
        }
        if self.workflow_id:
            fields["workflow_id"] = self.workflow_id
        if self.missed:
            fields["missed"] = self.missed
        if self.kind == "failed":
            log.warning("schedule.failed", error=self.error, **fields)
        elif self.kind == "skipped":
            log.info("schedule.skipped", reason="previous run not finished", **fields)
        else:
            log.info(f"schedule.{self.kind}", **fields)


class ScheduleFirer:
    """Fires due schedules through the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def fire_due(self, limit: int = BATCH) -> list[FireOutcome]:
        """Fire up to ``limit`` due schedules; returns what happened to each.

        Raises:
            StoreError: the database failed (the scheduler retries the pass).
                An error of one schedule's transaction other than an unreachable
                database is recorded on that schedule instead.
        """
        engine = self.engine
        now = engine.clock.now()
        rows = await engine.store.read(
            lambda tx: tx.all("due_schedules", now=tx.time(now), limit=limit)
        )
        outcomes = []
        for row in rows:
            due = load_time(row["next_fire_at"])
            assert due is not None
            outcome = await self._fire(str(row["id"]), due, now)
            outcome.log()
            outcomes.append(outcome)
        return outcomes

    async def _fire(self, schedule_id: str, due: dt.datetime, now: dt.datetime) -> FireOutcome:
        try:
            outcome: FireOutcome = await self.engine.write(
                functools.partial(self._fire_tx, schedule_id=schedule_id, due=due, now=now)
            )
        except StoreUnavailableError:
            raise
        except Exception as exc:
            # Rolled back whole; advance alone so that this schedule cannot stall the others.
            log.exception("schedule.fire_error", schedule_id=schedule_id)
            reason = _reason(exc)
            outcome = await self.engine.write(
                functools.partial(
                    self._failed_tx, schedule_id=schedule_id, due=due, now=now, error=reason[:2000]
                )
            )
        return outcome

    @staticmethod
    def _locked_due(tx: Tx, schedule_id: str, due: dt.datetime) -> Schedule | None:
        """The schedule, locked, if it is still enabled and due at ``due``."""
        row = tx.one("lock_schedule", id=schedule_id)
        if row is None:
            return None
        schedule = Schedule.from_row(row)
        if not schedule.spec.enabled or schedule.next_fire_at != due:
            return None
        return schedule

    def _fire_tx(
        self, tx: Tx, effects: Effects, *, schedule_id: str, due: dt.datetime, now: dt.datetime
    ) -> FireOutcome:
        schedule = self._locked_due(tx, schedule_id, due)
        if schedule is None:
            return FireOutcome(kind="lost", schedule_id=schedule_id)
        spec = schedule.spec
        plan = plan_firing(spec.cadence(), due, now)
        seen = functools.partial(
            FireOutcome,
            schedule_id=schedule_id,
            name=spec.name,
            period=plan.fire_at,
            next_fire_at=plan.next_fire_at,
            missed=plan.missed,
        )
        cas = _cas_params(tx, schedule_id, due, plan.next_fire_at, plan.missed)
        if plan.fire_at is None:
            moved = tx.run("reschedule_schedule", **cas, error=None)
            return seen(kind="moved" if moved else "lost")
        previous = _unfinished(tx, schedule.last_run_id)
        if previous is not None and spec.overlap_policy == "skip":
            skipped = tx.run("skip_schedule", **cas, skipped_at=tx.time(plan.fire_at))
            return seen(kind="skipped" if skipped else "lost", workflow_id=previous)
        if not tx.run("fire_schedule", **cas, fired_at=tx.time(plan.fire_at)):
            return seen(kind="lost")
        try:
            started = self.engine.start_in_tx(
                tx,
                effects,
                spec.definition_name,
                version=spec.definition_version,
                input=spec.input,
                unique_key=period_key(spec.name, plan.fire_at),
                now=now,
            )
        except ConflictError as exc:  # raised before the start wrote anything
            held = exc.details.get("workflow_id")
            if held is not None:
                tx.run("set_schedule_run", id=schedule_id, run_id=str(held))
            return seen(kind="already_fired", workflow_id=held)
        tx.run("set_schedule_run", id=schedule_id, run_id=str(started.id))
        event = Emit(
            type="schedule.fired",
            data={
                "schedule_id": schedule_id,
                "schedule": spec.name,
                "period": format_datetime(plan.fire_at),
                "missed": plan.missed,
            },
        )
        append_events(tx, started.id, [event], now)
        return seen(kind="fired", workflow_id=str(started.id))

    def _failed_tx(
        self,
        tx: Tx,
        effects: Effects,
        *,
        schedule_id: str,
        due: dt.datetime,
        now: dt.datetime,
        error: str,
    ) -> FireOutcome:
        schedule = self._locked_due(tx, schedule_id, due)
        if schedule is None:
            return FireOutcome(kind="lost", schedule_id=schedule_id)
        plan: Firing | None = None
        try:
            plan = plan_firing(schedule.spec.cadence(), due, now)
        except ValueError as exc:  # the cadence itself is broken: stop until it is changed
            error = f"{error}; cannot compute the next fire time: {exc}"
        next_fire = None if plan is None else plan.next_fire_at
        missed = 0 if plan is None else plan.missed
        cas = _cas_params(tx, schedule_id, due, next_fire, missed)
        tx.run("reschedule_schedule", **cas, error=error)
        return FireOutcome(
            kind="failed",
            schedule_id=schedule_id,
            name=schedule.spec.name,
            period=None if plan is None else plan.fire_at,
            next_fire_at=next_fire,
            missed=missed,
            error=error,
        )


def _cas_params(
    tx: Tx, schedule_id: str, due: dt.datetime, next_fire: dt.datetime | None, missed: int
) -> dict[str, Any]:
    """Parameters of the compare-and-set updates: ``next_fire_at`` from ``due`` to ``next_fire``."""
    return {
        "id": schedule_id,
        "due": tx.time(due),
        "next_fire_at": tx.time(next_fire),
        "missed": missed,
    }


def _reason(exc: Exception) -> str:
    """What ``last_error`` says about ``exc`` (database text stays in the log)."""
    if isinstance(exc, StoreError):
        return "the database refused to start the run; see the server log"
    if isinstance(exc, KflowError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _unfinished(tx: Tx, workflow_id: str | None) -> str | None:
    """``workflow_id`` if that run exists and has not finished."""
    if workflow_id is None:
        return None
    row = tx.one("get_workflow", id=workflow_id)
    return workflow_id if row is not None and row["status"] in _UNFINISHED else None
