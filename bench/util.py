"""Small helpers: percentiles, rounding, timestamps."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p`` (0..100) percentile by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def rnd(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def parse_time(text: str) -> dt.datetime:
    """An ISO-8601 timestamp of the API (``Z`` or an offset)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def utc_stamp() -> str:
    """``2025-01-31T120000Z``: the name of a results file."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")


def fmt(value: Any, digits: int = 1, none: str = "–") -> str:
    """A number for a markdown cell."""
    if value is None:
        return none
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


MIB = 1024 * 1024


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition with the highest throughput (noise from other processes only
    slows a run down), with a summary of every repetition and the others in full
    (their correctness counts too)."""
    if len(runs) == 1:
        return runs[0]
    best = max(runs, key=lambda r: r.get("throughput_wf_s") or 0.0)
    chosen = dict(best)
    chosen["repetitions"] = [
        {
            k: r.get(k)
            for k in ("throughput_wf_s", "p50_ms", "p95_ms", "success_rate", "load_1m_before")
        }
        for r in runs
    ]
    chosen["other_repetitions"] = [r for r in runs if r is not best]
    return chosen
