"""Fixtures for integration tests: a real server context on a real SQLite file,
reached through httpx's in-process ASGI transport."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from kflow.config import ServerConfig
from kflow.server.app import build_app
from kflow.server.context import ServerContext
from kflow.server.serve import build_context, open_store
from tests.conftest import reset_postgres


@attrs.define
class Api:
    """A running server context and an HTTP client for it."""

    ctx: ServerContext
    client: httpx.AsyncClient

    async def deploy(self, source: str) -> dict[str, Any]:
        response = await self.client.post("/api/v1/workflow_definitions", content=source)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def start(self, name: str, input: dict[str, Any] | None = None, **extra: Any) -> str:
        response = await self.client.post(
            "/api/v1/workflows", json={"definition_name": name, "input": input or {}, **extra}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["workflow_id"])

    async def poll(
        self, worker: str = "std", worker_id: str = "w1", n: int = 10, wait: float | None = None
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"worker": worker, "worker_id": worker_id, "max_activities": n}
        if wait is not None:
            body["wait_seconds"] = wait
        response = await self.client.post("/api/v1/workers/poll", json=body)
        assert response.status_code == 200, response.text
        return list(response.json()["activities"])

    async def complete(
        self, item: dict[str, Any], worker_id: str = "w1", **output: Any
    ) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/activities/{item['activity_id']}/complete",
            json={"worker_id": worker_id, "output": output},
        )

    async def fail(
        self,
        item: dict[str, Any],
        code: str = "BOOM",
        retryable: bool = False,
        worker_id: str = "w1",
    ) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/activities/{item['activity_id']}/fail",
            json={
                "worker_id": worker_id,
                "error": {"code": code, "message": "failed on purpose", "retryable": retryable},
            },
        )

    async def run(self, workflow_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/workflows/{workflow_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_status(
        self, workflow_id: str, *statuses: str, timeout: float = 10
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                seen = self.ctx.hub.version(trio_uuid(workflow_id))
                run = await self.run(workflow_id)
                if run["status"] in statuses:
                    return run
                await self.ctx.hub.wait(trio_uuid(workflow_id), seen, 1.0)


def trio_uuid(text: str) -> Any:
    import uuid

    return uuid.UUID(text)


def make_config(tmp_path: pathlib.Path, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'kflow.db'}",
        "insecure_dev": True,
        "run_workers": False,
        "lease_grace_seconds": 0.5,
        "scheduler_max_sleep": 0.1,
        "sqlite_synchronous": "normal",
    }
    values.update(overrides)
    return ServerConfig(**values)


DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def database_for(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """The database URL of the dialect this test is parametrized with (emptied first)."""
    if getattr(request, "param", "sqlite") == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
        reset_postgres(url)
        return url
    return f"sqlite:///{tmp_path / 'kflow.db'}"


@pytest.fixture(params=DIALECTS)
async def api(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Api]:
    """An insecure-dev server on a fresh database (SQLite and PostgreSQL), scheduler running."""
    config = make_config(tmp_path, database_url=database_for(request, tmp_path))
    async with _api(config) as harness:
        yield harness


class _api:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    async def __aenter__(self) -> Api:
        self.store = await open_store(self.config)
        await self.store.migrate()
        ctx = await build_context(self.config, self.store)
        self.nursery_manager = trio.open_nursery()
        self.nursery = await self.nursery_manager.__aenter__()
        await self.nursery.start(ctx.scheduler.serve)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(ctx)), base_url="http://kflow.test"
        )
        return Api(ctx=ctx, client=self.client)

    async def __aexit__(self, *exc: Any) -> None:
        self.nursery.cancel_scope.cancel()
        await self.nursery_manager.__aexit__(None, None, None)
        await self.client.aclose()
        await self.store.aclose()


# ---- helpers for the API tests (tests/integration/api) ---------------------------

#: The wire code of each error status (PROTOCOL §1).
CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    500: "INTERNAL_ERROR",
}


def assert_error(
    response: httpx.Response, status: int, *, code: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """Check the error envelope ``{"error": {code, message, details?}}`` and return ``error``.

    ``field`` must be a key of ``details.field_errors`` (422 answers).
    """
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == (code or CODES[status]), error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert "Traceback" not in error["message"], error
    if "details" in error:
        assert isinstance(error["details"], dict), error
    if field is not None:
        field_errors = error["details"]["field_errors"]
        assert field in field_errors, (field, field_errors)
        assert all(isinstance(m, str) and m for m in field_errors[field]), field_errors
    return dict(error)


@pytest.fixture(params=DIALECTS)
async def secure_api(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Api]:
    """A server that requires bearer tokens (insecure dev mode off), on both dialects."""
    config = make_config(tmp_path, insecure_dev=False, database_url=database_for(request, tmp_path))
    async with _api(config) as harness:
        yield harness


async def create_client(
    harness: Api, scopes: str, *, client_id: str | None = None, secret: str = "s3cret-value"
) -> tuple[str, str]:
    """Store an OAuth client with ``scopes`` (a cheap bcrypt hash); returns (id, secret)."""
    import bcrypt

    from kflow.server.auth import create_client_in_tx, parse_scopes

    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=4)).decode()
    now = harness.ctx.engine.clock.now()
    created = await harness.ctx.store.write(
        lambda tx: create_client_in_tx(
            tx,
            client_id=client_id,
            secret=secret,
            secret_hash=hashed,
            scopes=parse_scopes(scopes),
            description="test client",
            now=now,
        )
    )
    return created.client_id, secret


async def wait_ready(harness: Api, timeout: float = 3) -> None:
    """Until ``/health/ready`` says ok (the scheduler has completed its first pass)."""
    with trio.fail_after(timeout):
        while True:
            response = await harness.client.get("/health/ready")
            if response.status_code == 200:
                return
            await trio.sleep(0.01)
