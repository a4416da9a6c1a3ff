"""Run one claimed activity attempt: look it up, execute it with a timeout and
heartbeats, turn whatever happened into a result, and report it.

Outcomes and their wire codes:

=============================  ==========================  =========
what happened                  code                        retryable
=============================  ==========================  =========
no implementation here         ``UNKNOWN_ACTIVITY``        no
ran past its timeout           ``TIMEOUT``                 yes
raised ``ActivityError``       its code                    its flag
raised anything else           ``EXECUTION_ERROR``         yes
output has no JSON form        ``INVALID_OUTPUT``          no
worker stopped (past timeout)  ``WORKER_SHUTDOWN``         yes
=============================  ==========================  =========

Heartbeats of every running attempt come from one task per worker
(:class:`Heartbeats`), not a task per attempt: most attempts end long before
their first heartbeat is due, and a nursery and a task per attempt cost about
45 µs of CPU each time. A heartbeat answered 409 (lease lost or run
cancelled) cancels the attempt and nothing is reported. The final report goes
through :meth:`~kflow.worker.outbox.Reporter.deliver` (shielded, time-bounded,
backed by the outbox) while the attempt is still heartbeated. One canonical log line,
``activity.finished``, closes every attempt.
"""

from __future__ import annotations

import contextlib
import decimal
import math
import pathlib
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import httpx
import structlog
import trio

from kflow.errors import ActivityCancelled, ActivityError, KflowError
from kflow.worker.activity import Activity, ActivityResult, Failure
from kflow.worker.api import WorkerApi
from kflow.worker.config import WorkerConfig
from kflow.worker.context import ActivityContext
from kflow.worker.outbox import Reporter
from kflow.worker.registry import ActivityRegistry
from kflow.worker.wire import ClaimedActivity, Report, ReportOutcome, describe

logger = structlog.get_logger("kflow.worker")


@attrs.define(eq=False)  # hashed by identity: the heartbeat service keys on it
class _Attempt:
    """Mutable state of one attempt, shared by the attempt and the heartbeat service."""

    item: ClaimedActivity
    log: Any
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    cancelled_by_server: bool = False

    def cancel_by_server(self, message: str) -> None:
        if not self.cancelled_by_server:
            self.log.warning("activity.cancelled_by_server", message=message)
        self.cancelled_by_server = True
        self.scope.cancel()


class _AttemptApi:
    """The ``ActivityApi`` handed to an activity's context.

    A heartbeat answered 409 also cancels the attempt; other heartbeat
    failures are logged and swallowed (the checkpoint is lost, the work goes on).
    """

    def __init__(self, api: WorkerApi, attempt: _Attempt) -> None:
        self._api = api
        self._attempt = attempt

    async def heartbeat(
        self, activity_id: uuid.UUID, worker_id: str, details: Any | None
    ) -> object:
        try:
            return await self._api.heartbeat(activity_id, worker_id, details)
        except ActivityCancelled as exc:
            self._attempt.cancel_by_server(exc.message)
            raise
        except (KflowError, httpx.HTTPError) as exc:
            self._attempt.log.warning("activity.heartbeat_failed", error=describe(exc))
            return None

    async def upload_file(
        self,
        workflow_id: uuid.UUID,
        activity_key: str,
        filename: str,
        data: bytes,
        content_type: str | None,
    ) -> Mapping[str, Any]:
        return await self._api.upload_file(workflow_id, activity_key, filename, data, content_type)

    async def download_file(
        self, workflow_id: uuid.UUID, activity_key: str, filename: str
    ) -> bytes:
        return await self._api.download_file(workflow_id, activity_key, filename)

    async def reserve_budget(
        self, activity_id: uuid.UUID, worker_id: str, amount: decimal.Decimal
    ) -> Mapping[str, Any]:
        return await self._api.reserve_budget(activity_id, worker_id, amount)


class Heartbeats:
    """Sends the heartbeats of every running attempt of one worker, from one task.

    :meth:`watch` registers an attempt for its first heartbeat one interval
    from now; after each heartbeat the next is due one interval (the
    server's ``next_heartbeat_seconds`` when it names one) after the answer,
    as long as the attempt is still watched. A 409 answer cancels the
    attempt; other failures are logged and the heartbeat is tried again one
    interval later. Heartbeats are sent concurrently; :meth:`serve` must run
    (in a nursery that outlives the attempts) for any to be sent.
    """

    def __init__(self, api: WorkerApi, config: WorkerConfig) -> None:
        self._api = api
        self._config = config
        self._due: dict[_Attempt, float] = {}
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    @contextlib.contextmanager
    def watch(self, attempt: _Attempt) -> Iterator[None]:
        """Heartbeat ``attempt`` while the ``with`` block runs."""
        due = trio.current_time() + self._config.heartbeat_interval
        self._due[attempt] = due
        if due < self._sleeping_until:
            self._wake.set()
        try:
            yield
        finally:
            del self._due[attempt]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send heartbeats as they fall due, until cancelled."""
        async with trio.open_nursery() as beats:
            task_status.started()
            while True:
                now = trio.current_time()
                next_due = math.inf
                for attempt, due in list(self._due.items()):
                    if due <= now:
                        self._due[attempt] = math.inf  # one heartbeat in flight at a time
                        beats.start_soon(self._beat, attempt)
                    else:
                        next_due = min(next_due, due)
                self._wake = trio.Event()
                self._sleeping_until = next_due
                with trio.move_on_at(next_due):
                    await self._wake.wait()

    async def _beat(self, attempt: _Attempt) -> None:
        wanted: float | None = None
        try:
            wanted = await self._api.heartbeat(
                attempt.item.activity_id, self._config.worker_id, None
            )
        except ActivityCancelled as exc:
            if attempt in self._due:
                attempt.cancel_by_server(exc.message)
            return
        except (KflowError, httpx.HTTPError) as exc:
            if attempt in self._due:
                attempt.log.warning("activity.heartbeat_failed", error=describe(exc))
        if attempt in self._due:
            self._due[attempt] = trio.current_time() + (wanted or self._config.heartbeat_interval)
            # the service sleeps until the earliest other due time: wake it to re-plan
            self._wake.set()


class ActivityRunner:
    """Runs claimed attempts for one worker process (shared by all its slots).

    Its :attr:`heartbeats` service must be running (see :meth:`Heartbeats.serve`).
    """

    def __init__(
        self,
        *,
        config: WorkerConfig,
        registry: ActivityRegistry,
        api: WorkerApi,
        reporter: Reporter,
        thread_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._api = api
        self._reporter = reporter
        self._thread_limiter = thread_limiter
        self.heartbeats = Heartbeats(api, config)

    async def run(self, item: ClaimedActivity) -> str:
        """Run ``item`` to the end and report it; returns the logged outcome
        (``ok|error|timeout|cancelled|lease_lost``).

        Cancellation from outside (the worker stopping past its shutdown
        timeout) cancels the activity, reports ``WORKER_SHUTDOWN`` and re-raises.

        Raises:
            sqlite3.Error, OSError: the outbox could not store an unsent result.
        """
        started = trio.current_time()
        fields = {
            "activity_id": str(item.activity_id),
            "workflow_id": str(item.workflow_id),
            "activity_key": item.activity_key,
            "activity_name": item.activity_name,
            "attempt": item.attempt,
        }
        attempt = _Attempt(item=item, log=logger.bind(**fields))
        with structlog.contextvars.bound_contextvars(**fields), self.heartbeats.watch(attempt):
            try:
                result, outcome = await self._attempt(attempt)
            except trio.Cancelled:
                result = ActivityResult.error(
                    "the worker shut down before the activity finished",
                    code="WORKER_SHUTDOWN",
                    retryable=True,
                )
                await self._report(attempt, result, "cancelled", started)
                raise
            if result is None:
                self._finished(attempt, started, "cancelled", None, None)
            else:
                outcome = await self._report(attempt, result, outcome, started)
        return outcome

    def take_next(self, item: ClaimedActivity) -> ClaimedActivity | None:
        """The activity ``item``'s report claimed for this worker (its run's next
        step, see ``WorkerApi.claim_next``), handed out once; None if none."""
        return self._api.take_next(item.activity_id)

    async def _attempt(self, attempt: _Attempt) -> tuple[ActivityResult | None, str]:
        """Execute the activity; ``(None, "cancelled")`` when the server cancelled it."""
        item = attempt.item
        impl = self._registry.get(item.worker, item.activity_name)
        if impl is None:
            served = ", ".join(self._registry.activity_types()) or "nothing"
            message = (
                f"no activity {item.activity_name!r} for worker {item.worker!r} here; "
                f"this worker serves: {served}"
            )
            return ActivityResult.error(message, code="UNKNOWN_ACTIVITY", retryable=False), "error"
        timeout = item.timeout_seconds or self._config.activity_timeout
        ctx = self._context(attempt)
        outcome: tuple[ActivityResult | None, str] = (None, "cancelled")
        try:
            with attempt.scope:  # cancelled by a heartbeat answered 409
                outcome = await self._execute(impl, attempt, ctx, timeout)
            return outcome
        finally:
            workdir = ctx.workdir_created
            if workdir is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, workdir, True)

    async def _execute(
        self, impl: Activity, attempt: _Attempt, ctx: ActivityContext, limit: float
    ) -> tuple[ActivityResult | None, str]:
        result, outcome = await self._execute_bare(impl, attempt, ctx, limit)
        return _with_recorded(result, ctx), outcome

    async def _execute_bare(
        self, impl: Activity, attempt: _Attempt, ctx: ActivityContext, limit: float
    ) -> tuple[ActivityResult | None, str]:
        try:
            with trio.fail_after(limit):
                raw: Any = await impl.execute(dict(attempt.item.parameters), ctx)
        except Exception as exc:
            if attempt.cancelled_by_server:
                return None, "cancelled"
            return _from_exception(_unwrap(exc), limit, attempt.log)
        if attempt.cancelled_by_server:
            return None, "cancelled"
        if isinstance(raw, ActivityResult):
            return raw, "error" if raw.is_error else "ok"
        if isinstance(raw, Mapping):
            return ActivityResult.values(raw), "ok"
        return ActivityResult.error(
            f"activity returned {type(raw).__name__}; expected an ActivityResult or a mapping "
            "of output names to values",
            code="INVALID_OUTPUT",
            retryable=False,
        ), "error"

    def _context(self, attempt: _Attempt) -> ActivityContext:
        item = attempt.item

        def workdir() -> pathlib.Path:  # named when the activity first asks for it
            return pathlib.Path(tempfile.gettempdir()) / (
                f"kflow-{item.activity_id}-{secrets.token_hex(3)}"
            )

        return ActivityContext(
            workflow_id=item.workflow_id,
            activity_id=item.activity_id,
            activity_key=item.activity_key,
            activity_name=item.activity_name,
            worker=item.worker,
            worker_id=self._config.worker_id,
            attempt=item.attempt or 1,
            timeout_seconds=item.timeout_seconds or self._config.activity_timeout,
            settings=item.settings,
            signal=item.signal_data,
            heartbeat_details=item.heartbeat_details,
            budget_remaining_usd=item.budget_remaining_usd,
            workdir=workdir,
            api=_AttemptApi(self._api, attempt),
            thread_limiter=self._thread_limiter,
        )

    async def _report(
        self, attempt: _Attempt, result: ActivityResult, outcome: str, started: float
    ) -> str:
        """Deliver the result (shielded by the reporter); log the canonical line."""
        item = attempt.item
        try:
            report = Report.from_result(item.activity_id, self._config.worker_id, result)
        except TypeError as exc:
            failure = Failure(
                code="INVALID_OUTPUT", retryable=False, message=f"an output has no JSON form: {exc}"
            )
            result = attrs.evolve(result, outputs=(), failure=failure)
            report = Report.from_result(item.activity_id, self._config.worker_id, result)
            outcome = "error"
        reported = await self._reporter.deliver(report)
        if reported is ReportOutcome.LEASE_LOST:
            outcome = "lease_lost"
        self._finished(attempt, started, outcome, result, reported)
        return outcome

    def _finished(
        self,
        attempt: _Attempt,
        started: float,
        outcome: str,
        result: ActivityResult | None,
        reported: ReportOutcome | None,
    ) -> None:
        fields: dict[str, Any] = {
            "outcome": outcome,
            "duration_ms": round((trio.current_time() - started) * 1000),
            "cost_usd": _total_cost(result),
        }
        if result is not None and result.failure is not None:
            fields["code"] = result.failure.code
            fields["message"] = result.failure.message
        if reported is not None:
            fields["reported"] = reported.value
        emit = attempt.log.info if outcome == "ok" else attempt.log.warning
        emit("activity.finished", **fields)


def _from_exception(exc: BaseException, timeout: float, log: Any) -> tuple[ActivityResult, str]:
    if isinstance(exc, trio.TooSlowError):
        return ActivityResult.error(
            f"activity timed out after {timeout:g} s", code="TIMEOUT", retryable=True
        ), "timeout"
    if isinstance(exc, ActivityError):
        return ActivityResult.error(exc.message, code=exc.code, retryable=exc.retryable), "error"
    log.error("activity.exception", exc_info=exc)
    return ActivityResult.error(
        f"{type(exc).__name__}: {exc}", code="EXECUTION_ERROR", retryable=True
    ), "error"


def _with_recorded(result: ActivityResult | None, ctx: ActivityContext) -> ActivityResult | None:
    """``result`` plus the usage and cost recorded on ``ctx`` during the attempt."""
    if result is None or not (ctx.recorded_usage or ctx.recorded_cost):
        return result
    merged = result.with_usage(*ctx.recorded_usage)
    if ctx.recorded_cost:
        merged = merged.with_cost((result.cost_usd or 0) + ctx.recorded_cost)
    return merged


def _unwrap(exc: BaseException) -> BaseException:
    """The single leaf of nested one-element exception groups (from activity nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _total_cost(result: ActivityResult | None) -> str | None:
    if result is None:
        return None
    parts = [result.cost_usd, *(u.cost_usd for u in result.usage)]
    known = [p for p in parts if p is not None]
    return format(sum(known, decimal.Decimal(0)), "f") if known else None
