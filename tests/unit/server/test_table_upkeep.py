"""What the PostgreSQL table upkeep decides and how its loop behaves
(kflow.server.table_upkeep; a recording store, autojump clock, no database)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from kflow.errors import StoreError, StoreUnavailableError
from kflow.server.table_upkeep import (
    ANALYZE_BASE,
    TABLES,
    VACUUM_BASE,
    TableStats,
    TableUpkeep,
    chore_for,
)
from kflow.store.queries import migration_files


def stats(
    planner_rows: int = 1000, live: int = 1000, dead: int = 0, changed: int = 0
) -> TableStats:
    return TableStats("activities", planner_rows, live, dead, changed)


def row(
    table: str, planner_rows: int = 0, live: int = 0, dead: int = 0, changed: int = 0
) -> dict[str, Any]:
    return {
        "table_name": table,
        "planner_rows": planner_rows,
        "live_rows": live,
        "dead_rows": dead,
        "changed_since_analyze": changed,
    }


def test_the_tables_are_every_table_the_migrations_create() -> None:
    created = set()
    for _, _, sql in migration_files("postgres"):
        created |= set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql))
    assert set(TABLES) == created


def test_a_quiet_table_needs_nothing() -> None:
    assert chore_for(stats(changed=ANALYZE_BASE - 1)) is None
    assert chore_for(stats(planner_rows=-1, live=0)) is None  # never analyzed, still empty


def test_a_table_planned_as_empty_that_holds_rows_is_analyzed() -> None:
    assert chore_for(stats(planner_rows=-1, live=3, changed=3)) == "analyze"


def test_changes_past_the_base_and_a_tenth_of_the_rows_call_for_an_analyze() -> None:
    big = 1_000_000
    assert (
        chore_for(stats(planner_rows=big, live=big, changed=ANALYZE_BASE + big // 10)) == "analyze"
    )
    assert chore_for(stats(planner_rows=big, live=big, changed=big // 20)) is None
    # A table that grew since it was last analyzed counts its rows as they are now.
    assert chore_for(stats(planner_rows=0, live=5000, changed=ANALYZE_BASE + 100)) is None
    assert chore_for(stats(planner_rows=0, live=5000, changed=ANALYZE_BASE + 500)) == "analyze"


def test_dead_row_versions_past_the_threshold_call_for_a_vacuum_first() -> None:
    assert chore_for(stats(live=1000, dead=VACUUM_BASE + 100, changed=10**6)) == "vacuum"
    assert chore_for(stats(live=1000, dead=VACUUM_BASE + 99)) is None


class RecordingStore:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.asked: list[tuple[str, ...]] = []
        self.tidied: list[tuple[str, bool]] = []
        self.stats_error: Exception | None = None
        self.tidy_error: dict[str, Exception] = {}

    async def table_stats(self, tables: Any) -> list[dict[str, Any]]:
        self.asked.append(tuple(tables))
        if self.stats_error is not None:
            raise self.stats_error
        return self.rows

    async def tidy_table(self, table: str, *, vacuum: bool) -> None:
        if table in self.tidy_error:
            raise self.tidy_error[table]
        self.tidied.append((table, vacuum))


async def test_a_round_tends_each_table_that_needs_it_and_logs_it() -> None:
    store = RecordingStore(
        [
            row("activities", 100, 5000, dead=4000, changed=9000),
            row("events", -1, 800, changed=800),
            row("workers", 2, 2, changed=3),
        ]
    )
    with capture_logs() as logs:
        done = await TableUpkeep(store, 5.0).tend()
    assert done == [("activities", "vacuum"), ("events", "analyze")]
    assert store.tidied == [("activities", True), ("events", False)]
    assert store.asked == [TABLES]
    tended = [e for e in logs if e["event"] == "store.table_upkeep"]
    assert [(e["table"], e["chore"], e["dead_rows"]) for e in tended] == [
        ("activities", "vacuum", 4000),
        ("events", "analyze", 0),
    ]


async def test_a_database_error_is_logged_once_until_a_round_succeeds() -> None:
    store = RecordingStore([row("events", -1, 800, changed=800)])
    store.stats_error = StoreUnavailableError("PostgreSQL is unavailable: gone")
    upkeep = TableUpkeep(store, 5.0)
    with capture_logs() as logs:
        assert await upkeep.tend() == []
        assert await upkeep.tend() == []
        store.stats_error = None
        assert await upkeep.tend() == [("events", "analyze")]
        store.stats_error = StoreError("PostgreSQL error: QueryCanceled")
        await upkeep.tend()
    failures = [e for e in logs if e["event"] == "store.table_upkeep_failed"]
    assert [f["error"] for f in failures] == [
        "PostgreSQL is unavailable: gone",
        "PostgreSQL error: QueryCanceled",
    ]


async def test_a_table_that_cannot_be_tended_ends_the_round_and_names_the_table() -> None:
    store = RecordingStore([row("activities", -1, 9, changed=9), row("events", -1, 9, changed=9)])
    store.tidy_error["activities"] = StoreError("PostgreSQL error: InsufficientPrivilege")
    with capture_logs() as logs:
        assert await TableUpkeep(store, 5.0).tend() == []
    assert store.tidied == []
    [failure] = [e for e in logs if e["event"] == "store.table_upkeep_failed"]
    assert failure["table"] == "activities"


async def test_the_loop_runs_a_round_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    store = RecordingStore([])
    async with trio.open_nursery() as nursery:
        await nursery.start(TableUpkeep(store, 5.0).serve)
        await trio.sleep(4.9)
        assert store.asked == []  # the first round after one interval
        await trio.sleep(10.2)
        assert len(store.asked) == 3
        nursery.cancel_scope.cancel()


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        TableUpkeep(RecordingStore([]), 0)


async def test_dead_rows_a_vacuum_could_not_remove_do_not_call_for_it_every_round() -> None:
    """An open snapshot (a long transaction, a backup) keeps dead row versions alive:
    VACUUM leaves them, and the next rounds wait until as many again piled up."""
    store = RecordingStore([row("events", 5000, 5000, dead=3000)])
    upkeep = TableUpkeep(store, 5.0)
    assert await upkeep.tend() == [("events", "vacuum")]
    assert await upkeep.tend() == []  # still 3,000 dead: nothing new to do
    store.rows = [row("events", 5000, 5000, dead=3000 + VACUUM_BASE + 499)]
    assert await upkeep.tend() == []
    store.rows = [row("events", 5000, 5000, dead=3000 + VACUUM_BASE + 500)]
    assert await upkeep.tend() == [("events", "vacuum")]
    # The snapshot ended and a vacuum (here or autovacuum) removed them: the floor follows.
    store.rows = [row("events", 5000, 5000, dead=0)]
    assert await upkeep.tend() == []
    store.rows = [row("events", 5000, 5000, dead=VACUUM_BASE + 500)]
    assert await upkeep.tend() == [("events", "vacuum")]
