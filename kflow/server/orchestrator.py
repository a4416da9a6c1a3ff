"""The orchestrator: pure decisions about one workflow run.

``decide(state, event, ctx)`` reads a :class:`~kflow.server.state.WorkflowState`
and one event and returns the commands that bring the run forward: which
activities become ready (their templates resolved), wait, retry, are skipped
or loop; whether the run is finished. It performs no I/O and never blocks;
the engine applies the commands in the transaction that loaded the state.

Readiness follows PROTOCOL §4 ("Dependency semantics"): plain edges AND,
mutually exclusive conditional edges OR, skip cascades, conditional edges as
failure handlers, and loops through back-edges bounded by ``iteration_limit``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._serde import dumps, parse_datetime
from kflow._types import ActivityStatus, WorkflowStatus
from kflow.errors import TemplateError
from kflow.model.definition import ActivityDefinition, Dependency
from kflow.model.durations import parse_duration
from kflow.server.state import (
    ActivityCompleted,
    ActivityFailed,
    ActivityState,
    AddCost,
    ArmTimer,
    CancelRequested,
    Command,
    ConsumeSignal,
    Emit,
    ErrorInfo,
    Event,
    PutActivity,
    PutWorkflow,
    SignalDelivered,
    SignalTimedOut,
    WakeQueue,
    WorkflowStarted,
    WorkflowState,
    WorkflowTimedOut,
)
from kflow.server.template_context import build_context
from kflow.templates import SecretNamespace, TemplateEngine

S = ActivityStatus


@attrs.frozen(kw_only=True)
class DecideContext:
    """What a decision may depend on besides the state: time, templates, secret names."""

    now: dt.datetime
    templates: TemplateEngine
    secret_names: frozenset[str] = frozenset()


#: Failure code of an attempt that its worker gave back while shutting down.
INTERRUPTED = "WORKER_SHUTDOWN"

#: Largest JSON form of an activity's resolved parameters.
MAX_PARAMETERS_BYTES = 8 * 1024 * 1024


class _Verdict(enum.Enum):
    WAIT = "wait"
    READY = "ready"
    SKIP = "skip"
    ERROR = "error"  # a condition could not be evaluated


def decide(state: WorkflowState, event: Event, ctx: DecideContext) -> list[Command]:
    """Commands that apply ``event`` to the run described by ``state``.

    Never raises for workflow-level problems: a template that fails to
    render fails its activity with ``TEMPLATE_ERROR`` instead.
    """
    decider = _Decider(state, ctx)
    decider.handle(event)
    return decider.commands()


class _Decider:
    """One decision in progress: a private, mutable copy of the activity states."""

    def __init__(self, state: WorkflowState, ctx: DecideContext) -> None:
        self.state = state
        self.ctx = ctx
        self.acts: dict[str, ActivityState] = dict(state.activities)
        self.status = state.status
        self.total_cost = state.total_cost_usd
        self.secrets = SecretNamespace(ctx.secret_names)
        self._puts: dict[str, PutActivity] = {}
        self._out: list[Command] = []
        self._consumed: set[Any] = set()

    # ---- plumbing -----------------------------------------------------------

    def commands(self) -> list[Command]:
        puts: list[Command] = list(self._puts.values())
        return puts + self._out

    def put(
        self, act: ActivityState, *, new_attempt: bool = False, release_lease: bool = False
    ) -> None:
        previous = self._puts.get(act.key)
        if previous is not None:
            new_attempt = new_attempt or previous.new_attempt
            release_lease = release_lease or previous.release_lease
        self.acts[act.key] = act
        self._puts[act.key] = PutActivity(
            activity=act, new_attempt=new_attempt, release_lease=release_lease
        )

    def emit(self, type_: str, key: str | None = None, **data: Any) -> None:
        self._out.append(Emit(type=type_, activity_key=key, data=data or None))

    def definition(self, key: str) -> ActivityDefinition:
        return self.state.definition.activity(key)

    def context_for(
        self, key: str, iteration: int, signal_data: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_context(
            self.state,
            self.acts,
            key=key,
            iteration=iteration,
            secrets=self.secrets,
            total_cost=self.total_cost,
            signal_data=signal_data,
        )

    def mark_running(self) -> None:
        if self.status == WorkflowStatus.CREATED:
            self.status = WorkflowStatus.RUNNING
            self._out.append(PutWorkflow(status=WorkflowStatus.RUNNING))

    # ---- events ---------------------------------------------------------------

    def handle(self, event: Event) -> None:
        cost = getattr(event, "cost_usd", decimal.Decimal(0))
        if cost:
            self.total_cost += cost
            self._out.append(AddCost(amount=cost))
        if self.status.is_terminal:
            return
        match event:
            case WorkflowStarted():
                self.emit("workflow.started", input_keys=sorted(self.state.input))
                self.settle()
            case ActivityCompleted(key=key, outputs=outputs, cost_usd=cost):
                self.mark_running()
                self.on_completed(key, outputs, cost)
            case ActivityFailed(key=key, error=error, cost_usd=cost):
                self.mark_running()
                self.on_failed(key, error, cost)
            case SignalDelivered(key=key, data=data):
                self.on_signal(key, data)
            case SignalTimedOut(key=key):
                self.on_signal_timeout(key)
            case WorkflowTimedOut(reason=reason):
                self.stop(WorkflowStatus.FAILED, reason)
                return
            case CancelRequested(reason=reason):
                self.stop(WorkflowStatus.CANCELLED, reason)
                return
        self.finish_if_done()

    def on_completed(self, key: str, outputs: Mapping[str, Any], cost: decimal.Decimal) -> None:
        act = self.acts[key]
        definition = self.definition(key)
        if definition.iteration_scoped:
            merged = {name: list(values) for name, values in (act.outputs or {}).items()}
            for name, value in outputs.items():
                merged.setdefault(name, []).append(value)
            stored: Mapping[str, Any] = merged
        else:
            stored = dict(outputs)
        done = attrs.evolve(
            act,
            status=S.COMPLETED,
            outputs=stored,
            error=None,
            cost_usd=act.cost_usd + cost,
            completed_at=self.ctx.now,
            has_run=True,
            wait_signal=None,
            wait_timeout_at=None,
        )
        self.put(done, release_lease=True)
        self.emit(
            "activity.completed",
            key,
            iteration=act.iteration,
            attempt=act.attempt,
            cost_usd=str(cost),
        )
        self.after_terminal(key)

    def on_failed(self, key: str, error: ErrorInfo, cost: decimal.Decimal) -> None:
        act = self.acts[key]
        policy = self.definition(key).settings.retry
        spent = act.cost_usd + cost
        if error.code == INTERRUPTED and error.retryable:
            # A worker stopped in an orderly way before finishing: the attempt
            # did not fail, so hand it out again at once without using up a retry.
            again = attrs.evolve(act, status=S.PENDING, available_at=self.ctx.now,
                                 cost_usd=spent)
            self.put(again, new_attempt=True)
            self.emit("activity.interrupted", key, attempt=act.attempt, error=error.as_dict())
            self._after_schedule(again)
            return
        if error.retryable and policy.allows_another(act.attempt):
            delay = policy.delay_after(act.attempt)
            at = self.ctx.now + dt.timedelta(seconds=delay)
            status = S.WAITING if delay > 0 else S.PENDING
            retry = attrs.evolve(
                act,
                status=status,
                attempt=act.attempt + 1,
                available_at=at,
                error=error,
                cost_usd=spent,
            )
            self.put(retry, new_attempt=True)
            self.emit(
                "activity.retry_scheduled",
                key,
                attempt=act.attempt + 1,
                delay_seconds=delay,
                error=error.as_dict(),
            )
            self._after_schedule(retry)
            return
        failed = attrs.evolve(
            act,
            status=S.FAILED,
            error=error,
            cost_usd=spent,
            completed_at=self.ctx.now,
            has_run=True,
        )
        self.put(failed, release_lease=True)
        self.emit(
            "activity.failed",
            key,
            iteration=act.iteration,
            attempt=act.attempt,
            error=error.as_dict(),
        )
        self.after_terminal(key)

    def on_signal(self, key: str, data: Mapping[str, Any] | None) -> None:
        act = self.acts[key]
        signal_data = dict(data or {})
        try:
            parameters = self._parameters(key, self.context_for(key, act.iteration, signal_data))
        except TemplateError as exc:
            self.put(
                attrs.evolve(act, signal_data=signal_data, wait_signal=None, wait_timeout_at=None)
            )
            self._fail_scheduling(key, act.iteration, exc)
            self.settle()
            return
        ready = act.available_at is None or act.available_at <= self.ctx.now
        updated = attrs.evolve(
            act,
            signal_data=signal_data,
            parameters=parameters,
            wait_signal=None,
            wait_timeout_at=None,
            status=S.PENDING if ready else S.WAITING,
        )
        self.put(updated)
        self.emit("activity.signal_received", key)
        self._after_schedule(updated)

    def on_signal_timeout(self, key: str) -> None:
        act = self.acts[key]
        wait = self.definition(key).settings.wait_for_signal
        action = wait.on_timeout if wait is not None else "fail"
        self.emit("activity.signal_timed_out", key, action=action)
        if action == "continue":
            self.on_signal(key, None)
        elif action == "skip":
            self.skip(key, f"no signal {act.wait_signal!r} arrived in time")
            self.settle()
        else:
            message = f"no signal {act.wait_signal!r} arrived within its timeout"
            self.fail_now(key, ErrorInfo(code="SIGNAL_TIMEOUT", message=message))
            self.after_terminal(key)

    def stop(self, status: WorkflowStatus, reason: str) -> None:
        for key, act in list(self.acts.items()):
            if not act.status.is_terminal:
                # A running attempt keeps its lease fields so the worker's next
                # heartbeat is told to stop (409) and its late report is accepted.
                self.put(
                    attrs.evolve(
                        act,
                        status=S.CANCELLED,
                        completed_at=self.ctx.now,
                        wait_signal=None,
                        wait_timeout_at=None,
                    ),
                    release_lease=act.status != S.RUNNING,
                )
                self.emit("activity.cancelled", key, reason=reason)
        self.status = status
        message = reason if status == WorkflowStatus.FAILED else None
        self._out.append(PutWorkflow(status=status, error_message=message, finished=True))
        self.emit(f"workflow.{status.value}", reason=reason)

    # ---- after an activity became terminal -----------------------------------

    def after_terminal(self, key: str) -> None:
        self.loop_back(key)
        if self.acts[key].status == S.COMPLETED and self.acts[key].iteration > 0:
            self.rearm_dependents(key)
        self.settle()

    def loop_back(self, source: str) -> None:
        src = self.acts[source]
        for target in self.state.graph.dependents(source):
            for dep in self.definition(target).depends_on:
                if dep.activity_key != source or not dep.is_back_edge:
                    continue
                tgt = self.acts[target]
                if target != source and tgt.status != S.COMPLETED:
                    continue
                applies = self.edge_applies(dep, target, tgt.iteration)
                if dep.conditions and applies and src.status == S.FAILED:
                    self.put(attrs.evolve(self.acts[source], failure_handled=True))
                if not applies or (not dep.conditions and src.status != S.COMPLETED):
                    continue
                limit = self.definition(target).max_iterations
                if tgt.iteration + 1 >= limit:
                    self.emit("activity.loop_limit_reached", target, limit=limit, source=source)
                    continue
                self.run_loop(target, source)
                break

    def run_loop(self, target: str, source: str) -> None:
        body = self.state.graph.loop_body(target, source)
        for member in (k for k in self.state.definition.keys if k in body):
            act = self.acts[member]
            if member != target and act.status.is_terminal:
                self.put(attrs.evolve(act, status=S.NOT_SCHEDULED), release_lease=True)
        self.put(attrs.evolve(self.acts[target], status=S.NOT_SCHEDULED), release_lease=True)
        self.emit("activity.loop", target, iteration=self.acts[target].iteration + 1, source=source)
        self.schedule(target)

    def rearm_dependents(self, key: str) -> None:
        """New data from a loop: finished forward dependents may run again."""
        for dependent in self.state.graph.dependents(key):
            edges = [
                d
                for d in self.definition(dependent).depends_on
                if d.activity_key == key and not d.is_back_edge
            ]
            act = self.acts[dependent]
            if edges and act.status.is_terminal and dependent != key:
                self.put(attrs.evolve(act, status=S.NOT_SCHEDULED), release_lease=True)

    # ---- readiness ---------------------------------------------------------------

    def settle(self) -> None:
        """Start, skip or fail every not-scheduled activity whose turn has come."""
        changed = True
        while changed and not self.status.is_terminal:
            changed = False
            for key in self.state.graph.topological_order():
                if self.acts[key].status != S.NOT_SCHEDULED:
                    continue
                verdict, reason = self.readiness(key)
                if verdict == _Verdict.READY:
                    self.schedule(key)
                    changed = True
                elif verdict == _Verdict.SKIP:
                    self.skip(key, reason)
                    changed = True
                elif verdict == _Verdict.ERROR:
                    self.fail_now(key, ErrorInfo(code="TEMPLATE_ERROR", message=reason))
                    self.loop_back(key)
                    changed = True

    def readiness(self, key: str) -> tuple[_Verdict, str]:
        forward = self.state.graph.forward_dependencies(key)
        if not forward:
            return _Verdict.READY, ""
        iteration = self._next_iteration(self.acts[key])
        applicable: list[tuple[Dependency, ActivityState]] = []
        for dep in forward:
            if not self.acts[dep.activity_key].status.is_terminal:
                return _Verdict.WAIT, ""
        for dep in forward:
            upstream = self.acts[dep.activity_key]
            if dep.conditions:
                try:
                    applies = self.edge_applies(dep, key, iteration, raise_errors=True)
                except TemplateError as exc:
                    return _Verdict.ERROR, f"condition on dependency {dep.activity_key!r}: {exc}"
                if not applies:
                    continue
                if upstream.status == S.FAILED and not upstream.failure_handled:
                    self.put(attrs.evolve(upstream, failure_handled=True))
            applicable.append((dep, upstream))
        if not applicable:
            return _Verdict.SKIP, "no dependency applies (all conditions false)"
        for dep, upstream in applicable:
            if not dep.conditions and upstream.status != S.COMPLETED:
                return _Verdict.SKIP, f"dependency {dep.activity_key!r} {upstream.status.value}"
        return _Verdict.READY, ""

    def edge_applies(
        self, dep: Dependency, key: str, iteration: int, *, raise_errors: bool = False
    ) -> bool:
        """Whether every condition of ``dep`` is truthy (True for plain edges)."""
        if not dep.conditions:
            return True
        context = self.context_for(key, iteration)
        try:
            return all(self.ctx.templates.evaluate_condition(c, context) for c in dep.conditions)
        except TemplateError as exc:
            if raise_errors:
                raise
            self.emit(
                "activity.condition_error", key, dependency=dep.activity_key, message=str(exc)
            )
            return False

    # ---- state changes -------------------------------------------------------------

    @staticmethod
    def _next_iteration(act: ActivityState) -> int:
        return act.iteration + 1 if act.has_run else act.iteration

    def schedule(self, key: str) -> None:
        """Resolve ``key``'s templates and queue it (or make it wait).

        An activity that waits for a signal has its parameters resolved when
        the signal arrives, so they can use ``SIGNAL.*``.
        """
        act = self.acts[key]
        settings = self.definition(key).settings
        iteration = self._next_iteration(act)
        wait_signal = None
        wait_timeout_at = None
        signal_data = None
        if settings.wait_for_signal is not None:
            wait = settings.wait_for_signal
            buffered = next(
                (
                    s
                    for s in self.state.signals
                    if s.activity_key == key
                    and s.event_name == wait.event_name
                    and s.id not in self._consumed
                ),
                None,
            )
            if buffered is not None:
                self._consumed.add(buffered.id)
                self._out.append(ConsumeSignal(signal_id=buffered.id))
                signal_data = dict(buffered.data or {})
            else:
                wait_signal = wait.event_name
                if wait.timeout_seconds is not None:
                    wait_timeout_at = self.ctx.now + dt.timedelta(seconds=wait.timeout_seconds)
        context = self.context_for(key, iteration, signal_data)
        try:
            available_at = self._start_time(settings.delay, settings.scheduled_for, context)
            parameters = None if wait_signal else self._parameters(key, context)
        except (TemplateError, ValueError, TypeError, OverflowError) as exc:
            self._fail_scheduling(key, iteration, exc)
            return
        due = available_at or self.ctx.now
        waiting = wait_signal is not None or due > self.ctx.now
        scheduled = attrs.evolve(
            act,
            status=S.WAITING if waiting else S.PENDING,
            iteration=iteration,
            attempt=1,
            parameters=parameters,
            available_at=due,
            wait_signal=wait_signal,
            wait_timeout_at=wait_timeout_at,
            signal_data=signal_data,
            error=None,
            failure_handled=False,
            completed_at=None,
        )
        self.put(scheduled, new_attempt=True)
        self.emit(
            "activity.scheduled",
            key,
            iteration=iteration,
            status=scheduled.status.value,
            available_at=due,
            waits_for_signal=wait_signal,
        )
        self._after_schedule(scheduled)

    def _parameters(self, key: str, context: Mapping[str, Any]) -> Any:
        """Rendered parameters, checked to be storable JSON of a sane size.

        Raises:
            TemplateError: rendering failed, or the result is not JSON (an
                integer beyond 64 bits, an object) or is too large.
        """
        rendered = self.ctx.templates.render(
            dict(self.definition(key).parameters), context, path="parameters"
        )
        try:
            size = len(dumps(rendered))
        except (TypeError, ValueError) as exc:
            raise TemplateError(f"parameters: the rendered value cannot be stored as JSON: {exc}"
                                ) from exc
        if size > MAX_PARAMETERS_BYTES:
            raise TemplateError(f"parameters: the rendered value is {size} bytes, above the "
                                f"limit of {MAX_PARAMETERS_BYTES}")
        return rendered

    def _fail_scheduling(self, key: str, iteration: int, exc: Exception) -> None:
        code = "TEMPLATE_ERROR" if isinstance(exc, TemplateError) else "INVALID_SCHEDULE"
        self.put(attrs.evolve(self.acts[key], iteration=iteration, attempt=1))
        self.fail_now(key, ErrorInfo(code=code, message=str(exc)))
        self.loop_back(key)

    def _after_schedule(self, act: ActivityState) -> None:
        if act.status == S.PENDING:
            self._out.append(WakeQueue(queue=self.definition(act.key).worker))
            return
        at = act.wait_timeout_at if act.wait_signal is not None else act.available_at
        if at is not None:
            self._out.append(ArmTimer(at=at))

    def _start_time(
        self, delay: str | None, scheduled_for: str | None, context: Mapping[str, Any]
    ) -> dt.datetime | None:
        if delay is not None:
            text = str(self.ctx.templates.render(delay, context, path="settings.delay"))
            try:
                return self.ctx.now + parse_duration(text)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"settings.delay: {exc}") from exc
            except OverflowError:
                raise ValueError(f"settings.delay: {text!r} is beyond the year 9999") from None
        if scheduled_for is not None:
            value = self.ctx.templates.render(scheduled_for, context, path="settings.scheduled_for")
            if isinstance(value, dt.datetime):
                return value
            try:
                return parse_datetime(str(value))
            except (ValueError, OverflowError) as exc:
                raise ValueError(f"settings.scheduled_for: {value!r} is not a usable "
                                 f"RFC 3339 time ({exc})") from exc
        return None

    def skip(self, key: str, reason: str) -> None:
        act = self.acts[key]
        self.put(attrs.evolve(act, status=S.SKIPPED, completed_at=self.ctx.now), release_lease=True)
        self.emit("activity.skipped", key, reason=reason)

    def fail_now(self, key: str, error: ErrorInfo) -> None:
        act = self.acts[key]
        self.put(
            attrs.evolve(
                act, status=S.FAILED, error=error, completed_at=self.ctx.now, has_run=True
            ),
            release_lease=True,
        )
        self.emit(
            "activity.failed",
            key,
            iteration=act.iteration,
            attempt=act.attempt,
            error=error.as_dict(),
        )

    def finish_if_done(self) -> None:
        if self.status.is_terminal or not all(a.status.is_terminal for a in self.acts.values()):
            return
        unhandled = [
            a for a in self.acts.values() if a.status == S.FAILED and not a.failure_handled
        ]
        if unhandled:
            first = unhandled[0]
            assert first.error is not None
            message = f"activity {first.key!r} failed: {first.error.code}: {first.error.message}"
            if len(unhandled) > 1:
                others = ", ".join(repr(a.key) for a in unhandled[1:])
                message += f" (also failed: {others})"
            self.status = WorkflowStatus.FAILED
            self._out.append(PutWorkflow(status=self.status, error_message=message, finished=True))
            self.emit("workflow.failed", error_message=message)
        else:
            self.status = WorkflowStatus.COMPLETED
            self._out.append(PutWorkflow(status=self.status, finished=True))
            self.emit("workflow.completed", total_cost_usd=str(self.total_cost))
