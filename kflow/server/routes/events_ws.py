"""``/api/v1/workflow_events/ws``: the history of runs over a WebSocket (PROTOCOL §5).

Query parameters (all optional): ``workflow_id`` (comma-separated ids),
``event_type`` (comma-separated; kflow's dotted names such as
``activity.completed`` or the reference engine's names such as
``ActivityCompleted``), ``from_event_id`` (replay every event after this
kflow event number, then go live; without it the stream starts live),
``token`` (a bearer token, for clients that cannot set headers).

Messages are JSON: ``{"type": "event", "id", "workflow_id", "event_type",
"kflow_type", "activity_key", "payload", "timestamp", "iteration"}``, and
``{"type": "ping", "timestamp"}`` every 30 s of silence. A bad query closes
the socket with code 4400 and the reason; bad credentials with 4401/4403.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from typing import Any

import trio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from kflow._serde import dumps
from kflow.errors import AuthError, ForbiddenError
from kflow.server.context import ServerContext
from kflow.server.persistence import event_row

PING_SECONDS = 30.0
BATCH = 500

#: kflow event type -> the reference engine's name for it.
REFERENCE_NAMES = {
    "workflow.started": "WorkflowCreated",
    "activity.scheduled": "ActivityScheduled",
    "activity.signal_received": "ActivitySignaled",
    "activity.completed": "ActivityCompleted",
    "activity.failed": "ActivityFailed",
    "workflow.completed": "WorkflowCompleted",
    "workflow.failed": "WorkflowFailed",
    "workflow.cancelled": "WorkflowUpdated",
}
_FROM_REFERENCE = {name: kflow for kflow, name in REFERENCE_NAMES.items()}
_FROM_REFERENCE["ActivityWaiting"] = "activity.scheduled"


class QueryError(ValueError):
    """A malformed query parameter (the message names it)."""


def parse_filters(params: Mapping[str, str]) -> tuple[set[str], set[str], int | None]:
    """``(workflow ids, kflow event types, from_event_id)`` from the query.

    Raises:
        QueryError: a malformed id, event type or event number.
    """
    ids: set[str] = set()
    for part in filter(None, (p.strip() for p in params.get("workflow_id", "").split(","))):
        try:
            ids.add(str(uuid.UUID(part)))
        except ValueError:
            raise QueryError(f"workflow_id: {part!r} is not a UUID") from None
    types: set[str] = set()
    for part in filter(None, (p.strip() for p in params.get("event_type", "").split(","))):
        types.add(_FROM_REFERENCE.get(part, part))
    start = params.get("from_event_id")
    after = None
    if start:
        if not start.isdigit():
            raise QueryError(f"from_event_id: {start!r} is not a kflow event number")
        after = int(start)
    return ids, types, after


def message(event: Mapping[str, Any]) -> dict[str, Any]:
    """One history event as a WebSocket message."""
    data = event.get("data") or {}
    kind = event["type"]
    name = REFERENCE_NAMES.get(kind, kind)
    if kind == "activity.scheduled" and data.get("status") == "waiting":
        name = "ActivityWaiting"
    return {
        "type": "event",
        "id": event["event_id"],
        "workflow_id": event["workflow_id"],
        "event_type": name,
        "kflow_type": kind,
        "activity_key": event["activity_key"],
        "payload": data,
        "timestamp": event["created_at"],
        "iteration": data.get("iteration"),
    }


async def events_ws(websocket: WebSocket) -> None:
    ctx: ServerContext = websocket.app.state.kflow
    token = websocket.query_params.get("token")
    header = websocket.headers.get("authorization") or (f"Bearer {token}" if token else None)
    try:
        principal = await ctx.auth.authenticate(header)
        principal.require("workflows:read")
        ids, types, after = parse_filters(websocket.query_params)
    except (AuthError, QueryError) as exc:
        await websocket.accept()
        code = (
            4403
            if isinstance(exc, ForbiddenError)
            else 4401
            if isinstance(exc, AuthError)
            else 4400
        )
        await websocket.close(code=code, reason=str(exc)[:120])
        return
    await websocket.accept()
    if after is None:
        row = await ctx.store.read(_last_settled_event, locking=True)
        after = int(row["id"]) if row else 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_disconnect, websocket, nursery.cancel_scope)
        await _send_events(ctx, websocket, ids, types, after)


async def _until_disconnect(websocket: WebSocket, scope: trio.CancelScope) -> None:
    try:
        while True:
            await websocket.receive_text()
    except (WebSocketDisconnect, RuntimeError):
        scope.cancel()


async def _send_events(
    ctx: ServerContext, websocket: WebSocket, ids: set[str], types: set[str], after: int
) -> None:
    single = next(iter(ids)) if len(ids) == 1 else None
    watched = uuid.UUID(single) if single else None
    while True:
        seen = ctx.hub.version(watched)
        rows = await ctx.store.read(
            functools.partial(_events_since, after_id=after, workflow_id=single),
            locking=single is None,
        )
        for row in rows:
            after = int(row["id"])
            event = event_row(row)
            if (ids and event["workflow_id"] not in ids) or (types and event["type"] not in types):
                continue
            await websocket.send_text(dumps(message(event)).decode())
        if len(rows) == BATCH:
            continue
        if not await ctx.hub.wait(watched, seen, PING_SECONDS):
            await websocket.send_text(
                dumps({"type": "ping", "timestamp": ctx.engine.clock.now()}).decode()
            )


def _last_settled_event(tx: Any) -> Any:
    tx.one("settle_events")  # an id still being appended would otherwise be skipped
    return tx.one("last_event_id")


def _events_since(tx: Any, *, after_id: int, workflow_id: str | None) -> list[Any]:
    if workflow_id is None:
        tx.one("settle_events")  # every run's history: wait for appenders in flight
    return list(
        tx.all("events_since", after_id=after_id, workflow_id=workflow_id, type=None, limit=BATCH)
    )


routes = [WebSocketRoute("/api/v1/workflow_events/ws", events_ws)]
