"""The ``echo`` activity of the ``std`` worker: returns its parameters unchanged.

Useful for wiring tests and for passing resolved template values along:
``{"echo": <parameters>}`` (PROTOCOL §9).
"""

from __future__ import annotations

from typing import Any

from kflow.worker.activity import Activity, ActivityResult
from kflow.worker.context import ActivityContext


class EchoActivity(Activity):
    """``echo`` → output ``echo`` = the parameters object. Never fails."""

    name = "echo"

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        return ActivityResult.value("echo", params)
