"""Fuzzing: any input gives a definition or a DefinitionError, never anything else.

Definitions that load must survive the rest of the pipeline: the normalized
form loads back to an equal definition with the same hash, and the graph of
the definition is consistent.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kflow.errors import DefinitionError
from kflow.model import (
    DefinitionGraph,
    WorkflowDefinition,
    content_hash,
    load_definition,
    normalized_dict,
    validate_definition,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.decimals(allow_nan=False).map(str)
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)

KEYS = ["a", "b", "c", "d", "INPUT", "bad key", ""]
CONDITIONS = [
    "{{ a.status == 'failed' }}",
    "{{ a.ok && !b.ok }}",
    "{{ b.status == 'succeeded' }}",
    "a.x > 1",
    "{{ broken",
    "{% if %}",
    "",
]


def dependency() -> st.SearchStrategy[Any]:
    return st.sampled_from(KEYS) | st.fixed_dictionaries(
        {"activity_key": st.sampled_from(KEYS)},
        optional={
            "conditions": st.sampled_from(CONDITIONS)
            | st.lists(st.sampled_from(CONDITIONS), max_size=3)
            | json_like,
            "is_back_edge": st.booleans(),
        },
    )


def number() -> st.SearchStrategy[Any]:
    return st.integers(-3, 500) | st.floats(-1, 1e4) | st.sampled_from([0, 1, 2.5, True, "5", None])


activity_settings = st.fixed_dictionaries(
    {},
    optional={
        "timeout_seconds": number(),
        "retry": st.fixed_dictionaries(
            {},
            optional={
                "max_attempts": number(),
                "strategy": st.sampled_from(["exponential", "fixed", "constant", "linear", 3]),
                "base_seconds": number(),
                "factor": number(),
                "max_seconds": number(),
            },
        )
        | json_like,
        "budget": st.fixed_dictionaries(
            {},
            optional={
                "limit": number() | st.sampled_from(["0.1", "1E-7", "x"]),
                "action": st.sampled_from(["abort", "continue", "stop"]),
            },
        ),
        "cache": st.booleans()
        | st.fixed_dictionaries(
            {}, optional={"enabled": st.booleans(), "ttl": number(), "key": st.text(max_size=8)}
        ),
        "cache_ttl": number(),
        "delay": st.sampled_from(["5m", "1h30m", "{{ INPUT.d }}", "soon", "{{ x", 30, -1]),
        "scheduled_for": st.sampled_from(["2030-01-01T00:00:00Z", "{{ INPUT.t }}", "later"]),
        "wait_for_signal": st.fixed_dictionaries(
            {},
            optional={
                "event_name": st.sampled_from(["approval", "", "a b", 5]),
                "timeout_seconds": number(),
                "on_timeout": st.sampled_from(["fail", "continue", "skip", "boom"]),
            },
        ),
        "iteration_scoped": st.booleans() | number(),
        "iteration_limit": number(),
    },
)

activity = st.fixed_dictionaries(
    {
        "key": st.sampled_from(KEYS),
        "activity_name": st.sampled_from(["echo", "http_request", "bad name", 5]),
    },
    optional={
        "worker": st.sampled_from(["std", "py-std", "", None]),
        "parameters": st.dictionaries(st.text(max_size=5), json_like, max_size=3)
        | st.dictionaries(
            st.sampled_from(["u", "v"]), st.sampled_from(["{{ INPUT.u }}", "{{ bad", "x"])
        ),
        "outputs": st.lists(
            st.sampled_from(["out", "res", "bad name"])
            | st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["f", "g"]),
                    "type": st.sampled_from(["value", "file", "folder", "x"]),
                }
            ),
            max_size=3,
        ),
        "depends_on": st.lists(dependency(), max_size=3),
        "dependency_of": st.lists(dependency(), max_size=2),
        "settings": activity_settings,
        "iteration_scoped": st.booleans(),
        "iteration_limit": number(),
    },
)

definitions = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["wf", "my-flow_1", "bad name"]),
        "activities": st.lists(activity, min_size=1, max_size=5),
    },
    optional={
        "description": st.text(max_size=10),
        "settings": st.fixed_dictionaries(
            {},
            optional={
                "timeout": number(),
                "budget": st.fixed_dictionaries({"limit": number()}),
                "max_retries": json_like,
            },
        ),
    },
)


def check_pipeline(d: WorkflowDefinition) -> None:
    form = normalized_dict(d)
    text = json.dumps(form, allow_nan=False)
    again = load_definition(text)
    assert again == d
    assert content_hash(again) == content_hash(d)
    assert validate_definition(d) == d  # an explicit limit survives normalization
    graph = DefinitionGraph(d)
    assert sorted(graph.topological_order()) == sorted(d.keys)
    for source, target in graph.back_edges():
        body = graph.loop_body(target, source)
        assert {source, target} <= body
        assert all(d.activity(k).is_loop_activity for k in body)


def attempt(source: Any) -> WorkflowDefinition | None:
    try:
        return load_definition(source)
    except DefinitionError as exc:
        errors = exc.field_errors
    assert errors
    assert all(isinstance(m, str) for ms in errors.values() for m in ms)
    return None


@FUZZ
@given(definitions)
def test_structured_definitions(data: dict[str, Any]) -> None:
    d = attempt(data)
    if d is not None:
        check_pipeline(d)


@FUZZ
@given(json_like)
def test_arbitrary_json_like_values(data: Any) -> None:
    attempt(data)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["name", "activities", "settings", "description"]), json_like)
)
def test_arbitrary_values_in_known_fields(data: dict[str, Any]) -> None:
    attempt(data)


@FUZZ
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "key",
                    "activity_name",
                    "worker",
                    "parameters",
                    "outputs",
                    "depends_on",
                    "dependency_of",
                    "settings",
                    "iteration_scoped",
                    "iteration_limit",
                ]
            ),
            json_like,
        ),
        max_size=4,
    )
)
def test_arbitrary_values_in_activity_fields(items: list[dict[str, Any]]) -> None:
    d = attempt({"name": "wf", "activities": items})
    if d is not None:
        check_pipeline(d)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text(text: str | bytes) -> None:
    attempt(text)


@FUZZ
@given(definitions, st.data())
def test_mutated_yaml_text(data: dict[str, Any], draw: st.DataObject) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    position = draw.draw(st.integers(0, len(text)))
    junk = draw.draw(st.text(alphabet=":-[]{}&*!|>'\"#%@ \n\t", max_size=3))
    d = attempt(text[:position] + junk + text[position + len(junk) :])
    if d is not None:
        check_pipeline(d)


GOOD_CONDITIONS = ["{{ x.ok }}", "{{ a.ok && !b.ok }}", "{{ y.status == 'succeeded' }}", "z.n > 1"]


@st.composite
def valid_definitions(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid definitions (so the pipeline after loading gets exercised)."""
    keys = draw(
        st.lists(
            st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=6, unique=True
        )
    )
    activities = []
    for key in keys:
        deps = draw(
            st.lists(
                st.sampled_from(keys)
                | st.builds(
                    lambda k, c: {"activity_key": k, "conditions": c},
                    st.sampled_from(keys),
                    st.lists(st.sampled_from(GOOD_CONDITIONS), max_size=2)
                    | st.sampled_from(GOOD_CONDITIONS),
                ),
                max_size=3,
            )
        )
        entry: dict[str, Any] = {"key": key, "activity_name": "echo", "depends_on": deps}
        if draw(st.booleans()):
            entry["dependency_of"] = draw(st.lists(st.sampled_from(keys), max_size=2))
        if draw(st.booleans()):
            entry["iteration_limit"] = draw(st.integers(1, 200))
        entry["parameters"] = draw(st.dictionaries(st.text(max_size=5), json_like, max_size=3))
        entry["outputs"] = draw(st.lists(st.sampled_from(["o1", "o2"]), unique=True))
        entry["settings"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "timeout_seconds": st.integers(1, 1000),
                    "retry": st.fixed_dictionaries(
                        {},
                        optional={
                            "max_attempts": st.integers(1, 10),
                            "strategy": st.sampled_from(["exponential", "fixed"]),
                            "base_seconds": st.floats(0.1, 100),
                            "factor": st.floats(1, 10),
                            "max_seconds": st.floats(0.1, 1e5),
                        },
                    ),
                    "budget": st.fixed_dictionaries(
                        {"limit": st.decimals(0, 1000, places=4).map(str)},
                        optional={"action": st.sampled_from(["abort", "continue"])},
                    ),
                    "cache": st.booleans() | st.fixed_dictionaries({"ttl": st.integers(0, 100)}),
                    "delay": st.sampled_from(["5m", "1h30m", "{{ INPUT.d }}", 30, 1.5]),
                    "wait_for_signal": st.fixed_dictionaries(
                        {"event_name": st.sampled_from(["go", "order.ok"])},
                        optional={"on_timeout": st.sampled_from(["fail", "skip"])},
                    ),
                    "iteration_scoped": st.booleans(),
                },
            )
        )
        activities.append(entry)
    return {"name": "wf", "activities": activities}


@FUZZ
@given(valid_definitions())
def test_mostly_valid_definitions(data: dict[str, Any]) -> None:
    d = attempt(data)
    if d is not None:
        check_pipeline(d)
        assert load_definition(yaml.safe_dump(data)) == d
