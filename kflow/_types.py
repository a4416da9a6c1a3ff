"""Small shared enums used by both the engine and the worker SDK."""

from __future__ import annotations

import enum


class OutputType(enum.StrEnum):
    """How an activity output is carried: an inline JSON value or a stored file/folder."""

    VALUE = "value"
    FILE = "file"
    FOLDER = "folder"


class WorkflowStatus(enum.StrEnum):
    """Lifecycle of a workflow run (PROTOCOL §5)."""

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_WORKFLOW


class ActivityStatus(enum.StrEnum):
    """Lifecycle of one activity of a run (PROTOCOL §5)."""

    NOT_SCHEDULED = "not_scheduled"
    WAITING = "waiting"  # delay, scheduled_for, retry backoff or a signal
    PENDING = "pending"  # in its queue, claimable
    RUNNING = "running"  # claimed by a worker under a lease
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_ACTIVITY


_TERMINAL_WORKFLOW = frozenset(
    {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)
_TERMINAL_ACTIVITY = frozenset(
    {
        ActivityStatus.COMPLETED,
        ActivityStatus.FAILED,
        ActivityStatus.SKIPPED,
        ActivityStatus.CANCELLED,
    }
)
