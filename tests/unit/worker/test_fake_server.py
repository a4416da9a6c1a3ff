"""Contract checks of the worker protocol (PROTOCOL §2-§3), run against the fake.

These keep the fake honest: each one states what a kflow server answers. The
``server`` fixture can later be parametrized with the real app (through
``httpx.ASGITransport``) so the fake and the server are verified alike.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

FakeServer = Any  # the ``fake`` fixture's class lives in conftest.py


@pytest.fixture
async def client(fake: FakeServer, api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), base_url=api_url) as c:
        yield c


async def _token(client: httpx.AsyncClient) -> dict[str, str]:
    answer = await client.post(
        "/api/v1/oauth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": "worker-client",
            "client_secret": "s3cret",
        },
    )
    assert answer.status_code == 200
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


async def _poll(client: httpx.AsyncClient, auth: dict[str, str], **body: Any) -> httpx.Response:
    payload = {"worker": "py-std", "worker_id": "w1", "max_activities": 5, **body}
    return await client.post("/api/v1/workers/poll", json=payload, headers=auth)


async def test_token_endpoint(client: httpx.AsyncClient) -> None:
    auth = await _token(client)
    assert auth["Authorization"].startswith("Bearer ")
    bad = await client.post(
        "/api/v1/oauth/token", json={"client_id": "worker-client", "client_secret": "nope"}
    )
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "UNAUTHORIZED"
    missing = await client.post("/api/v1/oauth/token", json={"client_id": "worker-client"})
    assert missing.status_code == 400


async def test_routes_need_a_token_except_info(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/info")).status_code == 200
    answer = await client.post("/api/v1/workers/poll", json={"worker": "py-std", "worker_id": "w1"})
    assert answer.status_code == 401
    assert set(answer.json()["error"]) == {"code", "message", "details"}


async def test_poll_claims_items_in_the_protocol_shape(
    client: httpx.AsyncClient, fake: FakeServer
) -> None:
    auth = await _token(client)
    first = fake.enqueue("echo", {"x": 1}, timeout_seconds=30)
    fake.enqueue("echo", worker="std")  # another queue
    answer = await _poll(client, auth)
    assert answer.status_code == 200
    data = answer.json()
    assert data["count"] == 1
    item = data["activities"][0]
    assert item["activity_id"] == str(first)
    assert item["parameters"] == {"x": 1}
    assert item["timeout_seconds"] == 30
    assert item["settings"]["timeout_seconds"] == 30
    assert "output_definitions" not in item
    assert "signal_data" not in item
    assert item["attempt"] == 1
    again = await _poll(client, auth)
    assert again.json() == {"activities": [], "count": 0}  # a claim is atomic


async def test_poll_validates_max_activities(client: httpx.AsyncClient) -> None:
    answer = await _poll(client, await _token(client), max_activities=0)
    assert answer.status_code == 422
    assert "max_activities" in answer.json()["error"]["details"]["field_errors"]


async def test_long_poll_holds_until_work_arrives(
    client: httpx.AsyncClient, fake: FakeServer, autojump_clock: trio.abc.Clock
) -> None:
    auth = await _token(client)
    start = trio.current_time()
    empty = await _poll(client, auth, wait_seconds=5)
    assert empty.json()["count"] == 0
    assert trio.current_time() - start == pytest.approx(5)

    async def later() -> None:
        await trio.sleep(2)
        fake.enqueue("echo")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        start = trio.current_time()
        answer = await _poll(client, auth, wait_seconds=20)
    assert answer.json()["count"] == 1
    assert trio.current_time() - start == pytest.approx(2)


async def test_without_long_poll_wait_seconds_is_ignored(
    client: httpx.AsyncClient, fake: FakeServer, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = []
    start = trio.current_time()
    answer = await _poll(client, await _token(client), wait_seconds=20)
    assert answer.json()["count"] == 0
    assert trio.current_time() == start


async def test_heartbeat_complete_fail_and_lease_rules(
    client: httpx.AsyncClient, fake: FakeServer
) -> None:
    auth = await _token(client)
    a, b = fake.enqueue("echo"), fake.enqueue("echo")
    await _poll(client, auth)

    async def call(activity_id: uuid.UUID, op: str, **body: Any) -> httpx.Response:
        return await client.post(f"/api/v1/activities/{activity_id}/{op}", json=body, headers=auth)

    beat = await call(a, "heartbeat", worker_id="w1", details={"step": 1})
    assert beat.status_code == 200
    assert beat.json()["acknowledged"] is True
    assert fake.activities[a].heartbeats[0][1] == {"step": 1}
    assert (await call(a, "heartbeat", worker_id="other")).status_code == 409
    assert (await call(uuid.uuid4(), "heartbeat", worker_id="w1")).status_code == 404
    assert (await call(a, "complete", worker_id="w1", output=[1])).status_code == 422
    assert (await call(a, "complete", worker_id="other", output={})).status_code == 409
    done = await call(a, "complete", worker_id="w1", output={"r": 1}, cost_usd="0.01")
    assert done.status_code == 200
    assert done.json()["acknowledged"] is True
    again = await call(a, "complete", worker_id="w1", output={"r": 1})
    assert again.status_code == 200  # idempotent for the same worker
    assert (
        await call(a, "fail", worker_id="w1", error={"code": "X", "message": ""})
    ).status_code == 409
    assert (await call(a, "heartbeat", worker_id="w1")).status_code == 200  # finished: ignored
    failed = await call(
        b, "fail", worker_id="w1", error={"code": "TIMEOUT", "message": "", "retryable": True}
    )
    assert failed.json() == {"acknowledged": True, "will_retry": True}
    fake.activities[b].status = "running"
    fake.activities[b].cancelled = True
    assert (await call(b, "heartbeat", worker_id="w1")).status_code == 409


async def test_files_round_trip(client: httpx.AsyncClient, fake: FakeServer) -> None:
    auth = await _token(client)
    wf = uuid.uuid4()
    path = f"/api/v1/workflows/{wf}/activities/k/files/a.txt"
    stored = await client.post(path, content=b"hi", headers={**auth, "content-type": "text/plain"})
    assert stored.status_code == 201
    assert stored.json()["size"] == 2
    fetched = await client.get(path, headers=auth)
    assert fetched.content == b"hi"
    missing = await client.get(path.replace("a.txt", "b.txt"), headers=auth)
    assert missing.status_code == 404


async def test_down_and_unreachable(client: httpx.AsyncClient, fake: FakeServer) -> None:
    fake.down = True
    answer = await client.get("/api/v1/info")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    fake.down, fake.unreachable = False, True
    with pytest.raises(httpx.ConnectError):
        await client.get("/api/v1/info")
