"""Validation rules: keys, references, delay/scheduled_for, templates, loops."""

from __future__ import annotations

from typing import Any

import pytest

from kflow.errors import DefinitionError
from kflow.model import (
    ActivityDefinition,
    ActivitySettings,
    CacheSettings,
    Dependency,
    SignalWait,
    WorkflowDefinition,
    load_definition,
    validate_definition,
)
from kflow.model.validate import SourceMap

NO_EXIT = "has no exit (add a condition to the back-edge or an iteration_limit)"


def act(key: str, *depends_on: Any, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"key": key, "activity_name": "echo", **fields}
    if depends_on:
        data["depends_on"] = list(depends_on)
    return data


def wf(*activities: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "activities": list(activities), **fields}


def on(key: str, *conditions: str) -> dict[str, Any]:
    return {"activity_key": key, "conditions": list(conditions)}


def errors_of(source: Any) -> dict[str, list[str]]:
    with pytest.raises(DefinitionError) as info:
        load_definition(source)
    return info.value.field_errors


def back_edges(d: WorkflowDefinition) -> set[tuple[str, str]]:
    return {
        (dep.activity_key, a.key) for a in d.activities for dep in a.depends_on if dep.is_back_edge
    }


def loop_keys(d: WorkflowDefinition) -> set[str]:
    return {a.key for a in d.activities if a.is_loop_activity}


# --- keys and references ------------------------------------------------------------


def test_duplicate_keys_are_reported_at_each_repeat() -> None:
    errors = errors_of(wf(act("a"), act("b"), act("a"), act("a")))
    assert errors == {
        "activities[2].key": ["duplicate key 'a' (already used by activities[0])"],
        "activities[3].key": ["duplicate key 'a' (already used by activities[0])"],
    }


@pytest.mark.parametrize("key", ["INPUT", "SECRET", "WORKFLOW", "ACTIVITY", "SIGNAL"])
def test_reserved_names(key: str) -> None:
    (message,) = errors_of(wf(act(key)))["activities[0].key"]
    assert message.startswith(f"{key!r} is reserved")


def test_lowercase_reserved_names_are_fine() -> None:
    load_definition(wf(act("input"), act("signal")))


def test_unknown_reference_names_the_key() -> None:
    assert errors_of(wf(act("a"), act("b", "a", on("nope", "{{ x }}")))) == {
        "activities[1].depends_on[1]": ["unknown activity 'nope'"]
    }


def test_signal_event_name() -> None:
    ok = wf(act("a", settings={"wait_for_signal": {"event_name": "order.approved:v2"}}))
    load_definition(ok)
    errors = errors_of(wf(act("a", settings={"wait_for_signal": {"event_name": "has space"}})))
    assert list(errors) == ["activities[0].settings.wait_for_signal.event_name"]


def test_unreachable_activities_are_fine() -> None:
    d = load_definition(wf(act("a"), act("b", on("a", "{{ false }}")), act("c", "b")))
    assert not back_edges(d)


# --- delay and scheduled_for ----------------------------------------------------------


def test_delay_and_scheduled_for_exclude_each_other() -> None:
    errors = errors_of(
        wf(act("a", settings={"delay": "5m", "scheduled_for": "2030-01-01T00:00:00Z"}))
    )
    assert errors == {"activities[0].settings": ["set either delay or scheduled_for, not both"]}


def test_delay_must_parse_unless_templated() -> None:
    load_definition(wf(act("a", settings={"delay": "{{ INPUT.wait }}"})))
    load_definition(wf(act("a", settings={"delay": "{{ INPUT.minutes }}m"})))
    errors = errors_of(wf(act("a", settings={"delay": "soon"})))
    (message,) = errors["activities[0].settings.delay"]
    assert "invalid duration 'soon'" in message
    assert "ms, s, m" in message
    errors = errors_of(wf(act("a", settings={"delay": "{{ INPUT. }}"})))
    assert errors["activities[0].settings.delay"][0].startswith("syntax error")


def test_scheduled_for_must_parse_unless_templated() -> None:
    for ok in ("2030-01-31T09:00:00Z", "2030-01-31T09:00:00+02:00", "{{ INPUT.when }}"):
        d = load_definition(wf(act("a", settings={"scheduled_for": ok})))
        assert d.activities[0].settings.scheduled_for == ok
    assert errors_of(wf(act("a", settings={"scheduled_for": "next tuesday"}))) == {
        "activities[0].settings.scheduled_for": [
            "expected an RFC 3339 timestamp (2030-01-31T09:00:00Z) or a template"
        ]
    }
    errors = errors_of(wf(act("a", settings={"scheduled_for": "{% if %}"})))
    assert list(errors) == ["activities[0].settings.scheduled_for"]


# --- templates -----------------------------------------------------------------------------


def test_template_errors_in_parameters_have_their_path() -> None:
    errors = errors_of(
        wf(
            act(
                "a",
                parameters={
                    "ok": "{{ INPUT.x }}",
                    "bad": "{{ INPUT.x ",
                    "deep": {"list": ["fine", "{% for %}"]},
                },
            )
        )
    )
    assert sorted(errors) == [
        "activities[0].parameters.bad",
        "activities[0].parameters.deep.list[1]",
    ]


def test_condition_errors_have_their_declared_path() -> None:
    errors = errors_of(
        wf(
            act("a"),
            act("b", on("a", "{{ a.ok }}", "{{ a. }}")),
            act("c", {"activity_key": "a", "conditions": "{{ ) }}"}),
            act("d", dependency_of=[on("a", "{{ ((( }}")]),
        )
    )
    assert sorted(errors) == [
        "activities[1].depends_on[0].conditions[1]",
        "activities[2].depends_on[0].conditions",
        "activities[3].dependency_of[0].conditions[0]",
    ]


def test_bare_conditions_are_accepted() -> None:
    load_definition(wf(act("a"), act("b", on("a", "a.status == 'failed'"))))


def test_cache_key_template_is_checked() -> None:
    errors = errors_of(wf(act("a", settings={"cache": {"ttl": 5, "key": "{{ INPUT. }}"}})))
    assert list(errors) == ["activities[0].settings.cache.key"]


def test_pathological_templates_are_reported_not_raised() -> None:
    errors = errors_of(
        wf(
            act(
                "a",
                parameters={
                    "deep": "{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}",
                    "big": "{{ " + "9" * 5000 + " }}",
                },
            )
        )
    )
    assert sorted(errors) == ["activities[0].parameters.big", "activities[0].parameters.deep"]


# --- loops -------------------------------------------------------------------------------


def test_self_loop_with_condition() -> None:
    d = load_definition(wf(act("poll", on("poll", "{{ poll.status != 'done' }}"))))
    assert back_edges(d) == {("poll", "poll")}
    assert loop_keys(d) == {"poll"}


def test_self_loop_without_exit_is_rejected() -> None:
    assert errors_of(wf(act("a"), act("poll", "a", "poll"))) == {
        "activities[1].depends_on[1]": [f"cycle poll -> poll {NO_EXIT}"]
    }


def test_self_loop_with_iteration_limit() -> None:
    d = load_definition(wf(act("poll", "poll", iteration_limit=3)))
    assert back_edges(d) == {("poll", "poll")}
    assert d.activities[0].iteration_limit == 3


def test_two_node_loop_with_conditioned_back_edge() -> None:
    d = load_definition(
        wf(
            act("start"),
            act("draft", "start", on("review", "{{ not review.approved }}")),
            act("review", "draft"),
            act("publish", on("review", "{{ review.approved }}")),
        )
    )
    assert back_edges(d) == {("review", "draft")}
    assert loop_keys(d) == {"draft", "review"}
    draft = d.activity("draft")
    assert [dep.is_back_edge for dep in draft.depends_on] == [False, True]


def test_unconditioned_cycle_is_rejected_with_its_path() -> None:
    errors = errors_of(wf(act("a", "c"), act("b", "a"), act("c", "b")))
    assert errors == {"activities[0].depends_on[0]": [f"cycle a -> b -> c -> a {NO_EXIT}"]}


def test_cycle_reached_from_a_root_names_the_loop_target() -> None:
    errors = errors_of(wf(act("x", "c"), act("a", "x"), act("b", "a"), act("c", "b"), act("r")))
    # no root leads in: the search starts at r, then x (first declared)
    assert errors == {"activities[0].depends_on[0]": [f"cycle x -> a -> b -> c -> x {NO_EXIT}"]}
    errors = errors_of(wf(act("r"), act("b", "r", "c"), act("c", "b")))
    assert errors == {"activities[1].depends_on[1]": [f"cycle b -> c -> b {NO_EXIT}"]}


def test_which_edge_closes_a_loop_follows_declared_order() -> None:
    # Declared first (and no root), d is where the search starts, so the
    # unconditioned b -> d and c -> d close the cycles, not the conditioned d -> a.
    errors = errors_of(
        wf(act("d", "b", "c"), act("c", "a"), act("b", "a"), act("a", on("d", "{{ again }}")))
    )
    assert errors == {
        "activities[0].depends_on[0]": [f"cycle d -> a -> b -> d {NO_EXIT}"],
        "activities[0].depends_on[1]": [f"cycle d -> a -> c -> d {NO_EXIT}"],
    }
    d = load_definition(
        wf(act("a", on("d", "{{ again }}")), act("c", "a"), act("b", "a"), act("d", "b", "c"))
    )
    assert back_edges(d) == {("d", "a")}


def test_unconditioned_cycle_with_iteration_limit_on_the_target() -> None:
    d = load_definition(wf(act("r"), act("b", "r", "c", iteration_limit=100), act("c", "b")))
    assert back_edges(d) == {("c", "b")}
    assert loop_keys(d) == {"b", "c"}
    d = load_definition(
        wf(act("r"), act("b", "r", "c", settings={"iteration_limit": 5}), act("c", "b"))
    )
    assert d.activity("b").iteration_limit == 5


def test_iteration_limit_elsewhere_on_the_cycle_is_no_exit() -> None:
    errors = errors_of(wf(act("r"), act("b", "r", "c"), act("c", "b", iteration_limit=5)))
    assert errors == {"activities[1].depends_on[1]": [f"cycle b -> c -> b {NO_EXIT}"]}


def test_back_edge_found_through_dependency_of_is_reported_there() -> None:
    errors = errors_of(wf(act("r"), act("b", "r"), act("c", "b", dependency_of=["b"])))
    assert errors == {"activities[2].dependency_of[0]": [f"cycle b -> c -> b {NO_EXIT}"]}


def test_user_back_edge_and_loop_marks_are_ignored() -> None:
    d = load_definition(
        wf(
            act("a", is_loop_activity=True),
            act("b", {"activity_key": "a", "is_back_edge": True}),
        )
    )
    assert not back_edges(d)
    assert not loop_keys(d)


def test_nested_loops() -> None:
    d = load_definition(
        wf(
            act("start"),
            act("outer", "start", on("check", "{{ check.again }}")),
            act("inner", "outer", on("inner", "{{ inner.more }}")),
            act("check", "inner"),
            act("end", on("check", "{{ not check.again }}")),
        )
    )
    assert back_edges(d) == {("check", "outer"), ("inner", "inner")}
    assert loop_keys(d) == {"outer", "inner", "check"}


def test_every_activity_on_any_cycle_is_marked() -> None:
    d = load_definition(
        wf(
            act("r"),
            act("a", "r", on("c", "{{ x }}")),
            act("b", "a", on("d", "{{ y }}")),
            act("c", "b"),
            act("d", "c"),
            act("e", "d"),
            act("f", "e", "a"),
        )
    )
    assert back_edges(d) == {("c", "a"), ("d", "b")}
    assert loop_keys(d) == {"a", "b", "c", "d"}


def test_long_chain_does_not_exhaust_the_stack() -> None:
    n = 5000
    acts = [act("k0")] + [act(f"k{i}", f"k{i - 1}") for i in range(1, n)]
    acts[0]["depends_on"] = [on(f"k{n - 1}", "{{ again }}")]
    d = load_definition(wf(*acts))
    assert back_edges(d) == {(f"k{n - 1}", "k0")}
    assert len(loop_keys(d)) == n


# --- validate_definition on a model built in Python ----------------------------------------


def test_validate_definition_marks_a_hand_built_model() -> None:
    d = WorkflowDefinition(
        name="wf",
        activities=(
            ActivityDefinition(key="a", activity_name="echo"),
            ActivityDefinition(
                key="b",
                activity_name="echo",
                depends_on=(
                    Dependency(activity_key="a"),
                    Dependency(activity_key="b", conditions=("{{ b.more }}",)),
                ),
            ),
        ),
    )
    marked = validate_definition(d)
    assert back_edges(marked) == {("b", "b")}
    assert loop_keys(marked) == {"b"}
    assert marked.activity("a") == d.activity("a")


def test_validate_definition_reports_with_model_paths() -> None:
    d = WorkflowDefinition(
        name="wf",
        activities=(
            ActivityDefinition(
                key="a",
                activity_name="echo",
                depends_on=(Dependency(activity_key="a"), Dependency(activity_key="zz")),
                settings=ActivitySettings(
                    delay="1x",
                    cache=CacheSettings(enabled=True, key="{{ ( }}"),
                    wait_for_signal=SignalWait(event_name=""),
                ),
            ),
            ActivityDefinition(
                key="b",
                activity_name="echo",
                iteration_limit=7,
                depends_on=(Dependency(activity_key="b"),),
            ),
        ),
    )
    with pytest.raises(DefinitionError) as info:
        validate_definition(d)
    assert sorted(info.value.field_errors) == [
        "activities[0].depends_on[0]",
        "activities[0].depends_on[1]",
        "activities[0].settings.cache.key",
        "activities[0].settings.delay",
        "activities[0].settings.wait_for_signal.event_name",
    ]
    assert info.value.field_errors["activities[0].depends_on[0]"] == [f"cycle a -> a {NO_EXIT}"]


def test_an_explicit_default_limit_stays_explicit_without_a_source_map() -> None:
    loaded = load_definition(wf(act("a", "a", iteration_limit=100)))
    assert loaded.activities[0].iteration_limit == 100
    assert validate_definition(loaded) == loaded
    implicit = SourceMap(explicit_iteration_limits=frozenset())
    with pytest.raises(DefinitionError):
        validate_definition(loaded, source_map=implicit)
