"""Wall-clock time, injectable so timer logic can run under Trio's mock clock.

Everything that stamps or compares times in the engine takes a :class:`Clock`.
:class:`SystemClock` is real UTC time; :class:`TrioClock` derives wall time
from ``trio.current_time()``, so with ``autojump_clock`` a test that waits a
simulated hour sees wall time move by an hour too.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import trio


class Clock(Protocol):
    """Source of the current UTC time."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real UTC clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class TrioClock:
    """Wall time = ``epoch`` + Trio's current time (for deterministic tests).

    Must be called from inside a Trio run.
    """

    def __init__(self, epoch: dt.datetime | None = None) -> None:
        self._epoch = epoch or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self._base: float | None = None

    def now(self) -> dt.datetime:
        current = trio.current_time()
        if self._base is None:
            self._base = current
        return self._epoch + dt.timedelta(seconds=current - self._base)
