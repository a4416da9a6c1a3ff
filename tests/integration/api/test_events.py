"""The history of a run: JSON form and the Server-Sent Events stream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import trio

from tests.integration.conftest import Api, assert_error

FLOW = """
name: evented
activities:
  - key: a
    activity_name: echo
  - key: b
    activity_name: echo
    depends_on: [a]
"""


async def _history(api: Api, workflow_id: str, **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get(
        f"/api/v1/workflows/{workflow_id}/events",
        params=params,
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return list(response.json())


def _parse_sse(text: str) -> list[dict[str, Any]]:
    """Events of an SSE body as ``{"id", "event", "data"}`` (comments dropped)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


async def test_history_as_json(api: Api) -> None:
    await api.deploy(FLOW)
    workflow_id = await api.start("evented")
    for _ in range(2):
        [item] = await api.poll()
        await api.complete(item, ok=True)
    await api.wait_status(workflow_id, "completed")

    events = await _history(api, workflow_id)
    types = [(e["type"], e["activity_key"]) for e in events]
    assert types[0] == ("workflow.started", None)
    assert types[-1] == ("workflow.completed", None)
    for key in ("a", "b"):
        mine = [t for t, k in types if k == key]
        assert mine == ["activity.scheduled", "activity.started", "activity.completed"], key
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for event in events:
        assert event["workflow_id"] == workflow_id
        assert event["created_at"].endswith("Z")
        assert isinstance(event["data"], dict)

    later = await _history(api, workflow_id, from_event_id=ids[2])
    assert [e["event_id"] for e in later] == ids[3:]

    assert_error(
        await api.client.get(
            f"/api/v1/workflows/{uuid.uuid4()}/events", headers={"accept": "application/json"}
        ),
        404,
    )
    assert_error(
        await api.client.get(
            f"/api/v1/workflows/{workflow_id}/events",
            params={"from_event_id": "x"},
            headers={"accept": "application/json"},
        ),
        422,
        field="from_event_id",
    )


async def test_sse_stream_replays_then_follows_until_the_run_ends(api: Api) -> None:
    await api.deploy(FLOW)
    workflow_id = await api.start("evented")
    [a] = await api.poll()
    await api.complete(a, ok=True)
    so_far = await _history(api, workflow_id)
    after = so_far[1]["event_id"]
    received: dict[str, Any] = {}

    async def listen() -> None:
        async with api.client.stream(
            "GET",
            f"/api/v1/workflows/{workflow_id}/events",
            params={"from_event_id": after},
            headers={"accept": "text/event-stream"},
        ) as response:
            received["status"] = response.status_code
            received["content_type"] = response.headers["content-type"]
            received["text"] = (await response.aread()).decode()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await trio.sleep(0.2)
            assert "text" not in received  # the stream is still open: the run is not over
            [b] = await api.poll()
            await api.complete(b, ok=True)

    assert received["status"] == 200
    assert received["content_type"].startswith("text/event-stream")
    events = _parse_sse(received["text"])
    full = await _history(api, workflow_id)
    assert [int(e["id"]) for e in events] == [e["event_id"] for e in full if e["event_id"] > after]
    assert [e["event"] for e in events] == [e["data"]["type"] for e in events]
    assert events[-1]["event"] == "workflow.completed"
    assert any(
        e["event"] == "activity.completed" and e["data"]["activity_key"] == "b" for e in events
    )


async def test_sse_stream_of_a_finished_run_replays_and_ends(api: Api) -> None:
    await api.deploy(FLOW)
    workflow_id = await api.start("evented")
    [a] = await api.poll()
    await api.fail(a, retryable=False)
    await api.wait_status(workflow_id, "failed")
    with trio.fail_after(3):
        response = await api.client.get(f"/api/v1/workflows/{workflow_id}/events")
    assert response.status_code == 200
    events = _parse_sse(response.text)
    assert events[0]["event"] == "workflow.started"
    assert events[-1]["event"] == "workflow.failed"
    assert len(events) == len(await _history(api, workflow_id))


async def test_sse_stream_of_an_unknown_run_is_404(api: Api) -> None:
    response = await api.client.get(
        f"/api/v1/workflows/{uuid.uuid4()}/events", headers={"accept": "text/event-stream"}
    )
    assert_error(response, 404)


async def test_sse_stream_after_a_finished_runs_last_event_ends_at_once(api: Api) -> None:
    await api.deploy(FLOW)
    workflow_id = await api.start("evented")
    [a] = await api.poll()
    await api.fail(a, retryable=False)
    await api.wait_status(workflow_id, "failed")
    last = (await _history(api, workflow_id))[-1]["event_id"]
    with trio.fail_after(3):
        response = await api.client.get(
            f"/api/v1/workflows/{workflow_id}/events", params={"from_event_id": last}
        )
    assert response.status_code == 200
    assert _parse_sse(response.text) == []
