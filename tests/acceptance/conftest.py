"""Fixtures: a cluster of real kflow processes (see tests/processes.py)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.processes import Cluster, cluster_context, remember_reports


@pytest.fixture
async def cluster(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    async with cluster_context(tmp_path, request) as state:
        yield state


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    yield from remember_reports(item, call)
