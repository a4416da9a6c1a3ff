"""decide(): DAG readiness, skips, failure handling, retries, templates."""

from __future__ import annotations

import datetime as dt
import decimal

from kflow._types import ActivityStatus as S
from kflow._types import WorkflowStatus as W
from kflow.server.state import ActivityCompleted
from tests.unit.orchestrator.sim import T0, Run

CHAIN = """
name: chain
activities:
  - {key: a, activity_name: echo, parameters: {n: "{{ INPUT.n }}"}}
  - {key: b, activity_name: echo, depends_on: [a], parameters: {prev: "{{ a.echo.n + 1 }}"}}
  - {key: c, activity_name: echo, depends_on: [b], parameters: {msg: "b said {{ b.echo.prev }}"}}
"""

FANOUT = """
name: fan
activities:
  - {key: start, activity_name: echo}
  - {key: x, activity_name: echo, depends_on: [start]}
  - {key: y, activity_name: echo, depends_on: [start]}
  - {key: z, activity_name: echo, depends_on: [start]}
  - {key: end, activity_name: echo, depends_on: [x, y, z]}
"""


def test_roots_start_and_workflow_stays_created_until_progress() -> None:
    run = Run(CHAIN, {"n": 1})
    assert run.pending() == ["a"]
    assert run.status_of("b") == S.NOT_SCHEDULED
    assert run.status == W.CREATED
    assert run.woken == ["std"]
    assert run.act("a").parameters == {"n": 1}


def test_chain_resolves_templates_with_native_types_and_completes() -> None:
    run = Run(CHAIN, {"n": 41})
    run.complete("a", echo={"n": 41})
    assert run.status == W.RUNNING
    assert run.act("b").parameters == {"prev": 42}
    run.complete("b", echo={"prev": 42})
    assert run.act("c").parameters == {"msg": "b said 42"}
    run.complete("c", echo={})
    assert run.status == W.COMPLETED
    assert run.event_types()[-1] == "workflow.completed"


def test_fan_out_and_fan_in() -> None:
    run = Run(FANOUT)
    run.complete("start")
    assert sorted(run.pending()) == ["x", "y", "z"]
    run.complete("x")
    run.complete("y")
    assert run.status_of("end") == S.NOT_SCHEDULED
    run.complete("z")
    assert run.pending() == ["end"]
    run.complete("end")
    assert run.status == W.COMPLETED


def test_plain_dependency_failure_skips_dependents_and_fails_the_run() -> None:
    run = Run(CHAIN, {"n": 1})
    run.fail("a", "HTTP_ERROR", retryable=False, message="down")
    assert run.status_of("b") == S.SKIPPED
    assert run.status_of("c") == S.SKIPPED
    assert run.status == W.FAILED
    assert run.error_message == "activity 'a' failed: HTTP_ERROR: down"


def test_independent_branches_run_to_the_end_before_the_run_fails() -> None:
    run = Run(FANOUT)
    run.complete("start")
    run.fail("x", retryable=False)
    assert run.status == W.RUNNING
    assert run.status_of("y") == S.PENDING
    run.complete("y")
    run.complete("z")
    assert run.status_of("end") == S.SKIPPED
    assert run.status == W.FAILED


HANDLER = """
name: handler
activities:
  - {key: risky, activity_name: echo}
  - key: on_error
    activity_name: echo
    parameters: {why: "{{ risky.error.message }}"}
    depends_on: [{activity_key: risky, conditions: ["{{ risky.status == 'failed' }}"]}]
  - key: on_ok
    activity_name: echo
    depends_on: [{activity_key: risky, conditions: ["{{ risky.status == 'completed' }}"]}]
"""


def test_conditional_edge_handles_a_failure_and_the_run_completes() -> None:
    run = Run(HANDLER)
    run.fail("risky", retryable=False, message="bad input")
    assert run.pending() == ["on_error"]
    assert run.act("on_error").parameters == {"why": "bad input"}
    assert run.status_of("on_ok") == S.SKIPPED
    run.complete("on_error")
    assert run.status == W.COMPLETED
    assert run.act("risky").failure_handled


def test_success_path_skips_the_handler() -> None:
    run = Run(HANDLER)
    run.complete("risky")
    assert run.pending() == ["on_ok"]
    assert run.status_of("on_error") == S.SKIPPED
    run.complete("on_ok")
    assert run.status == W.COMPLETED


ROUTER = """
name: router
activities:
  - {key: classify, activity_name: echo}
  - key: cheap
    activity_name: echo
    depends_on: [{activity_key: classify, conditions: ["{{ classify.kind == 'small' }}"]}]
  - key: expensive
    activity_name: echo
    depends_on: [{activity_key: classify, conditions: ["{{ classify.kind == 'big' }}"]}]
  - key: join
    activity_name: echo
    depends_on:
      - {activity_key: cheap, conditions: ["{{ cheap.status == 'completed' }}"]}
      - {activity_key: expensive, conditions: ["{{ expensive.status == 'completed' }}"]}
"""


def test_mutually_exclusive_conditional_edges_give_or() -> None:
    run = Run(ROUTER)
    run.complete("classify", kind="big")
    assert run.pending() == ["expensive"]
    assert run.status_of("cheap") == S.SKIPPED
    run.complete("expensive")
    assert run.pending() == ["join"]
    run.complete("join")
    assert run.status == W.COMPLETED


def test_every_condition_false_skips() -> None:
    run = Run(ROUTER)
    run.complete("classify", kind="medium")
    assert run.status_of("cheap") == S.SKIPPED
    assert run.status_of("expensive") == S.SKIPPED
    assert run.status_of("join") == S.SKIPPED
    assert run.status == W.COMPLETED


def test_sdk_condition_spelling_succeeded_works() -> None:
    source = """
name: sdk
activities:
  - {key: a, activity_name: echo}
  - key: b
    activity_name: echo
    depends_on: [{activity_key: a, conditions: ["{{ a.status == 'succeeded' && a.ok }}"]}]
"""
    run = Run(source)
    run.complete("a", ok=True)
    assert run.pending() == ["b"]


def test_default_retry_policy_four_attempts_with_backoff() -> None:
    run = Run(CHAIN, {"n": 1})
    delays = []
    for attempt in (1, 2, 3):
        run.fail("a", "TIMEOUT")
        act = run.act("a")
        assert act.status == S.WAITING
        assert act.attempt == attempt + 1
        delays.append((act.available_at - run.now).total_seconds())
        assert run.advance(delays[-1]) == ["a"]
    assert delays == [2.0, 4.0, 8.0]
    run.fail("a", "TIMEOUT")
    assert run.status_of("a") == S.FAILED
    assert run.status == W.FAILED


def test_non_retryable_error_fails_at_once() -> None:
    run = Run(CHAIN, {"n": 1})
    run.fail("a", "SCRIPT_ERROR", retryable=False)
    assert run.status_of("a") == S.FAILED
    assert run.act("a").attempt == 1


def test_retry_block_without_max_attempts_means_one_attempt() -> None:
    source = """
name: once
activities:
  - {key: a, activity_name: echo, settings: {retry: {strategy: fixed, base_seconds: 1}}}
"""
    run = Run(source)
    run.fail("a")
    assert run.status_of("a") == S.FAILED


def test_fixed_backoff_and_max_seconds() -> None:
    source = """
name: fixed
activities:
  - key: a
    activity_name: echo
    settings: {retry: {max_attempts: 3, strategy: exponential, base_seconds: 10, factor: 10,
                       max_seconds: 50}}
"""
    run = Run(source)
    run.fail("a")
    assert run.act("a").available_at - run.now == dt.timedelta(seconds=10)
    run.advance(10)
    run.fail("a")
    assert run.act("a").available_at - run.now == dt.timedelta(seconds=50)


def test_template_error_fails_the_activity_with_a_clear_message() -> None:
    source = """
name: bad
activities:
  - {key: a, activity_name: echo, parameters: {url: "{{ INPUT.missing }}"}}
  - {key: b, activity_name: echo, depends_on: [a]}
"""
    run = Run(source, {"present": 1})
    act = run.act("a")
    assert act.status == S.FAILED
    assert act.error is not None
    assert act.error.code == "TEMPLATE_ERROR"
    assert "INPUT.missing" in act.error.message
    assert run.status_of("b") == S.SKIPPED
    assert run.status == W.FAILED


def test_delay_makes_the_activity_wait_then_the_scheduler_releases_it() -> None:
    source = """
name: delayed
activities:
  - {key: a, activity_name: echo, settings: {delay: "{{ INPUT.minutes }}m"}}
"""
    run = Run(source, {"minutes": 5})
    act = run.act("a")
    assert act.status == S.WAITING
    assert act.available_at == T0 + dt.timedelta(minutes=5)
    assert run.timers == [T0 + dt.timedelta(minutes=5)]
    assert run.advance(299) == []
    assert run.advance(1) == ["a"]


def test_scheduled_for_in_the_past_is_pending_now() -> None:
    source = """
name: at
activities:
  - {key: a, activity_name: echo, settings: {scheduled_for: "{{ INPUT.when }}"}}
"""
    assert Run(source, {"when": "2020-01-01T00:00:00Z"}).pending() == ["a"]
    later = Run(source, {"when": "2026-01-02T00:00:00Z"})
    assert later.act("a").status == S.WAITING


def test_cost_accumulates_on_the_run() -> None:
    run = Run(CHAIN, {"n": 1})
    run.complete("a", cost="0.015", echo={"n": 1})
    run.complete("b", cost="0.0001", echo={"prev": 2})
    assert run.state.total_cost_usd == decimal.Decimal("0.0151")
    assert run.act("a").cost_usd == decimal.Decimal("0.015")


def test_secrets_become_placeholders_not_values() -> None:
    source = """
name: secret
activities:
  - {key: a, activity_name: http_request, parameters: {auth: "Bearer {{ SECRET.TOKEN }}"}}
"""
    run = Run(source, secrets=frozenset({"TOKEN"}))
    auth = run.act("a").parameters["auth"]  # type: ignore[index]
    assert auth.startswith("Bearer ")
    assert "TOKEN" in auth
    assert run.status_of("a") == S.PENDING


def test_cancel_withdraws_pending_and_running_work() -> None:
    run = Run(FANOUT)
    run.complete("start")
    run.claim("x")
    run.cancel()
    assert run.status == W.CANCELLED
    assert {run.status_of(k) for k in ("x", "y", "z", "end")} == {S.CANCELLED}
    assert run.event_types()[-1] == "workflow.cancelled"


def test_workflow_timeout_fails_with_the_reason() -> None:
    run = Run(FANOUT)
    run.timeout("no worker polls queue 'std'")
    assert run.status == W.FAILED
    assert run.error_message == "no worker polls queue 'std'"
    assert run.status_of("start") == S.CANCELLED


def test_events_after_terminal_run_only_add_cost() -> None:
    run = Run(FANOUT)
    run.claim("start")
    run.cancel()
    commands = run.send(ActivityCompleted(key="start", outputs={}, cost_usd=decimal.Decimal("1")))
    assert run.state.total_cost_usd == decimal.Decimal("1")
    assert run.status == W.CANCELLED
    assert all(type(c).__name__ == "AddCost" for c in commands)


def _one(parameters: str = "{}", settings: str = "{}") -> str:
    return f"""
name: odd
activities:
  - {{key: a, activity_name: echo, parameters: {parameters}, settings: {settings}}}
  - {{key: b, activity_name: echo, depends_on: [a]}}
"""


def test_values_that_cannot_be_stored_fail_the_activity_not_the_engine() -> None:
    cases = {
        '{x: "{{ 2 ** 70 }}"}': "cannot be stored as JSON",
        '{x: "{{ lipsum }}"}': "cannot be stored as JSON",
        "{x: \"{{ 'x' * 300000000 }}\"}": "repeating a sequence",
        '{x: "{{ 2 ** 100000 }}"}': "exponent",
    }
    for parameters, message in cases.items():
        run = Run(_one(parameters=parameters))
        act = run.act("a")
        assert act.status == S.FAILED, parameters
        assert act.error is not None
        assert act.error.code == "TEMPLATE_ERROR"
        assert message in act.error.message, act.error.message
        assert run.status_of("b") == S.SKIPPED
        assert run.status == W.FAILED


def test_schedules_beyond_the_calendar_are_invalid_schedules() -> None:
    for settings in ('{delay: "3000000d"}', '{scheduled_for: "{{ INPUT.when }}"}'):
        run = Run(_one(settings=settings), {"when": "9999-12-31T23:00:00-05:00"})
        act = run.act("a")
        assert act.status == S.FAILED, settings
        assert act.error is not None
        assert act.error.code == "INVALID_SCHEDULE"
        assert "settings." in act.error.message


def test_backoff_with_a_huge_factor_uses_the_cap() -> None:
    source = """
name: huge
activities:
  - key: a
    activity_name: echo
    settings: {retry: {max_attempts: 100, base_seconds: 0.01, factor: 1000000, max_seconds: 7}}
"""
    run = Run(source)
    for _ in range(60):
        run.fail("a")
        run.advance(7)
    assert run.act("a").attempt == 61
    assert run.status_of("a") == S.PENDING


def test_a_worker_shutdown_hands_the_attempt_back_without_using_a_retry() -> None:
    source = """
name: once
activities:
  - {key: a, activity_name: echo, settings: {retry: {max_attempts: 1}}}
"""
    run = Run(source)
    run.fail("a", "WORKER_SHUTDOWN", retryable=True)
    act = run.act("a")
    assert act.status == S.PENDING
    assert act.attempt == 1
    assert "activity.interrupted" in run.event_types("a")
    run.fail("a", "BOOM", retryable=True)  # a real failure still uses the only attempt
    assert run.status_of("a") == S.FAILED
