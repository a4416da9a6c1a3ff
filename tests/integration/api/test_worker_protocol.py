"""The worker protocol through the API: poll, long-poll, heartbeat, complete, fail, leases."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.lowlevel

from tests.integration.conftest import Api, assert_error

POLL = "/api/v1/workers/poll"

SHAPES = """
name: shapes
activities:
  - key: plain
    activity_name: echo
    parameters:
      text: "hello {{ INPUT.who }}"
      count: "{{ INPUT.count }}"
      nested: {list: ["{{ INPUT.count + 1 }}", "{{ WORKFLOW.id }}"]}
    settings: {timeout_seconds: 45}
  - key: typed
    worker: custom-q
    activity_name: do_it
    outputs: [result, {name: report, type: file}]
"""

CHAIN = """
name: chain
activities:
  - key: a
    activity_name: echo
    parameters: {x: 1}
  - key: b
    activity_name: echo
    parameters: {from_a: "{{ a.value }}"}
    depends_on: [a]
"""

RETRYING = """
name: retrying
activities:
  - key: flaky
    activity_name: echo
    settings:
      timeout_seconds: 30
      retry: {max_attempts: 2, base_seconds: 0.2}
"""


def _activity(run: dict[str, Any], key: str) -> dict[str, Any]:
    return next(a for a in run["activities"] if a["activity_key"] == key)


async def _events(api: Api, workflow_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(
        f"/api/v1/workflows/{workflow_id}/events", headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    return list(response.json())


async def test_poll_item_shape(api: Api) -> None:
    await api.deploy(SHAPES)
    workflow_id = await api.start("shapes", {"who": "ada", "count": 2})
    response = await api.client.post(
        POLL, json={"worker": "std", "worker_id": "w1", "max_activities": 5}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 1
    [item] = body["activities"]
    uuid.UUID(item["activity_id"])
    assert item["workflow_id"] == workflow_id
    assert item["activity_key"] == "plain"
    assert item["worker"] == "std"
    assert item["activity_name"] == "echo"
    assert item["parameters"] == {
        "text": "hello ada",
        "count": 2,
        "nested": {"list": [3, workflow_id]},
    }
    assert isinstance(item["settings"], dict)
    assert item["settings"]["timeout_seconds"] == 45
    assert {"cache", "retry", "budget"} <= set(item["settings"])
    assert item["timeout_seconds"] == 45
    assert type(item["timeout_seconds"]) is int
    assert item["attempt"] == 1
    assert "output_definitions" not in item
    assert "signal_data" not in item
    assert "heartbeat_details" not in item
    lease = dt.datetime.fromisoformat(item["lease_expires_at"].replace("Z", "+00:00"))
    remaining = (lease - dt.datetime.now(dt.UTC)).total_seconds()
    assert 44 < remaining <= 46

    [typed] = await api.poll(worker="custom-q")
    assert typed["parameters"] == {}
    assert typed["output_definitions"] == [
        {"name": "result", "type": "value"},
        {"name": "report", "type": "file"},
    ]
    assert typed["timeout_seconds"] == 60
    run = await api.run(workflow_id)
    assert run["status"] == "running"
    assert {a["status"] for a in run["activities"]} == {"running"}
    # Nothing is handed out twice.
    assert await api.poll() == []
    assert await api.poll(worker="custom-q") == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_activities", 0),
        ("max_activities", 101),
        ("max_activities", "5"),
        ("max_activities", 2.5),
        ("max_activities", True),
        ("wait_seconds", 61),
        ("wait_seconds", -1),
        ("wait_seconds", "1"),
        ("worker", ""),
        ("worker", "bad queue!"),
        ("worker", None),
        ("worker_id", None),
        ("worker_id", 7),
    ],
)
async def test_poll_rejects_bad_fields(api: Api, field: str, value: Any) -> None:
    body: dict[str, Any] = {"worker": "std", "worker_id": "w1", "max_activities": 1}
    if value is None:
        del body[field]
    else:
        body[field] = value
    assert_error(await api.client.post(POLL, json=body), 422, field=field)


async def test_poll_body_errors(api: Api) -> None:
    assert_error(await api.client.post(POLL, content=b"{"), 400)
    assert_error(await api.client.post(POLL, content=b""), 400)
    assert_error(await api.client.post(POLL, json=["std"]), 422, field="body")


async def test_concurrent_pollers_never_share_an_activity(api: Api) -> None:
    await api.deploy("name: many\nactivities:\n  - {key: only, activity_name: echo}\n")
    ids = {await api.start("many", {"i": i}) for i in range(30)}
    claimed: list[tuple[str, dict[str, Any]]] = []

    async def poller(worker_id: str) -> None:
        empty = 0
        while empty < 3:
            items = await api.poll(worker_id=worker_id, n=3)
            claimed.extend((worker_id, item) for item in items)
            empty = 0 if items else empty + 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(poller, f"w{n}")

    activity_ids = [item["activity_id"] for _, item in claimed]
    assert len(activity_ids) == len(set(activity_ids)) == 30
    assert {item["workflow_id"] for _, item in claimed} == ids
    # Each claim belongs to the worker that received it.
    for worker_id, item in claimed[:5]:
        run = await api.run(item["workflow_id"])
        assert run["activities"][0]["worker_id"] == worker_id


async def test_concurrent_long_polls_never_share_an_activity(api: Api) -> None:
    await api.deploy("name: many\nactivities:\n  - {key: only, activity_name: echo}\n")
    claimed: list[str] = []

    async def poller(worker_id: str) -> None:
        while len(claimed) < 20:
            items = await api.poll(worker_id=worker_id, n=2, wait=0.5)
            claimed.extend(item["activity_id"] for item in items)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(poller, f"w{n}")
            await trio.sleep(0.1)  # every poller is parked now
            for i in range(20):
                await api.start("many", {"i": i})
    assert len(claimed) == len(set(claimed)) == 20


async def test_long_poll_returns_as_soon_as_work_arrives(api: Api) -> None:
    await api.deploy(CHAIN)
    result: dict[str, Any] = {}

    async def parked() -> None:
        started = trio.current_time()
        result["items"] = await api.poll(wait=5)
        result["elapsed"] = trio.current_time() - started

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked)
            await trio.sleep(0.3)
            assert "items" not in result  # still parked on the empty queue
            assert api.ctx.dispatcher.waiting_queues() == ["std"]
            workflow_id = await api.start("chain")
    assert [i["workflow_id"] for i in result["items"]] == [workflow_id]
    assert 0.25 < result["elapsed"] < 1.5


async def test_long_poll_returns_empty_after_the_wait(api: Api) -> None:
    await api.deploy(CHAIN)
    await api.start("chain")  # work for another queue does not wake "other"
    with trio.fail_after(3):
        started = trio.current_time()
        items = await api.poll(worker="other", wait=0.5)
        elapsed = trio.current_time() - started
    assert items == []
    assert 0.45 < elapsed < 1.5
    assert api.ctx.dispatcher.waiting_queues() == []


async def _stream_poll(api: Api, **body: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """A streamed poll (the in-process transport hands over the whole answer at its end)."""
    payload = {"worker": "std", "worker_id": "w1", "max_activities": 3, "stream": True, **body}
    response = await api.client.post(POLL, json=payload)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in response.content.splitlines() if line.strip()]
    return response, lines


async def test_a_streamed_poll_answers_a_line_per_claim_until_its_limit(api: Api) -> None:
    await api.deploy("name: many\nactivities:\n  - {key: only, activity_name: echo}\n")
    found: dict[str, Any] = {}

    async def poller() -> None:
        started = trio.current_time()
        found["lines"] = (await _stream_poll(api, wait_seconds=5))[1]
        found["elapsed"] = trio.current_time() - started

    ids = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            for i in range(3):
                await trio.sleep(0.2)
                assert "lines" not in found  # held until the third activity
                ids.append(await api.start("many", {"i": i}))
    lines = found["lines"]
    assert all(line["count"] == len(line["activities"]) >= 1 for line in lines), lines
    assert [a["workflow_id"] for line in lines for a in line["activities"]] == ids
    assert found["elapsed"] < 2  # it ended at its limit, not at its wait
    for workflow_id in ids:  # each claimed for the streaming worker, once
        run = await api.run(workflow_id)
        assert run["activities"][0]["status"] == "running"
        assert run["activities"][0]["worker_id"] == "w1"
    assert await api.poll() == []


async def test_a_streamed_poll_ends_at_its_wait_with_what_it_brought(api: Api) -> None:
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    with trio.fail_after(3):
        started = trio.current_time()
        _, lines = await _stream_poll(api, wait_seconds=0.5)
        elapsed = trio.current_time() - started
    assert [[a["workflow_id"] for a in line["activities"]] for line in lines] == [[workflow_id]]
    assert 0.45 < elapsed < 1.5
    assert api.ctx.dispatcher.waiting_queues() == []
    with trio.fail_after(3):
        _, nothing = await _stream_poll(api, worker="other", wait_seconds=0.3)
    assert nothing == []


async def test_a_streamed_poll_whose_first_claim_fails_is_an_error_answer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kflow.errors import StoreUnavailableError

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("PostgreSQL is unavailable: connection refused")

    from kflow.server.app import build_app

    monkeypatch.setattr(api.ctx.worker_ops, "claim", unreachable)
    body = {"worker": "std", "worker_id": "w1", "max_activities": 2, "wait_seconds": 1}
    # As hypercorn serves it: the answer sent, the exception not raised into the client.
    transport = httpx.ASGITransport(app=build_app(api.ctx), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://kflow.test") as client:
        answer = await client.post(POLL, json={**body, "stream": True})
    # nothing went out before the claim: a plain error answer
    error = assert_error(answer, 503, code="SERVICE_UNAVAILABLE")
    assert "unavailable" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stream": "yes", "wait_seconds": 1}, "stream"),
        ({"stream": 1, "wait_seconds": 1}, "stream"),
        ({"stream": True}, "stream"),
        ({"stream": True, "wait_seconds": 0}, "stream"),
        ({"stream": True, "wait_seconds": 61}, "wait_seconds"),
    ],
)
async def test_a_streamed_poll_needs_a_flag_and_a_wait(
    api: Api, body: dict[str, Any], field: str
) -> None:
    payload = {"worker": "std", "worker_id": "w1", "max_activities": 1, **body}
    error = assert_error(await api.client.post(POLL, json=payload), 422, field=field)
    assert field in error["message"]


async def test_complete_is_idempotent_for_the_same_worker(api: Api) -> None:
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    [a] = await api.poll()
    first = await api.complete(a, value=41)
    assert first.status_code == 200, first.text
    assert first.json()["acknowledged"] is True
    assert first.json()["warnings"] == []
    second = await api.complete(a, value=41)
    assert second.status_code == 200, second.text
    assert second.json()["acknowledged"] is True

    run = await api.run(workflow_id)
    assert _activity(run, "a")["status"] == "completed"
    assert _activity(run, "a")["outputs"] == [{"name": "value", "type": "value", "value": 41}]
    items = await api.poll(n=10)
    assert [(i["activity_key"], i["parameters"]) for i in items] == [("b", {"from_a": 41})]
    events = await _events(api, workflow_id)
    completed = [e for e in events if e["type"] == "activity.completed"]
    scheduled_b = [
        e for e in events if e["type"] == "activity.scheduled" and e["activity_key"] == "b"
    ]
    assert [e["activity_key"] for e in completed] == ["a"]
    assert len(scheduled_b) == 1
    attempts = await api.ctx.store.read(
        lambda tx: tx.all("workflow_attempts", workflow_id=workflow_id)
    )
    assert [(r["activity_key"], r["outcome"], r["worker_id"]) for r in attempts] == [
        ("a", "completed", "w1")
    ]


async def test_reports_from_the_wrong_worker_or_for_unknown_ids(api: Api) -> None:
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    [a] = await api.poll(worker_id="w1")
    url = f"/api/v1/activities/{a['activity_id']}"

    assert_error(await api.complete(a, worker_id="intruder", value=1), 409)
    assert_error(await api.fail(a, worker_id="intruder"), 409)
    assert_error(await api.client.post(f"{url}/heartbeat", json={"worker_id": "intruder"}), 409)
    assert _activity(await api.run(workflow_id), "a")["status"] == "running"

    assert (await api.complete(a, worker_id="w1", value=1)).status_code == 200
    # Finished: another worker, or the same worker reporting a different outcome, conflicts.
    assert_error(await api.complete(a, worker_id="intruder", value=2), 409)
    assert_error(await api.fail(a, worker_id="w1"), 409)

    for action in ("complete", "fail", "heartbeat"):
        unknown = await api.client.post(
            f"/api/v1/activities/{uuid.uuid4()}/{action}", json={"worker_id": "w1"}
        )
        assert_error(unknown, 404)
        malformed = await api.client.post(
            f"/api/v1/activities/not-a-uuid/{action}", json={"worker_id": "w1"}
        )
        assert_error(malformed, 404)


async def test_report_body_validation(api: Api) -> None:
    await api.deploy(CHAIN)
    await api.start("chain")
    [a] = await api.poll()
    url = f"/api/v1/activities/{a['activity_id']}"
    for output in ([1, 2], "text", 3):
        response = await api.client.post(
            f"{url}/complete", json={"worker_id": "w1", "output": output}
        )
        assert_error(response, 422, field="output")
    assert_error(
        await api.client.post(f"{url}/complete", json={"output": {}}), 422, field="worker_id"
    )
    assert_error(
        await api.client.post(
            f"{url}/complete", json={"worker_id": "w1", "output": {}, "cost_usd": "lots"}
        ),
        422,
        field="cost_usd",
    )
    for cost in ("1e999999999", "1e-999999999", 1e308, "-0.01", "NaN", "1" * 60):
        response = await api.client.post(
            f"{url}/complete", json={"worker_id": "w1", "output": {}, "cost_usd": cost}
        )
        assert_error(response, 422, field="cost_usd")
    response = await api.client.post(
        f"{url}/complete",
        json={"worker_id": "w1", "output": {}, "usage": [{"model": "m", "cost_usd": "9e99999"}]},
    )
    assert_error(response, 422, field="usage[0].cost_usd")
    assert_error(
        await api.client.post(f"{url}/fail", json={"worker_id": "w1", "error": "boom"}),
        422,
        field="error",
    )
    assert_error(
        await api.client.post(
            f"{url}/fail", json={"worker_id": "w1", "error": {"retryable": "yes"}}
        ),
        422,
        field="error.retryable",
    )
    assert_error(await api.client.post(f"{url}/heartbeat", json={}), 422, field="worker_id")
    # Nothing above changed the attempt.
    response = await api.client.post(
        f"{url}/complete",
        json={
            "worker_id": "w1",
            "output": {"value": 1},
            "cost_usd": "1E-7",
            "usage": [{"provider": "p", "model": "m", "input_tokens": 3, "cost_usd": 0.25}],
        },
    )
    assert response.status_code == 200, response.text
    run = await api.run(a["workflow_id"])
    assert run["total_cost_usd"] == "0.2500001"


async def test_retryable_failure_comes_back_after_the_backoff(api: Api) -> None:
    await api.deploy(RETRYING)
    workflow_id = await api.start("retrying")
    [first] = await api.poll()
    assert first["attempt"] == 1
    response = await api.client.post(
        f"/api/v1/activities/{first['activity_id']}/fail",
        json={"worker_id": "w1", "error": {"code": "TIMEOUT", "message": "", "retryable": True}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["acknowledged"] is True
    assert response.json()["will_retry"] is True
    failed_at = trio.current_time()

    flaky = _activity(await api.run(workflow_id), "flaky")
    assert flaky["status"] == "waiting"
    assert flaky["error"]["code"] == "TIMEOUT"
    assert await api.poll() == []  # not before the backoff
    with trio.fail_after(3):
        [second] = await api.poll(worker_id="w2", wait=3)
    assert trio.current_time() - failed_at >= 0.15
    assert second["activity_key"] == "flaky"
    assert second["attempt"] == 2
    assert second["activity_id"] != first["activity_id"]

    last = await api.fail(second, worker_id="w2", retryable=True)
    assert last.status_code == 200, last.text
    assert last.json()["will_retry"] is False  # max_attempts reached
    run = await api.wait_status(workflow_id, "failed")
    assert "flaky" in run["error_message"]


async def test_non_retryable_failure_fails_the_run(api: Api) -> None:
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    [a] = await api.poll()
    response = await api.fail(a, code="BAD_INPUT", retryable=False)
    assert response.status_code == 200, response.text
    assert response.json()["will_retry"] is False
    run = await api.wait_status(workflow_id, "failed")
    assert "'a'" in run["error_message"]
    assert "BAD_INPUT" in run["error_message"]
    assert _activity(run, "a")["status"] == "failed"
    assert _activity(run, "a")["error"]["code"] == "BAD_INPUT"
    assert _activity(run, "b")["status"] == "skipped"
    # The report is idempotent too.
    assert (await api.fail(a, code="BAD_INPUT")).status_code == 200


async def test_heartbeat_extends_and_hands_details_to_the_next_attempt(api: Api) -> None:
    await api.deploy(RETRYING)
    workflow_id = await api.start("retrying")
    [first] = await api.poll()
    url = f"/api/v1/activities/{first['activity_id']}/heartbeat"
    response = await api.client.post(
        url, json={"worker_id": "w1", "details": {"page": 7, "cursor": "abc"}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["acknowledged"] is True
    assert response.json()["next_heartbeat_seconds"] > 0
    assert_error(await api.client.post(url, json={"worker_id": "w2"}), 409)
    # A heartbeat without details keeps the last ones.
    assert (await api.client.post(url, json={"worker_id": "w1"})).status_code == 200

    assert (await api.fail(first, retryable=True)).json()["will_retry"] is True
    with trio.fail_after(3):
        [second] = await api.poll(worker_id="w2", wait=3)
    assert second["attempt"] == 2
    assert second["heartbeat_details"] == {"page": 7, "cursor": "abc"}
    # A heartbeat on the finished attempt is acknowledged (ignored) for its worker.
    assert (await api.client.post(url, json={"worker_id": "w1"})).status_code == 200
    assert (await api.complete(second, worker_id="w2")).status_code == 200
    await api.wait_status(workflow_id, "completed")


async def test_expired_lease_is_redispatched_and_late_reports_conflict(api: Api) -> None:
    await api.deploy(
        """
name: short-lease
activities:
  - key: slow
    activity_name: echo
    settings:
      timeout_seconds: 1
      retry: {max_attempts: 2, base_seconds: 0.1}
"""
    )
    workflow_id = await api.start("short-lease")
    [first] = await api.poll(worker_id="w1")
    assert first["timeout_seconds"] == 1
    claimed_at = trio.current_time()
    with trio.fail_after(5):
        [second] = await api.poll(worker_id="w2", wait=4)
    waited = trio.current_time() - claimed_at
    assert waited >= 1.0  # never before timeout_seconds
    assert waited < 3.5
    assert second["activity_key"] == "slow"
    assert second["attempt"] == 2
    assert second["activity_id"] != first["activity_id"]

    late = await api.complete(first, worker_id="w1", value="late")
    error = assert_error(late, 409)
    assert "expired" in error["message"]
    assert_error(
        await api.client.post(
            f"/api/v1/activities/{first['activity_id']}/heartbeat", json={"worker_id": "w1"}
        ),
        409,
    )
    events = await _events(api, workflow_id)
    retry = [e for e in events if e["type"] == "activity.retry_scheduled"]
    assert retry[0]["data"]["error"]["code"] == "LEASE_EXPIRED"

    assert (await api.complete(second, worker_id="w2", value="on time")).status_code == 200
    run = await api.wait_status(workflow_id, "completed")
    assert _activity(run, "slow")["outputs"] == [
        {"name": "value", "type": "value", "value": "on time"}
    ]


async def _pending(api: Api, workflow_id: str) -> dict[str, Any]:
    run = await api.run(workflow_id)
    return {a["activity_key"]: a["status"] for a in run["activities"]}


async def test_claim_is_released_when_the_poller_went_away(api: Api) -> None:
    from kflow.server.routes.workers import _claim

    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    items = await _claim(api.ctx, "std", "gone-worker", 5, lambda: True)
    assert items == []
    assert (await _pending(api, workflow_id))["a"] == "pending"
    again = await api.poll(worker_id="w2")
    assert [i["activity_key"] for i in again] == ["a"]
    assert again[0]["attempt"] == 1  # releasing does not use up an attempt
    events = (
        await api.client.get(
            f"/api/v1/workflows/{workflow_id}/events", headers={"accept": "application/json"}
        )
    ).json()
    assert "activity.released" in [e["type"] for e in events]


async def test_claim_is_released_when_the_poll_is_cancelled(api: Api) -> None:
    from kflow.server.routes.workers import _claim

    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    with trio.CancelScope() as scope:
        scope.cancel()  # the caller gave up before the claim could answer
        await _claim(api.ctx, "std", "cancelled-worker", 5, lambda: False)
    assert scope.cancelled_caught
    assert (await _pending(api, workflow_id))["a"] == "pending"


async def test_a_cancelled_attempt_refuses_a_conflicting_second_report(api: Api) -> None:
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    [item] = await api.poll()
    await api.client.post(f"/api/v1/workflows/{workflow_id}/cancel")
    first = await api.fail(item)
    assert first.status_code == 200
    assert first.json()["warnings"]
    assert (await api.fail(item)).status_code == 200  # the same report again: idempotent
    assert_error(await api.complete(item, value=1), 409)


REPORTS = "/api/v1/activities/reports"

PAIR = """
name: pair
activities:
  - key: left
    activity_name: echo
  - key: right
    activity_name: echo
"""


def _item(kind: str, activity_id: Any, **report: Any) -> dict[str, Any]:
    return {"activity_id": activity_id, "kind": kind, "report": report}


async def test_a_report_batch_answers_each_report_as_its_own_route_would(api: Api) -> None:
    """Completions, a failure, a conflict, an unknown and a malformed report in one
    request: each is applied (or refused) on its own, in order, and one report's
    error leaves the others untouched."""
    await api.deploy(PAIR)
    done_run = await api.start("pair")
    failed_run = await api.start("pair")
    items = await api.poll(n=10, worker_id="w1")
    by_run = {(i["workflow_id"], i["activity_key"]): i["activity_id"] for i in items}
    assert len(by_run) == 4
    batch = [
        _item("complete", by_run[(done_run, "left")], worker_id="w1", output={"value": 1}),
        _item("complete", by_run[(done_run, "right")], worker_id="w1", output={"value": 2}),
        _item(
            "fail",
            by_run[(failed_run, "left")],
            worker_id="w1",
            error={"code": "BOOM", "message": "no", "retryable": False},
        ),
        _item("complete", by_run[(failed_run, "right")], worker_id="intruder", output={}),
        _item("complete", str(uuid.uuid4()), worker_id="w1", output={}),
        _item("complete", "not-a-uuid", worker_id="w1", output={}),
        _item("complete", by_run[(failed_run, "right")], worker_id="w1", output=[1]),
        {"activity_id": by_run[(failed_run, "right")], "kind": "explode", "report": {}},
        "not an object",
    ]
    response = await api.client.post(REPORTS, json={"reports": batch})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200, 409, 404, 404, 422, 422, 422]
    assert [r["activity_id"] for r in results[:5]] == [b["activity_id"] for b in batch[:5]]
    assert results[0]["body"]["acknowledged"] is True
    assert results[2]["body"] == {"acknowledged": True, "will_retry": False, "warnings": []}
    assert results[3]["error"]["code"] == "CONFLICT"
    assert results[6]["error"]["details"]["field_errors"] == {
        "output": ["expected an object mapping output names to values"]
    }
    assert results[7]["error"]["details"]["field_errors"] == {
        "kind": ["expected 'complete' or 'fail'"]
    }
    assert (await api.run(done_run))["status"] == "completed"
    failed = await api.run(failed_run)
    assert _activity(failed, "left")["status"] == "failed"
    assert _activity(failed, "right")["status"] == "running"  # nothing applied to it
    again = await api.client.post(REPORTS, json={"reports": batch[:1]})
    assert again.json()["results"][0]["status"] == 200  # a repeat is acknowledged


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"reports": []}, 422),
        ({"reports": {"a": 1}}, 422),
        ({"reports": [{}] * 101}, 422),
        ([1, 2], 422),
    ],
)
async def test_a_report_batch_must_be_an_array_of_1_to_100_reports(
    api: Api, body: Any, status: int
) -> None:
    assert_error(await api.client.post(REPORTS, json=body), status)


async def test_the_server_offers_report_batches(api: Api) -> None:
    info = await api.client.get("/api/v1/info")
    assert {"report_batch", "report_claim_next"} <= set(info.json()["features"])


SPLIT = """
name: split
activities:
  - key: a
    activity_name: echo
  - key: b
    worker: other-q
    activity_name: echo
    depends_on: [a]
  - key: c
    activity_name: echo
    parameters: {from_b: "{{ b.value }}"}
    depends_on: [b]
"""


async def test_a_report_with_claim_next_takes_its_runs_next_activity_at_once(api: Api) -> None:
    """The completion commits and hands the reporting worker the run's next step of
    the same queue in the same transaction: leased to it, started in the history,
    never seen by another poller."""
    await api.deploy(CHAIN)
    run = await api.start("chain")
    [a] = await api.poll(worker_id="w1")
    item = {**_item("complete", a["activity_id"], worker_id="w1", output={"value": 7})}
    woken = api.ctx.dispatcher.sequence("std")
    response = await api.client.post(REPORTS, json={"reports": [{**item, "claim_next": True}]})
    assert response.status_code == 200, response.text
    assert api.ctx.dispatcher.sequence("std") == woken  # nothing left for a parked poll
    [result] = response.json()["results"]
    assert result["status"] == 200
    [b] = result["body"]["activities"]
    assert (b["workflow_id"], b["activity_key"], b["worker"]) == (run, "b", "std")
    assert b["parameters"] == {"from_a": 7}
    assert b["attempt"] == 1
    assert b["activity_id"] != a["activity_id"]
    assert await api.poll(worker_id="w2") == []  # it is w1's already
    state = _activity(await api.run(run), "b")
    assert (state["status"], state["worker_id"]) == ("running", "w1")
    started = [e for e in await _events(api, run) if e["type"] == "activity.started"]
    assert [(e["activity_key"], e["data"]["worker_id"]) for e in started] == [
        ("a", "w1"),
        ("b", "w1"),
    ]
    last = _item("complete", b["activity_id"], worker_id="w1", output={})
    response = await api.client.post(REPORTS, json={"reports": [{**last, "claim_next": True}]})
    assert response.json()["results"][0]["body"]["activities"] == []  # the run is over
    assert (await api.run(run))["status"] == "completed"


async def test_claim_next_takes_nothing_from_another_queue_or_a_repeated_report(
    api: Api,
) -> None:
    await api.deploy(SPLIT)
    run = await api.start("split")
    [a] = await api.poll(worker_id="w1")
    report = {**_item("complete", a["activity_id"], worker_id="w1", output={}), "claim_next": True}
    woken = api.ctx.dispatcher.sequence("other-q")
    first = (await api.client.post(REPORTS, json={"reports": [report]})).json()["results"][0]
    assert first["body"]["activities"] == []  # b waits in other-q for its own workers
    assert api.ctx.dispatcher.sequence("other-q") == woken + 1  # ... who are woken
    [b] = await api.poll(worker="other-q", worker_id="o1")
    assert b["activity_key"] == "b"
    again = (await api.client.post(REPORTS, json={"reports": [report]})).json()["results"][0]
    assert again["status"] == 200
    assert again["body"]["activities"] == []
    assert again["body"]["warnings"] == ["attempt already reported as completed"]
    plain = await api.client.post(REPORTS, json={"reports": [report | {"claim_next": False}]})
    assert "activities" not in plain.json()["results"][0]["body"]
    assert _activity(await api.run(run), "c")["status"] == "not_scheduled"


async def test_claim_next_must_be_a_boolean(api: Api) -> None:
    item = {**_item("complete", str(uuid.uuid4()), worker_id="w1", output={}), "claim_next": "yes"}
    response = await api.client.post(REPORTS, json={"reports": [item]})
    [result] = response.json()["results"]
    assert result["status"] == 422
    assert result["error"]["details"]["field_errors"] == {"claim_next": ["expected true or false"]}


async def test_a_single_report_route_takes_claim_next_as_a_query_parameter(api: Api) -> None:
    await api.deploy(CHAIN)
    run = await api.start("chain")
    [a] = await api.poll(worker_id="w1")
    path = f"/api/v1/activities/{a['activity_id']}/complete"
    body = {"worker_id": "w1", "output": {"value": 1}}
    bad = await api.client.post(path + "?claim_next=yes", json=body)
    assert_error(bad, 422)
    assert bad.json()["error"]["details"]["field_errors"] == {
        "claim_next": ["expected true or false"]
    }
    assert _activity(await api.run(run), "a")["status"] == "running"  # nothing applied
    response = await api.client.post(path + "?claim_next=true", json=body)
    assert response.status_code == 200, response.text
    [b] = response.json()["activities"]
    assert (b["workflow_id"], b["activity_key"]) == (run, "b")
    plain = await api.client.post(path, json=body)  # a repeat, without the flag
    assert "activities" not in plain.json()


async def test_a_next_step_claimed_for_a_caller_that_hung_up_goes_back_to_the_queue(
    api: Api,
) -> None:
    """The report is kept; the activity its ``claim_next`` took is released (as a
    long-poll's claim is when the poller goes away) and another worker gets it."""
    from starlette.requests import Request

    from kflow._serde import dumps
    from kflow.server.app import build_app
    from kflow.server.routes.workers import reports

    await api.deploy(CHAIN)
    run = await api.start("chain")
    [a] = await api.poll(worker_id="w1")
    body = dumps({"reports": [{**_item("complete", a["activity_id"], worker_id="w1",
                                       output={"value": 3}), "claim_next": True}]})  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}  # the worker gave up waiting

    scope = {"type": "http", "method": "POST", "path": REPORTS, "headers": [],
             "query_string": b"", "app": build_app(api.ctx)}  # fmt: skip
    await reports(Request(scope, receive))
    state = {x["activity_key"]: x["status"] for x in (await api.run(run))["activities"]}
    assert state == {"a": "completed", "b": "pending"}
    [b] = await api.poll(worker_id="w2")
    assert (b["activity_key"], b["attempt"]) == ("b", 1)  # releasing used up no attempt


async def test_a_repeated_report_puts_back_the_next_step_its_first_answer_carried(
    api: Api,
) -> None:
    """A worker repeats a report only when it never got the answer (a server killed
    mid-request, a timeout): the next step that answer carried goes back to the
    queue at once instead of waiting for its lease to expire."""
    await api.deploy(CHAIN)
    run = await api.start("chain")
    [a] = await api.poll(worker_id="w1")
    report = {**_item("complete", a["activity_id"], worker_id="w1", output={"value": 3}),
              "claim_next": True}  # fmt: skip
    first = (await api.client.post(REPORTS, json={"reports": [report]})).json()["results"][0]
    [b] = first["body"]["activities"]  # ... lost on its way back to the worker
    plain = {"worker_id": "w1", "output": {"value": 3}}
    again = await api.client.post(f"/api/v1/activities/{a['activity_id']}/complete", json=plain)
    assert again.status_code == 200, again.text
    state = {x["activity_key"]: x["status"] for x in (await api.run(run))["activities"]}
    assert state == {"a": "completed", "b": "pending"}
    [polled] = await api.poll(worker_id="w1")  # the same worker, by poll this time
    assert (polled["activity_id"], polled["attempt"]) == (b["activity_id"], 1)
    released = [e for e in await _events(api, run) if e["type"] == "activity.released"]
    assert [(e["activity_key"], e["data"]["worker_id"]) for e in released] == [("b", "w1")]
    late = await api.client.post(f"/api/v1/activities/{a['activity_id']}/complete", json=plain)
    assert late.status_code == 200  # once more: the polled lease is not the report's claim
    b_now = _activity(await api.run(run), "b")
    assert (b_now["status"], b_now["worker_id"]) == ("running", "w1")


class _NamingTx:
    """A Tx that passes everything through and records the query names it sends."""

    def __init__(self, tx: Any, names: list[str]) -> None:
        self._tx = tx
        self._names = names

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._tx, name)
        if name not in ("one", "all", "all_later", "run", "run_many", "send"):
            return found

        def recorded(query: str, /, *args: Any, **params: Any) -> Any:
            self._names.append(query)
            return found(query, *args, **params)

        return recorded


async def test_a_poll_starting_several_runs_marks_them_and_appends_their_events_together(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.deploy(CHAIN)
    runs = sorted([await api.start("chain") for _ in range(3)])
    names: list[str] = []
    write = api.ctx.store.write

    async def naming_write(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await write(lambda tx: fn(_NamingTx(tx, names)), *args, **kwargs)

    monkeypatch.setattr(api.ctx.store, "write", naming_write)
    items = await api.poll(n=10, worker_id="w-all")
    monkeypatch.undo()
    assert sorted(i["workflow_id"] for i in items) == runs
    # One statement for the three runs' status, one for their three events.
    assert names.count("mark_workflows_running") == 1
    assert names.count("insert_events_of_runs") == 1
    assert "insert_event" not in names
    assert "insert_events" not in names
    for workflow_id in runs:
        assert (await api.run(workflow_id))["status"] == "running"
        events = await _events(api, workflow_id)
        assert [e["type"] for e in events][-1] == "activity.started"
        assert events[-1]["activity_key"] == "a"
        assert events[-1]["data"] == {"attempt": 1, "worker_id": "w-all"}
