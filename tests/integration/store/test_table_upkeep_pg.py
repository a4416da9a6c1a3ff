"""The table upkeep on a real PostgreSQL: it finds what PostgreSQL's counters say,
vacuums and analyzes kflow's tables, and a running server does it on its own."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import psycopg
import pytest
import trio
from structlog.testing import capture_logs

from kflow.errors import StoreError
from kflow.server.serve import serve
from kflow.server.table_upkeep import TABLES, TableStats, TableUpkeep
from kflow.store.postgres import PostgresStore
from tests.conftest import reset_postgres
from tests.integration.conftest import make_config

pytestmark = pytest.mark.postgres

#: Enough deleted rows in ``meta`` to pass the vacuum threshold of a small table.
DEAD = 1500


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = await PostgresStore.open(postgres_url)
    await opened.migrate()
    reset_postgres(postgres_url)
    try:
        yield opened
    finally:
        await opened.aclose()


def leave_dead_rows(url: str) -> None:
    """Insert and delete :data:`DEAD` rows of ``meta`` in a session that then ends
    (a session hands its counters to PostgreSQL's statistics when it ends)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meta (key, value) "
            "SELECT 'upkeep-' || n, 'x' FROM generate_series(1, %s) AS n",
            (DEAD,),
        )
        conn.execute("DELETE FROM meta WHERE key LIKE 'upkeep-%%'")


async def meta_stats(store: PostgresStore, *, dead_at_least: int = 0) -> TableStats:
    """``meta``'s counters, once they show ``dead_at_least`` dead rows (they trail commits)."""
    with trio.fail_after(20):
        while True:
            rows = await store.table_stats(["meta"])
            if rows and rows[0]["dead_rows"] >= dead_at_least:
                return TableStats.from_row(rows[0])
            await trio.sleep(0.1)


def last_tended(url: str, table: str) -> tuple[object, object]:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables "
            "WHERE schemaname = current_schema() AND relname = %s",
            (table,),
        ).fetchone()
    assert found is not None
    return found[0], found[1]


async def test_the_counters_of_every_kflow_table_are_read(store: PostgresStore) -> None:
    rows = await store.table_stats(TABLES)
    assert sorted(r["table_name"] for r in rows) == sorted(TABLES)
    assert all(
        set(r) >= {"planner_rows", "live_rows", "dead_rows", "changed_since_analyze"} for r in rows
    )


async def test_dead_rows_get_a_vacuum_and_the_counters_start_again(
    store: PostgresStore, postgres_url: str
) -> None:
    leave_dead_rows(postgres_url)
    before = await meta_stats(store, dead_at_least=DEAD)
    assert before.changed_since_analyze >= DEAD
    upkeep = TableUpkeep(store, 5.0)
    with capture_logs() as logs:
        done = await upkeep.tend()
    assert ("meta", "vacuum") in done
    vacuumed, analyzed = last_tended(postgres_url, "meta")
    assert vacuumed is not None
    assert analyzed is not None
    after = await meta_stats(store)
    assert after.dead_rows < DEAD
    assert after.changed_since_analyze == 0
    assert ("meta", "vacuum") not in await upkeep.tend()  # nothing left to do
    [logged] = [e for e in logs if e["event"] == "store.table_upkeep" and e["table"] == "meta"]
    assert logged["dead_rows"] >= DEAD
    assert logged["ms"] >= 0


async def test_analyze_alone_and_a_table_that_does_not_exist(
    store: PostgresStore, postgres_url: str
) -> None:
    await store.tidy_table("events", vacuum=False)
    _vacuumed, analyzed = last_tended(postgres_url, "events")
    assert analyzed is not None
    with pytest.raises(StoreError):
        await store.tidy_table("no_such_table", vacuum=True)
    # The store works on afterwards.
    assert (await store.table_stats(["events"]))[0]["table_name"] == "events"


async def test_a_running_server_tends_its_tables_on_its_own(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    reset_postgres(postgres_url)
    config = make_config(
        tmp_path, database_url=postgres_url, port=0, run_workers=False, table_upkeep_seconds=0.2
    )
    shutdown = trio.Event()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
            )
            leave_dead_rows(postgres_url)
            with trio.fail_after(30):
                while not any(
                    e["event"] == "store.table_upkeep" and e["table"] == "meta" for e in logs
                ):
                    await trio.sleep(0.1)
            shutdown.set()
    vacuumed, _ = last_tended(postgres_url, "meta")
    assert vacuumed is not None


async def test_dead_rows_an_open_snapshot_keeps_are_not_vacuumed_every_round(
    store: PostgresStore, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as holder:  # a long transaction, as a backup holds one
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM meta").fetchone()
        leave_dead_rows(postgres_url)
        await meta_stats(store, dead_at_least=DEAD)
        upkeep = TableUpkeep(store, 5.0)
        assert ("meta", "vacuum") in await upkeep.tend()
        kept = await meta_stats(store)
        assert kept.dead_rows >= DEAD  # the snapshot still sees them: nothing was removed
        assert ("meta", "vacuum") not in await upkeep.tend()
        holder.rollback()
