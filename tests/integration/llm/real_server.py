"""Run an example against the real LLM providers (keys from the environment)."""

from __future__ import annotations

import pathlib
from typing import Any

import trio

from kflow.client import AsyncClient, ClientConfig
from kflow.server.serve import RunningServer, seed_client, serve
from tests.integration.conftest import make_config


async def run_against_real_providers(
    tmp_path: pathlib.Path, example: pathlib.Path, data: dict[str, Any]
) -> dict[str, Any]:
    """Deploy and run ``example`` on a fresh embedded server; the finished run with its cost."""
    config = make_config(
        tmp_path, port=0, run_workers=True, inprocess_workers=("std",), insecure_dev=False
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        await seed_client(running.context, "tester", "tester-secret-value")
        client = ClientConfig(
            api_url=running.url, client_id="tester", client_secret="tester-secret-value"
        )
        try:
            async with AsyncClient(config=client) as kf:
                await kf.deploy(example)
                started = await kf.start(example.stem, data)
                done: dict[str, Any] = await kf.wait(started["workflow_id"], timeout=300)
                done["cost"] = await kf.cost(started["workflow_id"])
        finally:
            shutdown.set()
    return done
