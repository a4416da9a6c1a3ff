"""A verified fake of the engine's persistence for orchestrator tests.

``Run`` keeps a WorkflowState in memory and applies ``decide``'s commands the
way the engine writes them to the database, so tests can drive a whole run
(start, claim, complete, fail, timers) without a store.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import attrs

from kflow._types import ActivityStatus, WorkflowStatus
from kflow.model.graph import DefinitionGraph
from kflow.model.loader import load_definition
from kflow.server.orchestrator import DecideContext, decide
from kflow.server.state import (
    ActivityCompleted,
    ActivityFailed,
    ActivityState,
    AddCost,
    ArmTimer,
    BufferedSignal,
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
from kflow.templates import TemplateEngine

S = ActivityStatus
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TEMPLATES = TemplateEngine()


class Run:
    """One simulated workflow run."""

    def __init__(
        self,
        source: str,
        input: dict[str, Any] | None = None,
        *,
        secrets: frozenset[str] = frozenset(),
        start: bool = True,
    ) -> None:
        definition = load_definition(source)
        self.now = T0
        self.secret_names = secrets
        self.events: list[Emit] = []
        self.woken: list[str] = []
        self.timers: list[dt.datetime] = []
        self.error_message: str | None = None
        self.state = WorkflowState(
            id=uuid.uuid4(),
            status=WorkflowStatus.CREATED,
            definition=definition,
            graph=DefinitionGraph(definition),
            input=input or {},
            created_at=T0,
            activities={a.key: ActivityState(key=a.key) for a in definition.activities},
        )
        if start:
            self.send(WorkflowStarted())

    # ---- driving ---------------------------------------------------------------

    def send(self, event: Event) -> list[Command]:
        ctx = DecideContext(now=self.now, templates=TEMPLATES, secret_names=self.secret_names)
        commands = decide(self.state, event, ctx)
        self.apply(commands)
        return commands

    def apply(self, commands: list[Command]) -> None:
        acts = dict(self.state.activities)
        status = self.state.status
        cost = self.state.total_cost_usd
        signals = list(self.state.signals)
        for command in commands:
            match command:
                case PutActivity(activity=act):
                    acts[act.key] = act
                case PutWorkflow(status=new, error_message=message):
                    status = new
                    self.error_message = message or self.error_message
                case AddCost(amount=amount):
                    cost += amount
                case ConsumeSignal(signal_id=sid):
                    signals = [s for s in signals if s.id != sid]
                case Emit():
                    self.events.append(command)
                case WakeQueue(queue=queue):
                    self.woken.append(queue)
                case ArmTimer(at=at):
                    self.timers.append(at)
        self.state = attrs.evolve(
            self.state, activities=acts, status=status, total_cost_usd=cost, signals=tuple(signals)
        )

    def claim(self, key: str) -> ActivityState:
        act = self.act(key)
        assert act.status == S.PENDING, f"{key} is {act.status}"
        running = attrs.evolve(act, status=S.RUNNING)
        self.state = attrs.evolve(self.state, activities={**self.state.activities, key: running})
        return running

    def complete(self, key: str, cost: str = "0", **outputs: Any) -> list[Command]:
        self.claim(key)
        return self.send(
            ActivityCompleted(key=key, outputs=outputs, cost_usd=decimal.Decimal(cost))
        )

    def fail(
        self, key: str, code: str = "BOOM", *, retryable: bool = True, message: str = "it broke"
    ) -> list[Command]:
        self.claim(key)
        return self.send(
            ActivityFailed(
                key=key, error=ErrorInfo(code=code, message=message, retryable=retryable)
            )
        )

    def signal(self, key: str, data: dict[str, Any] | None = None) -> list[Command]:
        return self.send(SignalDelivered(key=key, data=data))

    def buffer_signal(self, key: str, event_name: str, data: dict[str, Any]) -> None:
        sig = BufferedSignal(id=uuid.uuid4(), activity_key=key, event_name=event_name, data=data)
        self.state = attrs.evolve(self.state, signals=(*self.state.signals, sig))

    def signal_timeout(self, key: str) -> list[Command]:
        return self.send(SignalTimedOut(key=key))

    def cancel(self) -> list[Command]:
        return self.send(CancelRequested(reason="test"))

    def timeout(self, reason: str = "stuck") -> list[Command]:
        return self.send(WorkflowTimedOut(reason=reason))

    def advance(self, seconds: float) -> list[str]:
        """Move time on and promote due waiting activities (as the scheduler does)."""
        self.now += dt.timedelta(seconds=seconds)
        promoted = []
        acts = dict(self.state.activities)
        for key, act in acts.items():
            if (
                act.status == S.WAITING
                and act.wait_signal is None
                and act.available_at is not None
                and act.available_at <= self.now
            ):
                acts[key] = attrs.evolve(act, status=S.PENDING)
                promoted.append(key)
        self.state = attrs.evolve(self.state, activities=acts)
        return promoted

    # ---- reading ---------------------------------------------------------------------

    def act(self, key: str) -> ActivityState:
        return self.state.activities[key]

    def status_of(self, key: str) -> ActivityStatus:
        return self.act(key).status

    @property
    def status(self) -> WorkflowStatus:
        return self.state.status

    def pending(self) -> list[str]:
        return [k for k, a in self.state.activities.items() if a.status == S.PENDING]

    def event_types(self, key: str | None = None) -> list[str]:
        return [e.type for e in self.events if key is None or e.activity_key == key]

    def run_all(self, outputs: dict[str, dict[str, Any]] | None = None, limit: int = 1000) -> None:
        """Complete pending activities (with ``outputs[key]``) until nothing is pending."""
        outputs = outputs or {}
        for _ in range(limit):
            ready = self.pending()
            if not ready:
                return
            key = ready[0]
            self.complete(key, **outputs.get(key, {}))
        raise AssertionError("run_all did not settle")
