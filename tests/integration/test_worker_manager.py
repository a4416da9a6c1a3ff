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
