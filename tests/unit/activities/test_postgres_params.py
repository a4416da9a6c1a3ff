"""``postgres_query`` / ``postgres_transaction``: parameter validation, URL masking,
value conversion and error classification — no database needed."""

from __future__ import annotations

import datetime
import decimal
import subprocess
import sys
import textwrap
import uuid
from typing import Any

import pytest

from kflow.activities._postgres_params import (
    DEFAULT_MAX_ROWS,
    mask_db_url,
    parse_db_url,
    parse_query_params,
    parse_statement,
    parse_transaction_params,
)
from kflow.activities._postgres_values import iso_duration, to_json_value, unique_columns
from kflow.errors import ActivityError

URL = "postgresql://app:s3cret-pw@db.example.com:5432/app"


def invalid(params: dict[str, Any], *, transaction: bool = False) -> ActivityError:
    parse = parse_transaction_params if transaction else parse_query_params
    with pytest.raises(ActivityError) as info:
        parse(params)
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert "s3cret" not in info.value.message
    return info.value


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db",
        "postgres://u:p@h:5433/db",
        "POSTGRESQL://h/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://h1:5432,h2:5433/db",
    ],
)
def test_accepted_db_urls(url: str) -> None:
    assert parse_db_url(url).url == url


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "  ",
        42,
        "mysql://app:s3cret-pw@h/db",
        "http://app:s3cret-pw@h/db",
        "host=h password=s3cret-pw",
        "postgresql://app:s3cret-pw@[::1/db",
    ],
)
def test_rejected_db_urls_name_the_field_and_hide_the_password(url: Any) -> None:
    error = invalid({"db_url": url, "query": "SELECT 1"})
    assert "'db_url'" in error.message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (URL, "postgresql://app:***@db.example.com:5432/app"),
        ("postgres://app@h/db", "postgres://app@h/db"),
        (
            "postgresql://h/db?sslmode=require&password=s3cret-pw",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        ("postgresql://a%40b:p%40ss%2F@h/db", "postgresql://a%40b:***@h/db"),
    ],
)
def test_mask_db_url(url: str, masked: str) -> None:
    assert mask_db_url(url) == masked
    assert parse_db_url(url).masked == masked


def test_scrub_removes_raw_and_decoded_passwords() -> None:
    target = parse_db_url("postgresql://u:p%40ss%2Fword@h/db?password=other-secret")
    text = target.scrub("failed for p@ss/word, p%40ss%2Fword and other-secret")
    assert text == "failed for ***, *** and ***"
    assert not any(secret in repr(target) for secret in ("p@ss", "p%40ss", "other-secret"))


def test_query_params_shapes() -> None:
    req = parse_query_params({"db_url": URL, "query": "SELECT %s", "params": [1]})
    assert (req.statements[0].params, req.max_rows) == ([1], DEFAULT_MAX_ROWS)
    req = parse_query_params(
        {"db_url": URL, "query": "SELECT %(a)s", "params": {"a": 1}, "max_rows": 5}
    )
    assert (req.statements[0].params, req.max_rows) == ({"a": 1}, 5)
    assert parse_statement("SELECT %s", (1, 2)).params == [1, 2]
    for empty in (None, [], {}):  # no params: the query is sent as is
        assert parse_statement("SELECT '100%'", empty).params is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"query": None}, "query"),
        ({"query": "  "}, "query"),
        ({"query": "SELECT 1\0"}, "query"),
        ({"params": "1"}, "params"),
        ({"params": 1}, "params"),
        ({"params": True}, "params"),
        ({"params": {1: "a"}}, "params"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": -1}, "max_rows"),
        ({"max_rows": True}, "max_rows"),
        ({"max_rows": "10"}, "max_rows"),
        ({"max_rows": 1.5}, "max_rows"),
    ],
)
def test_bad_query_params_are_named(change: dict[str, Any], field: str) -> None:
    error = invalid({"db_url": URL, "query": "SELECT %s", "params": [1], **change})
    assert f"invalid parameter {field!r}" in error.message


def test_transaction_params() -> None:
    req = parse_transaction_params(
        {
            "db_url": URL,
            "isolation_level": " Serializable ",
            "statements": ["SELECT 1", {"query": "SELECT %(x)s", "params": {"x": 1}}],
        }
    )
    assert req.isolation_level == "serializable"
    assert [s.field for s in req.statements] == ["statements[0]", "statements[1]"]
    assert req.statements[1].params_field == "statements[1].params"
    assert (
        parse_transaction_params({"db_url": URL, "statements": ["SELECT 1"]}).isolation_level
        is None
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"statements": None}, "statements"),
        ({"statements": []}, "statements"),
        ({"statements": "SELECT 1"}, "statements"),
        ({"statements": ["SELECT 1", 7]}, "statements[1]"),
        ({"statements": [{"params": [1]}]}, "statements[0].query"),
        (
            {"statements": ["SELECT 1", {"query": "SELECT %s", "params": "1"}]},
            "statements[1].params",
        ),
        ({"isolation_level": "chaos"}, "isolation_level"),
        ({"isolation_level": "read_uncommitted"}, "isolation_level"),
        ({"isolation_level": 3}, "isolation_level"),
        ({"db_url": "sqlite:///x"}, "db_url"),
        ({"max_rows": 0}, "max_rows"),
    ],
)
def test_bad_transaction_params_are_named(change: dict[str, Any], field: str) -> None:
    error = invalid({"db_url": URL, "statements": ["SELECT 1"], **change}, transaction=True)
    assert f"invalid parameter {field!r}" in error.message


@pytest.mark.parametrize(
    ("query", "params", "dollar"),
    [
        ("SELECT $1::int + $2", [1, 2], True),
        ("SELECT $1::int, '50%'", [1], True),
        ("SELECT %s, '$1'", [1], False),  # psycopg placeholders win
        ("SELECT $1", None, False),
        ("SELECT %(a)s", {"a": 1}, False),
        ("SELECT $$text$$ || %s", [1], False),
    ],
)
def test_placeholder_style(query: str, params: Any, dollar: bool) -> None:
    assert parse_statement(query, params).dollar_style is dollar


def test_to_json_value() -> None:
    aware = datetime.datetime(
        2024, 5, 1, 12, 30, 15, 250000, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    cases: list[tuple[Any, Any]] = [
        (None, None),
        (True, True),
        (7, 7),
        (1.5, 1.5),
        ("x", "x"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (decimal.Decimal("12.50"), "12.50"),
        (decimal.Decimal("NaN"), "NaN"),
        (aware, "2024-05-01T10:30:15.250000Z"),
        (datetime.datetime(2024, 5, 1, 12, 0), "2024-05-01T12:00:00"),
        (datetime.date(2024, 5, 1), "2024-05-01"),
        (datetime.time(8, 15, tzinfo=datetime.UTC), "08:15:00+00:00"),
        (datetime.timedelta(days=1, hours=2), "P1DT2H"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"\xde\xad\xbe\xef", "3q2+7w=="),
        (memoryview(b"ab"), "YWI="),
        ([decimal.Decimal("1.0"), [None]], ["1.0", [None]]),
        ({"a": {"b": decimal.Decimal("2")}}, {"a": {"b": "2"}}),
        (object.__new__(type("Weird", (), {"__str__": lambda self: "weird"})), "weird"),
    ]
    for value, expected in cases:
        assert to_json_value(value) == expected, value


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (datetime.timedelta(0), "PT0S"),
        (datetime.timedelta(seconds=30), "PT30S"),
        (datetime.timedelta(seconds=-30), "-PT30S"),
        (datetime.timedelta(days=-1), "-P1D"),
        (datetime.timedelta(days=2, minutes=3, seconds=4, microseconds=500000), "P2DT3M4.5S"),
        (datetime.timedelta(hours=1, microseconds=1), "PT1H0.000001S"),
    ],
)
def test_iso_duration(delta: datetime.timedelta, text: str) -> None:
    assert iso_duration(delta) == text


def test_unique_columns() -> None:
    assert unique_columns(["a", "b"]) == ["a", "b"]
    assert unique_columns(["a", "a", "a"]) == ["a", "a_2", "a_3"]
    assert unique_columns(["a", "a", "a_2"]) == ["a", "a_3", "a_2"]
    assert unique_columns(["?column?", "?column?"]) == ["?column?", "?column?_2"]


def test_classify_sqlstate() -> None:
    driver = pytest.importorskip("kflow.activities._postgres_driver")
    assert driver.classify_sqlstate("40001") == ("POSTGRES_RETRYABLE", True)
    assert driver.classify_sqlstate("40P01") == ("POSTGRES_RETRYABLE", True)
    assert driver.classify_sqlstate("55P03") == ("POSTGRES_RETRYABLE", True)
    assert driver.classify_sqlstate("57014") == ("TIMEOUT", True)
    assert driver.classify_sqlstate("08006") == ("POSTGRES_UNAVAILABLE", True)
    assert driver.classify_sqlstate("57P01") == ("POSTGRES_UNAVAILABLE", True)
    assert driver.classify_sqlstate("53300") == ("POSTGRES_UNAVAILABLE", True)
    for sqlstate in ("08P01", "42601", "42P01", "23505", "22P02", "XX000"):
        assert driver.classify_sqlstate(sqlstate) == ("POSTGRES_ERROR", False)


def test_translate_error_scrubs_the_password() -> None:
    driver = pytest.importorskip("kflow.activities._postgres_driver")
    import psycopg

    target = parse_db_url(URL)
    lost = driver.translate_error(
        psycopg.OperationalError("server closed the connection (s3cret-pw)"), target, "here"
    )
    assert (lost.code, lost.retryable) == ("POSTGRES_UNAVAILABLE", True)
    assert "s3cret" not in lost.message
    deadlock = driver.translate_error(psycopg.errors.DeadlockDetected("deadlock"), target, "x")
    assert (deadlock.code, deadlock.retryable) == ("POSTGRES_RETRYABLE", True)
    assert "SQLSTATE 40P01" in deadlock.message
    bind = driver.translate_error(
        psycopg.ProgrammingError("query parameter missing: a"), target, "x", "statements[2].params"
    )
    assert (bind.code, bind.retryable) == ("INVALID_PARAMETERS", False)
    assert "'statements[2].params'" in bind.message


def test_activities_import_and_register_without_psycopg() -> None:
    """psycopg is optional: without it the std registry simply lacks the postgres activities."""
    script = textwrap.dedent("""\
        import sys, uuid
        sys.modules["psycopg"] = None  # makes `import psycopg` raise ImportError
        import trio
        from kflow.activities import PostgresQueryActivity, postgres_available, std_registry
        from kflow.errors import ActivityError
        from kflow.worker.context import ActivityContext

        assert not postgres_available()
        types = std_registry().activity_types()
        assert not any("postgres" in t for t in types), types
        ctx = ActivityContext(workflow_id=uuid.uuid4(), activity_id=uuid.uuid4(),
                              activity_key="k")
        try:
            trio.run(PostgresQueryActivity().execute,
                     {"db_url": "postgresql://h/db", "query": "SELECT 1"}, ctx)
        except ActivityError as exc:
            print(exc.code, exc.retryable)
        """)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MISSING_DEPENDENCY False"


def test_building_the_std_registry_does_not_load_psycopg() -> None:
    """A worker that never runs a postgres activity does not pay for libpq."""
    script = textwrap.dedent("""\
        import sys
        from kflow.activities import std_registry
        types = std_registry().activity_types()
        assert "std.postgres_query" in types, types
        print("psycopg" in sys.modules)
        """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


async def test_a_libpq_without_pipeline_mode_fails_the_activity_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = pytest.importorskip("kflow.activities._postgres_driver")
    from kflow.activities import PostgresQueryActivity
    from kflow.worker.context import ActivityContext

    monkeypatch.setattr(driver, "pipeline_supported", lambda: False)
    ctx = ActivityContext(workflow_id=uuid.uuid4(), activity_id=uuid.uuid4(), activity_key="k")
    with pytest.raises(ActivityError) as caught:
        await PostgresQueryActivity().execute(
            {"db_url": "postgresql://h/db", "query": "SELECT 1"}, ctx
        )
    assert (caught.value.code, caught.value.retryable) == ("MISSING_DEPENDENCY", False)
    assert "pipeline mode" in caught.value.message
