"""Recurring schedules: create, list, fetch, change, delete (PROTOCOL §6).

Reads need ``workflows:read``, the rest ``workflows:write``. A bad field is a
422 naming it, an unknown schedule or definition a 404, a duplicate name a
409. A write arms the scheduler of every server for the schedule's next fire
time (this one directly, the others through the engine's notification).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kflow.server import schedule_ops
from kflow.server.context import context_of
from kflow.server.http import JSONResponse, path_uuid, read_object
from kflow.server.schedule_requests import parse_create


async def create(request: Request) -> JSONResponse:
    """Create a schedule; 201 with the schedule and its first ``next_fire_at``."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    spec = parse_create(await read_object(request))
    schedule = await schedule_ops.create_schedule(ctx.engine, spec)
    return JSONResponse(schedule.wire(), status_code=201)


async def list_all(request: Request) -> JSONResponse:
    """Every schedule, ordered by name."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    schedules = await schedule_ops.list_schedules(ctx.store)
    return JSONResponse({"schedules": [s.wire() for s in schedules], "count": len(schedules)})


async def get_one(request: Request) -> JSONResponse:
    """One schedule, with its firing state."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    schedule_id = path_uuid(request, "schedule_id", "schedule")
    return JSONResponse((await schedule_ops.get_schedule(ctx.store, schedule_id)).wire())


async def patch(request: Request) -> JSONResponse:
    """Change any subset of a schedule's fields; a new cadence or enabling recomputes
    ``next_fire_at`` from now."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    schedule_id = path_uuid(request, "schedule_id", "schedule")
    changes = await read_object(request)
    schedule = await schedule_ops.update_schedule(ctx.engine, schedule_id, changes)
    return JSONResponse(schedule.wire())


async def delete(request: Request) -> Response:
    """Delete a schedule (204); runs it started are kept."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    schedule_id = path_uuid(request, "schedule_id", "schedule")
    await schedule_ops.delete_schedule(ctx.store, schedule_id)
    return Response(status_code=204)


routes = [
    Route("/api/v1/schedules", create, methods=["POST"]),
    Route("/api/v1/schedules", list_all, methods=["GET"]),
    Route("/api/v1/schedules/{schedule_id}", get_one, methods=["GET"]),
    Route("/api/v1/schedules/{schedule_id}", patch, methods=["PATCH"]),
    Route("/api/v1/schedules/{schedule_id}", delete, methods=["DELETE"]),
]
