"""decide(): loops (back-edges, iteration_limit, iteration_scoped) and signals."""

from __future__ import annotations

import datetime as dt

from kflow._types import ActivityStatus as S
from kflow._types import WorkflowStatus as W
from tests.unit.orchestrator.sim import T0, Run

SELF_LOOP = """
name: poller
activities:
  - key: poll
    activity_name: echo
    iteration_scoped: true
    parameters: {round: "{{ ACTIVITY.iteration }}"}
    depends_on:
      - {activity_key: poll, conditions: ["{{ not (poll.done | last) }}"]}
  - key: report
    activity_name: echo
    parameters: {rounds: "{{ poll.done | length }}"}
    depends_on:
      - {activity_key: poll, conditions: ["{{ poll.done | last }}"]}
"""


def test_self_loop_runs_until_its_condition_turns_false() -> None:
    run = Run(SELF_LOOP)
    assert run.pending() == ["poll"]
    assert run.act("poll").parameters == {"round": 0}
    run.complete("poll", done=False)
    assert run.pending() == ["poll"]
    assert run.act("poll").iteration == 1
    assert run.act("poll").parameters == {"round": 1}
    assert run.status_of("report") == S.NOT_SCHEDULED
    run.complete("poll", done=False)
    run.complete("poll", done=True)
    assert run.act("poll").outputs == {"done": [False, False, True]}
    assert run.pending() == ["report"]
    assert run.act("report").parameters == {"rounds": 3}
    run.complete("report")
    assert run.status == W.COMPLETED
    assert run.event_types("poll").count("activity.loop") == 2


def test_iteration_limit_stops_the_loop() -> None:
    source = SELF_LOOP.replace(
        "iteration_scoped: true", "iteration_scoped: true\n    iteration_limit: 3"
    )
    run = Run(source)
    for _ in range(3):
        run.complete("poll", done=False)
    assert run.status_of("poll") == S.COMPLETED
    assert "activity.loop_limit_reached" in run.event_types("poll")
    assert run.status_of("report") == S.SKIPPED
    assert run.status == W.COMPLETED


TWO_NODE = """
name: research
activities:
  - {key: start, activity_name: echo}
  - key: search
    activity_name: echo
    parameters: {query: "round {{ ACTIVITY.iteration }}"}
    depends_on:
      - start
      - {activity_key: evaluate, conditions: ["{{ evaluate.more }}"]}
  - {key: log, activity_name: echo, depends_on: [search]}
  - {key: evaluate, activity_name: echo, depends_on: [search]}
  - key: write
    activity_name: echo
    depends_on: [{activity_key: evaluate, conditions: ["{{ not evaluate.more }}"]}]
"""


def test_two_node_loop_with_side_branch_and_exit_path() -> None:
    run = Run(TWO_NODE)
    run.complete("start")
    assert run.pending() == ["search"]
    run.complete("search", hits=1)
    assert sorted(run.pending()) == ["evaluate", "log"]
    run.complete("log")
    run.complete("evaluate", more=True)
    # the loop went back: search runs its second iteration, evaluate waits again
    assert run.pending() == ["search"]
    assert run.act("search").parameters == {"query": "round 1"}
    assert run.status_of("evaluate") == S.NOT_SCHEDULED
    assert run.status_of("write") == S.NOT_SCHEDULED
    run.complete("search", hits=2)
    # the side branch runs again for the new iteration
    assert sorted(run.pending()) == ["evaluate", "log"]
    assert run.act("log").iteration == 1
    run.complete("log")
    run.complete("evaluate", more=False)
    assert run.pending() == ["write"]
    run.complete("write")
    assert run.status == W.COMPLETED
    assert run.act("search").iteration == 1
    assert run.act("evaluate").iteration == 1


def test_retry_loop_on_failure_handles_the_failure() -> None:
    source = """
name: retry_loop
activities:
  - key: flaky
    activity_name: echo
    iteration_limit: 5
    depends_on: [{activity_key: flaky, conditions: ["{{ flaky.status == 'failed' }}"]}]
"""
    run = Run(source)
    run.fail("flaky", retryable=False)
    assert run.pending() == ["flaky"]
    assert run.act("flaky").iteration == 1
    run.complete("flaky")
    assert run.status == W.COMPLETED


def test_delay_applies_on_every_iteration() -> None:
    source = """
name: limiter
activities:
  - key: tick
    activity_name: echo
    settings: {delay: 10s}
    depends_on: [{activity_key: tick, conditions: ["{{ tick.again }}"]}]
"""
    run = Run(source)
    assert run.status_of("tick") == S.WAITING
    run.advance(10)
    run.complete("tick", again=True)
    assert run.status_of("tick") == S.WAITING
    assert run.act("tick").available_at == run.now + dt.timedelta(seconds=10)


SIGNAL = """
name: approval
activities:
  - {key: draft, activity_name: echo}
  - key: publish
    activity_name: echo
    depends_on: [draft]
    parameters: {approver: "{{ SIGNAL.by | coalesce('nobody') }}"}
    settings: {wait_for_signal: {event_name: approved, timeout_seconds: 3600, on_timeout: ON}}
"""


def test_signal_releases_a_waiting_activity() -> None:
    run = Run(SIGNAL.replace("ON", "fail"))
    run.complete("draft")
    act = run.act("publish")
    assert act.status == S.WAITING
    assert act.wait_signal == "approved"
    assert act.wait_timeout_at == T0 + dt.timedelta(hours=1)
    run.signal("publish", {"by": "ana"})
    act = run.act("publish")
    assert act.status == S.PENDING
    assert act.signal_data == {"by": "ana"}


def test_signal_sent_before_the_activity_waits_is_delivered_when_it_does() -> None:
    run = Run(SIGNAL.replace("ON", "fail"))
    run.buffer_signal("publish", "approved", {"by": "early"})
    run.complete("draft")
    act = run.act("publish")
    assert act.status == S.PENDING
    assert act.signal_data == {"by": "early"}
    assert run.state.signals == ()


def test_signal_timeout_actions() -> None:
    failing = Run(SIGNAL.replace("ON", "fail"))
    failing.complete("draft")
    failing.signal_timeout("publish")
    assert failing.act("publish").error.code == "SIGNAL_TIMEOUT"  # type: ignore[union-attr]
    assert failing.status == W.FAILED

    skipping = Run(SIGNAL.replace("ON", "skip"))
    skipping.complete("draft")
    skipping.signal_timeout("publish")
    assert skipping.status_of("publish") == S.SKIPPED
    assert skipping.status == W.COMPLETED

    going_on = Run(SIGNAL.replace("ON", "continue"))
    going_on.complete("draft")
    going_on.signal_timeout("publish")
    assert going_on.status_of("publish") == S.PENDING
    assert going_on.act("publish").parameters == {"approver": "nobody"}


def test_signal_data_is_visible_to_the_parameters() -> None:
    run = Run(SIGNAL.replace("ON", "fail"))
    run.complete("draft")
    assert run.act("publish").parameters is None
    run.signal("publish", {"by": "ana"})
    assert run.act("publish").parameters == {"approver": "ana"}
