"""Decoding of stored values into Python types, whichever dialect stored them.

SQLite keeps timestamps as integer microseconds since the epoch, JSON as
text and money as decimal text; PostgreSQL hands back ``datetime``, parsed
JSON and ``Decimal``. These functions accept either form.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from kflow._serde import loads

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)


def time_to_micros(value: dt.datetime) -> int:
    """Exact integer microseconds since the epoch (naive values are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - EPOCH) // _MICRO


def load_time(value: Any) -> dt.datetime | None:
    """A stored timestamp as an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return EPOCH + dt.timedelta(microseconds=int(value))


def load_json(value: Any) -> Any:
    """A stored JSON value as Python data (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str | bytes | bytearray | memoryview):
        return loads(bytes(value) if isinstance(value, memoryview) else value)
    return value


def load_money(value: Any) -> decimal.Decimal:
    """A stored amount as Decimal (None is zero)."""
    if value is None:
        return decimal.Decimal(0)
    if isinstance(value, decimal.Decimal):
        return value
    return decimal.Decimal(str(value))
