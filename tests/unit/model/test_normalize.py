"""normalized_dict round-trips; content_hash ignores everything but content."""

from __future__ import annotations

import json
from typing import Any

import yaml

from kflow.model import content_hash, load_definition, normalized_dict
from kflow.templates import normalize_sdk_expression

FULL = """
name: research
description: finds things
settings: {timeout: 600, budget: {limit: "1.00", action: continue}}
activities:
  - key: fetch
    activity_name: http_request
    parameters: {method: GET, url: "{{INPUT.url}}", n: [1, 2.5, null, true]}
    outputs: [response, {name: blob, type: file}]
    dependency_of: [summarize]
    settings:
      timeout_seconds: 30
      retry: {max_attempts: 3, strategy: fixed, base_seconds: 2, factor: 2, max_seconds: 300}
      budget: {limit: 0.10}
      cache: {enabled: true, ttl: 60, key: "{{ INPUT.url }}"}
      delay: 90
      wait_for_signal: {event_name: approval, timeout_seconds: 86400, on_timeout: skip}
  - key: summarize
    worker: py-std
    activity_name: script
    iteration_scoped: true
    depends_on:
      - {activity_key: summarize, conditions: "{{ summarize.again && !summarize.done }}"}
    settings:
      scheduled_for: "2030-01-01T00:00:00Z"
      iteration_limit: 3
      cache: false
      cache_ttl: 5
"""


def test_normalized_form() -> None:
    form = normalized_dict(load_definition(FULL))
    assert list(form) == ["name", "description", "settings", "activities"]
    assert form["settings"] == {"timeout": 600.0, "budget": {"limit": "1.00", "action": "continue"}}
    fetch, summarize = form["activities"]
    assert fetch == {
        "key": "fetch",
        "worker": "std",
        "activity_name": "http_request",
        "parameters": {"method": "GET", "url": "{{INPUT.url}}", "n": [1, 2.5, None, True]},
        "outputs": [{"name": "response", "type": "value"}, {"name": "blob", "type": "file"}],
        "depends_on": [],
        "settings": {
            "timeout_seconds": 30,
            "retry": {
                "max_attempts": 3,
                "strategy": "fixed",
                "base_seconds": 2.0,
                "factor": 2.0,
                "max_seconds": 300.0,
            },
            "budget": {"limit": "0.1", "action": "abort"},
            "cache": {"enabled": True, "ttl": 60, "key": "{{ INPUT.url }}"},
            "delay": "90s",
            "scheduled_for": None,
            "wait_for_signal": {
                "event_name": "approval",
                "timeout_seconds": 86400.0,
                "on_timeout": "skip",
            },
        },
        "iteration_scoped": False,
        "iteration_limit": None,
    }
    assert summarize["depends_on"] == [
        {"activity_key": "fetch", "conditions": []},
        {
            "activity_key": "summarize",
            "conditions": [normalize_sdk_expression("{{ summarize.again && !summarize.done }}")],
        },
    ]
    assert summarize["settings"]["retry"]["max_attempts"] == 4
    assert summarize["settings"]["cache"] == {"enabled": False, "ttl": 5, "key": None}
    assert (summarize["iteration_scoped"], summarize["iteration_limit"]) == (True, 3)
    json.dumps(form, allow_nan=False)  # plain JSON


def test_round_trip_of_examples() -> None:
    examples = [
        FULL,
        "name: w\nactivities: [{key: a, activity_name: e}]",
        "name: w\nactivities: [{key: a, activity_name: e, depends_on: [a], iteration_limit: 100}]",
        "name: w\nactivities:\n- {key: a, activity_name: e, settings: {retry: {}}}\n"
        "- {key: b, activity_name: e, depends_on: [a, {activity_key: b, conditions: ['{{ x }}']}]}",
    ]
    for text in examples:
        d = load_definition(text)
        form = normalized_dict(d)
        again = load_definition(form)
        assert again == d
        assert normalized_dict(again) == form
        assert load_definition(json.dumps(form)) == d
        assert load_definition(yaml.safe_dump(form)) == d
        assert content_hash(again) == content_hash(d)


def _hash(source: Any) -> str:
    return content_hash(load_definition(source))


def test_hash_is_a_sha256_hex() -> None:
    h = _hash(FULL)
    assert len(h) == 64
    assert int(h, 16) >= 0


def test_hash_ignores_formatting_and_yaml_vs_json() -> None:
    data = yaml.safe_load(FULL)
    assert _hash(FULL) == _hash(json.dumps(data))
    assert _hash(FULL) == _hash(json.dumps(data, indent=2, sort_keys=True))
    assert _hash(FULL) == _hash(yaml.safe_dump(data, default_flow_style=True))
    assert _hash(FULL) == _hash("# a comment\n" + FULL.replace("{{INPUT.url}}", "{{INPUT.url}}"))
    assert _hash(FULL) == _hash(data)


def test_hash_ignores_dependency_of_vs_depends_on() -> None:
    reverse = {
        "name": "w",
        "activities": [
            {"key": "a", "activity_name": "e", "dependency_of": ["c", "b"]},
            {"key": "b", "activity_name": "e"},
            {"key": "c", "activity_name": "e", "depends_on": ["b"]},
        ],
    }
    forward = {
        "name": "w",
        "activities": [
            {"key": "a", "activity_name": "e"},
            {"key": "b", "activity_name": "e", "depends_on": ["a"]},
            {"key": "c", "activity_name": "e", "depends_on": ["b", "a"]},
        ],
    }
    assert _hash(reverse) == _hash(forward)


def test_hash_ignores_defaults_spelled_out() -> None:
    short = {"name": "w", "activities": [{"key": "a", "activity_name": "e"}]}
    long = {
        "name": "w",
        "description": None,
        "settings": {"timeout": None, "budget": None, "max_retries": 3},
        "activities": [
            {
                "key": "a",
                "activity_name": "e",
                "worker": "std",
                "parameters": {},
                "outputs": [],
                "depends_on": [],
                "iteration_scoped": False,
                "iteration_limit": None,
                "settings": {
                    "timeout_seconds": 60.0,
                    "retry": {
                        "max_attempts": 4,
                        "strategy": "exponential",
                        "base_seconds": 2,
                        "factor": 2,
                        "max_seconds": 300,
                    },
                    "cache": False,
                    "delay": None,
                },
            }
        ],
    }
    assert _hash(short) == _hash(long)


def test_hash_compares_money_by_value() -> None:
    def with_limit(limit: Any) -> dict[str, Any]:
        return {
            "name": "w",
            "settings": {"budget": {"limit": limit}},
            "activities": [{"key": "a", "activity_name": "e"}],
        }

    assert _hash(with_limit("1.00")) == _hash(with_limit(1)) == _hash(with_limit(1.0))
    assert _hash(with_limit("1E+2")) == _hash(with_limit(100))
    assert _hash(with_limit("1.5")) != _hash(with_limit(1))


def test_hash_changes_with_content() -> None:
    base = {"name": "w", "activities": [{"key": "a", "activity_name": "e"}]}
    changed = [
        {"name": "w2", "activities": [{"key": "a", "activity_name": "e"}]},
        {"name": "w", "activities": [{"key": "a", "activity_name": "f"}]},
        {"name": "w", "activities": [{"key": "a", "activity_name": "e", "parameters": {"x": 1}}]},
        {
            "name": "w",
            "activities": [{"key": "a", "activity_name": "e", "settings": {"retry": {}}}],
        },
        {"name": "w", "description": "d", "activities": [{"key": "a", "activity_name": "e"}]},
    ]
    hashes = {_hash(base)} | {_hash(c) for c in changed}
    assert len(hashes) == len(changed) + 1


def test_hash_ignores_parameter_key_order() -> None:
    one = {
        "name": "w",
        "activities": [{"key": "a", "activity_name": "e", "parameters": {"x": 1, "y": 2}}],
    }
    two = {
        "name": "w",
        "activities": [{"key": "a", "activity_name": "e", "parameters": {"y": 2, "x": 1}}],
    }
    assert _hash(one) == _hash(two)
