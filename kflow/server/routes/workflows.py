"""Workflow runs: start, list, inspect, outputs, cancel, signal (PROTOCOL §5),
plus the routes the ``kruxiaflow`` SDK client expects.

``GET /api/v1/workflows/{id}?wait_seconds=N`` (kflow's extension, N up to
the server's ``max_wait_seconds``; 0 or absent answers at once) is a
long-poll: the answer is held until the run reaches a final status, N
seconds pass or the caller hangs up, and is the run's state at that moment.
Clients loop on it to wait for a result.
"""

from __future__ import annotations

import uuid
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kflow._types import WorkflowStatus
from kflow.errors import ValidationFailed
from kflow.server import views
from kflow.server.context import ServerContext, context_of
from kflow.server.engine import StartedWorkflow
from kflow.server.events import finished_key
from kflow.server.http import (
    HeldJSONResponse,
    JSONResponse,
    QueryParams,
    hung_up,
    path_uuid,
    read_object,
)
from kflow.server.routes.definitions import deploy_definition

_STATUSES = tuple(s.value for s in WorkflowStatus)
_FINAL = frozenset(s.value for s in WorkflowStatus if s.is_terminal)


def _optional_text(data: dict[str, Any], name: str, errors: dict[str, list[str]]) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        errors.setdefault(name, []).append("expected a non-empty string")
        return None
    return value


async def _start(
    ctx: ServerContext, data: dict[str, Any], name_field: str, input_field: str
) -> StartedWorkflow:
    errors: dict[str, list[str]] = {}
    name = _optional_text(data, name_field, errors)
    if name is None and name_field not in errors:
        errors[name_field] = ["is required"]
    version = _optional_text(data, "version", errors)
    unique_key = _optional_text(data, "unique_key", errors)
    inputs = data.get(input_field, {})
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        errors.setdefault(input_field, []).append("expected an object")
    if errors:
        summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items())
        raise ValidationFailed(f"invalid start request: {summary}", errors)
    assert name is not None
    started = await ctx.engine.start(name, version=version, input=inputs, unique_key=unique_key)
    ctx.metrics.workflows_started.inc()
    return started


def _started_body(started: StartedWorkflow) -> dict[str, Any]:
    return {
        "workflow_id": str(started.id),
        "definition_name": started.definition_name,
        "definition_version": started.definition_version,
        "status": started.status.value,
        "created_at": started.created_at,
    }


async def create(request: Request) -> Response:
    """Start a run; a body with ``name`` + ``activities`` is an SDK deploy.

    With ``wait_seconds`` (kflow extension) the answer is the run as
    ``GET /workflows/{id}?wait_seconds=`` gives it: held until the run is
    final or the wait ends — a start and its first wait in one request
    (``workflows:write`` implies the read scope this needs). The status line and
    a ``Location`` header naming the run go out at once, the body when the
    wait is over, so a caller whose connection breaks meanwhile still knows
    which run it started.
    """
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    query = QueryParams(request)
    wait = query.number("wait_seconds", low=0, high=ctx.config.max_wait_seconds)
    query.check()
    data = await read_object(request)
    if "definition_name" not in data and "activities" in data and "name" in data:
        return await deploy_definition(ctx, data)
    # Taken before the run exists: any news of it (or the hub forgetting) moves it.
    baseline = ctx.hub.baseline()
    started = await _start(ctx, data, "definition_name", "input")
    if wait is None:
        return JSONResponse(_started_body(started), status_code=201)

    async def held_detail() -> dict[str, Any]:
        if wait:
            known = (baseline, started.status.value)
            return await _detail_when_finished(ctx, request, started.id, wait, known=known)
        return await _detail(ctx, started.id)

    return HeldJSONResponse(
        held_detail, status_code=201, headers={"Location": f"/api/v1/workflows/{started.id}"}
    )


async def start_compat(request: Request) -> JSONResponse:
    """The SDK's ``start_workflow``: ``{name, inputs, version?}``."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    data = await read_object(request)
    started = await _start(ctx, data, "name", "inputs")
    body = _started_body(started)
    body["instance_id"] = body["workflow_id"]
    return JSONResponse(body, status_code=201)


async def list_runs(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    query = QueryParams(request)
    status = query.text("status", choices=_STATUSES)
    definition_name = query.text("definition_name")
    created_after = query.timestamp("created_after")
    created_before = query.timestamp("created_before")
    limit = query.integer("limit", 50, low=1, high=1000)
    offset = query.integer("offset", 0, low=0, high=10**9)
    query.check()
    result = await ctx.store.read(
        lambda tx: views.list_workflows(
            tx,
            status=status,
            definition_name=definition_name,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            offset=offset,
        )
    )
    return JSONResponse(result)


async def get_run(request: Request) -> JSONResponse:
    """The run with its activities; with ``wait_seconds``, once it has finished."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    query = QueryParams(request)
    wait = query.number("wait_seconds", low=0, high=ctx.config.max_wait_seconds)
    query.check()
    if wait:
        return JSONResponse(await _detail_when_finished(ctx, request, workflow_id, wait))
    return JSONResponse(await _detail(ctx, workflow_id))


async def _detail(ctx: ServerContext, workflow_id: uuid.UUID) -> dict[str, Any]:
    """The run as ``GET /workflows/{id}`` shows it.

    Raises:
        NotFoundError: no such run.
    """
    detail: dict[str, Any] = await ctx.store.read(lambda tx: views.workflow_detail(tx, workflow_id))
    return detail


async def _detail_when_finished(
    ctx: ServerContext,
    request: Request | None,
    workflow_id: uuid.UUID,
    wait: float,
    *,
    known: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """The run as ``GET /workflows/{id}`` shows it, once it is final, ``wait``
    seconds passed or the caller of ``request`` hung up (``None``: the caller
    watches for that itself).

    ``known``: the hub's version of the run's finish and the run's status as
    of that version, when the caller knows them (it just started the run:
    :meth:`EventHub.baseline` taken before the start, the status the start
    committed) — the run is not read before the wait.

    Raises:
        NotFoundError: no such run.
    """
    finished = finished_key(workflow_id)
    deadline = trio.current_time() + wait
    # The version is taken before each read, so a finish committed in between
    # is never missed; a wake-up that finds the run still going (another
    # server reconnected and woke everyone) waits again. After a wake-up the
    # whole run is read at once: it is the answer when it is final.
    if known is None:
        seen = ctx.hub.version(finished)
        status = await ctx.store.read(lambda tx: views.run_status(tx, workflow_id))
    else:
        seen, status = known
    if status in _FINAL:
        return await _detail(ctx, workflow_id)
    final: dict[str, Any] | None = None
    async with trio.open_nursery() as nursery:
        if request is not None:
            nursery.start_soon(_cancel_on_hang_up, request, nursery.cancel_scope)
        while await ctx.hub.wait(finished, seen, deadline - trio.current_time()):
            seen = ctx.hub.version(finished)
            # The commit that finished the run read it as it left it (EventHub.final).
            detail = ctx.hub.final(workflow_id, seen) or await _detail(ctx, workflow_id)
            if detail["status"] in _FINAL:
                final = detail
                break
        nursery.cancel_scope.cancel()
    return final if final is not None else await _detail(ctx, workflow_id)


async def _cancel_on_hang_up(request: Request, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the caller of a held request disconnects."""
    await hung_up(request)
    scope.cancel()


async def get_output(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    cache = ctx.engine.definitions
    return JSONResponse(
        await ctx.store.read(lambda tx: views.workflow_output(tx, cache, workflow_id))
    )


async def get_activity_output(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    key = request.path_params["key"]
    return JSONResponse(
        await ctx.store.read(lambda tx: views.activity_output(tx, workflow_id, key))
    )


async def cancel(request: Request) -> JSONResponse:
    ctx = context_of(request)
    principal = await ctx.principal(request, "workflows:write")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    status = await ctx.engine.cancel(workflow_id, f"cancelled by {principal.client_id}")
    return JSONResponse({"workflow_id": str(workflow_id), "status": status, "cancelled": True})


async def signal(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    data = await read_object(request)
    errors: dict[str, list[str]] = {}
    key = _optional_text(data, "activity_key", errors)
    event_name = _optional_text(data, "event_name", errors)
    for name, value in (("activity_key", key), ("event_name", event_name)):
        if value is None and name not in errors:
            errors[name] = ["is required"]
    payload = data.get("data")
    if payload is not None and not isinstance(payload, dict):
        errors["data"] = ["expected an object"]
    if errors:
        raise ValidationFailed("invalid signal request", errors)
    assert key is not None
    assert event_name is not None
    signaled, message = await ctx.engine.signal(workflow_id, key, event_name, payload)
    return JSONResponse({"signaled": signaled, "message": message})


routes = [
    Route("/api/v1/workflows", create, methods=["POST"]),
    Route("/api/v1/workflows", list_runs, methods=["GET"]),
    Route("/api/v1/workflows/start", start_compat, methods=["POST"]),
    Route("/api/v1/workflows/{workflow_id}", get_run, methods=["GET"]),
    Route("/api/v1/workflows/{workflow_id}/output", get_output, methods=["GET"]),
    Route(
        "/api/v1/workflows/{workflow_id}/activities/{key}/output",
        get_activity_output,
        methods=["GET"],
    ),
    Route("/api/v1/workflows/{workflow_id}/cancel", cancel, methods=["POST"]),
    Route("/api/v1/workflows/{workflow_id}/signal", signal, methods=["POST"]),
]
