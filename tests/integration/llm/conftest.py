"""Fixtures of the LLM tests: the loopback providers and a server whose built-in
std worker (with kflow_llm's activities) talks to them."""

from __future__ import annotations

import gc
import pathlib
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from kflow.server.serve import RunningServer, seed_client, serve
from tests.integration.conftest import DIALECTS, database_for, make_config
from tests.llm_providers import FakeProviders, environ_for
from tests.llm_providers import serve_fake_providers as serve_fake


@pytest.fixture
def llm_prices() -> str:
    """A prices file applied over the shipped catalog (none by default)."""
    return "models: []\n"


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeProviders:
    """The loopback providers (answers at once unless a test sets ``delay_seconds``)."""
    return await serve_fake(nursery)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture(params=DIALECTS)
async def server(
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    fake: FakeProviders,
    monkeypatch: pytest.MonkeyPatch,
    llm_prices: str,
) -> AsyncIterator[RunningServer]:
    prices = tmp_path / "prices.yaml"
    prices.write_text(llm_prices)
    for name, value in {**environ_for(fake), "KFLOW_LLM_PRICES": str(prices)}.items():
        monkeypatch.setenv(name, value)
    config = make_config(
        tmp_path,
        database_url=database_for(request, tmp_path),
        port=0,
        run_workers=True,
        inprocess_workers=("std",),
        insecure_dev=False,
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        await seed_client(running.context, "tester", "tester-secret-value")
        yield running
        shutdown.set()
    gc.collect()
