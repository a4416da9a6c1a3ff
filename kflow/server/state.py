"""Value objects of the orchestrator: the state it reads, the events it
reacts to and the commands it returns.

``decide(state, event, ctx) -> list[Command]`` (see :mod:`orchestrator`) is
pure: it reads these frozen objects and describes changes as commands; the
engine applies the commands in the same database transaction that loaded the
state.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._types import ActivityStatus, WorkflowStatus
from kflow.model.definition import WorkflowDefinition
from kflow.model.graph import DefinitionGraph

ZERO = decimal.Decimal(0)


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """Why an activity failed (stored with the activity and returned by the API)."""

    code: str
    message: str
    retryable: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ErrorInfo | None:
        if not data:
            return None
        return cls(
            code=str(data.get("code", "ERROR")),
            message=str(data.get("message", "")),
            retryable=bool(data.get("retryable", False)),
        )


@attrs.frozen(kw_only=True)
class ActivityState:
    """The engine-owned state of one activity of a run.

    ``iteration`` is 0-based: the index of the current (or last) run of the
    activity. ``attempt`` is 1-based within the current run (0 before any).
    For ``iteration_scoped`` activities every output holds the list of
    per-iteration values.
    """

    key: str
    status: ActivityStatus = ActivityStatus.NOT_SCHEDULED
    iteration: int = 0
    attempt: int = 0
    parameters: Mapping[str, Any] | None = None
    available_at: dt.datetime | None = None
    wait_signal: str | None = None
    wait_timeout_at: dt.datetime | None = None
    signal_data: Mapping[str, Any] | None = None
    outputs: Mapping[str, Any] | None = None
    error: ErrorInfo | None = None
    failure_handled: bool = False
    cost_usd: decimal.Decimal = ZERO
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    #: True once the activity has finished at least one run (completed or failed).
    has_run: bool = False


@attrs.frozen(kw_only=True)
class BufferedSignal:
    """A signal that arrived before its activity started waiting for it."""

    id: uuid.UUID
    activity_key: str
    event_name: str
    data: Mapping[str, Any] | None


@attrs.frozen(kw_only=True)
class WorkflowState:
    """Everything ``decide`` may look at for one run."""

    id: uuid.UUID
    status: WorkflowStatus
    definition: WorkflowDefinition
    graph: DefinitionGraph
    input: Mapping[str, Any]
    activities: Mapping[str, ActivityState]
    total_cost_usd: decimal.Decimal = ZERO
    created_at: dt.datetime
    signals: tuple[BufferedSignal, ...] = ()


# ---- events: what happened ---------------------------------------------------


@attrs.frozen(kw_only=True)
class WorkflowStarted:
    """A run was created; its roots may start."""


@attrs.frozen(kw_only=True)
class ActivityCompleted:
    """The current attempt of ``key`` finished with outputs."""

    key: str
    outputs: Mapping[str, Any]
    cost_usd: decimal.Decimal = ZERO


@attrs.frozen(kw_only=True)
class ActivityFailed:
    """The current attempt of ``key`` failed (reported, timed out or lost its lease)."""

    key: str
    error: ErrorInfo
    cost_usd: decimal.Decimal = ZERO


@attrs.frozen(kw_only=True)
class SignalDelivered:
    """A signal for ``key`` (waiting for ``event_name``) arrived."""

    key: str
    data: Mapping[str, Any] | None


@attrs.frozen(kw_only=True)
class SignalTimedOut:
    """``key`` waited for its signal longer than ``timeout_seconds``."""

    key: str


@attrs.frozen(kw_only=True)
class WorkflowTimedOut:
    """The run exceeded ``settings.timeout``; ``reason`` says what was stuck."""

    reason: str


@attrs.frozen(kw_only=True)
class CancelRequested:
    """Someone cancelled the run."""

    reason: str = "cancelled by request"


Event = (
    WorkflowStarted
    | ActivityCompleted
    | ActivityFailed
    | SignalDelivered
    | SignalTimedOut
    | WorkflowTimedOut
    | CancelRequested
)


# ---- commands: what to change -------------------------------------------------


@attrs.frozen(kw_only=True)
class PutActivity:
    """Store ``activity`` as the new state of its row.

    ``new_attempt`` asks for a fresh attempt id (and clears lease fields):
    the activity was (re)scheduled. ``release_lease`` clears the lease fields
    without a new attempt (it finished, was skipped or reset).
    """

    activity: ActivityState
    new_attempt: bool = False
    release_lease: bool = False


@attrs.frozen(kw_only=True)
class PutWorkflow:
    """Change the run's status (and error message when it failed)."""

    status: WorkflowStatus
    error_message: str | None = None
    finished: bool = False


@attrs.frozen(kw_only=True)
class AddCost:
    """Add spend to the run's total."""

    amount: decimal.Decimal


@attrs.frozen(kw_only=True)
class ConsumeSignal:
    """Delete a buffered signal that has now been delivered."""

    signal_id: uuid.UUID


@attrs.frozen(kw_only=True)
class Emit:
    """Append an event to the run's history."""

    type: str
    activity_key: str | None = None
    data: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class WakeQueue:
    """After commit, wake pollers of ``queue``: work became claimable."""

    queue: str


@attrs.frozen(kw_only=True)
class ArmTimer:
    """After commit, make sure the scheduler looks again at ``at``."""

    at: dt.datetime


Command = PutActivity | PutWorkflow | AddCost | ConsumeSignal | Emit | WakeQueue | ArmTimer
