"""``postgres_query`` and ``postgres_transaction`` against a real PostgreSQL server.

Each test works in a schema of its own, selected through ``options=-c
search_path=...`` in ``db_url`` (which also checks that options given in the
URL survive the activity's own settings).
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import psycopg
import pytest
import structlog
import trio

from kflow.activities import PostgresQueryActivity, PostgresTransactionActivity
from kflow.errors import ActivityError
from kflow.worker.context import ActivityContext

pytestmark = pytest.mark.postgres

QUERY = PostgresQueryActivity()
TRANSACTION = PostgresTransactionActivity()


def with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    encoded = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)  # libpq: no "+"
    query = "&".join(filter(None, [parts.query, encoded]))
    return parts._replace(query=query).geturl()


@pytest.fixture
def db(postgres_url: str) -> Iterator[str]:
    """A ``db_url`` whose search_path is a fresh schema (dropped afterwards)."""
    schema = f"pgact_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text NOT NULL, "
            "price numeric(10, 2))"
        )
        conn.execute(
            f"INSERT INTO {schema}.items VALUES (1, 'apple', 0.50), "
            "(2, 'pear', 0.75), (3, 'plum', NULL)"
        )
        try:
            yield with_query(postgres_url, options=f"-c search_path={schema}")
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def ctx(timeout: float | None = 30.0) -> ActivityContext:
    return ActivityContext(
        workflow_id=uuid4(), activity_id=uuid4(), activity_key="k", timeout_seconds=timeout
    )


async def query(
    db_url: str, sql: str, params: Any = None, *, timeout: float | None = 30.0, **extra: Any
) -> dict[str, Any]:
    body = {"db_url": db_url, "query": sql, **extra}
    if params is not None:
        body["params"] = params
    result = await QUERY.execute(body, ctx(timeout))
    return dict(result.to_output_dict()["result"])


async def transaction(db_url: str, statements: list[Any], **extra: Any) -> dict[str, Any]:
    result = await TRANSACTION.execute({"db_url": db_url, "statements": statements, **extra}, ctx())
    return dict(result.to_output_dict()["result"])


async def names(db_url: str) -> list[str]:
    return [r["name"] for r in (await query(db_url, "SELECT name FROM items ORDER BY id"))["rows"]]


async def test_select_with_positional_params(db: str) -> None:
    result = await query(db, "SELECT id, name FROM items WHERE price > %s ORDER BY id", [0.6])
    assert result == {
        "rows": [{"id": 2, "name": "pear"}],
        "row_count": 1,
        "columns": ["id", "name"],
    }


async def test_select_with_named_params(db: str) -> None:
    result = await query(
        db,
        "SELECT name FROM items WHERE id = %(id)s OR name = %(name)s ORDER BY id",
        {"id": 1, "name": "plum"},
    )
    assert [r["name"] for r in result["rows"]] == ["apple", "plum"]


async def test_dollar_placeholders_of_the_reference_engine(db: str) -> None:
    result = await query(db, "SELECT name FROM items WHERE id = $1 OR id = $2 ORDER BY id", [1, 3])
    assert [r["name"] for r in result["rows"]] == ["apple", "plum"]


async def test_literal_percent_without_params_and_escaped_with_them(db: str) -> None:
    assert (await query(db, "SELECT 'a%' AS p"))["rows"] == [{"p": "a%"}]
    result = await query(
        db, "SELECT name FROM items WHERE name LIKE 'p%%' AND id > %s ORDER BY id", [0]
    )
    assert [r["name"] for r in result["rows"]] == ["pear", "plum"]


async def test_dml_reports_rows_affected(db: str) -> None:
    assert await query(
        db, "INSERT INTO items (id, name) VALUES (%s, %s), (%s, %s)", [4, "fig", 5, "kiwi"]
    ) == {"rows_affected": 2}
    assert await query(db, "UPDATE items SET price = %s WHERE price IS NULL", ["1.25"]) == {
        "rows_affected": 3
    }
    assert await query(db, "DELETE FROM items WHERE id > %s", [3]) == {"rows_affected": 2}
    assert await query(db, "CREATE TABLE other (x int)") == {"rows_affected": 0}
    returning = await query(
        db, "UPDATE items SET price = price * 2 WHERE id = %s RETURNING id, price", [1]
    )
    assert returning["rows"] == [{"id": 1, "price": "1.00"}]


async def test_sql_injection_through_params_stays_data(db: str) -> None:
    evil = "x'); DROP TABLE items; --"
    assert await query(db, "INSERT INTO items (id, name) VALUES (%s, %s)", [10, evil]) == {
        "rows_affected": 1
    }
    stored = await query(db, "SELECT name FROM items WHERE id = %(id)s", {"id": 10})
    assert stored["rows"] == [{"name": evil}]
    assert (await query(db, "SELECT * FROM items WHERE name = %s", ["' OR '1'='1"]))[
        "row_count"
    ] == 0
    assert (await query(db, "SELECT * FROM items WHERE name = $1", ["' OR 1=1 --"]))[
        "row_count"
    ] == 0
    assert (await query(db, "SELECT count(*) AS n FROM items"))["rows"] == [{"n": 4}]


async def test_values_become_json(db: str) -> None:
    sql = """SELECT 12.50::numeric AS amount, 'NaN'::float8 AS nan,
                    '2024-05-01 12:30:15.25+02'::timestamptz AS at,
                    '2024-05-01 12:30'::timestamp AS local, '2024-05-01'::date AS day,
                    '08:15'::time AS clock, 'infinity'::timestamptz AS forever,
                    '1 day 02:00:00'::interval AS span,
                    '00000000-0000-0000-0000-000000000001'::uuid AS id,
                    '\\xdeadbeef'::bytea AS blob, '{"a": [1, 2.5, null]}'::jsonb AS doc,
                    '[true]'::json AS arr_json, ARRAY[1, 2] AS ints, NULL::text AS nothing,
                    '10.0.0.1'::inet AS ip, 1 AS dup, 2 AS dup"""
    result = await query(db, sql)
    assert result["rows"] == [
        {
            "amount": "12.50",
            "nan": "NaN",
            "at": "2024-05-01T10:30:15.250000Z",
            "local": "2024-05-01T12:30:00",
            "day": "2024-05-01",
            "clock": "08:15:00",
            "forever": "infinity",
            "span": "P1DT2H",
            "id": "00000000-0000-0000-0000-000000000001",
            "blob": "3q2+7w==",
            "doc": {"a": [1, 2.5, None]},
            "arr_json": [True],
            "ints": [1, 2],
            "nothing": None,
            "ip": "10.0.0.1",
            "dup": 1,
            "dup_2": 2,
        }
    ]
    assert result["columns"][-2:] == ["dup", "dup_2"]


async def test_param_values_bind_as_json_arrays_and_text(db: str) -> None:
    await query(db, "CREATE TABLE docs (id uuid PRIMARY KEY, body jsonb, tags text[])")
    doc_id = str(uuid4())
    await query(
        db, "INSERT INTO docs VALUES (%s, %s, %s)", [doc_id, {"k": [1, {"n": None}]}, ["a", "b"]]
    )
    result = await query(
        db,
        "SELECT body, tags, body->'k'->0 AS first FROM docs "
        "WHERE id = %(id)s AND %(tag)s = ANY(tags)",
        {"id": doc_id, "tag": "b"},
    )
    assert result["rows"] == [{"body": {"k": [1, {"n": None}]}, "tags": ["a", "b"], "first": 1}]


async def test_transaction_commits_every_statement(db: str, postgres_url: str) -> None:
    result = await transaction(
        db,
        [
            "INSERT INTO items (id, name) VALUES (4, 'fig')",
            {
                "query": "UPDATE items SET name = %(n)s WHERE id = %(id)s",
                "params": {"n": "green apple", "id": 1},
            },
            {"query": "SELECT count(*) AS n FROM items WHERE id > $1", "params": [0]},
        ],
    )
    assert result == {
        "results": [
            {"rows_affected": 1},
            {"rows_affected": 1},
            {"rows": [{"n": 4}], "row_count": 1, "columns": ["n"]},
        ],
        "committed": True,
        "success": True,
        "statements_executed": 3,
    }
    assert await names(db) == ["green apple", "pear", "plum", "fig"]


async def test_transaction_rolls_back_when_a_statement_fails(db: str) -> None:
    with pytest.raises(ActivityError) as info:
        await transaction(
            db,
            [
                "INSERT INTO items (id, name) VALUES (4, 'fig')",
                {"query": "UPDATE items SET name = %s WHERE id = %s", "params": ["x", 1]},
                {"query": "INSERT INTO items (id, name) VALUES (%s, %s)", "params": [2, "dup"]},
            ],
        )
    error = info.value
    assert (error.code, error.retryable) == ("POSTGRES_ERROR", False)
    assert "statement 3 of 3 (statements[2])" in error.message
    assert "SQLSTATE 23505" in error.message
    assert "Key (id)=(2) already exists" in error.message
    assert "rolled back" in error.message
    assert await names(db) == ["apple", "pear", "plum"]


async def test_transaction_rolls_back_on_bad_params_of_a_later_statement(db: str) -> None:
    with pytest.raises(ActivityError) as info:
        await transaction(db, ["DELETE FROM items", {"query": "SELECT %s, %s", "params": [1]}])
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert "'statements[1].params'" in info.value.message
    assert await names(db) == ["apple", "pear", "plum"]


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        (None, "read committed"),
        ("read_committed", "read committed"),
        ("repeatable_read", "repeatable read"),
        ("serializable", "serializable"),
    ],
)
async def test_isolation_level(db: str, level: str | None, shown: str) -> None:
    extra = {} if level is None else {"isolation_level": level}
    result = await transaction(db, ["SHOW transaction_isolation"], **extra)
    assert result["results"][0]["rows"] == [{"transaction_isolation": shown}]


async def test_row_cap_fails_instead_of_truncating(db: str) -> None:
    sql = "SELECT g FROM generate_series(1, 20) AS g"
    assert (await query(db, sql, max_rows=20))["row_count"] == 20
    with pytest.raises(ActivityError) as info:
        await query(db, sql, max_rows=19)
    assert (info.value.code, info.value.retryable) == ("TOO_MANY_ROWS", False)
    assert "20 rows exceed max_rows=19" in info.value.message
    capped = PostgresQueryActivity(max_rows=5)  # the activity's default cap
    with pytest.raises(ActivityError, match="max_rows=5"):
        await capped.execute({"db_url": db, "query": sql}, ctx())


async def test_row_cap_counts_all_statements_of_a_transaction(db: str) -> None:
    with pytest.raises(ActivityError) as info:
        await transaction(
            db,
            ["DELETE FROM items WHERE id = 1", "SELECT * FROM items", "SELECT * FROM items"],
            max_rows=3,
        )
    assert info.value.code == "TOO_MANY_ROWS"
    assert "statement 3 of 3" in info.value.message
    assert "after 2 rows" in info.value.message
    assert await names(db) == ["apple", "pear", "plum"]


@pytest.mark.parametrize(
    ("sql", "params", "field"),
    [
        ("SELECT %s, %s", [1], "params"),
        ("SELECT %(a)s", {"b": 1}, "params"),
        ("SELECT %s", {"a": 1}, "params"),
        ("SELECT %s", [object()], "params"),
        ("SELECT 'a%' || %s", ["b"], "params"),
    ],
)
async def test_params_that_do_not_fit_the_query(db: str, sql: str, params: Any, field: str) -> None:
    with pytest.raises(ActivityError) as info:
        await query(db, sql, params)
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert f"invalid parameter {field!r}" in info.value.message


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"db_url": "mysql://u:pw@h/db", "query": "SELECT 1"}, "db_url"),
        ({"db_url": None, "query": "SELECT 1"}, "db_url"),
        ({"query": None}, "query"),
        ({"query": "SELECT %s", "params": "1"}, "params"),
        ({"query": "SELECT 1", "max_rows": 0}, "max_rows"),
        ({"db_url": "postgresql://h:port/db", "query": "SELECT 1"}, "db_url"),
        ({"db_url": "postgresql://h/db?no_such_option=1", "query": "SELECT 1"}, "db_url"),
    ],
)
async def test_bad_parameters_are_named(db: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ActivityError) as info:
        await QUERY.execute({"db_url": db, **params}, ctx())
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert f"invalid parameter {field!r}" in info.value.message


async def test_syntax_error_is_not_retryable(db: str) -> None:
    with pytest.raises(ActivityError) as info:
        await query(db, "SELEC name FROM items")
    assert (info.value.code, info.value.retryable) == ("POSTGRES_ERROR", False)
    assert "SQLSTATE 42601" in info.value.message
    assert '"SELEC"' in info.value.message
    with pytest.raises(ActivityError) as info:
        await query(db, "SELECT * FROM missing_table")
    assert (info.value.code, info.value.retryable) == ("POSTGRES_ERROR", False)
    assert "SQLSTATE 42P01" in info.value.message


async def test_one_statement_per_query(db: str) -> None:
    with pytest.raises(ActivityError) as info:
        await query(db, "SELECT 1; DELETE FROM items")
    assert (info.value.code, info.value.retryable) == ("POSTGRES_ERROR", False)
    assert "postgres_transaction" in info.value.message
    assert await names(db) == ["apple", "pear", "plum"]


async def test_unreachable_server_is_retryable_and_masks_the_password() -> None:
    with socket_closed() as port:
        url = f"postgresql://app:Hunter2-secret@127.0.0.1:{port}/app"
        with structlog.testing.capture_logs() as logs, pytest.raises(ActivityError) as info:
            await query(url, "SELECT 1")
    assert (info.value.code, info.value.retryable) == ("POSTGRES_UNAVAILABLE", True)
    assert f"postgresql://app:***@127.0.0.1:{port}/app" in info.value.message
    assert "Hunter2" not in info.value.message
    assert "Hunter2" not in repr(logs)


async def test_password_never_reaches_messages_or_logs(postgres_url: str) -> None:
    parts = urllib.parse.urlsplit(postgres_url)
    password = parts.password or "Kflow-Test-pw"  # trust auth ignores an added password
    if not parts.password:
        user = parts.username or "postgres"
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}:{password}@{host}")
    url = with_query(parts.geturl(), password=password)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(ActivityError) as info:
            await query(url, "SELEC 1")
        outcome: Any
        try:
            outcome = await query(url, "SELECT 1")
        except ActivityError as exc:  # a server that wants another password: still masked
            outcome = exc.message
    assert password not in info.value.message
    assert ":***@" in info.value.message
    assert "password=***" in info.value.message
    assert password not in repr(outcome)
    assert logs
    assert password not in repr(logs)


async def test_statement_timeout_follows_the_attempt_timeout(db: str) -> None:
    started = time.monotonic()
    with pytest.raises(ActivityError) as info:
        await query(db, "SELECT pg_sleep(10)", timeout=0.5)
    assert time.monotonic() - started < 5
    assert (info.value.code, info.value.retryable) == ("TIMEOUT", True)
    assert "SQLSTATE 57014" in info.value.message


async def test_cancelled_attempt_cancels_the_statement_on_the_server(
    db: str, postgres_url: str
) -> None:
    marker = f"kflow_cancel_{secrets.token_hex(4)}"
    with trio.move_on_after(0.5) as scope:
        await query(db, f"SELECT pg_sleep(30) AS {marker}", timeout=60)
    assert scope.cancelled_caught

    def still_running() -> int:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                [f"%{marker}%"],
            ).fetchone()
            return int(row[0]) if row else 0

    with trio.fail_after(5):
        while await trio.to_thread.run_sync(still_running):
            await trio.sleep(0.1)


async def test_lock_timeout_is_retryable(db: str) -> None:
    with psycopg.connect(db) as holder:  # a transaction holding a row lock
        holder.execute("SELECT * FROM items WHERE id = 1 FOR UPDATE")
        with pytest.raises(ActivityError) as info:
            await transaction(
                db, ["SET LOCAL lock_timeout = '100ms'", "UPDATE items SET name = 'x' WHERE id = 1"]
            )
        holder.rollback()
    assert (info.value.code, info.value.retryable) == ("POSTGRES_RETRYABLE", True)
    assert "SQLSTATE 55P03" in info.value.message


async def test_connection_carries_kflow_application_name(db: str) -> None:
    result = await query(
        db,
        "SELECT current_setting('application_name') AS app, setting::int "
        "AS timeout_ms FROM pg_settings WHERE name = 'statement_timeout'",
        timeout=30,
    )
    [row] = result["rows"]
    assert row["app"] == "kflow"
    assert 25_000 < row["timeout_ms"] <= 30_000  # what is left of the attempt's 30 s
    named = with_query(db, application_name="billing")
    assert (await query(named, "SELECT current_setting('application_name') AS app"))["rows"] == [
        {"app": "billing"}
    ]


class socket_closed:
    """A loopback port with nothing listening on it (bound, never listened)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_cancelled_or_expired_session_runs_nothing(db: str) -> None:
    from kflow.activities import _postgres_driver as driver
    from kflow.activities._postgres_params import parse_transaction_params

    req = parse_transaction_params({"db_url": db, "statements": ["DELETE FROM items"]})
    cancelled = driver.Session(
        target=req.target, deadline=time.monotonic() + 30, connect_timeout=10
    )
    assert cancelled.cancel() is None  # before the thread connected: nothing to send yet
    with pytest.raises(ActivityError, match="cancelled") as info:
        driver.run(cancelled, req, True)
    assert (info.value.code, info.value.retryable) == ("TIMEOUT", True)
    expired = driver.Session(target=req.target, deadline=time.monotonic() - 1, connect_timeout=10)
    with pytest.raises(ActivityError, match="time is up"):
        driver.run(expired, req, True)
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
    assert row == (3,)
