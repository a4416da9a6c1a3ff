"""The worker SDK: write activities and run them against a kflow server.

Importing this package is kept cheap (no server, template or database code).
"""

from kflow._types import OutputType
from kflow.worker.activity import (
    Activity,
    ActivityOutput,
    ActivityResult,
    Failure,
    Usage,
    activity,
)
from kflow.worker.api import WorkerApi
from kflow.worker.config import WorkerConfig
from kflow.worker.context import ActivityContext
from kflow.worker.manager import WorkerManager
from kflow.worker.registry import ActivityRegistry
from kflow.worker.wire import ClaimedActivity, ReportOutcome

__all__ = [
    "Activity",
    "ActivityContext",
    "ActivityOutput",
    "ActivityRegistry",
    "ActivityResult",
    "ClaimedActivity",
    "Failure",
    "OutputType",
    "ReportOutcome",
    "Usage",
    "WorkerApi",
    "WorkerConfig",
    "WorkerManager",
    "activity",
]
