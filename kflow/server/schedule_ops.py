"""Schedule management: create, list, get, change and delete schedules, each in one transaction.

The routes call these; firing lives in :mod:`kflow.server.schedule_firing`.
Times come from ``engine.clock`` only. A new or re-enabled schedule, or one
whose cadence changed, gets the first period after "now" as its
``next_fire_at``; a disabled one has none. After a write that set
``next_fire_at``, callers arm the scheduler with it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from kflow.errors import ConflictError, NotFoundError
from kflow.ids import new_id
from kflow.server.engine import Effects, Engine
from kflow.server.schedule_requests import parse_patch
from kflow.server.schedule_times import next_after
from kflow.server.schedules import Schedule, ScheduleSpec
from kflow.store.base import Store, Tx


def _row(tx: Tx, schedule_id: uuid.UUID, *, lock: bool = False) -> Schedule:
    row = tx.one("lock_schedule" if lock else "get_schedule", id=str(schedule_id))
    if row is None:
        raise NotFoundError(f"schedule {schedule_id} not found")
    return Schedule.from_row(row)


def _name_taken(tx: Tx, name: str) -> ConflictError:
    held = tx.one("schedule_by_name", name=name)
    details: dict[str, Any] = {"field": "name"}
    if held is not None:
        details["schedule_id"] = str(held["id"])
    return ConflictError(f"a schedule named {name!r} already exists", details=details)


async def create_schedule(engine: Engine, spec: ScheduleSpec) -> Schedule:
    """Store a new schedule (its first ``next_fire_at`` is the first period after now).

    Raises:
        NotFoundError: no such definition (or version).
        ConflictError: a schedule with this name exists.
    """
    now = engine.clock.now()
    next_fire = next_after(spec.cadence(), now) if spec.enabled else None
    schedule_id = new_id()

    def create_tx(tx: Tx, effects: Effects) -> Schedule:
        engine.definitions.load(tx, spec.definition_name, spec.definition_version)
        inserted = tx.run(
            "insert_schedule",
            id=str(schedule_id),
            **spec.params(tx),
            next_fire_at=tx.time(next_fire),
            now=tx.time(now),
        )
        if not inserted:
            raise _name_taken(tx, spec.name)
        if next_fire is not None:  # arms this server's scheduler and tells the others
            effects.timers.append(next_fire)
        return _row(tx, schedule_id)

    created: Schedule = await engine.write(create_tx)
    return created


async def list_schedules(store: Store) -> list[Schedule]:
    """Every schedule, by name."""
    rows = await store.read(lambda tx: tx.all("list_schedules"))
    return [Schedule.from_row(row) for row in rows]


async def get_schedule(store: Store, schedule_id: uuid.UUID) -> Schedule:
    """One schedule.

    Raises:
        NotFoundError: no such schedule.
    """
    found: Schedule = await store.read(lambda tx: _row(tx, schedule_id))
    return found


def _next_fire(current: Schedule, spec: ScheduleSpec, now: dt.datetime) -> dt.datetime | None:
    """``next_fire_at`` after a change: kept unless enabling or the cadence changed."""
    if not spec.enabled:
        return None
    if (
        current.spec.enabled
        and current.next_fire_at is not None
        and spec.same_cadence(current.spec)
    ):
        return current.next_fire_at
    return next_after(spec.cadence(), now)


async def update_schedule(
    engine: Engine, schedule_id: uuid.UUID, changes: Mapping[str, Any]
) -> Schedule:
    """Apply a PATCH body to a schedule, atomically with respect to firing.

    Raises:
        NotFoundError: no such schedule, or no such (new) definition or version.
        kflow.errors.ValidationFailed: a bad field.
        ConflictError: renamed to the name of another schedule.
    """
    now = engine.clock.now()

    def update_tx(tx: Tx, effects: Effects) -> Schedule:
        current = _row(tx, schedule_id, lock=True)
        spec = parse_patch(current.spec, changes)
        old = current.spec
        if (spec.definition_name, spec.definition_version) != (
            old.definition_name,
            old.definition_version,
        ):
            engine.definitions.load(tx, spec.definition_name, spec.definition_version)
        if spec.name != old.name and tx.one("schedule_by_name", name=spec.name) is not None:
            raise _name_taken(tx, spec.name)
        next_fire = _next_fire(current, spec, now)
        tx.run(
            "update_schedule",
            id=str(schedule_id),
            **spec.params(tx),
            next_fire_at=tx.time(next_fire),
            now=tx.time(now),
        )
        if next_fire is not None:  # arms this server's scheduler and tells the others
            effects.timers.append(next_fire)
        return _row(tx, schedule_id)

    updated: Schedule = await engine.write(update_tx)
    return updated


async def delete_schedule(store: Store, schedule_id: uuid.UUID) -> None:
    """Delete a schedule (the runs it started stay).

    Raises:
        NotFoundError: no such schedule.
    """

    def delete_tx(tx: Tx) -> None:
        if not tx.run("delete_schedule", id=str(schedule_id)):
            raise NotFoundError(f"schedule {schedule_id} not found")

    await store.write(delete_tx)
