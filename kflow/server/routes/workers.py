"""The worker protocol: poll (with long-poll), heartbeat, complete, fail (PROTOCOL §3)."""

from __future__ import annotations

import decimal
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kflow._serde import to_decimal
from kflow.errors import KflowError, NotFoundError, ValidationFailed
from kflow.server.context import ServerContext, context_of
from kflow.server.dispatcher import ParkedPoll
from kflow.server.errors import STATUS_BY_CODE
from kflow.server.http import (
    JSONResponse,
    LinesResponse,
    envelope,
    hung_up,
    path_uuid,
    read_object,
)
from kflow.server.report_group import ReportGroup, ReportSlot
from kflow.server.state import ErrorInfo

log = structlog.get_logger("kflow.server")

_QUEUE = re.compile(r"^[A-Za-z0-9_-]+$")

#: Bounds of an amount a worker reports (USD). Anything outside is a client
#: bug, and an exponent such as ``1e999999999`` would otherwise expand into a
#: gigabyte-long decimal string when stored.
_MONEY_MAX_EXPONENT = 12  # below 10**13
_MONEY_MIN_EXPONENT = -30
_MONEY_MAX_DIGITS = 50


def _money_problem(amount: decimal.Decimal) -> str | None:
    """Why ``amount`` cannot be accepted as money, or None."""
    if amount < 0:
        return "must not be negative"
    if amount and not _MONEY_MIN_EXPONENT <= amount.adjusted() <= _MONEY_MAX_EXPONENT:
        return f"out of range (expected 1e{_MONEY_MIN_EXPONENT} to 1e{_MONEY_MAX_EXPONENT + 1})"
    if len(amount.as_tuple().digits) > _MONEY_MAX_DIGITS:
        return f"more than {_MONEY_MAX_DIGITS} significant digits"
    return None


class _Fields:
    """Collects field errors of one request body."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.errors: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        pattern: re.Pattern[str] | None = None,
        max_length: int = 256,
    ) -> str:
        value = self.data.get(name)
        if value is None:
            if required:
                self.add(name, "is required")
            return ""
        if not isinstance(value, str) or not value.strip():
            self.add(name, "expected a non-empty string")
            return ""
        if len(value) > max_length:
            self.add(name, f"must be at most {max_length} characters")
        elif pattern is not None and not pattern.match(value):
            self.add(name, f"must match {pattern.pattern}")
        return value

    def number(
        self, name: str, default: float | None, *, low: float, high: float, integer: bool = False
    ) -> float | None:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(name, f"expected a number, got {type(value).__name__}")
            return default
        if integer and not float(value).is_integer():
            self.add(name, "expected an integer")
            return default
        if not low <= value <= high:
            self.add(name, f"must be between {low:g} and {high:g}")
            return default
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            self.add(name, f"expected true or false, got {type(value).__name__}")
            return False
        return value

    def money(self, name: str) -> Any:
        value = self.data.get(name)
        if value is None:
            return None
        try:
            amount = to_decimal(value)
        except ValueError as exc:
            self.add(name, str(exc))
            return None
        problem = _money_problem(amount)
        if problem is not None:
            self.add(name, problem)
        return amount

    def usage(self) -> list[dict[str, Any]]:
        value = self.data.get("usage")
        if value is None:
            return []
        if not isinstance(value, list):
            self.add("usage", "expected an array")
            return []
        entries: list[dict[str, Any]] = []
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                self.add(f"usage[{index}]", "expected an object")
                continue
            clean = dict(entry)
            for counter in (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_creation_tokens",
                "reasoning_tokens",
            ):
                tokens = entry.get(counter, 0)
                if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                    self.add(f"usage[{index}].{counter}", "expected a non-negative integer")
            if entry.get("cost_usd") is not None:
                try:
                    clean["cost_usd"] = to_decimal(entry["cost_usd"])
                except ValueError as exc:
                    self.add(f"usage[{index}].cost_usd", str(exc))
                else:
                    problem = _money_problem(clean["cost_usd"])
                    if problem is not None:
                        self.add(f"usage[{index}].cost_usd", problem)
            entries.append(clean)
        return entries

    def check(self, what: str) -> None:
        if self.errors:
            summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.errors.items())
            raise ValidationFailed(f"invalid {what}: {summary}", self.errors)


async def _claim(
    ctx: ServerContext,
    queue: str,
    worker_id: str,
    limit: int,
    gone: Callable[[], bool],
    client_id: str = "dev",
) -> list[dict[str, Any]]:
    """Claim work, and put it back if the caller went away meanwhile.

    The claim runs shielded; if the request was cancelled (an in-process
    caller gave up) or the client disconnected while it ran, the claimed
    activities are released at once instead of waiting for their leases.
    """
    with trio.CancelScope(shield=True):
        items = await ctx.worker_ops.claim(queue, worker_id, limit, client_id)
    return await _kept_for_caller(ctx, items, worker_id, gone)


async def _kept_for_caller(
    ctx: ServerContext, items: list[dict[str, Any]], worker_id: str, gone: Callable[[], bool]
) -> list[dict[str, Any]]:
    """``items`` just claimed for ``worker_id``, or none — and the items put back in
    their queue — if the caller is gone or the request was cancelled.

    Raises:
        trio.Cancelled: the request was cancelled (after the release).
    """
    abandoned = bool(items) and gone()
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except trio.Cancelled:
        abandoned = bool(items)
        raise
    finally:
        if abandoned:
            with trio.CancelScope(shield=True):
                await ctx.worker_ops.release(items, worker_id)
    return [] if abandoned else items


async def _long_poll(
    ctx: ServerContext,
    request: Request,
    queue: str,
    worker_id: str,
    limit: int,
    wait: float,
    client_id: str,
) -> list[dict[str, Any]]:
    """Claim, and if nothing is there park until work arrives or ``wait`` ends.

    A poll finding its queue known to be empty (:meth:`Dispatcher.known_empty`:
    a claim found nothing and no work was announced since) parks without a
    claim of its own, and claims once before it answers empty at its
    deadline. While parked, the poll may be handed work claimed for it by the
    transaction that made the work ready (:mod:`kflow.server.handoff`); it
    answers with that work without a claim of its own. A client that hangs
    up while parked stops the wait; the claim itself is never interrupted,
    so claimed work is always returned to the caller — or, if the caller is
    gone, put back in its queue.
    """
    deadline = trio.current_time() + wait
    state: dict[str, Any] = {"gone": False, "scope": None}

    async def watch_disconnect() -> None:
        await hung_up(request)
        state["gone"] = True
        if state["scope"] is not None:
            state["scope"].cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_disconnect)
        try:
            claimed = False
            while True:
                seen = ctx.dispatcher.sequence(queue)
                over = trio.current_time() >= deadline
                if claimed or over or not ctx.dispatcher.known_empty(queue):
                    items = await _claim(
                        ctx, queue, worker_id, limit, lambda: state["gone"], client_id
                    )
                    claimed = True
                    if len(items) < limit:
                        ctx.dispatcher.drained(queue, seen)
                else:  # nothing was made ready since a claim found the queue empty
                    items = []
                if items or state["gone"] or (claimed and over):
                    return items
                parked = ParkedPoll(worker_id, client_id, limit)
                state["scope"] = scope = trio.CancelScope()
                try:
                    with scope:
                        woken = await ctx.dispatcher.wait(queue, seen, deadline, parked)
                finally:  # a hand-over may be on its way: take it, or put it back
                    handed = await _handed(ctx, parked, worker_id, lambda: state["gone"])
                state["scope"] = None
                if handed:
                    return handed
                if state["gone"] or (claimed and not woken):
                    return []
                # Woken: claim. At the deadline without a claim yet: claim once.
        finally:
            nursery.cancel_scope.cancel()


async def _stream_poll(
    ctx: ServerContext,
    request: Request,
    queue: str,
    worker_id: str,
    limit: int,
    wait: float,
    client_id: str,
    emit: Callable[[Any], Awaitable[None]],
) -> None:
    """A streamed long-poll: one line ``{"activities": [...], "count": n}`` each
    time work is claimed for the poll, until ``limit`` activities went out in
    all, ``wait`` seconds passed or the caller hung up.

    A worker whose poll brought one activity asks again at once; streamed, the
    poll stays parked and the next activity is one more line of the same answer
    instead of another request (on PostgreSQL Sequential-5, where nearly every
    run's first activity was handed to a parked poll, 0.9 poll requests per run
    became 0.1). Each wait is :func:`_long_poll`'s: work is claimed or handed
    over exactly as for a poll answered with it, and what is claimed after the
    caller hung up goes back to its queue.
    """
    deadline = trio.current_time() + wait
    left = limit
    while left > 0:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return
        items = await _long_poll(ctx, request, queue, worker_id, left, remaining, client_id)
        if not items:  # the wait ended, or the caller hung up
            return
        ctx.metrics.claimed.labels(queue).inc(len(items))
        left -= len(items)
        await emit({"activities": items, "count": len(items)})


async def _handed(
    ctx: ServerContext, parked: ParkedPoll, worker_id: str, gone: Callable[[], bool]
) -> list[dict[str, Any]]:
    """What a transaction handed to ``parked`` (waiting for one still being
    committed); released back to the queue if the caller is gone or cancelled."""
    with trio.CancelScope(shield=True):
        items = await parked.settled()
    return await _kept_for_caller(ctx, items, worker_id, gone)


async def poll(request: Request) -> Response:
    """``POST /workers/poll``: claim up to ``max_activities`` activities of a queue;
    with ``wait_seconds`` a long-poll, with ``stream: true`` too a streamed one
    (feature ``poll_stream``, see :func:`_stream_poll`)."""
    ctx = context_of(request)
    principal = await ctx.principal(request, "worker")
    fields = _Fields(await read_object(request))
    queue = fields.text("worker", pattern=_QUEUE, max_length=100)
    worker_id = fields.text("worker_id", max_length=256)
    limit = int(fields.number("max_activities", 1, low=1, high=100, integer=True) or 1)
    wait = fields.number("wait_seconds", None, low=0, high=ctx.config.max_wait_seconds)
    stream = fields.flag("stream")
    if stream and not wait and "wait_seconds" not in fields.errors:
        fields.add("stream", "a streamed poll needs wait_seconds above 0")
    fields.check("poll request")
    if stream:
        assert wait is not None
        client_id = principal.client_id
        return LinesResponse(
            functools.partial(
                _stream_poll, ctx, request, queue, worker_id, limit, float(wait), client_id
            ),
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    if wait:
        items = await _long_poll(
            ctx, request, queue, worker_id, limit, float(wait), principal.client_id
        )
    else:
        items = await _claim(ctx, queue, worker_id, limit, lambda: False, principal.client_id)
    if items:
        ctx.metrics.claimed.labels(queue).inc(len(items))
    return JSONResponse({"activities": items, "count": len(items)})


async def heartbeat(request: Request) -> JSONResponse:
    ctx = context_of(request)
    principal = await ctx.principal(request, "worker")
    attempt_id = path_uuid(request, "activity_id", "activity")
    fields = _Fields(await read_object(request))
    worker_id = fields.text("worker_id")
    fields.check("heartbeat")
    answer = await ctx.worker_ops.heartbeat(
        attempt_id, worker_id, fields.data.get("details"), principal.client_id
    )
    return JSONResponse(answer)


class Apply(Protocol):
    """A report route's work: apply one body (``claim_next``: see ``reports``)."""

    def __call__(
        self,
        ctx: ServerContext,
        client_id: str,
        attempt_id: uuid.UUID,
        data: dict[str, Any],
        *,
        claim_next: bool = False,
        slot: ReportSlot | None = None,
    ) -> Awaitable[dict[str, Any]]: ...


async def _one_report(request: Request, apply: Apply) -> JSONResponse:
    """``POST /activities/{id}/complete|fail``: one report, ``apply``-ed; with
    ``?claim_next=true`` (feature ``report_claim_next``) it also claims the
    run's next ready activity of the same queue, as a batch item's ``claim_next``.

    Raises:
        ValidationFailed: ``claim_next`` is neither ``true`` nor ``false``.
    """
    ctx = context_of(request)
    principal = await ctx.principal(request, "worker")
    attempt_id = path_uuid(request, "activity_id", "activity")
    flag = request.query_params.get("claim_next", "false")
    if flag not in ("true", "false"):
        raise ValidationFailed(
            "invalid report: claim_next: expected true or false",
            {"claim_next": ["expected true or false"]},
        )
    data = await read_object(request)
    answer = await apply(ctx, principal.client_id, attempt_id, data, claim_next=flag == "true")
    return JSONResponse(answer)


async def complete(request: Request) -> JSONResponse:
    return await _one_report(request, _complete)


async def _complete(
    ctx: ServerContext,
    client_id: str,
    attempt_id: uuid.UUID,
    data: dict[str, Any],
    *,
    claim_next: bool = False,
    slot: ReportSlot | None = None,
) -> dict[str, Any]:
    """Apply one completion (the body of ``POST .../complete``).

    Raises:
        ValidationFailed: a field is wrong. KflowError: as ``WorkerOps.complete``.
    """
    fields = _Fields(data)
    worker_id = fields.text("worker_id")
    output = fields.data.get("output", {})
    if output is None:
        output = {}
    if not isinstance(output, dict):
        fields.add("output", "expected an object mapping output names to values")
    cost = fields.money("cost_usd")
    usage = fields.usage()
    fields.check("completion")
    answer = await ctx.worker_ops.complete(
        attempt_id, worker_id, output, cost, usage, client_id, claim_next=claim_next, slot=slot
    )
    ctx.metrics.reports.labels("completed").inc()
    _count_claimed(ctx, answer)
    return answer


async def fail(request: Request) -> JSONResponse:
    return await _one_report(request, _fail)


async def _fail(
    ctx: ServerContext,
    client_id: str,
    attempt_id: uuid.UUID,
    data: dict[str, Any],
    *,
    claim_next: bool = False,
    slot: ReportSlot | None = None,
) -> dict[str, Any]:
    """Apply one failure report (the body of ``POST .../fail``).

    Raises:
        ValidationFailed: a field is wrong. KflowError: as ``WorkerOps.fail``.
    """
    fields = _Fields(data)
    worker_id = fields.text("worker_id")
    raw = fields.data.get("error", {})
    if not isinstance(raw, dict):
        fields.add("error", "expected an object {code, message, retryable}")
        raw = {}
    code = raw.get("code", "EXECUTION_ERROR")
    message = raw.get("message", "")
    retryable = raw.get("retryable", True)
    if not isinstance(code, str) or not code:
        fields.add("error.code", "expected a non-empty string")
    if not isinstance(message, str):
        fields.add("error.message", "expected a string")
    if not isinstance(retryable, bool):
        fields.add("error.retryable", "expected true or false")
    cost = fields.money("cost_usd")
    usage = fields.usage()
    fields.check("failure report")
    error = ErrorInfo(code=str(code), message=str(message)[:8000], retryable=bool(retryable))
    answer = await ctx.worker_ops.fail(
        attempt_id, worker_id, error, cost, usage, client_id, claim_next=claim_next, slot=slot
    )
    ctx.metrics.reports.labels("failed").inc()
    _count_claimed(ctx, answer)
    return answer


def _count_claimed(ctx: ServerContext, answer: dict[str, Any]) -> None:
    """Count the activities a report claimed for its worker (``claim_next``)."""
    for item in answer.get("activities") or ():
        ctx.metrics.claimed.labels(item["worker"]).inc()


#: Most reports one ``POST /activities/reports`` may carry.
MAX_BATCH_REPORTS = 100

_APPLY: dict[str, Apply] = {"complete": _complete, "fail": _fail}


async def reports(request: Request) -> JSONResponse:
    """Several complete/fail reports in one request (kflow extension, feature
    ``report_batch``): ``{"reports": [{"activity_id", "kind", "report",
    "claim_next"?}]}``.

    Each report is applied exactly as its own route would apply it; those
    that get as far as writing share one transaction (see
    :mod:`kflow.server.report_group`: if one of them raises, each runs again
    alone). ``results`` answers each in order with the status and body (or
    error envelope) that route would have given. One report's failure never
    affects another's. An item with ``claim_next``
    (feature ``report_claim_next``) also claims, in its transaction, the run's
    next ready activity in the same queue for the reporting worker; its body
    then has ``activities`` (poll items, at most one). If the caller hangs up
    (or the request is cancelled) before the answer, those activities are put
    back in their queue, as a long-poll's are.

    Raises:
        ValidationFailed: ``reports`` is not an array of 1 to MAX_BATCH_REPORTS items.
    """
    ctx = context_of(request)
    principal = await ctx.principal(request, "worker")
    data = await read_object(request)
    items = data.get("reports")
    if not isinstance(items, list) or not items:
        raise ValidationFailed(
            "invalid report batch: reports: expected a non-empty array",
            {"reports": ["expected a non-empty array of {activity_id, kind, report}"]},
        )
    if len(items) > MAX_BATCH_REPORTS:
        raise ValidationFailed(
            f"invalid report batch: at most {MAX_BATCH_REPORTS} reports per request",
            {"reports": [f"at most {MAX_BATCH_REPORTS} items, got {len(items)}"]},
        )
    results: list[dict[str, Any]] = [{} for _ in items]
    gone = False
    group = ReportGroup(ctx.engine, len(items))

    async def apply(index: int, item: Any) -> None:
        slot = group.slot(index)
        try:
            results[index] = await _batch_item(ctx, principal.client_id, item, slot)
        finally:
            slot.skip()  # settled already if it wrote

    async def watch_disconnect() -> None:
        nonlocal gone
        await hung_up(request)
        gone = True

    abandoned = False
    try:
        async with trio.open_nursery() as watching:
            watching.start_soon(watch_disconnect)
            async with trio.open_nursery() as applying:
                applying.start_soon(group.run)
                for index, item in enumerate(items):
                    applying.start_soon(apply, index, item)
            watching.cancel_scope.cancel()
        abandoned = gone
        await trio.lowlevel.checkpoint_if_cancelled()
    except trio.Cancelled:
        abandoned = True
        raise
    finally:
        if abandoned:  # nobody will run what the reports claimed: back to the queue
            with trio.CancelScope(shield=True):
                await _release_claimed(ctx, items, results)
    return JSONResponse({"results": results})


async def _release_claimed(
    ctx: ServerContext, items: list[Any], results: list[dict[str, Any]]
) -> None:
    """Put back the activities that ``claim_next`` reports claimed, by worker."""
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for item, result in zip(items, results, strict=True):
        claimed = (result.get("body") or {}).get("activities") or []
        if claimed:
            by_worker.setdefault(item["report"]["worker_id"], []).extend(claimed)
    for worker_id, claimed in by_worker.items():
        await ctx.worker_ops.release(claimed, worker_id)


async def _batch_item(
    ctx: ServerContext, client_id: str, item: Any, slot: ReportSlot
) -> dict[str, Any]:
    """One report of a batch, answered as ``{activity_id, status, body | error}``."""
    activity_id = item.get("activity_id") if isinstance(item, dict) else None
    try:
        attempt_id, apply, body, claim_next = _batch_entry(item)
        answer = await apply(ctx, client_id, attempt_id, body, claim_next=claim_next, slot=slot)
    except KflowError as exc:
        status = STATUS_BY_CODE.get(exc.code, 500)
        if status >= 500:
            log.exception("http.report_failed", code=exc.code, error=exc.message)
        if status == 500:  # store errors carry SQL: log only
            return _item_error(
                activity_id, 500, "INTERNAL_ERROR", "internal error; see the server log"
            )
        return _item_error(activity_id, status, exc.code, exc.message, exc.details)
    except Exception:
        log.exception("http.report_failed", activity_id=str(activity_id))
        return _item_error(activity_id, 500, "INTERNAL_ERROR", "internal error; see the server log")
    return {"activity_id": activity_id, "status": 200, "body": answer}


def _batch_entry(item: Any) -> tuple[uuid.UUID, Apply, dict[str, Any], bool]:
    """``(attempt id, the route's apply function, its body, claim_next)`` of one
    batch item.

    Raises:
        ValidationFailed: not an object, an unknown ``kind``, ``report`` not an
            object, ``claim_next`` not a boolean.
        NotFoundError: ``activity_id`` is no id (as a malformed id in a path).
    """
    if not isinstance(item, dict):
        raise ValidationFailed(
            "invalid report: expected an object", {"report": ["expected an object"]}
        )
    try:
        attempt_id = uuid.UUID(str(item.get("activity_id")))
    except ValueError:
        raise NotFoundError(f"activity {item.get('activity_id')} not found") from None
    kind = item.get("kind")
    apply = _APPLY.get(kind) if isinstance(kind, str) else None
    if apply is None:
        raise ValidationFailed(
            "invalid report: kind: expected 'complete' or 'fail'",
            {"kind": ["expected 'complete' or 'fail'"]},
        )
    body = item.get("report")
    if not isinstance(body, dict):
        raise ValidationFailed(
            "invalid report: report: expected the object its own route takes",
            {"report": ["expected an object"]},
        )
    claim_next = item.get("claim_next", False)
    if not isinstance(claim_next, bool):
        raise ValidationFailed(
            "invalid report: claim_next: expected true or false",
            {"claim_next": ["expected true or false"]},
        )
    return attempt_id, apply, body, claim_next


def _item_error(
    activity_id: Any, status: int, code: str, message: str, details: Any = None
) -> dict[str, Any]:
    return {
        "activity_id": activity_id,
        "status": status,
        **envelope(code, message, details or None),
    }


async def reserve_budget(request: Request) -> JSONResponse:
    """Reserve part of the run's budget for a running attempt (kflow extension of §7)."""
    ctx = context_of(request)
    principal = await ctx.principal(request, "worker")
    attempt_id = path_uuid(request, "activity_id", "activity")
    fields = _Fields(await read_object(request))
    worker_id = fields.text("worker_id")
    amount = fields.money("amount_usd")
    if amount is None and "amount_usd" not in fields.errors:
        fields.add("amount_usd", "is required")
    fields.check("budget reservation")
    answer = await ctx.worker_ops.reserve(attempt_id, worker_id, amount, principal.client_id)
    return JSONResponse(answer)


routes = [
    Route("/api/v1/workers/poll", poll, methods=["POST"]),
    Route("/api/v1/activities/reports", reports, methods=["POST"]),
    Route("/api/v1/activities/{activity_id}/heartbeat", heartbeat, methods=["POST"]),
    Route("/api/v1/activities/{activity_id}/complete", complete, methods=["POST"]),
    Route("/api/v1/activities/{activity_id}/fail", fail, methods=["POST"]),
    Route("/api/v1/activities/{activity_id}/budget/reserve", reserve_budget, methods=["POST"]),
]
