"""Signals, delays, workflow timeouts and loops, observed through the API."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from tests.integration.conftest import Api, assert_error

APPROVAL = """
name: approval
activities:
  - key: prepare
    activity_name: echo
  - key: approve
    activity_name: echo
    parameters: {by: "{{ SIGNAL.user }}", doc: "{{ INPUT.doc }}"}
    depends_on: [prepare]
    settings:
      wait_for_signal: {event_name: approved}
"""


def _activity(run: dict[str, Any], key: str) -> dict[str, Any]:
    return next(a for a in run["activities"] if a["activity_key"] == key)


async def _signal(api: Api, workflow_id: str, **body: Any) -> Any:
    return await api.client.post(f"/api/v1/workflows/{workflow_id}/signal", json=body)


async def test_signal_delivers_to_a_waiting_activity(api: Api) -> None:
    await api.deploy(APPROVAL)
    workflow_id = await api.start("approval", {"doc": "d-1"})
    [prepare] = await api.poll()
    await api.complete(prepare)
    approve = _activity(await api.run(workflow_id), "approve")
    assert approve["status"] == "waiting"
    assert approve["waits_for_signal"] == "approved"
    assert await api.poll() == []

    wrong = await _signal(api, workflow_id, activity_key="approve", event_name="rejected")
    assert wrong.status_code == 200, wrong.text
    assert wrong.json()["signaled"] is False
    assert "approved" in wrong.json()["message"]
    assert _activity(await api.run(workflow_id), "approve")["status"] == "waiting"

    response = await _signal(
        api, workflow_id, activity_key="approve", event_name="approved", data={"user": "ada"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["signaled"] is True
    assert response.json()["message"]
    [item] = await api.poll()
    assert item["activity_key"] == "approve"
    assert item["signal_data"] == {"user": "ada"}
    assert item["parameters"] == {"by": "ada", "doc": "d-1"}

    # The activity no longer waits: a second signal is refused politely.
    late = await _signal(api, workflow_id, activity_key="approve", event_name="approved")
    assert late.status_code == 200, late.text
    assert late.json()["signaled"] is False
    await api.complete(item)
    await api.wait_status(workflow_id, "completed")


async def test_signal_before_the_wait_is_buffered(api: Api) -> None:
    await api.deploy(APPROVAL)
    workflow_id = await api.start("approval", {"doc": "d-2"})
    early = await _signal(
        api, workflow_id, activity_key="approve", event_name="approved", data={"user": "bob"}
    )
    assert early.status_code == 200, early.text
    assert early.json()["signaled"] is True
    assert _activity(await api.run(workflow_id), "approve")["status"] == "not_scheduled"

    [prepare] = await api.poll()
    await api.complete(prepare)
    [item] = await api.poll()
    assert item["activity_key"] == "approve"
    assert item["signal_data"] == {"user": "bob"}
    assert item["parameters"]["by"] == "bob"


async def test_signal_errors(api: Api) -> None:
    await api.deploy(APPROVAL)
    workflow_id = await api.start("approval", {"doc": "d"})
    assert_error(await _signal(api, workflow_id, activity_key="nope", event_name="approved"), 404)
    assert_error(
        await _signal(api, str(uuid.uuid4()), activity_key="approve", event_name="approved"), 404
    )
    assert_error(await _signal(api, "not-a-uuid", activity_key="approve", event_name="x"), 404)
    assert_error(await _signal(api, workflow_id, activity_key="approve"), 422, field="event_name")
    assert_error(await _signal(api, workflow_id, event_name="approved"), 422, field="activity_key")
    assert_error(
        await _signal(api, workflow_id, activity_key="approve", event_name="approved", data=[1]),
        422,
        field="data",
    )
    plain = await _signal(api, workflow_id, activity_key="prepare", event_name="approved")
    assert plain.status_code == 200, plain.text
    assert plain.json()["signaled"] is False


@pytest.mark.parametrize(
    ("on_timeout", "activity_status", "run_status"),
    [("fail", "failed", "failed"), ("skip", "skipped", "completed"), ("continue", None, None)],
)
async def test_signal_timeout_applies_on_timeout(
    api: Api, on_timeout: str, activity_status: str | None, run_status: str | None
) -> None:
    await api.deploy(
        f"""
name: impatient
activities:
  - key: gate
    activity_name: echo
    parameters: {{x: 1}}
    settings:
      wait_for_signal: {{event_name: go, timeout_seconds: 0.5, on_timeout: {on_timeout}}}
"""
    )
    workflow_id = await api.start("impatient")
    assert _activity(await api.run(workflow_id), "gate")["status"] == "waiting"
    if on_timeout == "continue":
        with trio.fail_after(3):
            [item] = await api.poll(wait=3)
        assert item["activity_key"] == "gate"
        assert item["parameters"] == {"x": 1}
        return
    run = await api.wait_status(workflow_id, run_status, timeout=3)
    gate = _activity(run, "gate")
    assert gate["status"] == activity_status
    if on_timeout == "fail":
        assert gate["error"]["code"] == "SIGNAL_TIMEOUT"
        assert "'gate'" in run["error_message"]


async def test_delayed_activity_waits_then_becomes_claimable(api: Api) -> None:
    await api.deploy(
        "name: later\nactivities:\n  - {key: nap, activity_name: echo, settings: {delay: 1s}}\n"
    )
    started = trio.current_time()
    workflow_id = await api.start("later")
    nap = _activity(await api.run(workflow_id), "nap")
    assert nap["status"] == "waiting"
    assert nap["available_at"].endswith("Z")
    assert await api.poll() == []
    with trio.fail_after(4):
        [item] = await api.poll(wait=3)
    elapsed = trio.current_time() - started
    assert item["activity_key"] == "nap"
    assert 0.9 <= elapsed < 2.5


async def test_workflow_timeout_names_the_queue_nobody_polls(api: Api) -> None:
    await api.deploy(
        "name: stuck\nsettings: {timeout: 1}\nactivities:\n"
        "  - {key: lonely, activity_name: echo, worker: nobody}\n"
    )
    workflow_id = await api.start("stuck")
    run = await api.wait_status(workflow_id, "failed", timeout=4)
    assert "no worker polls queue 'nobody'" in run["error_message"]
    assert "lonely" in run["error_message"]
    assert _activity(run, "lonely")["status"] == "cancelled"
    assert await api.poll(worker="nobody") == []


LOOP = """
name: looper
activities:
  - key: step
    activity_name: echo
    parameters: {i: "{{ ACTIVITY.iteration }}", label: "round {{ ACTIVITY.iteration }}"}
    outputs: [n]
    iteration_scoped: true
    depends_on:
      - activity_key: step
        conditions: ["{{ step.iteration < 2 }}"]
  - key: after
    activity_name: echo
    parameters: {all: "{{ step.n }}", last: "{{ step.n | last }}", rounds: "{{ step.iteration }}"}
    depends_on: [step]
"""


async def test_self_loop_runs_until_its_condition_is_false(api: Api) -> None:
    await api.deploy(LOOP)
    workflow_id = await api.start("looper")
    seen = []
    with trio.fail_after(5):
        for expected in range(3):
            [item] = await api.poll()
            assert item["activity_key"] == "step"
            assert item["iteration"] == expected
            assert item["parameters"] == {"i": expected, "label": f"round {expected}"}
            seen.append(item["activity_id"])
            response = await api.complete(item, n=expected * 10)
            assert response.status_code == 200, response.text
        [after] = await api.poll()
    assert len(set(seen)) == 3
    assert after["activity_key"] == "after"
    assert after["parameters"] == {"all": [0, 10, 20], "last": 20, "rounds": 2}
    await api.complete(after)
    run = await api.wait_status(workflow_id, "completed")
    step = _activity(run, "step")
    assert step["iteration"] == 2
    assert step["outputs"] == [{"name": "n", "type": "value", "value": [0, 10, 20]}]


async def test_self_loop_outputs_are_terminal_outputs(api: Api) -> None:
    await api.deploy(LOOP)
    workflow_id = await api.start("looper")
    with trio.fail_after(5):
        for n in range(3):
            [item] = await api.poll()
            await api.complete(item, n=n)
        [after] = await api.poll()
        await api.complete(after, done=True)
    await api.wait_status(workflow_id, "completed")
    body = (await api.client.get(f"/api/v1/workflows/{workflow_id}/output")).json()
    assert body["outputs"]["step"]["is_terminal"] is False
    assert body["outputs"]["after"]["is_terminal"] is True

    await api.deploy(LOOP.replace("name: looper", "name: only-loop").split("  - key: after")[0])
    workflow_id = await api.start("only-loop")
    with trio.fail_after(5):
        for n in range(3):
            [item] = await api.poll()
            await api.complete(item, n=n)
    await api.wait_status(workflow_id, "completed")
    body = (await api.client.get(f"/api/v1/workflows/{workflow_id}/output")).json()
    assert body["outputs"]["step"]["is_terminal"] is True
    assert body["terminal_outputs"] == [
        {"activity_key": "step", "output": [{"name": "n", "type": "value", "value": [0, 1, 2]}]}
    ]


PAGER = """
name: pager
activities:
  - key: fetch
    activity_name: echo
    parameters: {page: "{{ ACTIVITY.iteration }}"}
    outputs: [items]
    iteration_scoped: true
    depends_on:
      - activity_key: store
        conditions: ["{{ store.more }}"]
  - key: store
    activity_name: echo
    parameters: {got: "{{ fetch.items | last }}", round: "{{ fetch.iteration }}"}
    outputs: [more]
    depends_on: [fetch]
"""


async def test_loop_through_a_back_edge_reruns_its_body(api: Api) -> None:
    await api.deploy(PAGER)
    workflow_id = await api.start("pager")
    with trio.fail_after(5):
        for page in range(3):
            [fetch] = await api.poll()
            assert (fetch["activity_key"], fetch["iteration"]) == ("fetch", page)
            assert fetch["parameters"] == {"page": page}
            await api.complete(fetch, items=f"p{page}")
            [store] = await api.poll()
            assert store["activity_key"] == "store"
            assert store["parameters"] == {"got": f"p{page}", "round": page}
            await api.complete(store, more=page < 2)
    run = await api.wait_status(workflow_id, "completed")
    fetch_state = next(a for a in run["activities"] if a["activity_key"] == "fetch")
    assert fetch_state["outputs"] == [
        {"name": "items", "type": "value", "value": ["p0", "p1", "p2"]}
    ]
    body = (await api.client.get(f"/api/v1/workflows/{workflow_id}/output")).json()
    assert [t["activity_key"] for t in body["terminal_outputs"]] == ["store"]
