"""parse_duration: units, combinations, bare seconds, and the errors."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kflow.model import parse_duration
from kflow.model.durations import format_seconds

td = dt.timedelta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", td(milliseconds=500)),
        ("5s", td(seconds=5)),
        ("30m", td(minutes=30)),
        ("30mi", td(minutes=30)),
        ("2h", td(hours=2)),
        ("7d", td(days=7)),
        ("1w", td(weeks=1)),
        ("2mo", td(days=60)),
        ("1y", td(days=365)),
        ("1.5h", td(minutes=90)),
        ("0.5s", td(milliseconds=500)),
        ("1h30m", td(minutes=90)),
        ("1d2h3m4s5ms", td(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("1h 30m", td(minutes=90)),
        ("  5m  ", td(minutes=5)),
        ("45", td(seconds=45)),
        ("2.5", td(seconds=2.5)),
        ("0", td(0)),
        ("0s", td(0)),
    ],
)
def test_parses(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "   ", "-5s", "5x", "s", "1.s", ".5s", "5 s x", "1e3s", "nan", "inf", "5m-", "٣s"]
)
def test_rejects_with_the_units_listed(text: str) -> None:
    with pytest.raises(ValueError, match=r"ms, s, m \(or mi\), h, d, w, mo"):
        parse_duration(text)


def test_too_large_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("99999999999999y")
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9" * 400)


def test_non_text_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_duration(30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (1.5, "1.5s"), (30.0, "30s"), (1e-5, "0.00001s")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
    assert parse_duration(text) == td(seconds=seconds)


@given(st.text(max_size=30))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except ValueError:
        return
    assert result >= td(0)
