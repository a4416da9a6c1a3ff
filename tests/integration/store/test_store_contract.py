"""The store contract, on SQLite and PostgreSQL alike: named queries, migrations."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from kflow.errors import ConflictError, StoreError
from kflow.store.base import Store
from kflow.store.codec import load_json, load_money, load_time
from kflow.store.postgres import PostgresStore
from kflow.store.queries import POSTGRES_ONLY, load_queries, migration_files, parse_queries
from kflow.store.sqlite import SqliteStore
from tests.conftest import reset_postgres


def test_both_dialects_define_the_same_queries() -> None:
    sqlite, postgres = load_queries("sqlite"), load_queries("postgres")
    assert sorted(sqlite) == sorted(set(postgres) - POSTGRES_ONLY)
    assert set(postgres) >= POSTGRES_ONLY


def test_both_dialects_have_the_same_migration_versions() -> None:
    versions = {d: [v for v, _, _ in migration_files(d)] for d in ("sqlite", "postgres")}
    assert versions["sqlite"] == versions["postgres"]
    assert versions["sqlite"] == list(range(1, len(versions["sqlite"]) + 1))


def test_query_files_are_parsed_strictly() -> None:
    assert parse_queries("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2") == {
        "a": "SELECT 1",
        "b": "SELECT 2",
    }
    for bad, message in [
        ("SELECT 0;\n-- name: a\nSELECT 1", "before the first"),
        ("-- name: a\n", "is empty"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2", "defined twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_queries(bad)


async def _open(dialect: str, tmp_path: pathlib.Path, postgres: str | None) -> Store:
    if dialect == "sqlite":
        return await SqliteStore.open(tmp_path / "contract.db", synchronous="normal")
    assert postgres is not None
    return await PostgresStore.open(postgres)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[str, str | None]]:
    postgres = None
    if request.param == "postgres":
        postgres = str(request.getfixturevalue("postgres_url"))
        import psycopg

        with psycopg.connect(postgres, autocommit=True) as conn:  # truly empty
            conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    yield request.param, postgres
    if postgres is not None:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        reset_postgres(postgres)


async def test_upgrade_from_an_empty_database(
    empty_database: tuple[str, str | None], tmp_path: pathlib.Path
) -> None:
    dialect, postgres = empty_database
    store = await _open(dialect, tmp_path, postgres)
    try:
        assert await store.schema_version() == 0
        applied = await store.migrate()
        latest = migration_files(dialect)[-1][0]
        assert applied == [name for _, name, _ in migration_files(dialect)]
        assert await store.schema_version() == latest
        assert await store.migrate() == []  # idempotent
        # every named query at least prepares against the migrated schema
        rows = await store.read(lambda tx: tx.all("list_clients"))
        assert rows == []
    finally:
        await store.aclose()


async def test_two_processes_migrating_at_once_apply_each_migration_once(
    empty_database: tuple[str, str | None], tmp_path: pathlib.Path
) -> None:
    dialect, postgres = empty_database
    stores = [await _open(dialect, tmp_path, postgres) for _ in range(3)]
    results: list[list[str]] = []
    try:
        async with trio.open_nursery() as nursery:
            for store in stores:

                async def migrate(s: Store = store) -> None:
                    results.append(await s.migrate())

                nursery.start_soon(migrate)
        applied = sorted(name for result in results for name in result)
        assert applied == sorted(name for _, name, _ in migration_files(dialect))
    finally:
        for store in stores:
            await store.aclose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    postgres = None
    if request.param == "postgres":
        postgres = str(request.getfixturevalue("postgres_url"))
        reset_postgres(postgres)
    opened = await _open(request.param, tmp_path, postgres)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.aclose()


def _client(tx: Any, client_id: str, *, sent: bool = False) -> None:
    """Insert a client; ``sent``: without waiting for an answer (``Tx.send``)."""
    import datetime as dt

    (tx.send if sent else tx.run)(
        "insert_client",
        client_id=client_id,
        secret_hash="x",
        scopes="worker",
        description=None,
        now=tx.time(dt.datetime.now(dt.UTC)),
    )


@pytest.mark.parametrize("sent", [False, True], ids=["answered", "sent"])
async def test_a_unit_of_work_that_raises_is_rolled_back(store: Store, sent: bool) -> None:
    """Written statements, answered or still queued, are undone; the connection
    goes back to the pool clean, so the next units commit as usual."""

    def half_done(tx: Any) -> None:
        _client(tx, "half", sent=sent)
        raise RuntimeError("boom")

    for _ in range(3):
        with pytest.raises(RuntimeError, match="boom"):
            await store.write(half_done)
    assert await store.read(lambda tx: tx.one("get_client", client_id="half")) is None
    await store.write(lambda tx: _client(tx, "whole", sent=sent))
    assert await store.read(lambda tx: tx.one("get_client", client_id="whole")) is not None


async def test_a_read_unit_cannot_write(store: Store) -> None:
    for locking in (False, True):
        with pytest.raises(StoreError):
            await store.read(lambda tx: _client(tx, "sneaky"), locking=locking)
    assert await store.read(lambda tx: tx.one("get_client", client_id="sneaky")) is None


async def test_a_locking_read_holds_its_transaction_locks_until_it_returns(store: Store) -> None:
    """``settle_events`` waits for event appenders and must keep them out until the
    unit has read: with ``locking=True`` the lock outlives its statement; in a plain
    (autocommit) read it would not."""
    if store.dialect != "postgres":
        pytest.skip(reason="SQLite has no transaction-scoped locks")
    import psycopg

    def appender_blocked(tx: Any) -> bool:
        tx.one("settle_events")
        with psycopg.connect(store.url, autocommit=True) as other:  # type: ignore[attr-defined]
            row = other.execute("SELECT pg_try_advisory_lock_shared(7102)").fetchone()
            assert row is not None
            return not row[0]

    assert await store.read(appender_blocked, locking=True) is True
    assert await store.read(appender_blocked) is False


async def test_a_unique_violation_is_a_conflict(store: Store) -> None:
    await store.write(lambda tx: _client(tx, "twice"))
    with pytest.raises(ConflictError):
        await store.write(lambda tx: _client(tx, "twice"))


async def test_sent_statements_commit_with_the_unit_and_their_errors_fail_it(
    store: Store,
) -> None:
    """``send`` does not wait for an answer (PostgreSQL pipelines it with the next
    statement or the commit); its effects commit with the unit, and its error
    fails the whole unit, even when nothing is read after it."""

    def sent_then_read(tx: Any) -> Any:
        _client(tx, "sent-2", sent=True)
        return tx.one("get_client", client_id="sent-2")

    await store.write(lambda tx: _client(tx, "sent-1", sent=True))
    assert (await store.write(sent_then_read))["client_id"] == "sent-2"
    assert await store.read(lambda tx: tx.one("get_client", client_id="sent-1")) is not None

    def clash_then_more(tx: Any) -> None:
        _client(tx, "sent-3")
        _client(tx, "sent-1", sent=True)  # already there: fails at the commit at the latest

    with pytest.raises(ConflictError):
        await store.write(clash_then_more)
    assert await store.read(lambda tx: tx.one("get_client", client_id="sent-3")) is None


async def test_a_write_on_a_connection_lost_meanwhile_runs_again_on_a_new_one(
    store: Store,
) -> None:
    """Say PostgreSQL restarted while the pool was idle: the unit's first round trip
    (BEGIN travels with its first statement) finds the connection dead, and the unit
    runs again on a fresh one instead of failing."""
    if store.dialect != "postgres":
        pytest.skip(reason="SQLite has no connections to lose")
    import psycopg

    await store.write(lambda tx: _client(tx, "before"))

    def terminate_pool() -> None:
        with psycopg.connect(store.url, autocommit=True) as other:  # type: ignore[attr-defined]
            other.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    await trio.to_thread.run_sync(terminate_pool)

    def write_and_read(tx: Any) -> Any:
        _client(tx, "after")
        return tx.one("get_client", client_id="after")

    assert (await store.write(write_and_read))["client_id"] == "after"


async def test_sent_statements_share_round_trips_on_postgresql(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statements sent with ``send`` wait for no answer of their own, nor do BEGIN and
    COMMIT: a unit of two reads and five sends waits for PostgreSQL three times
    (BEGIN with the first read, the second read, the last sends with COMMIT), not
    nine."""
    if store.dialect != "postgres":
        pytest.skip(reason="SQLite has no round trips")

    from kflow.store import pg_green

    waits: list[int] = []
    ready = pg_green._ready

    async def counted(fileno: int, state: int, timeout: float | None) -> int:
        waits.append(state)
        return await ready(fileno, state, timeout)

    monkeypatch.setattr(pg_green, "_ready", counted)

    def unit(tx: Any) -> None:
        tx.one("get_client", client_id="nobody")
        for name in ("rt-1", "rt-2", "rt-3"):
            _client(tx, name, sent=True)
        tx.one("get_client", client_id="rt-1")
        for name in ("rt-4", "rt-5"):
            _client(tx, name, sent=True)

    await store.write(unit)
    assert len(waits) <= 3, waits
    assert await store.read(lambda tx: tx.one("get_client", client_id="rt-5")) is not None


async def test_writes_are_visible_to_later_reads_and_values_round_trip(store: Store) -> None:
    import datetime as dt
    import decimal

    now = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)

    def put(tx: Any) -> None:
        tx.run(
            "insert_workflow",
            id="01900000-0000-7000-8000-000000000001",
            definition_name="d",
            definition_version="v",
            input=tx.json({"a": [1, "x"]}),
            unique_key=None,
            now=tx.time(now),
            timeout_at=tx.time(None),
        )
        tx.run(
            "set_workflow_cost",
            id="01900000-0000-7000-8000-000000000001",
            total_cost_usd=tx.money(decimal.Decimal("0.000001")),
            now=tx.time(now),
        )

    await store.write(put)
    row = await store.read(
        lambda tx: tx.one("get_workflow", id="01900000-0000-7000-8000-000000000001")
    )
    assert row is not None
    assert load_json(row["input"]) == {"a": [1, "x"]}
    assert load_time(row["created_at"]) == now
    assert load_money(row["total_cost_usd"]) == decimal.Decimal("0.000001")


async def test_a_closed_store_refuses_work(store: Store) -> None:
    await store.aclose()
    with pytest.raises(StoreError):
        await store.read(lambda tx: tx.all("list_clients"))


@pytest.mark.parametrize("count", [1, 3])
async def test_events_appended_together_keep_their_order_and_their_data(
    store: Store, count: int
) -> None:
    """One event or several in one statement: ids in list order, data unchanged
    (floats, big integers, escapes, non-ASCII text), JSON null stored as no data."""
    import datetime as dt
    import uuid

    from kflow.server.persistence import append_events
    from kflow.server.state import Emit

    run = uuid.uuid4()
    now = dt.datetime(2026, 12, 7, 5, 0, tzinfo=dt.UTC)
    data = {"f": 0.30000000000000004, "big": 12345678901234567890, "s": 'é "q" \\', "n": None}
    emits = [
        Emit(type="first", activity_key="a", data=data),
        Emit(type="second", activity_key=None, data=None),
        Emit(type="third", activity_key="c", data={"i": [1, {"j": []}]}),
    ][:count]
    assert await store.write(lambda tx: append_events(tx, run, emits, now)) == count
    rows = await store.read(
        lambda tx: tx.all("workflow_events", workflow_id=str(run), after_id=0, limit=10)
    )
    assert [r["type"] for r in rows] == [e.type for e in emits]
    assert [r["activity_key"] for r in rows] == [e.activity_key for e in emits]
    assert [load_json(r["data"]) for r in rows] == [e.data for e in emits]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert {load_time(r["created_at"]) for r in rows} == {now}


async def test_a_query_answered_later_sees_and_is_seen_in_statement_order(store: Store) -> None:
    """``all_later`` gives the rows ``all`` would have, though asked for after
    statements sent later (which see its effects); several such queries then
    wait for the database together."""
    import datetime as dt
    import uuid

    now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    run, other = str(uuid.uuid4()), str(uuid.uuid4())

    def unit(tx: Any) -> tuple[list[Any], list[Any], list[Any]]:
        rows = [{"key": "k", "position": 0, "queue": "q", "activity_name": "echo",
                 "timeout_seconds": 30, "settings": {}, "output_definitions": None}]  # fmt: skip
        for workflow in (run, other):
            tx.send("insert_activities", workflow_id=workflow, activities=tx.json(rows),
                    now=tx.time(now))  # fmt: skip
        first = tx.all_later("count_workflow_activities", workflow_id=run)
        second = tx.all_later("workflow_activities", workflow_id=other)
        tx.send("insert_activities", workflow_id=run,
                activities=tx.json([{**rows[0], "key": "k2", "position": 1}]),
                now=tx.time(now))  # fmt: skip
        after = tx.all("count_workflow_activities", workflow_id=run)
        return first(), second(), after

    first, second, after = await store.write(unit)
    assert first[0]["total"] == 1  # sent before the third insert, answered after it
    assert [r["key"] for r in second] == ["k"]
    assert after[0]["total"] == 2


async def test_deferred_appends_end_as_if_written_one_by_one(store: Store) -> None:
    """Attempt records and events kept by :class:`DeferredWrites` and written
    together (runs interleaved) leave the same rows as the statements one by one:
    every column, JSON values (floats, big integers, escapes, non-ASCII, null),
    money, times, each run's event order; a statement that reads them sees them."""
    import datetime as dt
    import decimal
    import uuid

    from kflow.server.deferred_writes import DeferredWrites
    from kflow.server.persistence import append_events, record_attempt
    from kflow.server.state import Emit, ErrorInfo

    now = dt.datetime(2026, 12, 7, 11, 0, 0, 123456, tzinfo=dt.UTC)
    claimed = now - dt.timedelta(seconds=3, microseconds=5)
    tricky = {"f": 0.30000000000000004, "big": 12345678901234567890, "s": 'é "q" \\', "n": None}
    usage = [{"model": "m-✓", "input_tokens": 12, "cost_usd": decimal.Decimal("0.000125")}]

    def write(tx: Any, runs: tuple[uuid.UUID, uuid.UUID]) -> None:
        for n, run in enumerate(runs):
            for k, outcome in enumerate(("completed", "failed")):
                row = {
                    "workflow_id": run,
                    "key": f"k{k}",
                    "iteration": n,
                    "attempt": k + 1,
                    "worker_id": None if k else "w-é",
                    "claimed_at": tx.time(claimed),
                }
                record_attempt(
                    tx,
                    attempt_id=str(uuid.UUID(int=run.int + k)),
                    row=row,
                    outcome=outcome,
                    now=now + dt.timedelta(microseconds=k),
                    error=ErrorInfo(code="E", message="nope ✗") if k else None,
                    cost=decimal.Decimal("0.0014") * (k + 1),
                    usage=usage if k else [],
                )
                append_events(
                    tx,
                    run,
                    [
                        Emit(type=f"t{k}", activity_key=f"k{k}", data=tricky),
                        Emit(type="bare", activity_key=None, data=None),
                    ],
                    now,
                )
        # the same attempt again: kept once
        again = {
            "workflow_id": runs[0],
            "key": "k0",
            "iteration": 0,
            "attempt": 1,
            "worker_id": "w-é",
            "claimed_at": tx.time(claimed),
        }
        record_attempt(
            tx, attempt_id=str(uuid.UUID(int=runs[0].int)), row=again, outcome="completed", now=now
        )

    direct = (uuid.uuid4(), uuid.uuid4())
    deferred = (uuid.uuid4(), uuid.uuid4())
    await store.write(lambda tx: write(tx, direct))

    def write_deferred(tx: Any) -> int:
        appending = DeferredWrites(tx)
        write(appending, deferred)
        seen = len(appending.all("workflow_attempts", workflow_id=str(deferred[0])))
        appending.flush()
        return seen

    assert await store.write(write_deferred) == 2  # a reading statement writes them first

    async def rows(runs: tuple[uuid.UUID, uuid.UUID]) -> list[list[dict[str, Any]]]:
        def read(tx: Any) -> list[list[dict[str, Any]]]:
            out = []
            for run in runs:
                attempts = tx.all("workflow_attempts", workflow_id=str(run))
                events = tx.all("workflow_events", workflow_id=str(run), after_id=0, limit=10)
                out.append(
                    [{k: (load_json(v) if k in {"error", "usage"} else v) for k, v in a.items()
                      if k != "id"} for a in attempts]
                    + [{k: (load_json(v) if k == "data" else v) for k, v in e.items()
                        if k not in ("id", "workflow_id")} for e in events]
                )  # fmt: skip
            return out

        result: list[list[dict[str, Any]]] = await store.read(read)
        return result

    assert await rows(deferred) == await rows(direct)
    [first, _] = await rows(deferred)
    assert [r.get("type") for r in first[2:]] == ["t0", "bare", "t1", "bare"]
    assert load_money(first[1]["cost_usd"]) == decimal.Decimal("0.0028")
    assert load_time(first[0]["started_at"]) == claimed
    assert first[1]["usage"] == [{"model": "m-✓", "input_tokens": 12, "cost_usd": "0.000125"}]


async def _activity_rows(store: Store, run: Any) -> list[dict[str, Any]]:
    """A run's activities as comparable values (JSON decoded; ids left out)."""
    found = await store.read(lambda tx: tx.all("workflow_activities", workflow_id=str(run)))
    return [
        {
            k: (load_json(v) if k in {"parameters", "outputs", "signal_data", "error"} else v)
            for k, v in r.items()
            if k not in ("workflow_id", "attempt_id")
        }
        for r in found
    ]


async def test_run_statuses_changed_together_end_as_if_changed_one_by_one(store: Store) -> None:
    """``set_workflows_status`` (kept by :class:`DeferredWrites`, one statement)
    leaves every run's row as ``set_workflow_status`` run by run does: the status,
    an error message kept when none is given, the completion time only for a
    finished run, the update time; a second change of a run applies after the first."""
    import datetime as dt
    import uuid

    from kflow.server.deferred_writes import DeferredWrites

    now = dt.datetime(2026, 12, 7, 21, 0, 0, 654321, tzinfo=dt.UTC)
    later = now + dt.timedelta(seconds=2, microseconds=7)
    changes = [  # (run, status, error message, finished, time)
        (0, "failed", 'boom ✗ "q"', True, now),
        (1, "running", None, False, now),
        (2, "completed", None, True, later),
        (3, "cancelled", "by request", False, now),
        (3, "failed", None, True, later),  # the same run again
    ]

    def runs(base: int) -> list[str]:
        return [str(uuid.UUID(int=(0x0190 << 112) + base + n)) for n in range(4)]

    def insert(tx: Any) -> None:
        for base in (0, 100):
            for n, run in enumerate(runs(base)):
                tx.run(
                    "insert_workflow", id=run, definition_name="d", definition_version="v",
                    input=tx.json({}), unique_key=None, now=tx.time(now - dt.timedelta(hours=1)),
                    timeout_at=tx.time(None),
                )  # fmt: skip
                tx.run(
                    "set_workflow_status", id=run, status="running",
                    error_message="old error" if n in (1, 3) else None, finished=False,
                    now=tx.time(now - dt.timedelta(hours=1)),
                )  # fmt: skip

    def change(tx: Any, base: int) -> None:
        ids = runs(base)
        for n, status, message, finished, at in changes:
            tx.send(
                "set_workflow_status", id=ids[n], status=status, error_message=message,
                finished=finished, now=tx.time(at),
            )  # fmt: skip

    def together(tx: Any) -> None:
        kept = DeferredWrites(tx)
        change(kept, 100)
        kept.flush()

    await store.write(insert)
    await store.write(lambda tx: change(tx, 0))
    await store.write(together)

    def read(tx: Any) -> list[list[Any]]:
        def shown(row: Any) -> tuple[Any, ...]:
            return (
                row["status"],
                row["error_message"],
                load_time(row["completed_at"]),
                load_time(row["updated_at"]),
            )

        return [[shown(tx.one("get_workflow", id=run)) for run in runs(b)] for b in (0, 100)]

    one_by_one, kept_together = await store.read(read)
    assert kept_together == one_by_one
    assert one_by_one[3] == ("failed", "by request", later, later)
    assert one_by_one[1] == ("running", "old error", None, now)


async def test_activities_updated_together_end_as_if_updated_one_by_one(store: Store) -> None:
    """``update_activities_of_runs`` (one statement) leaves every column as ``update_activity``
    row by row does: leases cleared or kept, attempts renewed, JSON values (floats,
    big integers, escapes, non-ASCII), times and money unchanged."""
    import datetime as dt
    import decimal
    import uuid

    from kflow._types import ActivityStatus as S
    from kflow.server.persistence import apply_put, apply_puts
    from kflow.server.state import ActivityState, ErrorInfo, PutActivity

    now = dt.datetime(2026, 12, 7, 7, 0, 0, 123456, tzinfo=dt.UTC)
    later = now + dt.timedelta(seconds=90, microseconds=7)
    tricky = {"f": 0.30000000000000004, "big": 12345678901234567890, "s": 'é "q" \\', "n": None}

    def prepare(tx: Any, run: uuid.UUID) -> None:
        rows = [
            {"key": k, "position": i, "queue": "std", "activity_name": "echo",
             "timeout_seconds": 30, "settings": {}, "output_definitions": None}
            for i, k in enumerate(("k1", "k2", "k3"))
        ]  # fmt: skip
        tx.run("insert_activities", workflow_id=str(run), activities=tx.json(rows),
               now=tx.time(now))  # fmt: skip
        ready = ActivityState(key="k1", status=S.PENDING, attempt=1, available_at=now)
        apply_put(tx, run, PutActivity(activity=ready, new_attempt=True), now)
        claimed = tx.all("claim_run_activities", workflow_id=str(run), queue="std",
                         worker_id="w1", client_id="c1", now=tx.time(now), limit=1,
                         lease_grace_micros=0, claimed_with=str(uuid.uuid4()))  # fmt: skip
        assert len(claimed) == 1

    puts = [
        PutActivity(
            activity=ActivityState(key="k1", status=S.COMPLETED, attempt=1, outputs=tricky,
                                   cost_usd=decimal.Decimal("0.0014"), completed_at=later,
                                   has_run=True),
            release_lease=True,
        ),
        PutActivity(
            activity=ActivityState(key="k2", status=S.PENDING, attempt=1, iteration=2,
                                   parameters={"x": tricky, "list": [1, "二"]}, available_at=later),
            new_attempt=True,
        ),
        PutActivity(
            activity=ActivityState(key="k3", status=S.WAITING, wait_signal="go",
                                   wait_timeout_at=later, signal_data={"d": [1.5]},
                                   error=ErrorInfo(code="E", message="nope ✗"),
                                   failure_handled=True),
        ),
    ]  # fmt: skip
    together, one_by_one = uuid.uuid4(), uuid.uuid4()

    def write_together(tx: Any) -> dict[str, uuid.UUID]:
        prepare(tx, together)
        return apply_puts(tx, together, puts, later)

    def write_one_by_one(tx: Any) -> dict[str, uuid.UUID]:
        prepare(tx, one_by_one)
        made = {p.activity.key: apply_put(tx, one_by_one, p, later) for p in puts}
        return {k: v for k, v in made.items() if v is not None}

    attempts = await store.write(write_together)
    assert set(attempts) == set(await store.write(write_one_by_one)) == {"k2"}

    assert await _activity_rows(store, together) == await _activity_rows(store, one_by_one)
    got = {r["key"]: r for r in await _activity_rows(store, together)}
    assert got["k1"]["outputs"] == tricky
    assert got["k1"]["worker_id"] is None  # the lease cleared
    assert got["k2"]["parameters"] == {"x": tricky, "list": [1, "二"]}
    assert load_time(got["k3"]["wait_timeout_at"]) == later
    assert load_money(got["k1"]["cost_usd"]) == decimal.Decimal("0.0014")
    [renewed] = await store.read(
        lambda tx: [tx.one("activity_by_attempt", attempt_id=str(attempts["k2"]))]
    )
    assert renewed is not None
    assert renewed["key"] == "k2"


async def test_activity_writes_kept_together_end_as_if_written_one_by_one(
    store: Store,
) -> None:
    """Activity updates and next-step claims kept by :class:`DeferredWrites` for
    several runs, written as one update and one claim statement, leave the same
    rows and claim the same activities as the statements one by one — including
    an activity updated twice and a run updated after its claim, which must be
    written in order."""
    import datetime as dt
    import decimal
    import uuid

    from kflow._types import ActivityStatus as S
    from kflow.server.deferred_writes import DeferredWrites
    from kflow.server.persistence import apply_put, apply_puts
    from kflow.server.state import ActivityState, ErrorInfo, PutActivity

    now = dt.datetime(2026, 12, 7, 12, 0, 0, 654321, tzinfo=dt.UTC)
    later = now + dt.timedelta(seconds=5, microseconds=3)
    tricky = {"f": 0.30000000000000004, "big": 12345678901234567890, "s": 'é "q" \\', "n": None}
    keys = ("k1", "k2", "k3", "k4")

    def prepare(tx: Any, run: uuid.UUID) -> None:
        rows = [
            {"key": k, "position": i, "queue": "std", "activity_name": "echo",
             "timeout_seconds": 30 + i, "settings": {}, "output_definitions": None}
            for i, k in enumerate(keys)
        ]  # fmt: skip
        tx.run("insert_activities", workflow_id=str(run), activities=tx.json(rows),
               now=tx.time(now))  # fmt: skip
        ready = ActivityState(key="k1", status=S.PENDING, attempt=1, available_at=now)
        apply_put(tx, run, PutActivity(activity=ready, new_attempt=True), now)
        assert tx.all("claim_run_activities", workflow_id=str(run), queue="std",
                      worker_id="w1", client_id="c1", now=tx.time(now), limit=1,
                      lease_grace_micros=0, claimed_with=None)  # fmt: skip

    def state(key: str, status: S, **more: Any) -> ActivityState:
        return ActivityState(key=key, status=status, attempt=1, **more)

    done = PutActivity(
        activity=state("k1", S.COMPLETED, outputs=tricky, completed_at=later,
                       cost_usd=decimal.Decimal("0.0021"), has_run=True),
        release_lease=True,
    )  # fmt: skip
    ready_k2 = PutActivity(
        activity=state("k2", S.PENDING, parameters={"x": tricky}, available_at=now),
        new_attempt=True,
    )
    # Ready before k2: a claim that saw this update would take k3 instead.
    ready_k3 = PutActivity(
        activity=state("k3", S.PENDING, available_at=now - dt.timedelta(seconds=1)),
        new_attempt=True,
    )
    waiting = PutActivity(
        activity=state("k4", S.WAITING, wait_signal="go", signal_data={"d": [1.5, "二"]},
                       error=ErrorInfo(code="E", message="nope ✗"))
    )  # fmt: skip
    waiting_again = PutActivity(
        activity=state("k4", S.WAITING, wait_signal="go", failure_handled=True)
    )

    def claim(tx: Any, run: uuid.UUID, n: int) -> Any:
        return tx.all_later(
            "claim_run_activities", workflow_id=str(run), queue="std", worker_id=f"w{n}",
            client_id="c-é", now=tx.time(later), limit=1, lease_grace_micros=1_500_000,
            claimed_with=str(uuid.UUID(int=n + 1)),
        )  # fmt: skip

    def steps(tx: Any, first: uuid.UUID, second: uuid.UUID) -> list[list[str]]:
        apply_puts(tx, first, [done, ready_k2], later)
        first_claim = claim(tx, first, 1)
        apply_put(tx, first, ready_k3, later)  # after the run's claim: in order
        apply_put(tx, second, done, later)
        apply_put(tx, second, waiting, later)
        apply_put(tx, second, waiting_again, later)  # the same activity again: in order
        apply_put(tx, second, ready_k2, later)
        second_claim = claim(tx, second, 2)
        return [[r["key"] for r in first_claim()], [r["key"] for r in second_claim()]]

    direct = (uuid.uuid4(), uuid.uuid4())
    kept = (uuid.uuid4(), uuid.uuid4())

    def write_direct(tx: Any) -> list[list[str]]:
        for run in direct:
            prepare(tx, run)
        return steps(tx, *direct)

    def write_kept(tx: Any) -> list[list[str]]:
        for run in kept:
            prepare(tx, run)
        deferred = DeferredWrites(tx)
        claimed = steps(deferred, *kept)
        deferred.flush()
        return claimed

    assert await store.write(write_direct) == [["k2"], ["k2"]]
    assert await store.write(write_kept) == [["k2"], ["k2"]]

    for one_by_one, together in zip(direct, kept, strict=True):
        assert await _activity_rows(store, together) == await _activity_rows(store, one_by_one)
    got = {r["key"]: r for r in await _activity_rows(store, kept[1])}
    assert got["k2"]["status"] == "running"
    assert got["k2"]["worker_id"] == "w2"
    assert got["k4"]["failure_handled"] in (True, 1)
    assert got["k4"]["error"] is None  # the second update won
    assert {r["key"]: r["status"] for r in await _activity_rows(store, kept[0])} == {
        "k1": "completed", "k2": "running", "k3": "pending", "k4": "not_scheduled",
    }  # fmt: skip


def test_a_reports_claim_reads_only_its_runs_rows_on_sqlite(tmp_path: pathlib.Path) -> None:
    """``claim_run_activities`` looks the run up by its primary key: the queue's
    ready index would visit every pending activity of the queue, whatever the run."""
    import sqlite3

    from kflow.store.queries import load_queries, migration_files

    conn = sqlite3.connect(tmp_path / "plan.db")
    for _, _, script in migration_files("sqlite"):
        conn.executescript(script)
    params = {"workflow_id": "w", "queue": "std", "worker_id": "x", "client_id": "c",
              "now": 1, "limit": 1, "lease_grace_micros": 0, "claimed_with": None}  # fmt: skip
    sql = load_queries("sqlite")["claim_run_activities"]
    plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    conn.close()
    assert "(workflow_id=?)" in plan, plan
    assert "activities_ready" not in plan, plan


@pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_statements_over_lists_of_runs_read_indexes_not_tables(store: Store) -> None:
    """PostgreSQL counts a JSON array's elements as 100 rows; with a few thousand
    activities that made a hash join over the whole table look cheaper than the
    primary key. The statements that take lists of runs, attempts or activities
    must read through the indexes however the table has grown (generic plans, as
    the prepared statements of a busy server use)."""
    import datetime as dt
    import json

    import psycopg

    from kflow.store.queries import load_queries

    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workflows SELECT gen_random_uuid(), 'd', '1', 'running', '{}'::jsonb,"
            " NULL, NULL, 0, now(), now(), NULL, NULL FROM generate_series(1, 2000)"
        )
        conn.execute(
            "INSERT INTO activities (workflow_id, key, position, queue, activity_name,"
            " timeout_seconds, settings, status, updated_at, available_at, attempt_id)"
            " SELECT w.id, 'k' || i, i, 'std', 'echo', 30, '{}'::jsonb,"
            " CASE WHEN i = 1 THEN 'pending' ELSE 'completed' END, now(), now(),"
            " gen_random_uuid() FROM workflows w, generate_series(1, 5) i"
        )
        conn.execute("ANALYZE workflows, activities")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        runs = [str(r[0]) for r in conn.execute("SELECT id FROM workflows LIMIT 3")]
        attempts = [str(r[0]) for r in conn.execute("SELECT attempt_id FROM activities LIMIT 3")]
        now = dt.datetime.now(dt.UTC).isoformat()
        update = {"key": "k2", "status": "pending", "iteration": 0, "attempt": 1,
                  "new_attempt_id": None, "parameters": None, "available_at": now,
                  "wait_signal": None, "wait_timeout_at": None, "signal_data": None,
                  "outputs": None, "error": None, "failure_handled": False, "cost_usd": "0",
                  "completed_at": None, "clear_lease": False, "clear_details": False,
                  "now": now}  # fmt: skip
        claim = {"queue": "std", "worker_id": "w", "client_id": "c", "now": now,
                 "lease_grace_micros": 0, "claimed_with": None}  # fmt: skip
        cases = {
            "activities_of_workflows": {"ids": json.dumps(runs)},
            "lock_workflows_of_attempts": {"ids": json.dumps(attempts)},
            "update_activities_of_runs": {
                "activities": json.dumps([{**update, "workflow_id": r} for r in runs])
            },
            "claim_next_of_runs": {
                "claims": json.dumps([{**claim, "workflow_id": r} for r in runs])
            },
        }
        queries = load_queries("postgres")
        for name, params in cases.items():
            with conn.transaction(force_rollback=True):
                plan = "\n".join(
                    r[0] for r in conn.execute("EXPLAIN (COSTS OFF) " + queries[name], params)
                )
            assert "Seq Scan on activities" not in plan, f"{name}:\n{plan}"
