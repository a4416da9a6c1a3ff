"""The orchestrator's handling of events: what one event does to a run.

A completion records outputs and moves on; a failure retries (or hands an
interrupted attempt out again) or fails the activity; a signal resolves the
parameters of the activity waiting for it; a timeout or a cancellation stops
the run. After each event the run finishes when every activity is terminal.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._types import WorkflowStatus
from kflow.errors import TemplateError
from kflow.server.decide_base import INTERRUPTED, DeciderBase, S
from kflow.server.state import (
    ActivityCompleted,
    ActivityFailed,
    AddCost,
    CancelRequested,
    ErrorInfo,
    Event,
    PutWorkflow,
    SignalDelivered,
    SignalTimedOut,
    WorkflowStarted,
    WorkflowTimedOut,
)


class EventHandling(DeciderBase):
    """The part of a decision that applies the event."""

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
            again = attrs.evolve(act, status=S.PENDING, available_at=self.ctx.now, cost_usd=spent)
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
