"""The history of a run as a stream: Server-Sent Events (replay, then live).

``GET /api/v1/workflows/{id}/events?from_event_id=N`` sends every event after
``N`` and then new ones as they are committed; the stream ends after the
run's final event. ``Accept: application/json`` returns the history so far
as a JSON array instead.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from kflow._serde import dumps
from kflow.server import views
from kflow.server.context import ServerContext, context_of
from kflow.server.http import JSONResponse, QueryParams, path_uuid

_FINAL = {"workflow.completed", "workflow.failed", "workflow.cancelled"}
_DONE = {"completed", "failed", "cancelled"}
KEEPALIVE_SECONDS = 15.0


def _snapshot(tx: Any, *, workflow_id: Any, after: int) -> tuple[str | None, list[dict[str, Any]]]:
    """The run's events after ``after`` and, only when there are none, its status.

    The status is read after an empty read and, if final, the events are read
    once more: the final event commits with the final status, so a stream
    never ends before delivering it — even where each statement sees its own
    snapshot (PostgreSQL reads).
    """
    events = views.run_events(tx, workflow_id, after)
    if events:
        return None, events
    status = views.run_status(tx, workflow_id)
    if status in _DONE:
        return status, views.run_events(tx, workflow_id, after)
    return status, []


def _frames(events: list[dict[str, Any]]) -> tuple[bytes, bool]:
    """Server-Sent Event frames for ``events``, cut after a final event.

    Returns the bytes and whether the run's final event was among them.
    """
    parts = []
    for event in events:
        parts.append(
            f"id: {event['event_id']}\nevent: {event['type']}\n".encode()
            + b"data: "
            + dumps(event)
            + b"\n\n"
        )
        if event["type"] in _FINAL:
            return b"".join(parts), True
    return b"".join(parts), False


async def _stream(
    ctx: ServerContext,
    workflow_id: Any,
    after: int,
    seen: int,
    first: tuple[str | None, list[dict[str, Any]]],
) -> AsyncIterator[bytes]:
    """The stream's chunks, starting from ``first`` (the route's own read).

    ``seen`` is the hub's version of the run taken before that read. Commits
    bump it only after they are visible, so when it has not moved by the time
    a chunk is sent, that read saw everything: the stream waits for the next
    bump instead of reading again to find nothing.
    """
    status, events = first
    if not events and status not in _DONE:
        yield b": kflow event stream\n\n"  # the headers go out before the first event
    while True:
        if events:
            # One chunk per read: a burst of events costs one send, not one each.
            chunk, final = _frames(events)
            yield chunk
            if final:
                return
            after = events[-1]["event_id"]
            if ctx.hub.version(workflow_id) == seen and not await ctx.hub.wait(
                workflow_id, seen, KEEPALIVE_SECONDS
            ):
                yield b": keep-alive\n\n"
        elif status in _DONE:
            return  # its final event lies before from_event_id
        elif not await ctx.hub.wait(workflow_id, seen, KEEPALIVE_SECONDS):
            yield b": keep-alive\n\n"
        seen = ctx.hub.version(workflow_id)
        status, events = await ctx.store.read(
            functools.partial(_snapshot, workflow_id=workflow_id, after=after)
        )


async def events(request: Request) -> Response:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    query = QueryParams(request)
    after = query.integer("from_event_id", 0, low=0, high=2**62)
    query.check()
    if "application/json" in request.headers.get(
        "accept", ""
    ) and "text/event-stream" not in request.headers.get("accept", ""):
        await ctx.store.read(lambda tx: views.run_status(tx, workflow_id))  # 404 early
        return JSONResponse(
            await ctx.store.read(lambda tx: views.run_events(tx, workflow_id, after, limit=10_000))
        )
    # The stream's first read happens here: an unknown run is a 404 (run_status
    # raises), not an empty stream.
    seen = ctx.hub.version(workflow_id)
    first = await ctx.store.read(functools.partial(_snapshot, workflow_id=workflow_id, after=after))
    return StreamingResponse(
        _stream(ctx, workflow_id, after, seen, first),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


routes = [Route("/api/v1/workflows/{workflow_id}/events", events, methods=["GET"])]
