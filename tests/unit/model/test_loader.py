"""load_definition: fields, defaults, types, SDK spellings and path-qualified errors."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

import pytest
import yaml

from kflow._types import OutputType
from kflow.errors import DefinitionError, ValidationFailed
from kflow.model import (
    ActivitySettings,
    BudgetSettings,
    CacheSettings,
    Dependency,
    OutputDefinition,
    RetryPolicy,
    SignalWait,
    WorkflowDefinition,
    definition_from_dict,
    load_definition,
)
from kflow.model.definition import DEFAULT_RETRY


def act(key: str, *depends_on: Any, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"key": key, "activity_name": "echo", **fields}
    if depends_on:
        data["depends_on"] = list(depends_on)
    return data


def wf(*activities: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "activities": list(activities), **fields}


def errors_of(source: Any) -> dict[str, list[str]]:
    with pytest.raises(DefinitionError) as info:
        load_definition(source)
    assert info.value.code == "VALIDATION_ERROR"
    assert info.value.details["field_errors"] == info.value.field_errors
    return info.value.field_errors


def settings_of(**settings: Any) -> ActivitySettings:
    return load_definition(wf(act("a", settings=settings))).activities[0].settings


PROTOCOL_EXAMPLE = """
name: research            # ^[A-Za-z0-9_-]+$
settings:                 # optional
  timeout: 600
  budget: {limit: 1.00, action: abort}
activities:
  - key: fetch
    worker: std
    activity_name: http_request
    parameters: {method: GET, url: "{{INPUT.url}}"}
    outputs: [response]
    settings:
      timeout_seconds: 30
      retry: {max_attempts: 3, strategy: exponential, base_seconds: 2, factor: 2, max_seconds: 300}
      budget: {limit: 0.10, action: abort}
      cache: true
      cache_ttl: 3600
      delay: "5m"
      wait_for_signal: {event_name: approval, timeout_seconds: 86400, on_timeout: fail}
  - key: summarize
    worker: py-std
    activity_name: script
    parameters:
      script: "OUTPUT = {'n': len(INPUT['text'])}"
      inputs: {text: "{{fetch.response.body}}"}
    depends_on:
      - fetch
      - {activity_key: fetch, conditions: ["{{ fetch.response.status == 200 }}"]}
"""


def test_protocol_example() -> None:
    d = load_definition(PROTOCOL_EXAMPLE)
    assert d.name == "research"
    assert d.description is None
    assert d.settings.timeout_seconds == 600.0
    assert d.settings.budget == BudgetSettings(limit=decimal.Decimal("1.0"), action="abort")
    fetch, summarize = d.activities
    assert fetch.key == "fetch"
    assert fetch.worker == "std"
    assert fetch.activity_name == "http_request"
    assert fetch.parameters == {"method": "GET", "url": "{{INPUT.url}}"}
    assert fetch.outputs == (OutputDefinition(name="response", type=OutputType.VALUE),)
    assert fetch.settings == ActivitySettings(
        timeout_seconds=30,
        retry=RetryPolicy(
            max_attempts=3, strategy="exponential", base_seconds=2, factor=2, max_seconds=300
        ),
        budget=BudgetSettings(limit=decimal.Decimal("0.10"), action="abort"),
        cache=CacheSettings(enabled=True, ttl_seconds=3600),
        delay="5m",
        wait_for_signal=SignalWait(event_name="approval", timeout_seconds=86400, on_timeout="fail"),
    )
    assert summarize.worker == "py-std"
    # the plain and the conditional edge on fetch merge into one edge
    assert summarize.depends_on == (
        Dependency(activity_key="fetch", conditions=("{{ fetch.response.status == 200 }}",)),
    )


def test_text_bytes_json_and_mapping_give_the_same_definition() -> None:
    data = yaml.safe_load(PROTOCOL_EXAMPLE)
    expected = load_definition(PROTOCOL_EXAMPLE)
    assert load_definition(PROTOCOL_EXAMPLE.encode()) == expected
    assert load_definition(json.dumps(data)) == expected
    assert load_definition(json.dumps(data, indent=4).encode("utf-16")) == expected
    assert load_definition(data) == expected
    assert definition_from_dict(data) == expected


def test_json_text_is_read_as_json() -> None:
    # PyYAML alone reads 1e-7 as a string and splits an escaped surrogate pair
    text = json.dumps(
        wf(act("a", parameters={"x": 1e-7, "emoji": "\U0001f600"}), description="\u00e9\U0001f600")
    )
    assert "\\ud83d" in text
    d = load_definition(text)
    assert d.activities[0].parameters == {"x": 1e-7, "emoji": "\U0001f600"}
    assert d.description == "\u00e9\U0001f600"
    assert load_definition(text.encode()) == d


def test_defaults() -> None:
    d = load_definition({"name": "w", "activities": [{"key": "a", "activity_name": "echo"}]})
    a = d.activities[0]
    assert (a.worker, a.parameters, a.outputs, a.depends_on) == ("std", {}, (), ())
    assert a.settings == ActivitySettings()
    assert a.settings.retry == DEFAULT_RETRY
    assert a.settings.retry.max_attempts == 4
    assert a.settings.timeout_seconds == 60
    assert (a.iteration_scoped, a.iteration_limit, a.is_loop_activity) == (False, None, False)
    assert a.max_iterations == 100
    assert d.settings.timeout_seconds is None
    assert d.settings.budget is None


def test_nulls_mean_absent() -> None:
    data = wf(
        act("a", worker=None, parameters=None, outputs=None, depends_on=None, settings=None),
        description=None,
        settings=None,
    )
    assert load_definition(data) == load_definition(wf(act("a")))


def test_unknown_fields_are_ignored() -> None:
    data = wf(act("a", colour="red", is_loop_activity=True, streaming=True), version=3, inputs={})
    data["activities"][0]["settings"] = {"streaming": True, "whatever": 1}
    assert load_definition(data) == load_definition(wf(act("a")))


def test_description_and_workflow_settings() -> None:
    d = load_definition(wf(act("a"), description="hi", settings={"timeout": 1.5, "max_retries": 9}))
    assert d.description == "hi"
    assert d.settings.timeout_seconds == 1.5
    assert d.settings.budget is None


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("0.015", "0.015"), ("1E-7", "1E-7"), (2, "2"), (0.1, "0.1"), (0, "0")],
)
def test_budget_limit_is_a_decimal(limit: Any, expected: str) -> None:
    d = load_definition(wf(act("a"), settings={"budget": {"limit": limit}}))
    assert d.settings.budget == BudgetSettings(limit=decimal.Decimal(expected), action="abort")


def test_budget_errors() -> None:
    errors = errors_of(
        wf(
            act("a", settings={"budget": {"action": "explode"}}),
            settings={"budget": {"limit": -1, "action": "continue"}, "timeout": 0},
        )
    )
    assert errors == {
        "settings.timeout": ["expected a positive number up to 2147483647, got 0"],
        "settings.budget.limit": ["expected a decimal number >= 0, got -1"],
        "activities[0].settings.budget.limit": ["is required"],
        "activities[0].settings.budget.action": ["must be one of abort, continue, got 'explode'"],
    }
    assert list(errors_of(wf(act("a"), settings={"budget": {"limit": True}}))) == [
        "settings.budget.limit"
    ]
    assert list(errors_of(wf(act("a"), settings={"budget": {"limit": "1E+99"}}))) == [
        "settings.budget.limit"
    ]


def test_retry_block_without_max_attempts_means_one_attempt() -> None:
    assert settings_of(retry={}).retry == RetryPolicy(max_attempts=1)
    assert settings_of(retry={"base_seconds": 1}).retry.max_attempts == 1


def test_retry_fields_and_aliases() -> None:
    retry = settings_of(
        retry={
            "max_attempts": 5.0,
            "strategy": "constant",
            "base_seconds": 0.5,
            "factor": 1,
            "max_seconds": 10,
        }
    ).retry
    assert retry == RetryPolicy(
        max_attempts=5, strategy="fixed", base_seconds=0.5, factor=1.0, max_seconds=10.0
    )
    assert isinstance(retry.max_seconds, float)
    assert settings_of(retry={"strategy": "exponential_backoff"}).retry.strategy == "exponential"


def test_retry_errors() -> None:
    errors = errors_of(
        wf(
            act(
                "a",
                settings={
                    "retry": {
                        "max_attempts": 0,
                        "strategy": "random",
                        "base_seconds": -1,
                        "factor": 0.5,
                        "max_seconds": "10",
                    }
                },
            )
        )
    )
    prefix = "activities[0].settings.retry"
    assert errors == {
        f"{prefix}.max_attempts": ["expected a positive integer up to 2147483647, got 0"],
        f"{prefix}.strategy": ["must be one of exponential, fixed, got 'random'"],
        f"{prefix}.base_seconds": ["expected a positive number up to 2147483647, got -1"],
        f"{prefix}.factor": ["expected a number >= 1 up to 2147483647, got 0.5"],
        f"{prefix}.max_seconds": ["expected a positive number, got a string"],
    }


def test_timeout_seconds() -> None:
    assert settings_of(timeout_seconds=30.0).timeout_seconds == 30
    assert errors_of(wf(act("a", settings={"timeout_seconds": "abc"}))) == {
        "activities[0].settings.timeout_seconds": ["expected a positive integer, got a string"]
    }
    for bad in (True, 30.5, 0, -3, float("inf"), float("nan"), 2**40, [], {}):
        errors = errors_of(wf(act("a", settings={"timeout_seconds": bad})))
        assert list(errors) == ["activities[0].settings.timeout_seconds"], bad


def test_cache_spellings() -> None:
    assert settings_of(cache=True).cache == CacheSettings(enabled=True)
    assert settings_of(cache=False, cache_ttl=5).cache == CacheSettings(
        enabled=False, ttl_seconds=5
    )
    assert settings_of(cache=True, cache_ttl=0).cache == CacheSettings(enabled=True, ttl_seconds=0)
    sdk = settings_of(cache={"enabled": True, "ttl": 60, "key": "{{ INPUT.q }}"}).cache
    assert sdk == CacheSettings(enabled=True, ttl_seconds=60, key="{{ INPUT.q }}")
    assert settings_of(cache={"ttl": 60}).cache == CacheSettings(enabled=True, ttl_seconds=60)
    assert settings_of(cache={"ttl": 60}, cache_ttl=5).cache.ttl_seconds == 60
    assert settings_of(cache={"enabled": False}, cache_ttl=5).cache.ttl_seconds == 5


def test_cache_errors() -> None:
    assert errors_of(wf(act("a", settings={"cache": "yes", "cache_ttl": -1}))) == {
        "activities[0].settings.cache_ttl": ["expected an integer >= 0 up to 2147483647, got -1"],
        "activities[0].settings.cache": ["expected true, false or an object, got a string"],
    }
    errors = errors_of(wf(act("a", settings={"cache": {"enabled": 1, "ttl": "x", "key": 3}})))
    assert sorted(errors) == [
        "activities[0].settings.cache.enabled",
        "activities[0].settings.cache.key",
        "activities[0].settings.cache.ttl",
    ]


@pytest.mark.parametrize(("delay", "text"), [(30, "30s"), (1.5, "1.5s"), (0, "0s"), ("5m", "5m")])
def test_delay(delay: Any, text: str) -> None:
    assert settings_of(delay=delay).delay == text


def test_delay_errors() -> None:
    for bad in (-1, True, [], float("inf")):
        assert list(errors_of(wf(act("a", settings={"delay": bad})))) == [
            "activities[0].settings.delay"
        ]


def test_scheduled_for_as_unquoted_yaml_timestamp() -> None:
    text = (
        "name: w\nactivities:\n"
        "- {key: a, activity_name: e, settings: {scheduled_for: 2030-01-02T03:04:05Z}}\n"
    )
    assert (
        load_definition(text).activities[0].settings.scheduled_for == "2030-01-02T03:04:05.000000Z"
    )
    text = text.replace("2030-01-02T03:04:05Z", "2030-01-02")
    assert load_definition(text).activities[0].settings.scheduled_for == "2030-01-02"


def test_wait_for_signal() -> None:
    assert settings_of(wait_for_signal={"event_name": "approval"}).wait_for_signal == SignalWait(
        event_name="approval"
    )
    signal = settings_of(
        wait_for_signal={"event_name": "ok", "timeout_seconds": 5, "on_timeout": "skip"}
    ).wait_for_signal
    assert signal == SignalWait(event_name="ok", timeout_seconds=5.0, on_timeout="skip")
    errors = errors_of(
        wf(act("a", settings={"wait_for_signal": {"timeout_seconds": 0, "on_timeout": "retry"}}))
    )
    prefix = "activities[0].settings.wait_for_signal"
    assert errors == {
        f"{prefix}.event_name": ["is required"],
        f"{prefix}.timeout_seconds": ["expected a positive number up to 2147483647, got 0"],
        f"{prefix}.on_timeout": ["must be one of continue, fail, skip, got 'retry'"],
    }
    assert list(errors_of(wf(act("a", settings={"wait_for_signal": "approval"})))) == [f"{prefix}"]


def test_iteration_options_in_settings_and_at_activity_level() -> None:
    a = load_definition(
        wf(act("a", settings={"iteration_scoped": True, "iteration_limit": 5}))
    ).activities[0]
    assert (a.iteration_scoped, a.iteration_limit) == (True, 5)
    a = load_definition(
        wf(
            act(
                "a",
                iteration_scoped=False,
                iteration_limit=7,
                settings={"iteration_scoped": True, "iteration_limit": 5},
            )
        )
    ).activities[0]
    assert (a.iteration_scoped, a.iteration_limit) == (False, 7)
    errors = errors_of(wf(act("a", iteration_limit=0, settings={"iteration_scoped": "yes"})))
    assert sorted(errors) == [
        "activities[0].iteration_limit",
        "activities[0].settings.iteration_scoped",
    ]


def test_outputs() -> None:
    a = load_definition(
        wf(
            act(
                "a",
                outputs=[
                    "text",
                    {"name": "report", "type": "file"},
                    {"name": "dir", "output_type": "folder"},
                    {"name": "v"},
                ],
            )
        )
    ).activities[0]
    assert a.outputs == (
        OutputDefinition(name="text"),
        OutputDefinition(name="report", type=OutputType.FILE),
        OutputDefinition(name="dir", type=OutputType.FOLDER),
        OutputDefinition(name="v", type=OutputType.VALUE),
    )


def test_output_errors() -> None:
    errors = errors_of(
        wf(
            act(
                "a",
                outputs=["x", "x", "bad name", 3, {"type": "blob"}, {"name": "y", "type": "blob"}],
            )
        )
    )
    assert errors == {
        "activities[0].outputs[3]": ["expected a name or an object, got a number"],
        "activities[0].outputs[4].name": ["is required"],
        "activities[0].outputs[4].type": ["must be one of file, folder, value, got 'blob'"],
        "activities[0].outputs[5].type": ["must be one of file, folder, value, got 'blob'"],
        "activities[0].outputs[1].name": ["duplicate output 'x'"],
        "activities[0].outputs[2].name": [
            "may contain only letters, digits, '_' and '-', got 'bad name'"
        ],
    }
    assert errors_of(wf(act("a", outputs="x"))) == {
        "activities[0].outputs": ["expected an array, got a string"]
    }


def test_parameters() -> None:
    text = (
        "name: w\nactivities:\n- key: a\n  activity_name: e\n"
        "  parameters: {when: 2030-01-02, n: 1, codes: {200: ok}, nested: [{x: [1, 2.5, null]}]}\n"
    )
    a = load_definition(text).activities[0]
    assert a.parameters == {
        "when": "2030-01-02",
        "n": 1,
        "codes": {"200": "ok"},
        "nested": [{"x": [1, 2.5, None]}],
    }


def test_parameter_errors() -> None:
    assert errors_of(wf(act("a", parameters=["x"]))) == {
        "activities[0].parameters": ["expected an object, got an array"]
    }
    text = (
        "name: w\nactivities:\n- {key: a, activity_name: e, parameters: {x: {yes: 1}, y: [.nan]}}\n"
    )
    assert errors_of(text) == {
        "activities[0].parameters.x": ["object keys must be strings, got a boolean (True)"],
        "activities[0].parameters.y[0]": ["expected a finite number, got nan"],
    }
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    errors = errors_of(wf(act("a", parameters={"deep": deep})))
    assert list(errors) == ["activities[0].parameters" + ".deep" + "[0]" * 100]
    errors = errors_of(wf(act("a", parameters={"big": 2**70, "s": "\ud800"})))
    assert errors == {
        "activities[0].parameters.big": ["integer out of range (must fit in 64 bits)"],
        "activities[0].parameters.s": ["contains characters that are not valid Unicode"],
    }


def test_yaml_aliases_cannot_blow_up() -> None:
    lines = ["name: w", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("activities: [{key: a, activity_name: e, parameters: {bomb: *a8}}]")
    errors = errors_of("\n".join(lines))  # 10**9 strings once expanded
    ((path, messages),) = errors.items()
    assert path.startswith("activities[0].parameters.bomb[")
    assert messages == ["too large: more than 1000000 values"]


def test_identifiers_and_required_fields() -> None:
    errors = errors_of(
        {"name": "no spaces", "activities": [{"worker": "", "activity_name": "a.b"}]}
    )
    assert errors == {
        "activities[0].key": ["is required"],
        "name": ["may contain only letters, digits, '_' and '-', got 'no spaces'"],
        "activities[0].activity_name": ["may contain only letters, digits, '_' and '-', got 'a.b'"],
        "activities[0].worker": ["may contain only letters, digits, '_' and '-', got ''"],
    }
    assert errors_of({"activities": [{"key": "a"}]}) == {
        "name": ["is required"],
        "activities[0].activity_name": ["is required"],
    }
    assert errors_of({"name": "w"}) == {"activities": ["is required"]}
    assert errors_of({"name": "w", "activities": []}) == {
        "activities": ["must contain at least one activity"]
    }
    assert errors_of({"name": 5, "activities": {"key": "a"}, "description": 3}) == {
        "name": ["expected a string, got a number"],
        "description": ["expected a string, got a number"],
        "activities": ["expected an array, got an object"],
    }


def test_name_with_trailing_newline_is_not_an_identifier() -> None:
    assert list(errors_of(wf(act("a\n")))) == ["activities[0].key"]


def test_activity_that_is_not_a_mapping() -> None:
    assert errors_of(wf(act("a"), "b", act("c", "a"))) == {
        "activities[1]": ["expected an object, got a string"]
    }


def test_yaml_syntax_error_has_line_and_column() -> None:
    errors = errors_of("name: w\nactivities:\n  - key: [a\n")
    assert list(errors) == ["definition"]
    (message,) = errors["definition"]
    assert message.startswith("invalid YAML at line 4, column 1")
    assert "line 3" not in message or "column" in message


@pytest.mark.parametrize(
    "text",
    [
        "name: w\n\tactivities: []\n",
        "{",
        "a: 1\n---\nb: 2\n",
        "x: !!python/object:os.system ls",
        "date: 2024-13-45",
        "x: !!float abc",
        "\x00",
        b"\xff\xfe\x00\xd8",
        "[" * 5000,
    ],
)
def test_unparseable_text_is_reported_under_definition(text: str | bytes) -> None:
    errors = errors_of(text)
    assert list(errors) == ["definition"]
    assert errors["definition"][0].startswith("invalid YAML")


@pytest.mark.parametrize(
    ("text", "kind"), [("", "null"), ("[1]", "an array"), ("hello", "a string")]
)
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    assert errors_of(text) == {
        "definition": [f"expected an object (mapping) at the top level, got {kind}"]
    }


def test_definition_from_dict_rejects_non_mappings() -> None:
    with pytest.raises(DefinitionError) as info:
        definition_from_dict([1, 2])  # type: ignore[arg-type]
    assert list(info.value.field_errors) == ["definition"]


def test_many_problems_in_one_error() -> None:
    source = {
        "name": "bad name",
        "activities": [
            act("a", "zz", settings={"timeout_seconds": "abc", "delay": "5x"}),
            act("a", activity_name=3),
            5,
            act("INPUT", dependency_of=["nope"], parameters={"x": "{{ }"}),
        ],
    }
    with pytest.raises(DefinitionError) as info:
        load_definition(source)
    exc = info.value
    assert isinstance(exc, ValidationFailed)
    assert isinstance(exc, ValueError)
    assert exc.field_errors == {
        "activities[0].settings.timeout_seconds": ["expected a positive integer, got a string"],
        "activities[1].activity_name": ["expected a string, got a number"],
        "activities[2]": ["expected an object, got a number"],
        "activities[3].dependency_of[0]": ["unknown activity 'nope'"],
        "name": ["may contain only letters, digits, '_' and '-', got 'bad name'"],
        "activities[1].key": ["duplicate key 'a' (already used by activities[0])"],
        "activities[3].key": [
            "'INPUT' is reserved for templates (ACTIVITY, INPUT, SECRET, SIGNAL, WORKFLOW)"
        ],
        "activities[0].settings.delay": [exc.field_errors["activities[0].settings.delay"][0]],
        "activities[3].parameters.x": ["syntax error: unexpected '}' in '{{ }'"],
        "activities[0].depends_on[0]": ["unknown activity 'zz'"],
    }
    assert "invalid duration '5x'" in exc.field_errors["activities[0].settings.delay"][0]
    assert exc.message.startswith("invalid workflow definition: ")
    assert exc.message.endswith("(and 9 more)")


# --- dependencies -----------------------------------------------------------------


def test_dependency_spellings() -> None:
    d = load_definition(
        wf(
            act("a"),
            act("b"),
            act(
                "c",
                "a",
                {"activity_key": "b", "conditions": "{{ b.ok }}"},
                is_back_edge=True,
            ),
            act(
                "d",
                {
                    "activity_key": "c",
                    "conditions": ["{{ c.x }}", "{{ c.y }}"],
                    "is_back_edge": True,
                },
            ),
            act("e", {"activity_key": "d", "conditions": []}),
        )
    )
    assert d.activity("c").depends_on == (
        Dependency(activity_key="a"),
        Dependency(activity_key="b", conditions=("{{ b.ok }}",)),
    )
    assert d.activity("d").depends_on == (
        Dependency(activity_key="c", conditions=("{{ c.x }}", "{{ c.y }}")),
    )
    assert d.activity("e").depends_on == (Dependency(activity_key="d"),)


def test_sdk_condition_spellings_are_normalized() -> None:
    d = load_definition(
        wf(
            act("a"),
            act(
                "b",
                {
                    "activity_key": "a",
                    "conditions": [
                        "{{(a.n > 1) && (a.ok == true)}}",
                        "{{ a.status == 'succeeded' }}",
                        "{{ !(a.x) || a.y != 2 }}",
                    ],
                },
            ),
        )
    )
    conditions = d.activity("b").depends_on[0].conditions
    assert "&&" not in conditions[0]
    assert " and " in conditions[0]
    assert conditions[1] == "{{ a.status == 'completed' }}"
    assert "||" not in conditions[2]
    assert "!=" in conditions[2]
    assert " not " in conditions[2]


def test_dependency_of_is_folded_into_depends_on() -> None:
    reverse = load_definition(
        wf(
            act("a", dependency_of=["c", {"activity_key": "b", "conditions": ["{{ a.ok }}"]}]),
            act("b"),
            act("c"),
        )
    )
    forward = load_definition(
        wf(act("a"), act("b", {"activity_key": "a", "conditions": ["{{ a.ok }}"]}), act("c", "a"))
    )
    assert reverse == forward


def test_duplicate_edges_are_merged_with_conditions_concatenated() -> None:
    d = load_definition(
        wf(
            act("a", dependency_of=[{"activity_key": "b", "conditions": ["{{ x }}", "{{ z }}"]}]),
            act(
                "b",
                {"activity_key": "a", "conditions": ["{{ x }}", "{{ y }}"]},
                "a",
            ),
        )
    )
    assert d.activity("b").depends_on == (
        Dependency(activity_key="a", conditions=("{{ x }}", "{{ y }}", "{{ z }}")),
    )


def test_depends_on_is_in_declared_order_of_the_dependencies() -> None:
    d = load_definition(wf(act("a"), act("b"), act("c", "b", "a")))
    assert [dep.activity_key for dep in d.activity("c").depends_on] == ["a", "b"]


def test_dependency_errors_keep_their_declared_paths() -> None:
    errors = errors_of(
        wf(
            act("a"),
            act(
                "b",
                "a",
                3,
                {"conditions": ["{{ a }}"]},
                {"activity_key": "a", "conditions": ["{{ ok }}", 5, "{{ (( }}"]},
                "ghost",
                dependency_of=["ghost2", 7],
            ),
            act("c", depends_on="a"),
        )
    )
    assert errors == {
        "activities[1].depends_on[1]": ["expected an activity key or an object, got a number"],
        "activities[1].depends_on[2].activity_key": ["is required"],
        "activities[1].depends_on[3].conditions[1]": ["expected a condition string, got a number"],
        "activities[1].dependency_of[1]": ["expected an activity key or an object, got a number"],
        "activities[2].depends_on": ["expected an array, got a string"],
        "activities[1].dependency_of[0]": ["unknown activity 'ghost2'"],
        "activities[1].depends_on[3].conditions[2]": [
            errors["activities[1].depends_on[3].conditions[2]"][0]
        ],
        "activities[1].depends_on[4]": ["unknown activity 'ghost'"],
    }
    assert errors["activities[1].depends_on[3].conditions[2]"][0].startswith("syntax error")


# --- the kruxiaflow SDK's output --------------------------------------------------


def _sdk_workflow() -> Any:
    from kruxiaflow import Activity, Dependency, Workflow
    from kruxiaflow.models import (
        ActivityOutputDefinition,
        ActivitySettings,
        BudgetSettings,
        CacheSettings,
        OutputType,
        RetrySettings,
    )

    fetch = Activity(
        key="fetch",
        activity_name="http_request",
        parameters={"url": "https://example.com", "method": "GET"},
        outputs=["response", ActivityOutputDefinition(name="body", output_type=OutputType.FILE)],
        settings=ActivitySettings(
            timeout_seconds=30,
            retry=RetrySettings(max_attempts=3, base_seconds=1.5, factor=3, max_seconds=60),
            cache=CacheSettings(ttl=600, key="{{ INPUT.url }}"),
            budget=BudgetSettings(limit=0.25),
        ),
    )
    check = Activity(
        key="check",
        activity_name="echo",
        parameters={"status": fetch["response.status"]},
        depends_on=[Dependency.on(fetch, (fetch["response.status"] == 200) & (fetch["ok"]))],
        settings=ActivitySettings(delay="5m", iteration_scoped=True, streaming=False),
    )
    handle = Activity(
        key="handle",
        worker="py-std",
        activity_name="script",
        depends_on=[Dependency.on(fetch, fetch.failed), Dependency.on(check, check.succeeded)],
    )
    return Workflow(name="sdk_workflow", activities=[fetch, check, handle])


def test_sdk_yaml_and_json_forms_load_the_same() -> None:
    workflow = _sdk_workflow()
    from_yaml = load_definition(workflow.to_yaml())
    assert load_definition(workflow.to_dict()) == from_yaml
    assert load_definition(json.dumps(workflow.to_json())) == from_yaml
    fetch, check, handle = from_yaml.activities
    assert fetch.outputs == (
        OutputDefinition(name="response"),
        OutputDefinition(name="body", type=OutputType.FILE),
    )
    assert fetch.settings.retry == RetryPolicy(
        max_attempts=3, base_seconds=1.5, factor=3.0, max_seconds=60.0
    )
    assert fetch.settings.cache == CacheSettings(
        enabled=True, ttl_seconds=600, key="{{ INPUT.url }}"
    )
    assert fetch.settings.budget == BudgetSettings(limit=decimal.Decimal("0.25"))
    assert check.parameters == {"status": "{{fetch.response.status}}"}
    assert check.iteration_scoped is True
    assert check.settings.delay == "5m"
    (condition,) = check.depends_on[0].conditions
    assert "&&" not in condition
    assert handle.depends_on == (
        Dependency(activity_key="fetch", conditions=("{{ fetch.status == 'failed' }}",)),
        Dependency(activity_key="check", conditions=("{{ check.status == 'completed' }}",)),
    )


def test_result_is_frozen_model() -> None:
    d = load_definition(wf(act("a")))
    assert isinstance(d, WorkflowDefinition)
    with pytest.raises(AttributeError):
        d.name = "x"  # type: ignore[misc]
    assert isinstance(dt.datetime.now(), dt.datetime)
