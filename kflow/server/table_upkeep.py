"""Keep PostgreSQL's statistics and free space of kflow's tables current.

PostgreSQL plans each statement from the statistics ``ANALYZE`` gathers, and
reuses space of deleted or updated rows once ``VACUUM`` has found it.
Autovacuum does both, but a database may run with it switched off, and even
when on its default thresholds (a fifth of a table changed) let a fresh
kflow database — whose tables start empty and then grow by thousands of rows
a minute — run for a long time on plans made for empty tables. Measured on
the Sequential-5 benchmark with autovacuum off: PostgreSQL's CPU per
activity grew from 0.85 ms to 2.3 ms over 3,000 runs; after one ``ANALYZE``
it fell to 0.5 to 0.6 ms and stayed there (bench/README.md).

:class:`TableUpkeep` runs in every PostgreSQL server: every
``table_upkeep_seconds`` it reads PostgreSQL's counters of kflow's tables
(one catalog query) and, for each table that crossed a threshold
(:func:`chore_for`), runs ``VACUUM (ANALYZE)`` or ``ANALYZE`` on it — with
``SKIP_LOCKED``, so a table an autovacuum or another server is already
tending is left alone this round (it is still logged as tended: PostgreSQL
only warns), and ``VACUUM`` without ``TRUNCATE``. Both statements then take
only locks that ordinary reads and writes do not wait for. Where autovacuum
keeps up, the counters stay below the thresholds and the upkeep does nothing
but look. Dead row versions that a ``VACUUM`` could not remove (an open
snapshot still sees them) do not call for another one until as many again
have piled up.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import attrs
import structlog
import trio

from kflow.errors import StoreError

log = structlog.get_logger("kflow.store")

#: kflow's tables (every ``CREATE TABLE`` of the PostgreSQL migrations).
TABLES = (
    "activities",
    "attempts",
    "clients",
    "definitions",
    "events",
    "files",
    "meta",
    "schedules",
    "signals",
    "workers",
    "workflows",
)

#: ``ANALYZE`` a table once this many rows plus :data:`ANALYZE_SHARE` of its rows
#: changed since its last ``ANALYZE`` (autovacuum's defaults: 50 and 10 %).
ANALYZE_BASE = 200
ANALYZE_SHARE = 0.1
#: ``VACUUM`` a table once it holds this many dead row versions plus
#: :data:`VACUUM_SHARE` of its live rows (autovacuum's defaults: 50 and 20 %).
VACUUM_BASE = 1000
VACUUM_SHARE = 0.1

Chore = Literal["vacuum", "analyze"]


@attrs.frozen
class TableStats:
    """PostgreSQL's counters of one table (``table_upkeep_stats``)."""

    table: str
    #: Rows as the planner knows them; negative when never analyzed or vacuumed.
    planner_rows: int
    live_rows: int
    dead_rows: int
    changed_since_analyze: int

    @classmethod
    def from_row(cls, row: Any) -> TableStats:
        return cls(
            table=str(row["table_name"]),
            planner_rows=int(row["planner_rows"]),
            live_rows=int(row["live_rows"]),
            dead_rows=int(row["dead_rows"]),
            changed_since_analyze=int(row["changed_since_analyze"]),
        )


def chore_for(stats: TableStats, dead_floor: int = 0) -> Chore | None:
    """What ``stats``' table needs now: ``vacuum`` (which analyzes too), ``analyze``
    or nothing.

    ``dead_floor``: dead row versions the last ``VACUUM`` left behind (an open
    snapshot — a long transaction, a backup, a replication slot — keeps them
    alive): only the ones piled up since count.
    """
    rows = max(stats.planner_rows, stats.live_rows, 0)
    if stats.dead_rows - dead_floor >= VACUUM_BASE + VACUUM_SHARE * stats.live_rows:
        return "vacuum"
    if stats.changed_since_analyze >= ANALYZE_BASE + ANALYZE_SHARE * rows:
        return "analyze"
    if stats.planner_rows < 0 and stats.live_rows > 0:  # planned for an empty table so far
        return "analyze"
    return None


class TableUpkeep:
    """The upkeep loop of one server (see the module docstring).

    ``store`` is a :class:`~kflow.store.postgres.PostgresStore` (anything with its
    ``table_stats`` and ``tidy_table``).
    """

    def __init__(self, store: Any, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.store = store
        self.interval = interval
        self._failing = False
        #: Per table, the dead row versions counted when this server last vacuumed
        #: it, lowered whenever fewer are counted: a VACUUM that could remove
        #: nothing is not repeated every round.
        self._dead_floor: dict[str, int] = {}

    async def tend(self) -> list[tuple[str, Chore]]:
        """One round: read the counters, tend every table that needs it; returns
        ``(table, chore)`` of each table tended. A database error is logged
        (``store.table_upkeep_failed``, once until a round succeeds) and ends
        the round; the next round tries again."""
        try:
            rows = await self.store.table_stats(TABLES)
        except StoreError as exc:
            self._failed(exc)
            return []
        done: list[tuple[str, Chore]] = []
        for stats in map(TableStats.from_row, rows):
            floor = min(self._dead_floor.get(stats.table, 0), stats.dead_rows)
            self._dead_floor[stats.table] = floor
            chore = chore_for(stats, floor)
            if chore is None:
                continue
            started = time.perf_counter()
            try:
                await self.store.tidy_table(stats.table, vacuum=chore == "vacuum")
            except StoreError as exc:
                self._failed(exc, table=stats.table)
                return done
            if chore == "vacuum":
                self._dead_floor[stats.table] = stats.dead_rows
            log.info(
                "store.table_upkeep",
                table=stats.table,
                chore=chore,
                rows=max(stats.planner_rows, stats.live_rows, 0),
                dead_rows=stats.dead_rows,
                changed_since_analyze=stats.changed_since_analyze,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            done.append((stats.table, chore))
        self._failing = False
        return done

    def _failed(self, exc: StoreError, **where: str) -> None:
        if not self._failing:
            log.warning("store.table_upkeep_failed", error=str(exc).splitlines()[0][:200], **where)
        self._failing = True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A round every :attr:`interval` seconds (the first after one interval)
        until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.tend()
