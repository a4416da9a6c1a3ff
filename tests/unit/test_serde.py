"""Timestamps and money on the wire (kflow._serde)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from kflow._serde import dumps, format_datetime, parse_datetime


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC), "2026-01-02T03:04:05.000006Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000000Z"),  # naive is UTC
        (
            dt.datetime(2026, 7, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
            "2026-07-01T10:00:00.000000Z",
        ),
        (
            dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2026-01-01T05:30:00.000000Z",
        ),
        (dt.datetime(5, 1, 1, tzinfo=dt.UTC), "0005-01-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_are_rfc3339_utc_with_microseconds(value: dt.datetime, text: str) -> None:
    assert format_datetime(value) == text
    assert dumps({"at": value}) == f'{{"at":"{text}"}}'.encode()
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    assert parse_datetime(text) == aware
