"""Recurring schedules: the record and its wire form (PROTOCOL §6).

:class:`ScheduleSpec` is what a client configures; :class:`Schedule` is a
stored schedule (the spec plus its firing state). Request bodies become specs
in :mod:`kflow.server.schedule_requests`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from kflow.server.schedule_times import Cadence
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_time


@attrs.frozen(kw_only=True)
class ScheduleSpec:
    """A schedule as configured: what to start, and when."""

    name: str
    definition_name: str
    definition_version: str | None = None
    input: Mapping[str, Any] = attrs.field(factory=dict)
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    overlap_policy: str = "skip"
    enabled: bool = True

    def cadence(self) -> Cadence:
        """When it fires.

        Raises:
            ValueError: the stored cadence is no longer valid (a zone removed
                from the tz database).
        """
        return Cadence.build(
            cron=self.cron, interval_seconds=self.interval_seconds, timezone=self.timezone
        )

    def same_cadence(self, other: ScheduleSpec) -> bool:
        """Whether ``other`` fires at the same times (same cron or interval, same zone)."""
        return (self.cron, self.interval_seconds, self.timezone) == (
            other.cron,
            other.interval_seconds,
            other.timezone,
        )

    def params(self, tx: Tx) -> dict[str, Any]:
        """The spec as parameters of ``insert_schedule`` / ``update_schedule``."""
        return {
            "name": self.name,
            "definition_name": self.definition_name,
            "definition_version": self.definition_version,
            "input": tx.json(dict(self.input)),
            "cron": self.cron,
            "interval_seconds": None
            if self.interval_seconds is None
            else float(self.interval_seconds),
            "timezone": self.timezone,
            "overlap_policy": self.overlap_policy,
            "enabled": self.enabled,
        }


@attrs.frozen(kw_only=True)
class Schedule:
    """A stored schedule: its spec and its firing state."""

    id: uuid.UUID
    spec: ScheduleSpec
    next_fire_at: dt.datetime | None
    last_fired_at: dt.datetime | None
    last_skipped_at: dt.datetime | None
    last_run_id: str | None
    missed_count: int
    skipped_count: int
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row) -> Schedule:
        """A ``schedules`` row (either dialect) as a Schedule."""
        interval = row["interval_seconds"]
        created = load_time(row["created_at"])
        updated = load_time(row["updated_at"])
        assert created is not None
        assert updated is not None
        return cls(
            id=uuid.UUID(str(row["id"])),
            spec=ScheduleSpec(
                name=row["name"],
                definition_name=row["definition_name"],
                definition_version=row["definition_version"],
                input=load_json(row["input"]) or {},
                cron=row["cron"],
                interval_seconds=None if interval is None else whole(float(interval)),
                timezone=row["timezone"],
                overlap_policy=row["overlap_policy"],
                enabled=bool(row["enabled"]),
            ),
            next_fire_at=load_time(row["next_fire_at"]),
            last_fired_at=load_time(row["last_fired_at"]),
            last_skipped_at=load_time(row["last_skipped_at"]),
            last_run_id=None if row["last_run_id"] is None else str(row["last_run_id"]),
            missed_count=int(row["missed_count"]),
            skipped_count=int(row["skipped_count"]),
            last_error=row["last_error"],
            created_at=created,
            updated_at=updated,
        )

    def wire(self) -> dict[str, Any]:
        """The JSON form of the API."""
        spec = self.spec
        return {
            "id": str(self.id),
            "name": spec.name,
            "definition_name": spec.definition_name,
            "definition_version": spec.definition_version,
            "input": dict(spec.input),
            "cron": spec.cron,
            "interval_seconds": spec.interval_seconds,
            "timezone": spec.timezone,
            "overlap_policy": spec.overlap_policy,
            "enabled": spec.enabled,
            "next_fire_at": self.next_fire_at,
            "last_fired_at": self.last_fired_at,
            "last_skipped_at": self.last_skipped_at,
            "last_run_id": self.last_run_id,
            "missed_count": self.missed_count,
            "skipped_count": self.skipped_count,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def whole(value: float) -> float:
    """Whole numbers as ``int`` (``60`` rather than ``60.0`` on the wire)."""
    return int(value) if value.is_integer() else value
