"""The ``script`` activity of the ``py-std`` worker (PROTOCOL §9).

Parameters ``{script, inputs}``; output ``result`` = the script's ``OUTPUT``.
The script runs in a child interpreter of a shared :class:`ScriptPool` and
sees ``INPUT`` (= ``inputs``, default ``{}``), ``OUTPUT`` (initially ``{}``),
``workflow_id``, ``activity_key`` and ``logger`` (a stdlib logger); it may use
top-level ``await``. Its log records are re-logged here as ``script.log``
events, its captured stdout/stderr as ``script.stdout`` / ``script.stderr``.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from kflow.activities.script_pool import ScriptOutcome
from kflow.errors import ActivityError
from kflow.worker.activity import Activity, ActivityResult
from kflow.worker.context import ActivityContext

DEFAULT_TIMEOUT_SECONDS = 300.0


class ScriptRunner(Protocol):
    """What the activity needs of a pool: :meth:`ScriptPool.run`."""

    async def run(
        self,
        script: str,
        inputs: Any = None,
        *,
        timeout: float,
        workflow_id: uuid.UUID | str | None = None,
        activity_key: str | None = None,
    ) -> ScriptOutcome:
        """Run one script; see :meth:`ScriptPool.run`."""
        ...


class ScriptActivity(Activity):
    """``script``: run user Python in the shared pool (which the caller owns and closes)."""

    name = "script"

    def __init__(self, pool: ScriptRunner, *, default_timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.pool = pool
        self.default_timeout = default_timeout

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Run the script; timeout = ``ctx.timeout_seconds`` (fallback 300 s).

        Raises:
            ActivityError: ``MISSING_SCRIPT``, ``INVALID_PARAMETERS``,
                ``SYNTAX_ERROR``, ``SCRIPT_ERROR`` (not retryable), ``TIMEOUT``
                (retryable), ``SCRIPT_CRASHED`` (retryable unless the memory
                limit killed the interpreter).
            trio.ClosedResourceError: the pool is closed (worker shutting down).
        """
        script = params.get("script")
        if script is not None and not isinstance(script, str):
            raise ActivityError(
                "invalid parameter 'script': a string is required",
                code="INVALID_PARAMETERS",
                retryable=False,
            )
        timeout = ctx.timeout_seconds or self.default_timeout
        outcome = await self.pool.run(
            script or "",
            params.get("inputs"),
            timeout=timeout,
            workflow_id=ctx.workflow_id,
            activity_key=ctx.activity_key,
        )
        relog(ctx, outcome)
        if not outcome.ok:
            raise ActivityError(
                outcome.error_message or "",
                code=outcome.error_code or "SCRIPT_ERROR",
                retryable=outcome.retryable,
            )
        return ActivityResult.value("result", outcome.output)


def relog(ctx: ActivityContext, outcome: ScriptOutcome) -> None:
    """Emit the script's log records and captured output on ``ctx.logger``."""
    for record in outcome.logs:
        ctx.logger.log(
            record.level, "script.log", message=record.message, script_logger=record.logger
        )
    if outcome.stdout:
        ctx.logger.info("script.stdout", text=outcome.stdout)
    if outcome.stderr:
        ctx.logger.info("script.stderr", text=outcome.stderr)
