"""What runs cost (PROTOCOL §7): a run's cost, its cost history, analytics over time."""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.routing import Route

from kflow.server import cost_views
from kflow.server.context import context_of
from kflow.server.http import JSONResponse, QueryParams, path_uuid

#: The longest period one analytics request may cover.
MAX_ANALYTICS_DAYS = 366
DEFAULT_ANALYTICS_DAYS = 30


async def workflow_cost(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    cache = ctx.engine.definitions
    return JSONResponse(
        await ctx.store.read(lambda tx: cost_views.workflow_cost(tx, cache, workflow_id))
    )


async def workflow_cost_history(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    cache = ctx.engine.definitions
    return JSONResponse(
        await ctx.store.read(lambda tx: cost_views.cost_history(tx, cache, workflow_id))
    )


async def cost_analytics(request: Request) -> JSONResponse:
    """``?start_date=&end_date=&group_by=``: dates or RFC 3339 timestamps, end
    exclusive; by default the last 30 days, grouped by model."""
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    query = QueryParams(request)
    start = query.timestamp("start_date")
    end = query.timestamp("end_date")
    group_by = query.text("group_by", choices=cost_views.GROUPS) or "model"
    query.check()
    end = end or dt.datetime.now(dt.UTC)
    start = start or end - dt.timedelta(days=DEFAULT_ANALYTICS_DAYS)
    if start >= end:
        query.errors["end_date"] = ["must be after start_date"]
    elif end - start > dt.timedelta(days=MAX_ANALYTICS_DAYS):
        query.errors["start_date"] = [f"the period may be at most {MAX_ANALYTICS_DAYS} days"]
    query.check()
    return JSONResponse(
        await ctx.store.read(
            lambda tx: cost_views.cost_analytics(tx, start=start, end=end, group_by=group_by)
        )
    )


routes = [
    Route("/api/v1/workflows/{workflow_id}/cost", workflow_cost, methods=["GET"]),
    Route("/api/v1/workflows/{workflow_id}/cost/history", workflow_cost_history, methods=["GET"]),
    Route("/api/v1/cost/analytics", cost_analytics, methods=["GET"]),
]
