"""Fixtures: a cluster of real kflow processes (see tests/processes.py).

``cluster`` keeps its state in a SQLite file; ``pg_cluster`` in the session's
PostgreSQL database (emptied first), so several servers can share it.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator
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


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    yield from remember_reports(item, call)
