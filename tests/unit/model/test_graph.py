"""DefinitionGraph: dependents, forward/back dependencies, roots, loop bodies, order."""

from __future__ import annotations

from typing import Any

import pytest

from kflow.model import (
    ActivityDefinition,
    DefinitionGraph,
    Dependency,
    WorkflowDefinition,
    load_definition,
)


def act(key: str, *depends_on: Any, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"key": key, "activity_name": "echo", **fields}
    if depends_on:
        data["depends_on"] = list(depends_on)
    return data


def on(key: str, *conditions: str) -> dict[str, Any]:
    return {"activity_key": key, "conditions": list(conditions)}


def graph(*activities: dict[str, Any]) -> DefinitionGraph:
    return DefinitionGraph(load_definition({"name": "wf", "activities": list(activities)}))


@pytest.fixture
def review_loop() -> DefinitionGraph:
    #  start -> draft -> review -> publish ; review -> draft is the back-edge
    return graph(
        act("start"),
        act("draft", "start", on("review", "{{ not review.ok }}")),
        act("review", "draft"),
        act("publish", on("review", "{{ review.ok }}")),
        act("side"),
    )


def test_dependents_include_back_edges(review_loop: DefinitionGraph) -> None:
    g = review_loop
    assert g.dependents("start") == ("draft",)
    assert g.dependents("draft") == ("review",)
    assert g.dependents("review") == ("draft", "publish")
    assert g.dependents("publish") == ()


def test_forward_and_back_dependencies(review_loop: DefinitionGraph) -> None:
    g = review_loop
    assert g.forward_dependencies("draft") == (Dependency(activity_key="start"),)
    assert g.back_dependencies("draft") == (
        Dependency(activity_key="review", conditions=("{{ not review.ok }}",), is_back_edge=True),
    )
    assert g.back_dependencies("review") == ()
    assert g.forward_dependencies("start") == ()


def test_roots_and_back_edges(review_loop: DefinitionGraph) -> None:
    assert review_loop.roots() == ("start", "side")
    assert review_loop.back_edges() == (("review", "draft"),)


def test_self_loop_activity_is_a_root() -> None:
    g = graph(act("poll", on("poll", "{{ poll.again }}")), act("after", "poll"))
    assert g.roots() == ("poll",)
    assert g.dependents("poll") == ("poll", "after")
    assert g.back_edges() == (("poll", "poll"),)
    assert g.loop_body("poll", "poll") == frozenset({"poll"})


def test_loop_body(review_loop: DefinitionGraph) -> None:
    assert review_loop.loop_body("draft", "review") == frozenset({"draft", "review"})


def test_loop_body_with_branches_inside_and_outside() -> None:
    g = graph(
        act("start"),
        act("head", "start", on("tail", "{{ tail.again }}")),
        act("left", "head"),
        act("right", "head"),
        act("tail", "left", "right"),
        act("exit_branch", "left"),  # leaves the loop: not in the body
        act("after", on("tail", "{{ not tail.again }}")),
    )
    assert g.back_edges() == (("tail", "head"),)
    assert g.loop_body("head", "tail") == frozenset({"head", "left", "right", "tail"})


def test_nested_loop_bodies() -> None:
    g = graph(
        act("outer", on("check", "{{ check.again }}")),
        act("inner", "outer", on("inner", "{{ inner.more }}")),
        act("check", "inner"),
    )
    assert set(g.back_edges()) == {("check", "outer"), ("inner", "inner")}
    assert g.loop_body("outer", "check") == frozenset({"outer", "inner", "check"})
    assert g.loop_body("inner", "inner") == frozenset({"inner"})


def test_topological_order_uses_forward_edges_and_declared_order() -> None:
    g = graph(
        act("a", on("d", "{{ again }}")),
        act("c", "a"),
        act("b", "a"),
        act("d", "b", "c"),
        act("z"),
    )
    assert g.back_edges() == (("d", "a"),)
    assert g.topological_order() == ("a", "c", "b", "d", "z")
    assert g.roots() == ("a", "z")


def test_unknown_keys_raise_key_error(review_loop: DefinitionGraph) -> None:
    for method in (
        review_loop.dependents,
        review_loop.forward_dependencies,
        review_loop.back_dependencies,
    ):
        with pytest.raises(KeyError):
            method("nope")
    with pytest.raises(KeyError):
        review_loop.loop_body("nope", "draft")


def test_unvalidated_cycle_has_no_topological_order() -> None:
    d = WorkflowDefinition(
        name="wf",
        activities=(
            ActivityDefinition(
                key="a", activity_name="e", depends_on=(Dependency(activity_key="b"),)
            ),
            ActivityDefinition(
                key="b", activity_name="e", depends_on=(Dependency(activity_key="a"),)
            ),
        ),
    )
    with pytest.raises(ValueError, match="validate the definition first"):
        DefinitionGraph(d).topological_order()


def test_definition_is_kept(review_loop: DefinitionGraph) -> None:
    assert review_loop.definition.name == "wf"
