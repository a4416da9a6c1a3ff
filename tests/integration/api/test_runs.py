"""Workflow runs through the API: start, list, inspect, outputs, cancel, SDK routes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import trio

from kflow.model.loader import load_definition
from tests.integration.conftest import Api, assert_error

TWO_STEPS = """
name: two-steps
activities:
  - key: first
    activity_name: echo
    parameters: {who: "{{ INPUT.who }}"}
    outputs: [echo]
  - key: second
    activity_name: echo
    parameters: {got: "{{ first.echo.who }}"}
    outputs:
      - {name: report, type: file}
      - echo
    depends_on: [first]
"""


async def _finish_two_steps(api: Api, workflow_id: str) -> None:
    [first] = await api.poll()
    assert first["workflow_id"] == workflow_id
    assert (await api.complete(first, echo={"who": "ada"})).status_code == 200
    [second] = await api.poll()
    assert second["parameters"] == {"got": "ada"}
    response = await api.complete(second, echo={"got": "ada"}, report="postgres://x/y/z")
    assert response.status_code == 200, response.text


async def test_start_returns_201_created(api: Api) -> None:
    deployed = await api.deploy(TWO_STEPS)
    response = await api.client.post(
        "/api/v1/workflows", json={"definition_name": "two-steps", "input": {"who": "ada"}}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "created"
    assert body["definition_name"] == "two-steps"
    assert body["definition_version"] == deployed["version"]
    assert body["created_at"].endswith("Z")
    workflow_id = uuid.UUID(body["workflow_id"])
    assert workflow_id.version == 7
    assert str(workflow_id) == body["workflow_id"]


async def test_start_a_given_version(api: Api) -> None:
    v1 = (await api.deploy(TWO_STEPS))["version"]
    await api.deploy(TWO_STEPS.replace("{{ INPUT.who }}", "{{ INPUT.who | upper }}"))
    workflow_id = await api.start("two-steps", {"who": "ada"}, version=v1)
    run = await api.run(workflow_id)
    assert run["definition_version"] == v1
    [item] = await api.poll()
    assert item["parameters"] == {"who": "ada"}


async def test_a_start_follows_a_version_deployed_behind_the_servers_back(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    from kflow.server.definitions import DefinitionCache

    v1 = (await api.deploy(TWO_STEPS))["version"]
    cache = api.ctx.engine.definitions
    reads: list[str] = []
    real_load = DefinitionCache.load

    def counted(self: DefinitionCache, tx: Any, name: str, *args: Any, **kw: Any) -> Any:
        reads.append(tx.dialect)
        return real_load(self, tx, name, *args, **kw)

    first = await api.run(await api.start("two-steps", {"who": "ada"}))
    assert first["definition_version"] == v1
    # Another server deploys a version this one has not seen: the cache still says v1.
    v2 = (await api.deploy(TWO_STEPS.replace("{{ INPUT.who }}", "{{ INPUT.who | upper }}")))[
        "version"
    ]
    assert v2 != v1
    cache.note_latest(cache.cached("two-steps", v1))  # type: ignore[arg-type]
    monkeypatch.setattr(DefinitionCache, "load", counted)
    with capture_logs() as logs:
        second = await api.run(await api.start("two-steps", {"who": "ada"}))
    assert second["definition_version"] == v2
    stale = [e for e in logs if e["event"] == "engine.stale_read"]
    if reads[0] == "postgres":  # the check went with the writes, failed, and the start ran again
        assert len(stale) == 1
        assert "no longer" in stale[0]["reason"]
        assert len(reads) == 2
    else:  # SQLite reads the newest version every time
        assert stale == []
        assert len(reads) == 1
    # Now the server knows v2: the next start needs no second try.
    with capture_logs() as logs:
        third = await api.run(await api.start("two-steps", {"who": "ada"}))
    assert third["definition_version"] == v2
    assert [e for e in logs if e["event"] == "engine.stale_read"] == []


async def test_start_errors(api: Api) -> None:
    url = "/api/v1/workflows"
    assert_error(await api.client.post(url, json={"definition_name": "nope"}), 404)
    await api.deploy(TWO_STEPS)
    assert_error(
        await api.client.post(url, json={"definition_name": "two-steps", "version": "1"}), 404
    )
    for bad_input in ([1, 2], "text", 5):
        response = await api.client.post(
            url, json={"definition_name": "two-steps", "input": bad_input}
        )
        assert_error(response, 422, field="input")
    assert_error(await api.client.post(url, json={"input": {}}), 422, field="definition_name")
    assert_error(
        await api.client.post(url, json={"definition_name": 12}), 422, field="definition_name"
    )
    assert_error(await api.client.post(url, json=[1]), 422, field="body")
    assert_error(await api.client.post(url, content=b"{not json"), 400)
    assert (await api.client.get(url)).json()["total"] == 0


async def test_unique_key_conflicts_while_alive_and_frees_after_failure(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    first = await api.start("two-steps", {"who": "a"}, unique_key="order-42")
    response = await api.client.post(
        "/api/v1/workflows",
        json={"definition_name": "two-steps", "input": {}, "unique_key": "order-42"},
    )
    error = assert_error(response, 409)
    assert error["details"]["workflow_id"] == first

    [item] = await api.poll()
    assert (await api.fail(item, retryable=False)).status_code == 200
    await api.wait_status(first, "failed")

    second = await api.start("two-steps", {"who": "b"}, unique_key="order-42")
    assert second != first
    # ...and the new holder blocks the key again.
    again = await api.client.post(
        "/api/v1/workflows", json={"definition_name": "two-steps", "unique_key": "order-42"}
    )
    assert assert_error(again, 409)["details"]["workflow_id"] == second


async def test_list_with_filters(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    await api.deploy(
        "name: solo\nactivities:\n  - {key: only, activity_name: echo, worker: solo}\n"
    )
    before = dt.datetime.now(dt.UTC)
    ids = [await api.start("two-steps", {"who": str(i)}) for i in range(3)]
    await trio.sleep(0.01)
    middle = dt.datetime.now(dt.UTC)
    await trio.sleep(0.01)
    solo = await api.start("solo")
    [item] = await api.poll(worker="solo")
    await api.complete(item)
    await api.wait_status(solo, "completed")

    async def listed(**params: object) -> dict:
        response = await api.client.get("/api/v1/workflows", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    everything = await listed()
    assert everything["total"] == 4
    assert everything["count"] == 4
    assert everything["limit"] == 50
    assert everything["offset"] == 0
    # newest first
    assert [w["id"] for w in everything["workflows"]] == [solo, *reversed(ids)]
    for row in everything["workflows"]:
        assert {
            "id",
            "status",
            "definition_name",
            "created_at",
            "updated_at",
            "error_message",
        } <= set(row)

    assert [w["id"] for w in (await listed(status="completed"))["workflows"]] == [solo]
    assert (await listed(status="created"))["total"] == 3
    assert (await listed(definition_name="two-steps"))["total"] == 3
    assert (await listed(definition_name="solo", status="created"))["total"] == 0
    stamp = middle.isoformat().replace("+00:00", "Z")
    assert [w["id"] for w in (await listed(created_after=stamp))["workflows"]] == [solo]
    assert (await listed(created_before=stamp))["total"] == 3
    assert (await listed(created_after=before.isoformat()))["total"] == 4

    page = await listed(limit=2, offset=1)
    assert page["total"] == 4
    assert page["count"] == 2
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [w["id"] for w in page["workflows"]] == [ids[2], ids[1]]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("status", "sleeping"),
        ("created_after", "yesterday"),
        ("created_before", "2024-13-45"),
        ("created_after", "9999-12-31T23:59:59-23:00"),
        ("created_before", "0001-01-01T00:00:00+01:00"),
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "ten"),
        ("offset", "-1"),
    ],
)
async def test_list_rejects_bad_parameters(api: Api, param: str, value: str) -> None:
    response = await api.client.get("/api/v1/workflows", params={param: value})
    assert_error(response, 422, field=param)


async def test_get_run_has_activities_with_array_outputs(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    run = await api.run(workflow_id)
    assert run["id"] == workflow_id
    assert run["workflow_id"] == workflow_id
    assert run["status"] == "created"
    assert run["error_message"] is None
    assert "state_data" in run
    assert [a["activity_key"] for a in run["activities"]] == ["first", "second"]
    assert [a["status"] for a in run["activities"]] == ["pending", "not_scheduled"]

    await _finish_two_steps(api, workflow_id)
    run = await api.wait_status(workflow_id, "completed")
    first, second = run["activities"]
    for act in run["activities"]:
        assert {"activity_key", "status", "outputs", "error", "started_at", "completed_at"} <= set(
            act
        )
        assert act["status"] == "completed"
        assert act["error"] is None
        assert act["started_at"].endswith("Z")
        assert act["completed_at"].endswith("Z")
    assert first["outputs"] == [{"name": "echo", "type": "value", "value": {"who": "ada"}}]
    assert sorted(second["outputs"], key=lambda o: o["name"]) == [
        {"name": "echo", "type": "value", "value": {"got": "ada"}},
        {"name": "report", "type": "file", "value": "postgres://x/y/z"},
    ]

    assert_error(await api.client.get(f"/api/v1/workflows/{uuid.uuid4()}"), 404)
    assert_error(await api.client.get("/api/v1/workflows/not-a-uuid"), 404)


async def test_get_run_with_wait_seconds_answers_when_the_run_finishes(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    answers: list[tuple[int, dict[str, object]]] = []

    async def long_poll() -> None:
        response = await api.client.get(
            f"/api/v1/workflows/{workflow_id}", params={"wait_seconds": 30}
        )
        answers.append((response.status_code, response.json()))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            [first] = await api.poll()
            assert (await api.complete(first, echo={"who": "ada"})).status_code == 200
            await trio.sleep(0.2)  # the run moved on, but has not finished: still held
            assert answers == []
            [second] = await api.poll()
            response = await api.complete(second, echo={"got": "ada"}, report="s3://b/k")
            assert response.status_code == 200, response.text
    [(status_code, body)] = answers
    assert status_code == 200
    assert body["status"] == "completed"
    assert [a["status"] for a in body["activities"]] == ["completed", "completed"]  # type: ignore[union-attr]


async def test_get_run_with_wait_seconds_wakes_on_cancel_and_returns_at_the_deadline(
    api: Api,
) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    url = f"/api/v1/workflows/{workflow_id}"
    began = trio.current_time()
    held = await api.client.get(url, params={"wait_seconds": 0.3})
    assert held.status_code == 200, held.text
    assert held.json()["status"] == "created"  # the wait ended with the run still going
    assert trio.current_time() - began >= 0.3

    answers: list[str] = []

    async def long_poll() -> None:
        answers.append((await api.client.get(url, params={"wait_seconds": 30})).json()["status"])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.1)
            assert (await api.client.post(f"{url}/cancel")).status_code == 200
    assert answers == ["cancelled"]
    # A finished run answers at once.
    with trio.fail_after(5):
        done = await api.client.get(url, params={"wait_seconds": 30})
    assert done.json()["status"] == "cancelled"


@pytest.mark.parametrize("value", ["-1", "61", "soon", "nan", "inf"])
async def test_get_run_rejects_a_bad_wait_seconds(api: Api, value: str) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    response = await api.client.get(
        f"/api/v1/workflows/{workflow_id}", params={"wait_seconds": value}
    )
    assert_error(response, 422, field="wait_seconds")


async def test_a_held_start_answers_with_the_finished_run(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kflow.server import views

    # The start knows the run's status and the hub's version from before the
    # run existed: it does not read the run back before it waits.
    status_reads: list[object] = []
    real_run_status = views.run_status

    def counted(tx: Any, workflow_id: uuid.UUID) -> str:
        status_reads.append(workflow_id)
        return real_run_status(tx, workflow_id)

    monkeypatch.setattr(views, "run_status", counted)
    # Nor does it read the finished run: the commit that finished it read it.
    detail_reads: list[object] = []
    real_detail = views.workflow_detail

    def counted_detail(tx: Any, workflow_id: uuid.UUID) -> dict[str, Any]:
        detail_reads.append(workflow_id)
        return real_detail(tx, workflow_id)

    monkeypatch.setattr(views, "workflow_detail", counted_detail)
    await api.deploy(TWO_STEPS)
    answers: list[Any] = []

    async def held_start() -> None:
        answers.append(
            await api.client.post(
                "/api/v1/workflows",
                params={"wait_seconds": 30},
                json={"definition_name": "two-steps", "input": {"who": "ada"}},
            )
        )

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(held_start)
            with trio.fail_after(5):
                while not (items := await api.poll()):
                    await trio.sleep(0.01)
            [first] = items
            assert (await api.complete(first, echo={"who": "ada"})).status_code == 200
            await trio.sleep(0.2)  # the run moved on, but has not finished: still held
            assert answers == []
            [second] = await api.poll()
            assert (await api.complete(second, echo={"got": "ada"})).status_code == 200
    [response] = answers
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["workflow_id"] == first["workflow_id"]
    assert [a["status"] for a in body["activities"]] == ["completed", "completed"]
    assert response.headers["location"] == f"/api/v1/workflows/{body['workflow_id']}"
    assert detail_reads == []
    # the same shape as GET /workflows/{id} gives
    assert body == (await api.client.get(response.headers["location"])).json()
    assert status_reads == []
    assert len(detail_reads) == 1  # the GET's own


async def test_a_run_that_finishes_before_its_held_start_waits_is_answered_at_once(
    api: Api,
) -> None:
    # The finish lands between the start's commit and the held answer's wait:
    # the version the start took before the run existed has moved already.
    from kflow.server.routes.workflows import _detail_when_finished

    await api.deploy(TWO_STEPS)
    baseline = api.ctx.hub.baseline()
    workflow_id = await api.start("two-steps", {"who": "ada"})
    await _finish_two_steps(api, workflow_id)
    with trio.fail_after(1):
        detail = await _detail_when_finished(
            api.ctx, None, uuid.UUID(workflow_id), 30, known=(baseline, "created")
        )
    assert detail["status"] == "completed"


async def test_a_held_start_answers_at_its_deadline_with_the_run_going(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    began = trio.current_time()
    response = await api.client.post(
        "/api/v1/workflows",
        params={"wait_seconds": 0.3},
        json={"definition_name": "two-steps", "input": {"who": "ada"}},
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "created"
    assert trio.current_time() - began >= 0.3
    at_once = await api.client.post(
        "/api/v1/workflows",
        params={"wait_seconds": 0},
        json={"definition_name": "two-steps", "input": {"who": "bob"}},
    )
    assert at_once.status_code == 201, at_once.text
    assert [a["activity_key"] for a in at_once.json()["activities"]] == ["first", "second"]


@pytest.mark.parametrize("value", ["-1", "61", "soon", "nan"])
async def test_a_start_with_a_bad_wait_seconds_starts_nothing(api: Api, value: str) -> None:
    await api.deploy(TWO_STEPS)
    response = await api.client.post(
        "/api/v1/workflows",
        params={"wait_seconds": value},
        json={"definition_name": "two-steps", "input": {}},
    )
    assert_error(response, 422, field="wait_seconds")
    assert (await api.client.get("/api/v1/workflows")).json()["workflows"] == []


async def test_a_held_start_needs_the_write_scope(secure_api: Api) -> None:
    from tests.integration.api.test_auth import bearer, token_for
    from tests.integration.conftest import create_client

    await secure_api.ctx.engine.deploy(load_definition(TWO_STEPS))
    client_id, secret = await create_client(secure_api, "workflows:read")
    reader = bearer(await token_for(secure_api, client_id, secret))
    held = await secure_api.client.post(
        "/api/v1/workflows",
        params={"wait_seconds": 1},
        json={"definition_name": "two-steps", "input": {}},
        headers=reader,
    )
    assert_error(held, 403)
    assert held.json()["error"]["details"]["required_scope"] == "workflows:write"
    listed = await secure_api.client.get("/api/v1/workflows", headers=reader)
    assert listed.json()["workflows"] == []


async def test_output_is_400_until_completed(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    url = f"/api/v1/workflows/{workflow_id}/output"
    error = assert_error(await api.client.get(url), 400)
    assert error["details"]["status"] == "created"
    assert_error(await api.client.get(f"/api/v1/workflows/{uuid.uuid4()}/output"), 404)

    await _finish_two_steps(api, workflow_id)
    await api.wait_status(workflow_id, "completed")
    response = await api.client.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["workflow_id"] == workflow_id
    assert body["status"] == "completed"
    assert body["total_cost_usd"] == "0"
    assert body["completed_at"].endswith("Z")
    assert set(body["outputs"]) == {"first", "second"}
    first = body["outputs"]["first"]
    assert set(first) >= {"status", "output", "cost_usd", "completed_at", "is_terminal"}
    assert first["status"] == "completed"
    assert first["is_terminal"] is False
    assert first["output"] == [{"name": "echo", "type": "value", "value": {"who": "ada"}}]
    assert body["outputs"]["second"]["is_terminal"] is True
    assert [t["activity_key"] for t in body["terminal_outputs"]] == ["second"]


async def test_activity_output(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    url = f"/api/v1/workflows/{workflow_id}/activities/first/output"
    pending = (await api.client.get(url)).json()
    assert pending["status"] == "pending"
    assert pending["output"] == []

    await _finish_two_steps(api, workflow_id)
    response = await api.client.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["workflow_id"] == workflow_id
    assert body["activity_key"] == "first"
    assert body["status"] == "completed"
    assert body["output"] == [{"name": "echo", "type": "value", "value": {"who": "ada"}}]
    assert body["cost_usd"] == "0"
    assert body["completed_at"].endswith("Z")
    assert body["files"] == []

    missing = f"/api/v1/workflows/{workflow_id}/activities/nope/output"
    assert_error(await api.client.get(missing), 404)
    assert_error(
        await api.client.get(f"/api/v1/workflows/{uuid.uuid4()}/activities/first/output"), 404
    )


async def test_cancel_a_running_run(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    [item] = await api.poll()
    url = f"/api/v1/workflows/{workflow_id}/cancel"

    response = await api.client.post(url)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    run = await api.run(workflow_id)
    assert run["status"] == "cancelled"
    assert {a["status"] for a in run["activities"]} == {"cancelled"}

    # The lease holder is told to stop at its next heartbeat...
    beat = await api.client.post(
        f"/api/v1/activities/{item['activity_id']}/heartbeat", json={"worker_id": "w1"}
    )
    assert_error(beat, 409)
    # ...and its late report is acknowledged, with a warning, and changes nothing.
    late = await api.complete(item, echo={"who": "late"})
    assert late.status_code == 200, late.text
    assert late.json()["acknowledged"] is True
    assert late.json()["warnings"]
    run = await api.run(workflow_id)
    assert run["status"] == "cancelled"
    assert run["activities"][0]["outputs"] == []
    assert await api.poll() == []

    again = await api.client.post(url)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "cancelled"


async def test_cancel_a_finished_or_unknown_run(api: Api) -> None:
    await api.deploy(TWO_STEPS)
    workflow_id = await api.start("two-steps", {"who": "ada"})
    await _finish_two_steps(api, workflow_id)
    await api.wait_status(workflow_id, "completed")
    assert_error(await api.client.post(f"/api/v1/workflows/{workflow_id}/cancel"), 409)
    assert (await api.run(workflow_id))["status"] == "completed"
    assert_error(await api.client.post(f"/api/v1/workflows/{uuid.uuid4()}/cancel"), 404)


async def test_sdk_compatibility_routes(api: Api) -> None:
    definition = {
        "name": "sdk-flow",
        "activities": [
            {
                "key": "hello",
                "worker": "py-std",
                "activity_name": "script",
                "parameters": {"script": "OUTPUT = INPUT", "inputs": {"n": "{{ INPUT.n }}"}},
                "settings": {
                    "cache": {"enabled": False},
                    "retry": {"max_attempts": 2, "base_seconds": 0.5},
                },
            }
        ],
    }
    deployed = await api.client.post("/api/v1/workflows", json=definition)
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["name"] == "sdk-flow"
    again = await api.client.post("/api/v1/workflows", json=definition)
    assert again.status_code == 200, again.text
    assert again.json()["unchanged"] is True

    started = await api.client.post(
        "/api/v1/workflows/start", json={"name": "sdk-flow", "inputs": {"n": 3}}
    )
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["workflow_id"] == body["instance_id"]
    assert body["status"] == "created"

    fetched = await api.client.get(f"/api/v1/workflows/{body['workflow_id']}")
    assert fetched.json()["workflow_id"] == body["workflow_id"]
    assert fetched.json()["id"] == body["workflow_id"]
    [item] = await api.poll(worker="py-std")
    assert item["parameters"]["inputs"] == {"n": 3}

    assert_error(
        await api.client.post("/api/v1/workflows/start", json={"inputs": {}}), 422, field="name"
    )
    assert_error(
        await api.client.post("/api/v1/workflows/start", json={"name": "sdk-flow", "inputs": [1]}),
        422,
        field="inputs",
    )
    assert_error(await api.client.post("/api/v1/workflows/start", json={"name": "missing"}), 404)


async def test_starts_made_together_each_get_their_own_answer(api: Api) -> None:
    """Concurrent starts share transactions (kflow.server.start_group): each still
    gets its own run, or its own error, and a group broken by one bad start
    keeps the others."""
    await api.deploy(TWO_STEPS)
    writes = 0
    real_write = api.ctx.store.write

    async def counted(fn: Any) -> Any:
        nonlocal writes
        writes += 1
        return await real_write(fn)

    api.ctx.store.write = counted  # type: ignore[method-assign]

    async def burst(bodies: list[dict[str, Any]]) -> dict[int, Any]:
        answers: dict[int, Any] = {}

        async def start(i: int) -> None:
            answers[i] = await api.client.post("/api/v1/workflows", json=bodies[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(bodies)):
                nursery.start_soon(start, i)
        return answers

    good = [{"definition_name": "two-steps", "input": {"who": f"p{i}"}} for i in range(24)]
    answers = await burst(good)
    assert {r.status_code for r in answers.values()} == {201}
    assert writes < len(good)  # shared transactions
    started = {r.json()["workflow_id"] for r in answers.values()}
    assert len(started) == 24
    firsts = await api.poll(n=50)
    assert {i["workflow_id"] for i in firsts} == started
    assert {i["parameters"]["who"] for i in firsts} == {f"p{i}" for i in range(24)}

    mixed = [{"definition_name": "two-steps", "input": {"who": f"q{i}"}} for i in range(12)]
    mixed[5] = {"definition_name": "no-such-definition", "input": {}}
    mixed[8] = {"definition_name": "two-steps", "input": {"who": "u"}, "unique_key": "once"}
    mixed[10] = {"definition_name": "two-steps", "input": {"who": "u"}, "unique_key": "once"}
    answers = await burst(mixed)
    statuses = {i: r.status_code for i, r in answers.items()}
    assert statuses.pop(5) == 404
    assert sorted([statuses.pop(8), statuses.pop(10)]) == [201, 409]
    assert set(statuses.values()) == {201}
    firsts = await api.poll(n=50)
    assert len(firsts) == 10
    listed = (await api.client.get("/api/v1/workflows", params={"limit": 100})).json()
    assert len(listed["workflows"]) == 24 + 10


def _detail_read_in_two_statements(tx: Any, workflow_id: uuid.UUID) -> dict[str, Any]:
    """The run as GET /workflows/{id} showed it when its row and its activities
    were two reads: the oracle for the one-statement read."""
    from kflow.server import views

    row = tx.one("get_workflow", id=str(workflow_id))
    return views.detail_of(row, tx.all("workflow_activities", workflow_id=str(workflow_id)))


async def test_the_detail_in_one_statement_is_the_run_and_its_activities(api: Api) -> None:
    from kflow.server import views

    await api.deploy(TWO_STEPS)
    await api.deploy(TWO_STEPS.replace("two-steps", "timed") + "settings: {timeout: 600}\n")
    big = {"who": "ada", "blob": "é" * 50_000, "n": 12345678901234567890, "f": 0.1}
    runs = {
        "created": await api.start("two-steps", big, unique_key="k-1"),
        "timed": await api.start("timed", {"who": "bob"}),
        "completed": await api.start("two-steps", {"who": "ada"}),
        "failed": await api.start("two-steps", {"who": "eve"}),
    }
    for item in await api.poll(n=10):
        if item["workflow_id"] == runs["completed"]:
            assert (await api.complete(item, echo={"who": "ada"})).status_code == 200
        elif item["workflow_id"] == runs["failed"]:
            assert (await api.fail(item)).status_code == 200
    # "created" and "timed" hold a running first activity with a worker; "completed"
    # a finished one with outputs and a pending second; "failed" an error.
    for name, workflow_id in runs.items():
        run = uuid.UUID(workflow_id)
        one = await api.ctx.store.read(lambda tx, run=run: views.workflow_detail(tx, run))
        two = await api.ctx.store.read(lambda tx, run=run: _detail_read_in_two_statements(tx, run))
        assert one == two, name
        assert [a["activity_key"] for a in one["activities"]] == ["first", "second"]
    assert one["status"] == "failed"
    assert one["activities"][0]["error"]["code"] == "BOOM"
    created = await api.run(runs["created"])
    assert created["input"] == big
    assert created["state_data"]["unique_key"] == "k-1"
    timed = await api.run(runs["timed"])
    assert timed["state_data"]["timeout_at"] is not None
    missing = await api.client.get(f"/api/v1/workflows/{uuid.uuid4()}")
    assert missing.status_code == 404
