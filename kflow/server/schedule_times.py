"""The time math of recurring schedules: when a cadence fires, and how a backlog collapses.

Pure functions on aware datetimes — no clock, no I/O — so every rule here is
tested with plain values. Results are UTC.

A :class:`Cadence` is one of

- an **interval**: periods at whole multiples of ``interval_seconds`` since
  the Unix epoch (UTC). Every server computes the same periods whatever it
  was doing before, a period's epoch second identifies it, and an interval
  of 3600 fires on the hour. The timezone plays no part.
- a **cron** expression of five fields (parsed by ``croniter``), evaluated
  in an IANA timezone: ``0 9 * * *`` in Europe/Paris fires at 09:00 Paris
  time in winter and in summer. Across a DST change:

  * spring forward: a wall time that does not exist fires once, at the end
    of the gap (``30 2 * * *`` fires at 03:00 that night);
  * fall back: a fixed-time job (minute and hour fields that do not start
    with ``*``) fires once, at the first of the two occurrences; a job with a
    wildcard minute or hour (``*/30 * * * *``) keeps firing on real time,
    so it fires in both occurrences (the rule of Vixie cron).

:func:`plan_firing` turns a due time and "now" into one firing for the most
recent period, the count of periods skipped on the way, and the next period
after now: a server that was down for a day fires once, not once per period.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Iterator

import attrs
from croniter import CroniterError, croniter

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = dt.timedelta(microseconds=1)
#: Largest accepted interval (about ten years).
MAX_INTERVAL_SECONDS = 10 * 366 * 86400
#: Missed cron periods are counted up to this many (a minutely cron down for a year
#: would otherwise mean half a million iterations); intervals are counted exactly.
MISSED_COUNT_CAP = 10_000
_TIMEZONE = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")


@attrs.frozen(kw_only=True)
class Cadence:
    """When a schedule fires: exactly one of ``cron`` and ``interval_us``, and a zone."""

    cron: str | None = None
    interval_us: int | None = None
    zone: zoneinfo.ZoneInfo = attrs.field(factory=lambda: zoneinfo.ZoneInfo("UTC"))

    @classmethod
    def build(
        cls, *, cron: str | None, interval_seconds: float | None, timezone: str = "UTC"
    ) -> Cadence:
        """A checked cadence.

        Raises:
            ValueError: not exactly one of ``cron`` and ``interval_seconds``, or
                one of them (or the timezone) is invalid; the message says why.
        """
        if (cron is None) == (interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        zone = parse_timezone(timezone)
        if cron is not None:
            return cls(cron=check_cron(cron, zone), zone=zone)
        assert interval_seconds is not None
        return cls(interval_us=interval_micros(interval_seconds), zone=zone)

    @property
    def fixed_time(self) -> bool:
        """A cron whose minute and hour fields are both fixed (fires once on fall-back)."""
        if self.cron is None:
            return False
        minute, hour = self.cron.split()[:2]
        return not minute.startswith("*") and not hour.startswith("*")


@attrs.frozen(kw_only=True)
class Firing:
    """What to do with a due schedule at ``now``.

    ``fire_at`` is the period to fire (None: no period lies between the due time
    and now, just move on); ``missed`` how many earlier periods are skipped;
    ``next_fire_at`` the first period after now.
    """

    fire_at: dt.datetime | None
    next_fire_at: dt.datetime
    missed: int


def parse_timezone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``.

    Raises:
        ValueError: not a known IANA zone name.
    """
    if not _TIMEZONE.match(name):
        raise ValueError(f"{name!r} is not an IANA timezone name")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown timezone {name!r} (expected an IANA name)") from None


def interval_micros(seconds: float) -> int:
    """An interval in whole microseconds.

    Raises:
        ValueError: below one second or above :data:`MAX_INTERVAL_SECONDS`.
    """
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_INTERVAL_SECONDS:
        raise ValueError(f"must be between 1 and {MAX_INTERVAL_SECONDS}")
    return round(seconds * 1_000_000)


def check_cron(expr: str, zone: zoneinfo.ZoneInfo | None = None) -> str:
    """``expr`` normalised (single spaces), if it is a valid 5-field cron that ever matches.

    Raises:
        ValueError: wrong number of fields, bad syntax, or no matching time.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    normalised = " ".join(fields)
    try:
        valid = croniter.is_valid(normalised)
    except CroniterError:
        valid = False
    if not valid:
        raise ValueError(f"{normalised!r} is not a valid cron expression")
    cadence = Cadence(cron=normalised, zone=zone or zoneinfo.ZoneInfo("UTC"))
    next_after(cadence, EPOCH + dt.timedelta(days=20000))
    return normalised


def to_micros(at: dt.datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    return (at - EPOCH) // _MICRO


def from_micros(micros: int) -> dt.datetime:
    """The UTC datetime ``micros`` microseconds after the epoch."""
    return EPOCH + dt.timedelta(microseconds=micros)


def _second_occurrence(local: dt.datetime) -> bool:
    """``local`` is the repeat of a wall time that a fall-back made ambiguous."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _cron_times(cadence: Cadence, start: dt.datetime, *, backwards: bool) -> Iterator[dt.datetime]:
    """Cron periods strictly after (or before) ``start``, in order, as UTC.

    Raises:
        ValueError: the expression has no further match.
    """
    assert cadence.cron is not None
    it = croniter(cadence.cron, start.astimezone(cadence.zone))
    while True:
        try:
            found = it.get_prev(dt.datetime) if backwards else it.get_next(dt.datetime)
        except CroniterError as exc:
            raise ValueError(f"cron expression {cadence.cron!r} never matches") from exc
        utc = found.astimezone(UTC)
        if cadence.fixed_time and _second_occurrence(utc.astimezone(cadence.zone)):
            continue
        yield utc


def next_after(cadence: Cadence, at: dt.datetime) -> dt.datetime:
    """The first period strictly after ``at``.

    Raises:
        ValueError: a cron expression that never matches again.
    """
    if cadence.interval_us is not None:
        step = cadence.interval_us
        return from_micros((to_micros(at) // step + 1) * step)
    return next(_cron_times(cadence, at, backwards=False))


def latest_at_or_before(cadence: Cadence, at: dt.datetime) -> dt.datetime | None:
    """The most recent period at or before ``at`` (None if a cron never matched before).

    Raises:
        ValueError: a cron expression that never matches after ``at``.
    """
    if cadence.interval_us is not None:
        step = cadence.interval_us
        return from_micros(to_micros(at) // step * step)
    upcoming = next_after(cadence, at)
    try:
        return next(_cron_times(cadence, upcoming, backwards=True))
    except ValueError:
        return None


def count_periods(cadence: Cadence, start: dt.datetime, end: dt.datetime) -> int:
    """How many periods lie in ``[start, end)`` (cron: at most :data:`MISSED_COUNT_CAP`)."""
    if end <= start:
        return 0
    if cadence.interval_us is not None:
        step = cadence.interval_us
        first = -(-to_micros(start) // step)  # ceil: the first period index >= start
        last = -(-to_micros(end) // step)  # the first period index >= end
        return max(0, last - first)
    count = 0
    for period in _cron_times(cadence, start - _MICRO, backwards=False):
        if period >= end or count >= MISSED_COUNT_CAP:
            break
        count += 1
    return count


def plan_firing(cadence: Cadence, due: dt.datetime, now: dt.datetime) -> Firing:
    """Collapse everything due between ``due`` and ``now`` into at most one firing.

    The most recent period at or before ``now`` fires (if it is not before
    ``due``); the periods from ``due`` up to it count as missed; the next fire
    time is the first period after ``now``. Not due yet: nothing fires and
    ``due`` stays.

    Raises:
        ValueError: a cron expression that never matches again.
    """
    if due > now:
        return Firing(fire_at=None, next_fire_at=due, missed=0)
    upcoming = next_after(cadence, now)
    latest = latest_at_or_before(cadence, now)
    if latest is None or latest < due:
        return Firing(fire_at=None, next_fire_at=upcoming, missed=0)
    return Firing(fire_at=latest, next_fire_at=upcoming, missed=count_periods(cadence, due, latest))


def period_key(name: str, period: dt.datetime) -> str:
    """The ``unique_key`` of a schedule's run for ``period``: ``schedule:<name>:<epoch s>``.

    Periods are at least a second apart, so whole seconds tell them apart.
    """
    return f"schedule:{name}:{to_micros(period) // 1_000_000}"
