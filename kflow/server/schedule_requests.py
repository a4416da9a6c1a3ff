"""Schedule request bodies to :class:`~kflow.server.schedules.ScheduleSpec` (PROTOCOL §6).

:func:`parse_create` and :func:`parse_patch` name every bad field in one
:class:`~kflow.errors.ValidationFailed` (a 422 with ``field_errors``).
Unknown fields are ignored.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

from kflow.errors import ValidationFailed
from kflow.server.schedule_times import check_cron, interval_micros, parse_timezone
from kflow.server.schedules import ScheduleSpec, whole

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
NAME_MAX = 200
TEXT_MAX = 256
OVERLAP_POLICIES = ("skip", "allow")
#: Fields a client may set (on create) or change (with PATCH).
MUTABLE = (
    "name",
    "definition_name",
    "definition_version",
    "input",
    "cron",
    "interval_seconds",
    "timezone",
    "overlap_policy",
    "enabled",
)


class _Checker:
    """Validates a merged field mapping, collecting every problem by field name."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.errors: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    def text(self, name: str, *, required: bool, max_length: int = TEXT_MAX) -> str | None:
        value = self.values.get(name)
        if value is None:
            if required:
                self.add(name, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(name, "expected a non-empty string")
            return None
        if len(value) > max_length:
            self.add(name, f"must be at most {max_length} characters")
            return None
        return value

    def spec(self) -> ScheduleSpec:
        name = self.text("name", required=True, max_length=NAME_MAX)
        if name is not None and not NAME.match(name):
            self.add("name", f"must match {NAME.pattern} (letters, digits, _ and -)")
        definition_name = self.text("definition_name", required=True)
        version = self.text("definition_version", required=False)
        data = self.values.get("input")
        if data is not None and not isinstance(data, dict):
            self.add("input", "expected an object")
        zone_name = self.text("timezone", required=False) or "UTC"
        zone = None
        if "timezone" not in self.errors:
            try:
                zone = parse_timezone(zone_name)
            except ValueError as exc:
                self.add("timezone", str(exc))
        cron, interval = self._cadence(zone)
        policy = self.values.get("overlap_policy")
        if policy is not None and policy not in OVERLAP_POLICIES:
            self.add("overlap_policy", f"must be one of {', '.join(OVERLAP_POLICIES)}")
        enabled = self.values.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            self.add("enabled", "expected true or false")
        if self.errors:
            summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.errors.items())
            raise ValidationFailed(f"invalid schedule: {summary}", self.errors)
        assert name is not None
        assert definition_name is not None
        return ScheduleSpec(
            name=name,
            definition_name=definition_name,
            definition_version=version,
            input=dict(data or {}),
            cron=cron,
            interval_seconds=interval,
            timezone=zone_name,
            overlap_policy=policy or "skip",
            enabled=True if enabled is None else enabled,
        )

    def _cadence(self, zone: zoneinfo.ZoneInfo | None) -> tuple[str | None, float | None]:
        cron = self.values.get("cron")
        interval = self.values.get("interval_seconds")
        if (cron is None) == (interval is None):
            message = (
                "give exactly one of cron and interval_seconds"
                if cron is not None
                else "one of cron and interval_seconds is required"
            )
            self.add("cron", message)
            self.add("interval_seconds", message)
            return None, None
        if cron is not None:
            if not isinstance(cron, str):
                self.add("cron", "expected a string such as '*/5 * * * *'")
                return None, None
            try:
                return check_cron(cron, zone), None
            except ValueError as exc:
                self.add("cron", str(exc))
                return None, None
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            self.add("interval_seconds", f"expected a number, got {type(interval).__name__}")
            return None, None
        try:
            interval_micros(interval)
        except ValueError as exc:
            self.add("interval_seconds", str(exc))
            return None, None
        return None, whole(float(interval))


def parse_create(data: Mapping[str, Any]) -> ScheduleSpec:
    """The spec of a ``POST /schedules`` body (absent or null optional fields take defaults).

    Raises:
        ValidationFailed: any bad field; ``field_errors`` names each.
    """
    return _Checker({k: data.get(k) for k in MUTABLE}).spec()


def parse_patch(current: ScheduleSpec, data: Mapping[str, Any]) -> ScheduleSpec:
    """``current`` changed by a ``PATCH`` body (any subset of the mutable fields).

    Setting ``cron`` drops ``interval_seconds`` and the other way round;
    changing ``definition_name`` without ``definition_version`` follows the
    newest version of the new definition. A null optional field returns to
    its default.

    Raises:
        ValidationFailed: any bad field, or a schedule left without (or with
            both) ``cron`` and ``interval_seconds``.
    """
    merged: dict[str, Any] = {
        "name": current.name,
        "definition_name": current.definition_name,
        "definition_version": current.definition_version,
        "input": dict(current.input),
        "cron": current.cron,
        "interval_seconds": current.interval_seconds,
        "timezone": current.timezone,
        "overlap_policy": current.overlap_policy,
        "enabled": current.enabled,
    }
    given = {k: data[k] for k in MUTABLE if k in data}
    merged.update(given)
    if given.get("cron") is not None and "interval_seconds" not in given:
        merged["interval_seconds"] = None
    if given.get("interval_seconds") is not None and "cron" not in given:
        merged["cron"] = None
    if (
        "definition_name" in given
        and "definition_version" not in given
        and given["definition_name"] != current.definition_name
    ):
        merged["definition_version"] = None
    checker = _Checker(merged)
    if "enabled" in given and given["enabled"] is None:
        checker.add("enabled", "expected true or false")
    return checker.spec()
