"""``serve()`` on a real socket with its built-in workers, driven by the Python clients."""

from __future__ import annotations

import contextlib
import gc
import pathlib
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from kflow.client import AsyncClient, Client, ClientConfig
from kflow.config import server_config
from kflow.errors import ApiError
from kflow.server.auth import client_summary
from kflow.server.serve import RunningServer, seed_client, serve
from tests.integration.conftest import DIALECTS, database_for, make_config

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(params=DIALECTS)
async def server(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[RunningServer]:
    config = make_config(
        tmp_path,
        database_url=database_for(request, tmp_path),
        port=0,
        run_workers=True,
        insecure_dev=False,
        deploy_paths=(EXAMPLES,),
        script_pool_size=1,
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        await seed_client(running.context, "tester", "tester-secret-value")
        yield running
        shutdown.set()  # an orderly stop: workers drain, hypercorn closes, store closes
    # A socket a test forgot to close fails that test here, not whichever later
    # test happens to trigger the garbage collector (filterwarnings = error).
    gc.collect()


@contextlib.asynccontextmanager
async def open_ws(url: str) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client connection whose TCP socket is always closed on exit.

    trio-websocket's own ``open_websocket_url`` leaks its socket when the
    *server* ends the session (a 4400/4401 close): its client waits for the
    server's TCP close, stops reading, and its ``aclose()`` then returns early
    because the session is already closed — the socket is left to the garbage
    collector, whose ResourceWarning fails an unrelated later test. Owning the
    TCP stream here closes it in every case.
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    resource = f"{parts.path}?{parts.query}" if parts.query else parts.path
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, parts.netloc, resource)
        try:
            yield ws
        finally:
            await ws.aclose()


def credentials(server: RunningServer) -> ClientConfig:
    return ClientConfig(api_url=server.url, client_id="tester", client_secret="tester-secret-value")


async def test_async_client_runs_the_examples(server: RunningServer) -> None:
    async with AsyncClient(config=credentials(server)) as kf:
        info = await kf.info()
        assert "long_poll" in info["features"]
        started = await kf.start("hello", {"name": "Trio"})
        done = await kf.wait(started["workflow_id"], timeout=30)
        assert done["status"] == "completed"
        output = await kf.output(started["workflow_id"])
        [terminal] = output["terminal_outputs"]
        assert terminal["output"][0]["value"] == {"loud": "HELLO, TRIO!"}
        events = [e["type"] async for e in kf.events(started["workflow_id"])]
        assert events[0] == "workflow.started"
        assert events[-1] == "workflow.completed"
        listing = await kf.list_workflows(definition_name="hello")
        assert listing["total"] == 1
        cost = await kf.cost(started["workflow_id"])
        assert (cost["workflow_name"], cost["budget_limit_usd"]) == ("hello", None)
        history = await kf.cost_history(started["workflow_id"])
        assert len(history) == len(done["activities"])
        analytics = await kf.cost_analytics(group_by="definition")
        assert "hello" in {g["key"] for g in analytics["groups"]}


async def test_async_client_signal_and_cancel(server: RunningServer) -> None:
    async with AsyncClient(config=credentials(server)) as kf:
        approval = await kf.start("approval", {"title": "Q4"})
        with trio.fail_after(30):
            while (await kf.status(approval["workflow_id"]))["activities"][1][
                "status"
            ] != "waiting":
                await trio.sleep(0.05)
        answer = await kf.signal(approval["workflow_id"], "publish", "approved", {"by": "ana"})
        assert answer["signaled"] is True
        done = await kf.wait(approval["workflow_id"], timeout=30)
        publish = done["activities"][1]["outputs"][0]["value"]
        assert publish == {"title": "Q4", "approved_by": "ana"}

        other = await kf.start("approval")
        cancelled = await kf.cancel(other["workflow_id"])
        assert cancelled["status"] == "cancelled"
        with pytest.raises(ApiError) as missing:
            await kf.status("01900000-0000-7000-8000-000000000000")
        assert missing.value.status == 404
        assert missing.value.code == "NOT_FOUND"


async def _held_approval(raw: httpx.AsyncClient, title: str) -> httpx.Response:
    """A held start of the ``approval`` example, its body left unread."""
    request = raw.build_request(
        "POST",
        "/api/v1/workflows",
        params={"wait_seconds": 30},
        json={"definition_name": "approval", "input": {"title": title}},
    )
    return await raw.send(request, stream=True)


async def _until_waiting(kf: AsyncClient, workflow_id: str) -> None:
    """Until the approval run waits for its ``publish`` signal."""
    with trio.fail_after(30):
        while (await kf.status(workflow_id))["activities"][1]["status"] != "waiting":
            await trio.sleep(0.05)


async def test_run_holds_one_start_and_names_the_run_before_it_ends(
    server: RunningServer,
) -> None:
    async with AsyncClient(config=credentials(server)) as kf:
        done = await kf.run("hello", {"name": "held"}, timeout=30)
        assert done["status"] == "completed"
        assert done["activities"][-1]["outputs"][0]["value"] == {"loud": "HELLO, HELD!"}

        # Over the socket: the status line and Location come first, the run when it
        # ends (this one waits for a signal sent after the headers arrived).
        headers = await kf._headers()
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as raw:
            response = await _held_approval(raw, "held")
            try:
                assert response.status_code == 201
                workflow_id = response.headers["location"].rpartition("/")[2]
                await _until_waiting(kf, workflow_id)
                await kf.signal(workflow_id, "publish", "approved", {"by": "ana"})
                body = await response.aread()
            finally:
                await response.aclose()
        assert orjson.loads(body)["status"] == "completed"


async def test_async_client_refreshes_an_expired_token(server: RunningServer) -> None:
    async with AsyncClient(config=credentials(server)) as kf:
        await kf.info()
        kf._token = "expired.or.garbage"  # what a restarted server's old token looks like
        listing = await kf.list_workflows()
        assert listing["count"] == 0


async def test_requests_without_credentials_are_refused(server: RunningServer) -> None:
    async with AsyncClient(config=ClientConfig(api_url=server.url)) as kf:
        with pytest.raises(ApiError) as refused:
            await kf.list_workflows()
        assert refused.value.status == 401


async def test_sync_client_in_a_thread(server: RunningServer) -> None:
    def use_sync_client() -> dict[str, object]:
        with Client(config=credentials(server)) as kf:
            deployed = kf.deploy((EXAMPLES / "hello.yaml").read_text())
            assert deployed.get("unchanged") is True  # deployed at start-up
            started = kf.start("hello", {"name": "sync"})
            done = kf.wait(started["workflow_id"])
            assert kf.status(started["workflow_id"])["status"] == done["status"]
            assert kf.cost(started["workflow_id"])["total_activities"] == 2
            assert kf.cost_history(started["workflow_id"])
            assert kf.cost_analytics(group_by="day")["attempts"] >= 2
            return done

    done = await trio.to_thread.run_sync(use_sync_client)
    assert done["status"] == "completed"


async def test_websocket_event_stream_replays_then_goes_live(server: RunningServer) -> None:
    from trio_websocket import ConnectionClosed

    from kflow._serde import loads

    ws_url = server.url.replace("http://", "ws://") + "/api/v1/workflow_events/ws"
    async with AsyncClient(config=credentials(server)) as kf:
        token = kf._token or (await kf._headers())["Authorization"].split()[1]
        first = await kf.start("hello", {"name": "one"})
        await kf.wait(first["workflow_id"], timeout=30)
        query = f"?workflow_id={first['workflow_id']}&from_event_id=0&token={token}"
        async with open_ws(ws_url + query) as ws:
            replayed = []
            with trio.fail_after(10):
                while not replayed or replayed[-1]["kflow_type"] != "workflow.completed":
                    replayed.append(loads(await ws.get_message()))
        assert replayed[0]["event_type"] == "WorkflowCreated"
        assert {m["type"] for m in replayed} == {"event"}
        assert "ActivityCompleted" in [m["event_type"] for m in replayed]

        live_query = f"?event_type=ActivityCompleted,workflow.completed&token={token}"
        async with open_ws(ws_url + live_query) as ws:
            second = await kf.start("hello", {"name": "two"})
            seen = []
            with trio.fail_after(20):
                while not seen or seen[-1]["kflow_type"] != "workflow.completed":
                    message = loads(await ws.get_message())
                    if message["workflow_id"] == second["workflow_id"]:
                        seen.append(message)
        assert [m["kflow_type"] for m in seen] == [
            "activity.completed",
            "activity.completed",
            "workflow.completed",
        ]

        async with open_ws(ws_url + "?workflow_id=nope&token=" + token) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        assert closed.value.reason.code == 4400
        async with open_ws(ws_url) as ws:
            with pytest.raises(ConnectionClosed) as refused:
                await ws.get_message()
        assert refused.value.reason.code == 4401


async def test_serve_seeds_its_client_with_the_configured_scopes(tmp_path: pathlib.Path) -> None:
    # KFLOW_SEED_CLIENT_SCOPES=worker: the shared worker credential cannot run workflows.
    env = {
        "KRUXIAFLOW_CLIENT_ID": "shared-worker",
        "KRUXIAFLOW_CLIENT_SECRET": "shared-worker-secret",
        "KFLOW_SEED_CLIENT_SCOPES": "worker",
    }
    config = server_config(
        env,
        seed_client=True,
        database_url=f"sqlite:///{tmp_path / 'kflow.db'}",
        port=0,
        run_workers=False,
    )
    assert config.seed_client_scopes == {"worker"}
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        row = await running.context.store.read(
            lambda tx: tx.one("get_client", client_id="shared-worker")
        )
        assert client_summary(row)["scopes"] == ["worker"]
        credentials = ClientConfig(
            api_url=running.url,
            client_id="shared-worker",
            client_secret="shared-worker-secret",
        )
        async with AsyncClient(config=credentials) as kf:
            with pytest.raises(ApiError) as refused:
                await kf.list_workflows()
            assert refused.value.status == 403
        shutdown.set()


async def test_a_caller_hanging_up_on_a_held_start_leaves_the_run_going(
    server: RunningServer,
) -> None:
    from structlog.testing import capture_logs

    async with AsyncClient(config=credentials(server)) as kf:
        headers = await kf._headers()
        with capture_logs() as logs:
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as raw:
                response = await _held_approval(raw, "gone")
                assert response.status_code == 201
                workflow_id = response.headers["location"].rpartition("/")[2]
                await response.aclose()  # hang up before the run ends
            await _until_waiting(kf, workflow_id)
            await kf.signal(workflow_id, "publish", "approved", {"by": "ana"})
            done = await kf.wait(workflow_id, timeout=30)
        assert done["status"] == "completed"
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []


STREAMED = "name: streamed\nactivities:\n  - {key: only, worker: streamed-q, activity_name: echo}\n"


async def test_a_streamed_poll_brings_each_activity_over_the_socket_as_it_is_claimed(
    server: RunningServer,
) -> None:
    async with AsyncClient(config=credentials(server)) as kf:
        await kf.deploy(STREAMED)
        headers = await kf._headers()
        poll = {
            "worker": "streamed-q",
            "worker_id": "w-stream",
            "max_activities": 2,
            "wait_seconds": 20,
            "stream": True,
        }
        lines: list[dict[str, Any]] = []
        arrived = [trio.Event(), trio.Event()]
        ended = trio.Event()

        async def stream(raw: httpx.AsyncClient) -> None:
            async with raw.stream("POST", "/api/v1/workers/poll", json=poll) as response:
                assert response.status_code == 200
                assert response.headers["x-accel-buffering"] == "no"
                async for line in response.aiter_lines():
                    lines.append(orjson.loads(line))
                    arrived[len(lines) - 1].set()
            ended.set()  # its limit reached: it ends

        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as raw:
            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream, raw)
                    runs = []
                    for i in range(2):  # each line arrives before the next run starts
                        await trio.sleep(0.2)
                        runs.append((await kf.start("streamed", {"i": i}))["workflow_id"])
                        await arrived[i].wait()
                    await ended.wait()
            assert [[a["workflow_id"] for a in line["activities"]] for line in lines] == [
                [runs[0]],
                [runs[1]],
            ]

            # A streamed poll whose caller hangs up keeps nothing it is handed.
            with trio.move_on_after(0.5):
                async with raw.stream("POST", "/api/v1/workers/poll", json=poll):
                    pass  # headers come with the first line: gone before any
            late = await kf.start("streamed", {"i": "late"})
            with trio.fail_after(15):
                while True:
                    answer = await raw.post(
                        "/api/v1/workers/poll", json={**poll, "stream": False, "wait_seconds": 1}
                    )
                    items = answer.json()["activities"]
                    if items:
                        break
            assert [a["workflow_id"] for a in items] == [late["workflow_id"]]
