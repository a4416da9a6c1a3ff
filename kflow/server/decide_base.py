"""The working state of one decision of the orchestrator, and its primitives.

:class:`DeciderBase` holds a private, mutable copy of a run's activity states
and the commands gathered so far; it offers what every part of a decision
uses (record an activity, emit an event, build a template context, skip or
fail an activity) and declares the steps the parts call on one another.
The parts live in ``decide_events``, ``decide_readiness``,
``decide_scheduling`` and ``decide_loops``; ``orchestrator`` composes them.
Nothing here performs I/O.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._types import ActivityStatus, WorkflowStatus
from kflow.model.definition import ActivityDefinition, Dependency
from kflow.server.state import (
    ActivityState,
    Command,
    Emit,
    ErrorInfo,
    PutActivity,
    PutWorkflow,
    WorkflowState,
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


class DeciderBase(abc.ABC):
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

    # ---- state changes ------------------------------------------------------

    @staticmethod
    def _next_iteration(act: ActivityState) -> int:
        return act.iteration + 1 if act.has_run else act.iteration

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

    # ---- steps of the parts, declared so that each part can call the others ----

    @abc.abstractmethod
    def settle(self) -> None:
        """Start, skip or fail every not-scheduled activity whose turn has come."""

    @abc.abstractmethod
    def edge_applies(
        self, dep: Dependency, key: str, iteration: int, *, raise_errors: bool = False
    ) -> bool:
        """Whether every condition of ``dep`` is truthy (True for plain edges)."""

    @abc.abstractmethod
    def schedule(self, key: str) -> None:
        """Resolve ``key``'s templates and queue it (or make it wait)."""

    @abc.abstractmethod
    def _parameters(self, key: str, context: Mapping[str, Any]) -> Any:
        """Rendered parameters, checked to be storable JSON of a sane size."""

    @abc.abstractmethod
    def _fail_scheduling(self, key: str, iteration: int, exc: Exception) -> None:
        """Fail ``key``, which could not be scheduled because of ``exc``."""

    @abc.abstractmethod
    def _after_schedule(self, act: ActivityState) -> None:
        """Wake the queue of a pending activity, or arm the timer of a waiting one."""

    @abc.abstractmethod
    def after_terminal(self, key: str) -> None:
        """Loop, re-arm dependents and settle after ``key`` became terminal."""

    @abc.abstractmethod
    def loop_back(self, source: str) -> None:
        """Run the loop of a back-edge from ``source`` that applies, if any."""
