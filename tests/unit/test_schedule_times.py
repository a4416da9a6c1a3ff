"""The time math of schedules, with plain datetimes: cron in a zone across DST,
interval alignment, and the collapse of missed periods into one firing."""

from __future__ import annotations

import datetime as dt

import pytest

from kflow.server.schedule_times import (
    MISSED_COUNT_CAP,
    Cadence,
    count_periods,
    latest_at_or_before,
    next_after,
    period_key,
    plan_firing,
)

UTC = dt.UTC


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def cron(expr: str, timezone: str = "UTC") -> Cadence:
    return Cadence.build(cron=expr, interval_seconds=None, timezone=timezone)


def every(seconds: float) -> Cadence:
    return Cadence.build(cron=None, interval_seconds=seconds)


def series(cadence: Cadence, start: dt.datetime, n: int) -> list[dt.datetime]:
    out = []
    for _ in range(n):
        start = next_after(cadence, start)
        out.append(start)
    return out


def test_cron_in_a_zone_keeps_local_time_across_spring_forward() -> None:
    paris = cron("0 9 * * *", "Europe/Paris")
    # Paris moves from UTC+1 to UTC+2 on 2026-03-29.
    assert series(paris, at(2026, 3, 27, 12), 4) == [
        at(2026, 3, 28, 8),
        at(2026, 3, 29, 7),
        at(2026, 3, 30, 7),
        at(2026, 3, 31, 7),
    ]


def test_cron_in_a_zone_keeps_local_time_across_fall_back() -> None:
    paris = cron("0 9 * * *", "Europe/Paris")
    # ... and back to UTC+1 on 2026-10-25.
    assert series(paris, at(2026, 10, 23, 12), 3) == [
        at(2026, 10, 24, 7),
        at(2026, 10, 25, 8),
        at(2026, 10, 26, 8),
    ]
    new_york = cron("30 6 * * 1-5", "America/New_York")
    # New York changes on 2026-03-08 (a Sunday): Friday 11:30Z, Monday 10:30Z.
    assert series(new_york, at(2026, 3, 6, 0), 2) == [
        at(2026, 3, 6, 11, 30),
        at(2026, 3, 9, 10, 30),
    ]


def test_a_fixed_time_in_the_spring_gap_fires_once_at_the_end_of_the_gap() -> None:
    night = cron("30 2 * * *", "Europe/Paris")
    assert series(night, at(2026, 3, 27, 12), 3) == [
        at(2026, 3, 28, 1, 30),  # 02:30 CET
        at(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST
        at(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_a_fixed_time_repeated_by_fall_back_fires_once() -> None:
    night = cron("30 2 * * *", "Europe/Paris")
    assert series(night, at(2026, 10, 23, 12), 3) == [
        at(2026, 10, 24, 0, 30),  # 02:30 CEST
        at(2026, 10, 25, 0, 30),  # the first 02:30 only
        at(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    assert latest_at_or_before(night, at(2026, 10, 25, 1, 45)) == at(2026, 10, 25, 0, 30)


def test_a_wildcard_cron_follows_real_time_through_both_fall_back_hours() -> None:
    half_hourly = cron("*/30 * * * *", "Europe/Paris")
    got = series(half_hourly, at(2026, 10, 24, 23, 45), 5)
    assert got == [
        at(2026, 10, 25, 0, 0),
        at(2026, 10, 25, 0, 30),
        at(2026, 10, 25, 1, 0),
        at(2026, 10, 25, 1, 30),
        at(2026, 10, 25, 2, 0),
    ]


def test_next_after_is_strict_and_ignores_fractions() -> None:
    minutely = cron("* * * * *")
    assert next_after(minutely, at(2026, 1, 1, 9, 0)) == at(2026, 1, 1, 9, 1)
    assert next_after(minutely, at(2026, 1, 1, 9, 0) + dt.timedelta(microseconds=1)) == at(
        2026, 1, 1, 9, 1
    )
    assert next_after(minutely, at(2026, 1, 1, 8, 59, 59, 999999)) == at(2026, 1, 1, 9, 0)


def test_intervals_are_aligned_to_the_epoch() -> None:
    hourly = every(3600)
    assert next_after(hourly, at(2026, 5, 4, 13, 20)) == at(2026, 5, 4, 14)
    assert next_after(hourly, at(2026, 5, 4, 14)) == at(2026, 5, 4, 15)
    assert latest_at_or_before(hourly, at(2026, 5, 4, 14)) == at(2026, 5, 4, 14)
    assert latest_at_or_before(hourly, at(2026, 5, 4, 14, 59)) == at(2026, 5, 4, 14)
    # Any two servers, whenever they compute, agree on the periods.
    seven = every(7)
    a = series(seven, at(2026, 1, 1, 0, 0, 3), 3)
    b = series(seven, a[0] - dt.timedelta(seconds=1), 3)
    assert a == b
    assert all(int(p.timestamp()) % 7 == 0 for p in a)
    # Fractions of a second work (keys stay distinct: periods are >= 1 s apart).
    periods = series(every(1.5), at(2026, 1, 1), 4)
    assert [p - periods[0] for p in periods] == [dt.timedelta(seconds=1.5 * i) for i in range(4)]
    assert len({period_key("s", p) for p in periods}) == 4


def test_period_key_uses_epoch_seconds() -> None:
    assert period_key("nightly", at(2026, 1, 1)) == "schedule:nightly:1767225600"


def test_missed_interval_periods_collapse_into_one_firing() -> None:
    minutely = every(60)
    plan = plan_firing(minutely, due=at(2026, 1, 1, 0, 1), now=at(2026, 1, 1, 1, 0, 30))
    assert plan.fire_at == at(2026, 1, 1, 1, 0)  # the most recent period only
    assert plan.missed == 59  # 00:01 .. 00:59
    assert plan.next_fire_at == at(2026, 1, 1, 1, 1)  # the next future period: no storm


def test_an_on_time_firing_misses_nothing() -> None:
    minutely = every(60)
    plan = plan_firing(minutely, due=at(2026, 1, 1, 0, 1), now=at(2026, 1, 1, 0, 1, 0, 300))
    assert (plan.fire_at, plan.missed, plan.next_fire_at) == (
        at(2026, 1, 1, 0, 1),
        0,
        at(2026, 1, 1, 0, 2),
    )
    early = plan_firing(minutely, due=at(2026, 1, 1, 0, 1), now=at(2026, 1, 1, 0, 0, 59))
    assert (early.fire_at, early.next_fire_at) == (None, at(2026, 1, 1, 0, 1))


def test_missed_cron_periods_collapse_across_dst() -> None:
    half_hourly = cron("*/30 * * * *", "Europe/Paris")
    plan = plan_firing(half_hourly, due=at(2026, 10, 24, 23), now=at(2026, 10, 25, 2, 10))
    assert plan.fire_at == at(2026, 10, 25, 2, 0)
    assert plan.missed == 6  # 23:00 .. 01:30 UTC, both 02:xx local hours included
    assert plan.next_fire_at == at(2026, 10, 25, 2, 30)
    daily = cron("0 9 * * *", "Europe/Paris")
    week = plan_firing(daily, due=at(2026, 3, 26, 8), now=at(2026, 4, 2, 12))
    assert (week.fire_at, week.missed, week.next_fire_at) == (
        at(2026, 4, 2, 7),
        7,
        at(2026, 4, 3, 7),
    )


def test_a_due_time_off_the_cadence_moves_on_without_firing() -> None:
    hourly = every(3600)
    plan = plan_firing(hourly, due=at(2026, 1, 1, 10, 30), now=at(2026, 1, 1, 10, 45))
    assert (plan.fire_at, plan.missed, plan.next_fire_at) == (None, 0, at(2026, 1, 1, 11))


def test_counting_missed_cron_periods_is_bounded() -> None:
    minutely = cron("* * * * *")
    assert count_periods(minutely, at(2026, 1, 1), at(2026, 1, 1, 0, 10)) == 10
    assert count_periods(minutely, at(2026, 1, 1), at(2027, 1, 1)) == MISSED_COUNT_CAP
    assert count_periods(every(60), at(2026, 1, 1), at(2027, 1, 1)) == 365 * 24 * 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "* * * *", "interval_seconds": None}, "5 fields"),
        ({"cron": "0 0 * * * *", "interval_seconds": None}, "5 fields"),
        ({"cron": "61 * * * *", "interval_seconds": None}, "not a valid cron"),
        ({"cron": "0 0 31 2 *", "interval_seconds": None}, "never matches"),
        ({"cron": "@daily", "interval_seconds": None}, "5 fields"),
        ({"cron": None, "interval_seconds": 0.5}, "between 1 and"),
        ({"cron": None, "interval_seconds": None}, "exactly one"),
        ({"cron": "* * * * *", "interval_seconds": 5}, "exactly one"),
        ({"cron": "* * * * *", "interval_seconds": None, "timezone": "Mars/Olympus"}, "unknown"),
        ({"cron": "* * * * *", "interval_seconds": None, "timezone": "../etc/passwd"}, "IANA"),
    ],
)
def test_bad_cadences_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cadence.build(**kwargs)  # type: ignore[arg-type]
