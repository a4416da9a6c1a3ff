"""Framework-level behaviour: routing errors, body limits, request ids, health, info,
OpenAPI and metrics."""

from __future__ import annotations

import pathlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kflow.errors import StoreError
from kflow.server.app import build_app
from tests.integration.conftest import Api, _api, assert_error, make_config, wait_ready

LIMIT = 2048


@pytest.fixture
async def small_api(tmp_path: pathlib.Path) -> AsyncIterator[Api]:
    """A server whose JSON bodies are limited to 2 KiB."""
    async with _api(make_config(tmp_path, json_body_limit=LIMIT)) as harness:
        yield harness


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/nope"),
        ("GET", "/api/v1/nope"),
        ("POST", "/api/v1/workflows/x/y/z"),
        ("GET", "/api/v2/workflows"),
    ],
)
async def test_unknown_route_is_a_404_envelope(api: Api, method: str, url: str) -> None:
    assert_error(await api.client.request(method, url), 404)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("DELETE", "/api/v1/workflows"),
        ("GET", "/api/v1/workers/poll"),
        ("PUT", "/api/v1/workflow_definitions"),
        ("GET", "/api/v1/oauth/token"),
        ("POST", "/health"),
    ],
)
async def test_wrong_method_is_a_405_envelope(api: Api, method: str, url: str) -> None:
    response = await api.client.request(method, url)
    assert_error(response, 405, code="METHOD_NOT_ALLOWED")
    assert "allow" in response.headers


async def test_oversized_body_with_content_length_is_413(small_api: Api) -> None:
    body = {"worker": "std", "worker_id": "w" * (LIMIT + 10)}
    response = await small_api.client.post("/api/v1/workers/poll", json=body)
    error = assert_error(response, 413)
    assert error["details"]["limit_bytes"] == LIMIT
    assert response.headers["x-request-id"]
    definition = "name: big\nactivities:\n  - {key: a, activity_name: echo}\n" + "#" * LIMIT
    assert_error(
        await small_api.client.post("/api/v1/workflow_definitions", content=definition), 413
    )


class ChunkedBody(httpx.AsyncByteStream):
    """A request body sent in chunks without Content-Length.

    A plain iterator rather than an async generator: the server stops reading
    an oversized body, and an abandoned generator would only warn at GC time.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def __aiter__(self) -> ChunkedBody:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


async def post_chunked(harness: Api, url: str, body: ChunkedBody) -> httpx.Response:
    request = harness.client.build_request(
        "POST",
        url,
        headers={"content-type": "application/json", "transfer-encoding": "chunked"},
    )
    request.stream = body
    response = await harness.client.send(request)
    assert "content-length" not in response.request.headers
    return response


async def test_oversized_chunked_body_is_413(small_api: Api) -> None:
    body = ChunkedBody([b'{"worker": "std", "worker_id": "', *[b"w" * 512] * 10, b'"}'])
    response = await post_chunked(small_api, "/api/v1/workers/poll", body)
    error = assert_error(response, 413)
    assert error["details"]["limit_bytes"] == LIMIT
    assert body.chunks  # refused as soon as the limit was passed, not after the whole body


async def test_small_bodies_and_files_pass_the_json_limit(small_api: Api) -> None:
    body = ChunkedBody([b'{"worker": "std", ', b'"worker_id": "w1"}'])
    response = await post_chunked(small_api, "/api/v1/workers/poll", body)
    assert response.status_code == 200, response.text
    # Files have their own, larger limit.
    await small_api.deploy("name: f\nactivities:\n  - {key: a, activity_name: echo}\n")
    workflow_id = await small_api.start("f")
    upload = await small_api.client.post(
        f"/api/v1/workflows/{workflow_id}/activities/a/files/big.bin", content=b"x" * (LIMIT * 4)
    )
    assert upload.status_code == 201, upload.text


async def test_invalid_json_is_400(api: Api) -> None:
    for body in (b"{", b"{'single': 'quotes'}", b"\xff\xfe", b"[1,]"):
        response = await api.client.post(
            "/api/v1/workers/poll", content=body, headers={"content-type": "application/json"}
        )
        assert_error(response, 400)
    response = await api.client.post("/api/v1/workflows", content=b"nope")
    assert "JSON" in assert_error(response, 400)["message"]


async def test_request_id_is_echoed_or_generated(api: Api) -> None:
    echoed = await api.client.get("/health", headers={"x-request-id": "req-123"})
    assert echoed.headers["x-request-id"] == "req-123"
    first = (await api.client.get("/health")).headers["x-request-id"]
    second = (await api.client.get("/health")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second
    # Errors carry it too.
    error = await api.client.get("/api/v1/nope", headers={"x-request-id": "req-404"})
    assert error.headers["x-request-id"] == "req-404"


async def test_health(api: Api) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_every_component(api: Api) -> None:
    await wait_ready(api)
    response = await api.client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "dispatcher", "scheduler"}
    for check in body["checks"].values():
        assert check["status"] == "ok"
    assert body["checks"]["database"]["dialect"] == api.ctx.store.dialect


async def test_info(api: Api) -> None:
    response = await api.client.get("/api/v1/info")
    assert response.status_code == 200
    body = response.json()
    assert body["api_version"] == "v1"
    assert isinstance(body["version"], str)
    assert body["version"]
    assert "long_poll" in body["features"]
    assert "poll_stream" in body["features"]
    assert body["max_wait_seconds"] == 60


async def test_openapi_document(api: Api) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    paths = doc["paths"]
    expected = {
        "/api/v1/workflow_definitions": {"get", "post"},
        "/api/v1/workflow_definitions/{name}": {"get"},
        "/api/v1/workflows": {"get", "post"},
        "/api/v1/workflows/start": {"post"},
        "/api/v1/workflows/{workflow_id}": {"get"},
        "/api/v1/workflows/{workflow_id}/output": {"get"},
        "/api/v1/workflows/{workflow_id}/cancel": {"post"},
        "/api/v1/workflows/{workflow_id}/signal": {"post"},
        "/api/v1/workflows/{workflow_id}/events": {"get"},
        "/api/v1/workers/poll": {"post"},
        "/api/v1/activities/{activity_id}/heartbeat": {"post"},
        "/api/v1/activities/{activity_id}/complete": {"post"},
        "/api/v1/activities/{activity_id}/fail": {"post"},
        "/api/v1/activities/reports": {"post"},
        "/api/v1/workflows/{workflow_id}/activities/{key}/files/{filename}": {"get", "post", "put"},
        "/api/v1/oauth/token": {"post"},
        "/health": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    operation_ids = []
    for path, operations in paths.items():
        assert path.startswith("/")
        declared = set(re.findall(r"{([^}]+)}", path))
        for method, operation in operations.items():
            assert method in {"get", "post", "put", "patch", "delete"}
            assert operation["responses"]
            names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert names == declared, (path, names)
            operation_ids.append(operation["operationId"])
            for requirement in operation.get("security", []):
                assert set(requirement) <= set(doc["components"]["securitySchemes"])
    assert len(operation_ids) == len(set(operation_ids))
    ref = paths["/health"]["get"]["responses"]["default"]["content"]["application/json"]
    assert ref["schema"]["$ref"] == "#/components/schemas/Error"
    assert "Error" in doc["components"]["schemas"]
    assert "security" not in paths["/health"]["get"]
    assert paths["/api/v1/workflows"]["post"]["security"] == [{"bearer": []}]


async def test_metrics_are_prometheus_text(api: Api) -> None:
    await api.client.get("/health")
    await api.client.post("/api/v1/workers/poll", json={"worker": "std", "worker_id": "w"})
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert "kflow_http_requests" in families
    samples = families["kflow_http_requests"].samples
    assert any(
        s.labels.get("route") == "/health" and s.labels.get("status") == "200" for s in samples
    )
    assert "kflow_http_request_seconds" in families


async def test_unknown_request_methods_share_one_metrics_label(api: Api) -> None:
    for method in ("ZZZ1", "ZZZ2", "BREW"):
        await api.client.request(method, "/health")
    await api.client.request("DELETE", "/health")
    response = await api.client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = [s for s in families["kflow_http_requests"].samples if s.name.endswith("_total")]
    methods = {s.labels["method"] for s in samples}
    assert methods <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER"}
    other = [s for s in samples if s.labels["method"] == "OTHER"]
    assert sum(s.value for s in other) == 3  # ZZZ1, ZZZ2 and BREW
    assert any(s.labels["method"] == "DELETE" for s in samples)


async def test_store_errors_are_a_500_envelope_without_database_text(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(fn: object) -> None:
        raise StoreError('SQLite error: near "SELEKT": syntax error in SELEKT * FROM workflows')

    monkeypatch.setattr(api.ctx.store, "read", broken)
    response = await api.client.get("/api/v1/workflows", headers={"x-request-id": "req-500"})
    error = assert_error(response, 500, code="INTERNAL_ERROR")
    assert "SELEKT" not in response.text
    assert "workflows" not in error["message"]
    assert "req-500" in error["message"]
    assert response.headers["x-request-id"] == "req-500"


async def test_unexpected_errors_are_a_500_envelope(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(fn: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.ctx.store, "read", broken)
    # This client receives the 500 answer instead of the exception.
    transport = httpx.ASGITransport(app=build_app(api.ctx), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://kflow.test") as client:
        response = await client.get("/api/v1/workflows")
    error = assert_error(response, 500, code="INTERNAL_ERROR")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert request_id in error["message"]
