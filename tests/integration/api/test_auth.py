"""Authentication and scopes on a server with insecure dev mode off (PROTOCOL §2)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from kflow.server.app import build_app
from kflow.server.serve import build_context
from tests.integration.conftest import Api, assert_error, create_client, wait_ready

TOKEN = "/api/v1/oauth/token"
FLOW = "name: guarded\nactivities:\n  - {key: only, activity_name: echo}\n"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def token_for(api: Api, client_id: str, secret: str, **extra: Any) -> str:
    response = await api.client.post(
        TOKEN,
        json={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            **extra,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def test_token_via_json(secure_api: Api) -> None:
    client_id, secret = await create_client(secure_api, "workflows:write")
    response = await secure_api.client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86_400
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"sub", "jti", "iss", "aud", "exp", "iat"} <= set(claims)
    assert claims["sub"] == client_id
    assert claims["exp"] - claims["iat"] == 86_400
    assert abs(claims["iat"] - time.time()) < 60

    listed = await secure_api.client.get("/api/v1/workflows", headers=bearer(body["access_token"]))
    assert listed.status_code == 200, listed.text


async def test_token_via_form(secure_api: Api) -> None:
    client_id, secret = await create_client(secure_api, "worker")
    response = await secure_api.client.post(
        TOKEN,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    poll = await secure_api.client.post(
        "/api/v1/workers/poll", json={"worker": "std", "worker_id": "w1"}, headers=bearer(token)
    )
    assert poll.status_code == 200, poll.text


async def test_token_errors(secure_api: Api) -> None:
    client_id, secret = await create_client(secure_api, "worker")
    good = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    assert_error(await secure_api.client.post(TOKEN, json={**good, "client_secret": "nope"}), 401)
    assert_error(await secure_api.client.post(TOKEN, data={**good, "client_secret": "nope"}), 401)
    assert_error(await secure_api.client.post(TOKEN, json={**good, "client_id": "ghost"}), 401)
    for field in ("grant_type", "client_id", "client_secret"):
        partial = {k: v for k, v in good.items() if k != field}
        error = assert_error(await secure_api.client.post(TOKEN, json=partial), 400)
        assert field in error["message"]
        assert_error(await secure_api.client.post(TOKEN, data=partial), 400)
    error = assert_error(
        await secure_api.client.post(TOKEN, json={**good, "grant_type": "authorization_code"}),
        400,
    )
    assert "grant_type" in error["message"]
    assert_error(await secure_api.client.post(TOKEN, content=b"not json"), 400)
    # Asking for more than the client holds.
    assert_error(await secure_api.client.post(TOKEN, json={**good, "scope": "admin"}), 400)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/workflows"),
        ("POST", "/api/v1/workflow_definitions"),
        ("POST", "/api/v1/workers/poll"),
        ("POST", "/api/v1/activities/reports"),
        ("GET", "/api/v1/workflow_definitions"),
    ],
)
async def test_requests_without_a_valid_token_are_401(
    secure_api: Api, method: str, url: str
) -> None:
    missing = await secure_api.client.request(method, url)
    assert_error(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    for header in (
        "Bearer garbage",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer " + jwt.encode({"sub": "x", "exp": 9_999_999_999, "iat": 1}, "k" * 64),
    ):
        refused = await secure_api.client.request(method, url, headers={"authorization": header})
        assert_error(refused, 401)
        assert refused.headers["www-authenticate"] == "Bearer"


async def test_public_routes_need_no_token(secure_api: Api) -> None:
    await wait_ready(secure_api)
    for url in ("/health", "/health/ready", "/api/v1/info", "/api/v1/openapi.json"):
        response = await secure_api.client.get(url)
        assert response.status_code == 200, (url, response.text)


async def test_worker_token_cannot_deploy_or_read_runs(secure_api: Api) -> None:
    client_id, secret = await create_client(secure_api, "worker")
    token = await token_for(secure_api, client_id, secret)
    error = assert_error(
        await secure_api.client.post(
            "/api/v1/workflow_definitions", content=FLOW, headers=bearer(token)
        ),
        403,
    )
    assert error["details"]["required_scope"] == "workflows:write"
    assert_error(await secure_api.client.get("/api/v1/workflows", headers=bearer(token)), 403)
    poll = await secure_api.client.post(
        "/api/v1/workers/poll", json={"worker": "std", "worker_id": "w1"}, headers=bearer(token)
    )
    assert poll.status_code == 200, poll.text


async def test_read_token_cannot_start_or_poll(secure_api: Api) -> None:
    admin_id, admin_secret = await create_client(secure_api, "admin")
    admin = await token_for(secure_api, admin_id, admin_secret)
    deployed = await secure_api.client.post(
        "/api/v1/workflow_definitions", content=FLOW, headers=bearer(admin)
    )
    assert deployed.status_code == 201, deployed.text

    client_id, secret = await create_client(secure_api, "workflows:read")
    token = await token_for(secure_api, client_id, secret)
    start = await secure_api.client.post(
        "/api/v1/workflows", json={"definition_name": "guarded"}, headers=bearer(token)
    )
    assert_error(start, 403)
    assert_error(
        await secure_api.client.post(
            "/api/v1/workers/poll", json={"worker": "std", "worker_id": "w"}, headers=bearer(token)
        ),
        403,
    )
    assert (await secure_api.client.get("/api/v1/workflows", headers=bearer(token))).json()[
        "total"
    ] == 0
    listed = await secure_api.client.get("/api/v1/workflow_definitions", headers=bearer(token))
    assert listed.status_code == 200, listed.text
    # Files: a reader may download but not upload.
    started = await secure_api.client.post(
        "/api/v1/workflows", json={"definition_name": "guarded"}, headers=bearer(admin)
    )
    file_url = f"/api/v1/workflows/{started.json()['workflow_id']}/activities/only/files/f.txt"
    assert_error(await secure_api.client.post(file_url, content=b"x", headers=bearer(token)), 403)
    assert_error(await secure_api.client.get(file_url, headers=bearer(token)), 404)

    # A token asked for with fewer scopes than its client holds is limited to them.
    narrowed = await token_for(secure_api, admin_id, admin_secret, scope="workflows:read")
    assert_error(
        await secure_api.client.post(
            "/api/v1/workflows", json={"definition_name": "guarded"}, headers=bearer(narrowed)
        ),
        403,
    )


async def test_admin_token_can_do_everything(secure_api: Api) -> None:
    client_id, secret = await create_client(secure_api, "admin")
    token = await token_for(secure_api, client_id, secret)
    secure_api.client.headers.update(bearer(token))
    await secure_api.deploy(FLOW)
    workflow_id = await secure_api.start("guarded")
    [item] = await secure_api.poll()
    upload = await secure_api.client.post(
        f"/api/v1/workflows/{workflow_id}/activities/only/files/out.txt", content=b"hi"
    )
    assert upload.status_code == 201, upload.text
    assert (await secure_api.complete(item, done=True)).status_code == 200
    await secure_api.wait_status(workflow_id, "completed")
    other = await secure_api.start("guarded")
    cancel = await secure_api.client.post(f"/api/v1/workflows/{other}/cancel")
    assert cancel.status_code == 200, cancel.text
    listed = await secure_api.client.get("/api/v1/workflows")
    assert listed.json()["total"] == 2


async def _disable(api: Api, client_id: str) -> None:
    now = api.ctx.engine.clock.now()
    await api.ctx.store.write(
        lambda tx: tx.run("disable_client", client_id=client_id, now=tx.time(now))
    )


async def test_disabled_client_is_refused(secure_api: Api) -> None:
    client_id, secret = await create_client(secure_api, "workflows:read")
    token = await token_for(secure_api, client_id, secret)
    await _disable(secure_api, client_id)
    # Its existing token (never used, so not cached) is refused...
    refused = await secure_api.client.get("/api/v1/workflows", headers=bearer(token))
    assert "disabled" in assert_error(refused, 401)["message"]
    # ...and it cannot get a new one.
    response = await secure_api.client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert_error(response, 401)


async def test_disabled_client_is_refused_once_the_client_cache_is_fresh(secure_api: Api) -> None:
    """A server that has not cached the client (here: a fresh context on the same
    database, as after a restart or on another server process) refuses its token."""
    client_id, secret = await create_client(secure_api, "workflows:read")
    token = await token_for(secure_api, client_id, secret)
    used = await secure_api.client.get("/api/v1/workflows", headers=bearer(token))
    assert used.status_code == 200  # now cached as enabled in this server's context
    await _disable(secure_api, client_id)

    fresh = await build_context(secure_api.ctx.config, secure_api.ctx.store)
    transport = httpx.ASGITransport(app=build_app(fresh))
    async with httpx.AsyncClient(transport=transport, base_url="http://kflow.test") as client:
        assert_error(await client.get("/api/v1/workflows", headers=bearer(token)), 401)


async def test_a_remembered_token_is_refused_once_it_expires(
    secure_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server remembers verified tokens; that memory must not outlive ``exp``."""
    client_id, secret = await create_client(secure_api, "workflows:read")
    token = await token_for(secure_api, client_id, secret)
    assert (
        await secure_api.client.get("/api/v1/workflows", headers=bearer(token))
    ).status_code == 200
    expiry = jwt.decode(token, options={"verify_signature": False})["exp"]
    monkeypatch.setattr(time, "time", lambda: expiry + 1.0)
    refused = await secure_api.client.get("/api/v1/workflows", headers=bearer(token))
    assert "expired" in assert_error(refused, 401)["message"]


async def test_metrics_need_a_token_with_read_scope(secure_api: Api) -> None:
    assert_error(await secure_api.client.get("/metrics"), 401)
    worker_id, worker_secret = await create_client(secure_api, "worker")
    worker_token = await token_for(secure_api, worker_id, worker_secret)
    assert_error(await secure_api.client.get("/metrics", headers=bearer(worker_token)), 403)
    client_id, secret = await create_client(secure_api, "workflows:read")
    token = await token_for(secure_api, client_id, secret)
    response = await secure_api.client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200
    assert "kflow_http_requests_total" in response.text
