"""The built-in workers' direct calls answer exactly as the HTTP routes do."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from kflow._serde import dumps
from kflow.server.app import build_app
from kflow.server.auth import INTERNAL_CLIENT
from kflow.server.inprocess_api import InProcessWorkerApi
from kflow.worker.api import WorkerApi
from kflow.worker.config import WorkerConfig
from kflow.worker.wire import Report, ReportOutcome
from tests.integration.conftest import Api, assert_error

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


class Pair:
    """The same server reached directly and through the whole HTTP application."""

    def __init__(self, api: Api, http: httpx.AsyncClient) -> None:
        config = WorkerConfig(api_url="http://kflow.test", worker="std", worker_id="w1")
        app = build_app(api.ctx)
        self.direct = InProcessWorkerApi(http, config, app=app, ctx=api.ctx)
        self.routed = WorkerApi(http, config)
        self.token = api.ctx.auth.mint(INTERNAL_CLIENT, {"worker"})

    async def both(
        self, path: str, body: Any, *, token: str | None = None, raw: bytes | None = None
    ) -> tuple[httpx.Response, httpx.Response]:
        content = raw if raw is not None else dumps(body)
        args = ("POST", path, content, "application/json", None, token or self.token)
        return await self.direct._request(*args), await self.routed._request(*args)


@pytest.fixture
async def pair(secure_api: Api) -> Pair:
    return Pair(secure_api, secure_api.client)


def _same(direct: httpx.Response, routed: httpx.Response) -> Any:
    assert direct.status_code == routed.status_code, (direct.text, routed.text)
    assert direct.headers["content-type"] == routed.headers["content-type"]
    assert direct.json() == routed.json()
    return direct.json()


async def test_an_empty_poll_answers_the_same(pair: Pair) -> None:
    body = {"worker": "std", "worker_id": "w1", "max_activities": 5}
    answer = _same(*await pair.both("/workers/poll", body))
    assert answer == {"activities": [], "count": 0}


async def test_a_claim_and_its_completion_go_through_the_direct_path(secure_api: Api) -> None:
    pair = Pair(secure_api, secure_api.client)
    headers = {"Authorization": f"Bearer {secure_api.ctx.auth.mint(INTERNAL_CLIENT, {'admin'})}"}
    secure_api.client.headers.update(headers)
    await secure_api.deploy(CHAIN)
    workflow_id = await secure_api.start("chain")
    poll = {"worker": "std", "worker_id": "w1", "max_activities": 5}
    response = await pair.direct._request(
        "POST", "/workers/poll", dumps(poll), "application/json", None, pair.token
    )
    assert response.status_code == 200, response.text
    [item] = response.json()["activities"]
    assert item["activity_key"] == "a"
    path = f"/activities/{item['activity_id']}/complete"
    done = await pair.direct._request(
        "POST",
        path,
        dumps({"worker_id": "w1", "output": {"value": 7}}),
        "application/json",
        None,
        pair.token,
    )
    assert done.status_code == 200, done.text
    # The same report again, both ways: idempotent and identical.
    _same(*await pair.both(path, {"worker_id": "w1", "output": {"value": 7}}))
    # A report by another worker conflicts, both ways.
    error = _same(*await pair.both(path, {"worker_id": "w2", "output": {}}))
    assert error["error"]["code"] == "CONFLICT"
    run = await secure_api.run(workflow_id)
    statuses = {a["activity_key"]: a["status"] for a in run["activities"]}
    assert statuses["a"] == "completed"
    metrics = secure_api.ctx.metrics.render().decode()
    assert 'route="/api/v1/workers/poll"' in metrics
    assert 'route="/api/v1/activities/{activity_id}/complete"' in metrics


async def test_claim_next_reaches_the_route_through_the_direct_path(secure_api: Api) -> None:
    pair = Pair(secure_api, secure_api.client)
    headers = {"Authorization": f"Bearer {secure_api.ctx.auth.mint(INTERNAL_CLIENT, {'admin'})}"}
    secure_api.client.headers.update(headers)
    await secure_api.deploy(CHAIN)
    workflow_id = await secure_api.start("chain")
    config = WorkerConfig(
        api_url="http://kflow.test", worker="std", worker_id="w1", access_token=pair.token
    )
    direct = InProcessWorkerApi(
        secure_api.client, config, app=build_app(secure_api.ctx), ctx=secure_api.ctx
    )
    [item] = await direct.poll(5)
    direct.claim_next = True
    report = Report.complete(item.activity_id, "w1", {"value": 7})
    assert await direct.report(report, retry=False, batched=True) is ReportOutcome.ACKNOWLEDGED
    claimed = direct.take_next(item.activity_id)
    assert claimed is not None
    assert (claimed.workflow_id, claimed.activity_key) == (uuid.UUID(workflow_id), "b")
    assert claimed.parameters == {"from_a": 7}
    assert direct.take_next(item.activity_id) is None  # handed out once


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/workers/poll", {"worker": "bad queue!", "worker_id": "w1"}, 422, "worker"),
        ("/workers/poll", {"worker": "std", "worker_id": "w1", "max_activities": 0}, 422, None),
        ("/workers/poll", [1, 2], 422, None),
        (f"/activities/{uuid.uuid4()}/complete", {"worker_id": "w1", "output": []}, 422, "output"),
        (f"/activities/{uuid.uuid4()}/complete", {"worker_id": "w1"}, 404, None),
        (f"/activities/{uuid.uuid4()}/fail", {"worker_id": "w1", "error": "x"}, 422, "error"),
        (f"/activities/{uuid.uuid4()}/heartbeat", {}, 422, "worker_id"),
        ("/activities/not-a-uuid/complete", {"worker_id": "w1"}, 404, None),
    ],
)
async def test_bad_requests_get_the_same_envelope(
    pair: Pair, path: str, body: Any, status: int, field: str | None
) -> None:
    direct, routed = await pair.both(path, body)
    assert_error(direct, status, field=field)
    _same(direct, routed)


async def test_malformed_json_gets_the_same_envelope(pair: Pair) -> None:
    direct, routed = await pair.both("/workers/poll", None, raw=b"{not json")
    assert_error(direct, 400)
    _same(direct, routed)


async def test_a_body_over_the_limit_is_refused_before_the_route_runs(pair: Pair) -> None:
    limit = pair.direct._ctx.config.json_body_limit
    huge = {"worker_id": "w1", "output": {"blob": "x" * (limit + 1)}}
    direct, routed = await pair.both(f"/activities/{uuid.uuid4()}/complete", huge)
    assert_error(direct, 413)
    _same(direct, routed)


@pytest.mark.parametrize("token", ["not-a-token", "scopeless"])
async def test_a_bad_or_unscoped_token_is_refused_the_same_way(pair: Pair, token: str) -> None:
    if token == "scopeless":
        token = pair.direct._ctx.auth.mint("someone", {"workflows:read"})
    body = {"worker": "std", "worker_id": "w1"}
    direct, routed = await pair.both("/workers/poll", body, token=token)
    assert direct.status_code in (401, 403)
    _same(direct, routed)


async def test_a_cancelled_long_poll_puts_nothing_on_hold(secure_api: Api) -> None:
    pair = Pair(secure_api, secure_api.client)
    body = dumps({"worker": "std", "worker_id": "w1", "wait_seconds": 30})
    with trio.move_on_after(0.2) as scope:
        await pair.direct._request(
            "POST", "/workers/poll", body, "application/json", None, pair.token
        )
    assert scope.cancelled_caught


async def test_other_routes_still_go_through_the_application(pair: Pair) -> None:
    info = await pair.direct.info()
    assert info.get("name") or info.get("version"), info
