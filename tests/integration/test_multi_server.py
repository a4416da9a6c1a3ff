"""Two servers on one PostgreSQL database wake each other through LISTEN/NOTIFY."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from kflow.server.serve import RunningServer, serve
from tests.conftest import reset_postgres
from tests.integration.conftest import make_config

pytestmark = pytest.mark.postgres

HELLO = "name: hello\nactivities:\n  - {key: a, activity_name: echo, parameters: {x: 1}}\n"


@pytest.fixture
async def two_servers(
    postgres_url: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Servers ``a`` and ``b``; with the marker ``workers_on_a`` only ``a`` runs workers."""
    reset_postgres(postgres_url)
    workers_on_a = request.node.get_closest_marker("workers_on_a") is not None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        servers = []
        for name in ("a", "b"):
            config = make_config(
                tmp_path / name,
                database_url=postgres_url,
                port=0,
                scheduler_max_sleep=30.0,  # no sweep: only NOTIFY wakes
                run_workers=workers_on_a and name == "a",
                inprocess_workers=("std",),
            )
            servers.append(
                await nursery.start(
                    lambda task_status, c=config: serve(
                        c, shutdown=shutdown, task_status=task_status
                    )
                )
            )
        yield servers[0], servers[1]
        shutdown.set()


async def test_a_long_poll_on_one_server_wakes_for_work_started_on_the_other(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    first, second = two_servers
    async with httpx.AsyncClient(timeout=60) as http:
        assert (
            await http.post(f"{first.url}/api/v1/workflow_definitions", content=HELLO)
        ).status_code == 201
        result: dict[str, object] = {}

        async def park_on_second() -> None:
            started = trio.current_time()
            answer = await http.post(
                f"{second.url}/api/v1/workers/poll",
                json={"worker": "std", "worker_id": "w-b", "wait_seconds": 20},
            )
            result["items"] = answer.json()["activities"]
            result["seconds"] = trio.current_time() - started

        async with trio.open_nursery() as nursery:
            nursery.start_soon(park_on_second)
            await trio.sleep(0.5)  # let the poll park (no work exists yet)
            started = await http.post(
                f"{first.url}/api/v1/workflows", json={"definition_name": "hello"}
            )
            assert started.status_code == 201
    assert len(result["items"]) == 1  # type: ignore[arg-type]
    assert result["seconds"] < 10  # type: ignore[operator]  # woken, not timed out


@contextlib.asynccontextmanager
async def _hello_started_on_first(
    two_servers: tuple[RunningServer, RunningServer],
) -> AsyncIterator[tuple[Any, str]]:
    """A run of ``hello`` started through the first server: ``(client of the second, id)``."""
    from kflow.client import AsyncClient, ClientConfig

    first, second = two_servers
    async with (
        AsyncClient(config=ClientConfig(api_url=first.url)) as on_first,
        AsyncClient(config=ClientConfig(api_url=second.url)) as on_second,
    ):
        await on_first.deploy(HELLO)
        run = await on_first.start("hello")
        yield on_second, run["workflow_id"]


@pytest.mark.workers_on_a
async def test_an_event_stream_on_one_server_follows_a_run_moved_by_the_other(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    async with _hello_started_on_first(two_servers) as (on_second, workflow_id):
        with trio.fail_after(20):  # the built-in workers complete it
            events = [e["type"] async for e in on_second.events(workflow_id)]
    assert events[0] == "workflow.started"
    assert events[-1] == "workflow.completed"


@pytest.mark.workers_on_a
async def test_a_long_poll_on_one_server_wakes_when_the_other_finishes_the_run(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    async with _hello_started_on_first(two_servers) as (on_second, workflow_id):
        began = trio.current_time()
        with trio.fail_after(20):
            done = await on_second.wait(workflow_id)
    assert done["status"] == "completed"
    # Woken by the other server's notification, not by the end of the 20 s hold.
    assert trio.current_time() - began < 10


async def test_a_listener_that_loses_its_connection_reconnects(
    two_servers: tuple[RunningServer, RunningServer], postgres_url: str
) -> None:
    import psycopg

    _, second = two_servers
    name = f"kflow-listener-{second.context.engine.instance_id[:12]}"

    def listener_pids() -> list[int]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
            return [r[0] for r in rows]

    with trio.fail_after(10):
        while not (before := await trio.to_thread.run_sync(listener_pids)):
            await trio.sleep(0.1)

    def terminate() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (before[0],))

    await trio.to_thread.run_sync(terminate)
    with trio.fail_after(20):  # a new listening connection appears (backoff starts at 0.5 s)
        while not (after := await trio.to_thread.run_sync(listener_pids)) or after == before:
            await trio.sleep(0.2)
    # and wake-ups flow again
    await test_a_long_poll_on_one_server_wakes_for_work_started_on_the_other(two_servers)


async def _until(predicate: Any, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.05)


def _notifications(conn: Any) -> list[str]:
    """Notifications on ``conn`` so far (a round trip delivers what has arrived)."""
    conn.execute("SELECT 1")
    return [n.payload for n in conn.notifies(timeout=0, stop_after=0)]


async def test_a_lone_server_notifies_nobody_until_another_server_listens(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    import psycopg

    from kflow.server.peers import listener_name

    reset_postgres(postgres_url)
    shutdown = trio.Event()
    config = make_config(tmp_path, database_url=postgres_url, port=0)
    # A plain LISTEN is not a server: it is not counted, and it sees what is sent.
    observer = psycopg.connect(postgres_url, autocommit=True)
    observer.execute("LISTEN kflow")
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as http:
            server = await nursery.start(
                lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
            )
            engine = server.context.engine
            await _until(lambda: not engine.notify_peers)
            await http.post(f"{server.url}/api/v1/workflow_definitions", content=HELLO)
            started = await http.post(
                f"{server.url}/api/v1/workflows", json={"definition_name": "hello"}
            )
            assert started.status_code == 201
            assert await trio.to_thread.run_sync(_notifications, observer) == []

            peer = psycopg.connect(
                postgres_url, autocommit=True, application_name=listener_name("f" * 32)
            )
            try:
                await _until(lambda: engine.notify_peers)
                started = await http.post(
                    f"{server.url}/api/v1/workflows", json={"definition_name": "hello"}
                )
                sent = await trio.to_thread.run_sync(_notifications, observer)
                assert len(sent) == 1
                assert engine.instance_id in sent[0]
            finally:
                peer.close()
            await _until(lambda: not engine.notify_peers)
            shutdown.set()
    finally:
        observer.close()
