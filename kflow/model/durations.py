"""Duration text such as ``"5m"`` or ``"1h30m"`` (``settings.delay``, PROTOCOL §4).

A duration is one or more ``<number><unit>`` parts, or a bare number of
seconds. Numbers may have a decimal part (``"1.5h"``). Units:

=======  =================
``ms``   milliseconds
``s``    seconds
``m``    minutes (``mi`` too)
``h``    hours
``d``    days
``w``    weeks
``mo``   months of 30 days
``y``    years of 365 days
=======  =================
"""

from __future__ import annotations

import datetime as dt
import decimal
import re

#: Seconds per unit; longest spellings first so ``ms``/``mo``/``mi`` win over ``m``.
_UNITS: dict[str, float] = {
    "ms": 0.001,
    "mo": 30 * 86400.0,
    "mi": 60.0,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}

UNITS_HELP = "ms, s, m (or mi), h, d, w, mo (30 days), y (365 days)"

_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})\s*(ms|mo|mi|s|m|h|d|w|y)")
_WHOLE = re.compile(rf"(?:{_NUMBER}\s*(?:ms|mo|mi|s|m|h|d|w|y)\s*)+", re.ASCII)
_BARE = re.compile(_NUMBER, re.ASCII)


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``"500ms"``, ``"30s"``, ``"1.5h"``, ``"1h30m"`` or ``"45"`` (seconds).

    Raises:
        ValueError: the text is empty, negative, has an unknown unit, or is
            too large for a :class:`~datetime.timedelta`; the message lists
            the accepted units.
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"a duration must be text, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty duration; use a number with a unit: {UNITS_HELP}")
    if _BARE.fullmatch(stripped):
        seconds = float(stripped)
    elif _WHOLE.fullmatch(stripped):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(stripped))
    else:
        raise ValueError(
            f"invalid duration {text!r}: expected a non-negative number with a unit "
            f"({UNITS_HELP}), such as '30s', '1.5h' or '1h30m', or a bare number of seconds"
        )
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_seconds(seconds: float) -> str:
    """A number of seconds as duration text (``30`` → ``"30s"``, ``1.5`` → ``"1.5s"``)."""
    text = format(decimal.Decimal(repr(float(seconds))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}s"
