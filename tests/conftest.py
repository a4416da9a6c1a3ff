"""Shared pytest configuration for every test layer.

PostgreSQL: the server is found from ``KFLOW_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); each test session
creates its own database and drops it at the end. Without a reachable
server the PostgreSQL variants are skipped with the reason — except under
``CI=true``, where a missing server fails the run.
"""

from __future__ import annotations

import os
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

POSTGRES_ENV = "KFLOW_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty database for this session (dropped afterwards).

    No connection is held for the session: some acceptance tests restart
    PostgreSQL, which would break a long-lived administration connection and
    with it the final ``DROP``.
    """
    import psycopg

    admin = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    name = f"kflow_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {admin} ({POSTGRES_ENV}): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " — CI requires it")
        pytest.skip(reason=message)
    try:
        yield urllib.parse.urlsplit(admin)._replace(path=f"/{name}").geturl()
    finally:
        deadline = time.monotonic() + 30  # PostgreSQL may still be coming back up
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def reset_postgres(url: str) -> None:
    """Empty every kflow table (the schema stays), so each test starts clean."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'kflow_schema'"
            ).fetchall()
        ]
        if tables:
            joined = ", ".join(f'"{t}"' for t in tables)
            conn.execute(f"TRUNCATE {joined} RESTART IDENTITY CASCADE")


_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``figures(line)``: print a measurement and repeat it in the terminal summary
    (section "kflow figures"), so load figures show without ``-s``."""
    lines = request.config.stash.setdefault(_FIGURES, [])

    def add(line: str) -> None:
        print(line)
        lines.append(f"{request.node.name}: {line}")

    return add


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("kflow figures")
        for line in lines:
            terminalreporter.write_line(line)
