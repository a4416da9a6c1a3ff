"""``WorkerManager`` against the real API (in-process ASGI transport)."""

from __future__ import annotations

import pathlib

import pytest

from kflow.errors import ApiError
from kflow.worker import ActivityRegistry, WorkerConfig, WorkerManager
from tests.integration.conftest import Api


async def test_a_queue_name_the_server_refuses_stops_the_worker(
    api: Api, tmp_path: pathlib.Path
) -> None:
    # Valid for the worker, too long for the server (at most 100 characters): the
    # poll answer is a 422, and a worker must fail loudly rather than poll forever.
    queue = "q" * 101
    registry = ActivityRegistry(default_worker=queue)
    config = WorkerConfig(
        api_url="http://kflow.test", worker=queue, state_dir=tmp_path / "state", insecure=True
    )
    manager = WorkerManager(config, registry, http=api.client)
    with pytest.raises(ApiError) as info:
        await manager.run()
    assert (info.value.status, info.value.code) == (422, "VALIDATION_ERROR")
    assert "worker" in info.value.details["field_errors"]


async def test_a_worker_runs_a_branching_workflow_against_the_real_server(
    api: Api, tmp_path: pathlib.Path
) -> None:
    from kflow.activities import aclose_registry, std_registry

    await api.deploy("""
name: branchy
activities:
  - {key: start, activity_name: echo, parameters: {n: "{{ INPUT.n }}"}}
  - key: big
    activity_name: echo
    depends_on: [{activity_key: start, conditions: ["{{ start.echo.n > 10 }}"]}]
  - key: small
    activity_name: echo
    depends_on: [{activity_key: start, conditions: ["{{ start.echo.n <= 10 }}"]}]
  - {key: a, activity_name: echo, depends_on: [start]}
  - {key: b, activity_name: echo, depends_on: [start]}
  - {key: join, activity_name: echo, depends_on: [a, b]}
""")
    workflow_id = await api.start("branchy", {"n": 42})
    registry = std_registry()
    config = WorkerConfig(
        api_url="http://kflow.test", worker="std", state_dir=tmp_path / "state", insecure=True
    )
    try:
        # burst mode: run until the queue is empty and everything is reported
        for _ in range(5):
            await WorkerManager(config, registry, http=api.client, burst=True).run()
    finally:
        await aclose_registry(registry)
    run = await api.run(workflow_id)
    statuses = {a["activity_key"]: a["status"] for a in run["activities"]}
    assert run["status"] == "completed", statuses
    assert statuses == {
        "start": "completed",
        "big": "completed",
        "small": "skipped",
        "a": "completed",
        "b": "completed",
        "join": "completed",
    }
