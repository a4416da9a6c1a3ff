"""Workflow definitions through the API: deploy (YAML/JSON), versions, list, fetch, 422s."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from kflow.model.loader import load_definition
from kflow.model.normalize import content_hash, normalized_dict
from kflow.server.routes import definitions as definition_routes
from tests.integration.conftest import Api, assert_error

VERSION = re.compile(r"^\d{8}\.\d{6}\.\d{6}$")
URL = "/api/v1/workflow_definitions"

HELLO = """
name: hello
activities:
  - key: greet
    activity_name: echo
    parameters: {text: "hi {{ INPUT.who }}"}
"""


async def test_deploy_yaml_then_identical_redeploy_is_unchanged(api: Api) -> None:
    first = await api.client.post(URL, content=HELLO, headers={"content-type": "text/yaml"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["name"] == "hello"
    assert VERSION.match(body["version"]), body
    assert body["created_at"].endswith("Z")
    assert "unchanged" not in body

    again = await api.client.post(URL, content=HELLO)
    assert again.status_code == 200, again.text
    assert again.json()["unchanged"] is True
    assert again.json()["version"] == body["version"]


async def test_deploy_json_whatever_the_content_type(api: Api) -> None:
    definition = {
        "name": "from-json",
        "activities": [{"key": "a", "activity_name": "echo", "parameters": {"x": 1}}],
    }
    response = await api.client.post(
        URL, content=json.dumps(definition), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert VERSION.match(response.json()["version"])
    # The same definition written as YAML is the same content: unchanged.
    yaml_text = (
        "name: from-json\nactivities:\n  - {key: a, activity_name: echo, parameters: {x: 1}}\n"
    )
    again = await api.client.post(URL, content=yaml_text)
    assert again.status_code == 200, again.text
    assert again.json()["unchanged"] is True


async def test_changed_content_is_a_new_version_and_old_versions_stay(api: Api) -> None:
    v1 = (await api.client.post(URL, content=HELLO)).json()["version"]
    changed = HELLO.replace("hi ", "hello ")
    response = await api.client.post(URL, content=changed)
    assert response.status_code == 201, response.text
    v2 = response.json()["version"]
    assert VERSION.match(v2)
    assert v2 > v1

    latest = await api.client.get(f"{URL}/hello")
    assert latest.status_code == 200, latest.text
    assert latest.json()["version"] == v2
    assert latest.json()["activities"][0]["parameters"]["text"] == "hello {{ INPUT.who }}"
    assert latest.json()["versions"] == [v2, v1]  # newest first

    old = await api.client.get(f"{URL}/hello", params={"version": v1})
    assert old.status_code == 200, old.text
    assert old.json()["version"] == v1
    assert old.json()["activities"][0]["parameters"]["text"] == "hi {{ INPUT.who }}"


async def test_get_returns_the_normalized_definition_with_kflow_extras(api: Api) -> None:
    deployed = await api.deploy(HELLO)
    response = await api.client.get(f"{URL}/hello")
    assert response.status_code == 200, response.text
    body = response.json()
    normalized = normalized_dict(load_definition(HELLO))
    extras = {"version", "created_at", "content_hash", "versions"}
    assert set(body) == set(normalized) | extras
    assert {k: v for k, v in body.items() if k not in extras} == json.loads(json.dumps(normalized))
    assert body["name"] == "hello"
    assert body["activities"][0]["worker"] == "std"  # defaults are filled in
    assert body["version"] == deployed["version"]
    assert body["created_at"] == deployed["created_at"]
    assert body["content_hash"] == content_hash(load_definition(HELLO))
    assert body["versions"] == [deployed["version"]]
    assert "definition" not in body
    # The answer is a definition again: loading it gives the same content.
    assert content_hash(load_definition(body)) == body["content_hash"]


async def test_list_definitions(api: Api) -> None:
    await api.deploy(HELLO)
    await api.deploy(HELLO.replace("hi ", "hey "))
    await api.deploy(
        "name: other\nactivities:\n"
        "  - {key: a, activity_name: echo}\n"
        "  - {key: b, activity_name: echo}\n"
    )
    response = await api.client.get(URL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 2
    by_name = {d["name"]: d for d in body["definitions"]}
    assert set(by_name) == {"hello", "other"}
    for item in body["definitions"]:
        assert {"name", "version", "activity_count", "created_at"} <= set(item)
        assert VERSION.match(item["version"])
    assert by_name["other"]["activity_count"] == 2
    assert by_name["hello"]["activity_count"] == 1
    latest = (await api.client.get(f"{URL}/hello")).json()["version"]
    assert by_name["hello"]["version"] == latest

    bad = await api.client.get(URL, params={"limit": "zero"})
    assert_error(bad, 422, field="limit")


async def test_unknown_definition_and_version_are_404(api: Api) -> None:
    assert_error(await api.client.get(f"{URL}/nope"), 404)
    await api.deploy(HELLO)
    assert_error(
        await api.client.get(f"{URL}/hello", params={"version": "19990101.000000.000000"}), 404
    )


INVALID = {
    "malformed-yaml": ("name: x\nactivities: [\n", "definition"),
    "top-level-list": ("- a\n- b\n", "definition"),
    "string-for-a-number": (
        "name: x\nactivities:\n  - key: a\n    activity_name: echo\n"
        "    settings: {timeout_seconds: abc}\n",
        "activities[0].settings.timeout_seconds",
    ),
    "cycle-without-exit": (
        "name: x\nactivities:\n"
        "  - {key: a, activity_name: echo, depends_on: [b]}\n"
        "  - {key: b, activity_name: echo, depends_on: [a]}\n",
        "activities[0].depends_on[0]",
    ),
    "duplicate-activity-keys": (
        "name: x\nactivities:\n"
        "  - {key: a, activity_name: echo}\n"
        "  - {key: a, activity_name: echo}\n",
        "activities[1].key",
    ),
    "unknown-dependency": (
        "name: x\nactivities:\n  - {key: a, activity_name: echo, depends_on: [zzz]}\n",
        "activities[0].depends_on[0]",
    ),
    "template-syntax": (
        "name: x\nactivities:\n  - {key: a, activity_name: echo, parameters: {v: '{{ a. }}'}}\n",
        "activities[0].parameters.v",
    ),
    "bad-name": ("name: 'no spaces!'\nactivities:\n  - {key: a, activity_name: echo}\n", "name"),
    "missing-activities": ("name: x\n", "activities"),
}


async def test_invalid_json_definitions_are_422_naming_the_field(api: Api) -> None:
    definition = {
        "name": "typed",
        "activities": [
            {"key": "a", "activity_name": "echo", "settings": {"timeout_seconds": "abc"}},
            {"key": "b", "activity_name": "echo", "settings": {"retry": {"base_seconds": "x"}}},
        ],
    }
    response = await api.client.post(URL, json=definition)
    error = assert_error(response, 422, field="activities[0].settings.timeout_seconds")
    assert "activities[1].settings.retry.base_seconds" in error["details"]["field_errors"]
    # The SDK's deploy route validates the same way.
    sdk = await api.client.post("/api/v1/workflows", json={"name": "x", "activities": "nope"})
    assert_error(sdk, 422, field="activities")


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_invalid_definitions_are_422_naming_the_field(api: Api, case: str) -> None:
    source, field = INVALID[case]
    response = await api.client.post(URL, content=source)
    error = assert_error(response, 422, field=field)
    assert error["code"] == "VALIDATION_ERROR"
    assert (await api.client.get(URL)).json()["total"] == 0


async def test_empty_body_is_422(api: Api) -> None:
    assert_error(await api.client.post(URL, content=b""), 422, field="definition")
    assert_error(await api.client.post(URL, content=b"  \n\t"), 422, field="definition")


async def test_non_utf8_body_is_422(api: Api) -> None:
    source = HELLO.encode().replace(b"hi ", b"h\xe9\xff ")
    assert_error(await api.client.post(URL, content=source), 422, field="definition")


async def test_duplicate_yaml_mapping_keys_are_422(api: Api) -> None:
    source = (
        "name: dup\nactivities:\n  - key: a\n    activity_name: echo\n"
        "    parameters: {x: 1}\n    parameters: {y: 2}\n"
    )
    body = assert_error(await api.client.post(URL, content=source), 422, field="definition")
    assert "duplicate key 'parameters'" in str(body)


async def test_duplicate_json_keys_are_422(api: Api) -> None:
    source = '{"name": "dup", "name": "other", "activities": []}'
    assert_error(await api.client.post(URL, content=source), 422, field="definition")


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (URL, {"content": HELLO}),
        ("/api/v1/workflows", {"json": yaml.safe_load(HELLO)}),  # the SDK's deploy
    ],
)
async def test_a_slow_parse_does_not_block_the_server(
    api: Api, monkeypatch: pytest.MonkeyPatch, url: str, body: dict[str, Any]
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_load(source: Any) -> Any:
        started.set()
        assert release.wait(10), "the test never released the parse"
        return load_definition(source)

    monkeypatch.setattr(definition_routes, "load_definition", slow_load)
    answers: list[int] = []

    async def deploy() -> None:
        answers.append((await api.client.post(url, **body)).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deploy)
        # Were the parse on the event loop, this wait (and /health) would never get a turn.
        assert await trio.to_thread.run_sync(started.wait, 10)
        with trio.fail_after(5):
            health = await api.client.get("/health")
        assert health.status_code == 200
        assert answers == []  # the deploy is still parsing
        release.set()
    assert answers == [201]


async def test_parsing_threads_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    parsing = threading.Semaphore(0)

    def slow_load(source: Any) -> Any:
        parsing.release()
        assert release.wait(10), "the test never released the parse"
        return load_definition(source)

    monkeypatch.setattr(definition_routes, "load_definition", slow_load)
    sources = [HELLO.replace("hi ", f"hi {n} ").replace("hello", f"hello{n}") for n in range(3)]
    answers: list[int] = []

    async def deploy(source: str) -> None:
        answers.append((await api.client.post(URL, content=source)).status_code)

    async with trio.open_nursery() as nursery:
        for source in sources:
            nursery.start_soon(deploy, source)
        for _ in range(definition_routes.PARSE_THREADS):
            assert await trio.to_thread.run_sync(parsing.acquire, True, 10)
        await trio.testing.wait_all_tasks_blocked()
        limiter = definition_routes.parse_limiter()
        assert limiter.borrowed_tokens == definition_routes.PARSE_THREADS == 2
        assert limiter.statistics().tasks_waiting == 1
        release.set()
    assert answers == [201, 201, 201]
