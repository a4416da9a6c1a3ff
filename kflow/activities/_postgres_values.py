"""JSON-safe forms of the values psycopg returns, for ``postgres_query`` results.

Pure Python (no psycopg import), so it is cheap to test. The mapping is listed
in :mod:`kflow.activities.postgres`.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import uuid
from collections.abc import Sequence
from typing import Any

_PASS_THROUGH = (str, int, bool, type(None))


def iso_duration(delta: datetime.timedelta) -> str:
    """``delta`` as an ISO 8601 duration: ``P1DT2H3M4.5S``, ``-PT30S``, ``PT0S``."""
    sign = "-" if delta < datetime.timedelta(0) else ""
    delta = abs(delta)
    hours, rest = divmod(delta.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if delta.microseconds:
        clock += f"{seconds}.{delta.microseconds:06d}".rstrip("0") + "S"
    elif seconds:
        clock += f"{seconds}S"
    text = "P" + (f"{delta.days}D" if delta.days else "") + (f"T{clock}" if clock else "")
    return sign + (text if text != "P" else "PT0S")


def _datetime(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        return value.isoformat()
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def to_json_value(value: Any) -> Any:
    """One result value → a JSON-safe value (recursing into arrays and JSON).

    Never raises: a type without a rule becomes its ``str()``.
    """
    if isinstance(value, _PASS_THROUGH):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):  # before date: datetime is a date
        return _datetime(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return str(value)


def unique_columns(names: Sequence[str]) -> list[str]:
    """Result column names made unique, so no value is lost in a row object.

    The first ``a`` stays ``a``; later ones become ``a_2``, ``a_3``, ... (skipping
    names the result already has).
    """
    taken = set(names)
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen or (candidate != name and candidate in taken):
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out
