"""Guards of the engine: lease ownership per client, secrets at dispatch, and
transitions that break without taking the engine (or other runs) down."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio

from kflow.server.engine import Engine
from tests.integration.api.test_auth import bearer, token_for
from tests.integration.conftest import (
    DIALECTS,
    Api,
    _api,
    assert_error,
    create_client,
    database_for,
    make_config,
)

CHAIN = """
name: chain
activities:
  - {key: a, activity_name: echo, parameters: {x: 1}}
  - {key: b, activity_name: echo, depends_on: [a]}
"""


async def _worker_token(api: Api, name: str) -> str:
    client_id, secret = await create_client(api, "worker", client_id=name)
    return await token_for(api, client_id, secret)


async def test_only_the_claiming_client_may_report_its_lease(secure_api: Api) -> None:
    admin_id, admin_secret = await create_client(secure_api, "admin")
    admin = bearer(await token_for(secure_api, admin_id, admin_secret))
    owner = bearer(await _worker_token(secure_api, "owner"))
    intruder = bearer(await _worker_token(secure_api, "intruder"))
    client = secure_api.client
    assert (
        await client.post("/api/v1/workflow_definitions", content=CHAIN, headers=admin)
    ).status_code == 201
    started = await client.post(
        "/api/v1/workflows", json={"definition_name": "chain"}, headers=admin
    )
    assert started.status_code == 201
    poll = await client.post(
        "/api/v1/workers/poll", headers=owner, json={"worker": "std", "worker_id": "host-1"}
    )
    [item] = poll.json()["activities"]
    url = f"/api/v1/activities/{item['activity_id']}"
    # the intruder knows the worker_id (it is visible in the run) but not the credential
    assert_error(
        await client.post(url + "/heartbeat", headers=intruder, json={"worker_id": "host-1"}), 409
    )
    assert_error(
        await client.post(
            url + "/complete",
            headers=intruder,
            json={"worker_id": "host-1", "output": {"x": "hijacked"}},
        ),
        409,
    )
    assert_error(
        await client.post(
            url + "/fail", headers=intruder, json={"worker_id": "host-1", "error": {"code": "X"}}
        ),
        409,
    )
    done = await client.post(
        url + "/complete", headers=owner, json={"worker_id": "host-1", "output": {"echo": "mine"}}
    )
    assert done.status_code == 200
    assert done.json()["warnings"] == []


SECRETIVE = """
name: secretive
activities:
  - {key: plain, activity_name: echo, parameters: {x: 1}}
  - {key: auth, activity_name: echo, parameters: {header: "Bearer {{ SECRET.TOK }}"}}
"""


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A fresh database of each dialect, for tests that restart their server on it."""
    return database_for(request, tmp_path)


async def test_secrets_are_substituted_at_dispatch_and_never_stored(
    tmp_path: pathlib.Path, database_url: str
) -> None:
    config = make_config(tmp_path, database_url=database_url, secrets={"TOK": "s3cr3t-value"})
    async with _api(config) as api:
        await api.deploy(SECRETIVE)
        workflow_id = await api.start("secretive")
        items = {i["activity_key"]: i for i in await api.poll()}
        assert items["auth"]["parameters"] == {"header": "Bearer s3cr3t-value"}
        stored = await api.ctx.store.read(
            lambda tx: tx.one("activity_by_key", workflow_id=workflow_id, key="auth")
        )
    assert stored is not None
    assert "s3cr3t-value" not in str(stored["parameters"])
    assert "TOK" in str(stored["parameters"])


async def test_a_secret_missing_at_dispatch_fails_only_its_activity(
    tmp_path: pathlib.Path, database_url: str
) -> None:
    config = make_config(tmp_path, database_url=database_url, secrets={"TOK": "s3cr3t-value"})
    async with _api(config) as api:
        await api.deploy(SECRETIVE)
        workflow_id = await api.start("secretive")
    # the server restarts without that secret configured
    async with _api(make_config(tmp_path, database_url=database_url)) as api:
        items = await api.poll()
        assert [i["activity_key"] for i in items] == ["plain"]  # handed out; nothing stuck
        run = await api.run(workflow_id)
        auth = next(a for a in run["activities"] if a["activity_key"] == "auth")
        assert auth["status"] == "failed"
        assert auth["error"]["code"] == "TEMPLATE_ERROR"
        assert "TOK" in auth["error"]["message"]


SIGNALS = """
name: waits
activities:
  - key: w
    activity_name: echo
    settings: {wait_for_signal: {event_name: go, timeout_seconds: 0.3, on_timeout: continue}}
"""


async def test_a_timer_transition_that_breaks_fails_only_its_run(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.deploy(SIGNALS)
    doomed = await api.start("waits", {"n": 1})
    healthy = await api.start("waits", {"n": 2})
    original = Engine.transition_row

    def flaky(self: Engine, tx: Any, effects: Any, workflow_id: Any, make: Any, now: Any) -> Any:
        if str(workflow_id) == doomed:
            raise RuntimeError("a bug in a transition")
        return original(self, tx, effects, workflow_id, make, now)

    monkeypatch.setattr(Engine, "transition_row", flaky)
    failed = await api.wait_status(doomed, "failed")
    assert (
        "internal error while handling the signal timeout of activity 'w'"
        in (failed["error_message"])
    )
    assert "RuntimeError: a bug in a transition" in failed["error_message"]
    assert failed["activities"][0]["status"] == "cancelled"
    with trio.fail_after(10):
        while not [i for i in await api.poll() if i["workflow_id"] == healthy]:
            await trio.sleep(0.05)  # the healthy run's timeout still fired
    assert api.ctx.scheduler.healthy


async def test_a_report_whose_transition_breaks_is_kept_and_acknowledged(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.deploy(CHAIN)
    workflow_id = await api.start("chain")
    [item] = await api.poll()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in a transition")

    monkeypatch.setattr(Engine, "transition_row", broken)
    answer = await api.complete(item, echo={"x": 1})
    assert answer.status_code == 200, answer.text
    assert "workflow was failed" in answer.json()["warnings"][0]
    monkeypatch.undo()
    run = await api.run(workflow_id)
    assert run["status"] == "failed"
    assert "internal error while recording the result" in run["error_message"]
    again = await api.complete(item, echo={"x": 1})  # the worker retries: still fine, once
    assert again.status_code == 200
    attempts = await api.ctx.store.read(
        lambda tx: tx.all("workflow_attempts", workflow_id=workflow_id)
    )
    assert [(a["activity_key"], a["outcome"]) for a in attempts] == [("a", "completed")]


SECRETIVE_LATER = """
name: secretive-later
activities:
  - {key: plain, activity_name: echo, parameters: {x: 1}}
  - key: auth
    activity_name: echo
    parameters: {header: "Bearer {{ SECRET.TOK }}"}
    settings: {delay: 0.2s}
"""


async def test_a_next_step_that_cannot_be_handed_out_fails_after_the_report_in_history(
    tmp_path: pathlib.Path,
) -> None:
    """A report's ``claim_next`` takes a ready activity whose secret the server no
    longer knows: the activity fails (TEMPLATE_ERROR), nothing is handed out, and
    the history shows the report's events before that failure."""
    async with _api(make_config(tmp_path, secrets={"TOK": "s3cr3t-value"})) as api:
        await api.deploy(SECRETIVE_LATER)
        workflow_id = await api.start("secretive-later")
        [plain] = await api.poll()
        assert plain["activity_key"] == "plain"
    async with _api(make_config(tmp_path)) as api:  # restarted without the secret
        with trio.fail_after(10):
            while (
                next(
                    a
                    for a in (await api.run(workflow_id))["activities"]
                    if a["activity_key"] == "auth"
                )["status"]
                != "pending"
            ):
                await trio.sleep(0.05)
        item = {"activity_id": plain["activity_id"], "kind": "complete", "claim_next": True,
                "report": {"worker_id": "w1", "output": {}}}  # fmt: skip
        response = await api.client.post("/api/v1/activities/reports", json={"reports": [item]})
        assert response.json()["results"][0]["body"]["activities"] == []
        run = await api.run(workflow_id)
        auth = next(a for a in run["activities"] if a["activity_key"] == "auth")
        assert (auth["status"], auth["error"]["code"]) == ("failed", "TEMPLATE_ERROR")
        history = await api.client.get(
            f"/api/v1/workflows/{workflow_id}/events", headers={"accept": "application/json"}
        )
        kinds = [(e["type"], e["activity_key"]) for e in history.json()]
        assert kinds.index(("activity.completed", "plain")) < kinds.index(
            ("activity.failed", "auth")
        )
        ids = [e["event_id"] for e in history.json()]
        assert ids == sorted(ids)
