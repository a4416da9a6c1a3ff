"""Fixtures: a cluster of real kflow processes (see tests/processes.py).

``cluster`` keeps its state in a SQLite file; ``pg_cluster`` in the session's
PostgreSQL database (emptied first), so several servers can share it.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.conftest import reset_postgres
from tests.processes import Cluster, cluster_context, remember_reports


@pytest.fixture
async def cluster(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    async with cluster_context(tmp_path, request) as state:
        yield state


@pytest.fixture
async def pg_cluster(
    postgres_url: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> AsyncIterator[Cluster]:
    """A cluster whose servers share the (emptied) PostgreSQL database."""
    reset_postgres(postgres_url)
    async with cluster_context(tmp_path, request, postgres=postgres_url) as state:
        yield state


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


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    yield from remember_reports(item, call)
