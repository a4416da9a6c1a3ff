"""Workflow definitions: deploy (YAML or JSON), list, fetch (PROTOCOL §4)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from kflow.errors import DefinitionError, NotFoundError
from kflow.model.loader import load_definition
from kflow.server.context import ServerContext, context_of
from kflow.server.http import JSONResponse, QueryParams
from kflow.store.codec import load_json, load_time


async def deploy_definition(ctx: ServerContext, source: str | dict[str, Any]) -> JSONResponse:
    """Validate and store a definition; 201 when new, 200 ``unchanged`` otherwise."""
    definition = load_definition(source)
    loaded, created = await ctx.engine.deploy(definition)
    body: dict[str, Any] = {
        "name": loaded.name,
        "version": loaded.version,
        "created_at": loaded.created_at,
        "activity_count": len(loaded.definition.activities),
    }
    if not created:
        body["unchanged"] = True
    return JSONResponse(body, status_code=201 if created else 200)


async def create(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:write")
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DefinitionError(
            "the definition is not UTF-8 text",
            {"definition": [f"invalid UTF-8 at byte {exc.start}"]},
        ) from exc
    if not text.strip():
        raise DefinitionError("the definition is empty", {"definition": ["empty body"]})
    return await deploy_definition(ctx, text)


async def list_definitions(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    query = QueryParams(request)
    limit = query.integer("limit", 100, low=1, high=1000)
    offset = query.integer("offset", 0, low=0, high=10**9)
    query.check()

    def read(tx: Any) -> dict[str, Any]:
        rows = tx.all("list_latest_definitions", limit=limit, offset=offset)
        total = tx.one("count_definition_names")
        return {
            "definitions": [
                {
                    "name": r["name"],
                    "version": r["version"],
                    "activity_count": r["activity_count"],
                    "created_at": load_time(r["created_at"]),
                    "versions": r["versions"],
                }
                for r in rows
            ],
            "total": int(total["total"]) if total else 0,
        }

    return JSONResponse(await ctx.store.read(read))


async def get_definition(request: Request) -> JSONResponse:
    ctx = context_of(request)
    await ctx.principal(request, "workflows:read")
    name = request.path_params["name"]
    version = request.query_params.get("version")

    def read(tx: Any) -> dict[str, Any]:
        row = (
            tx.one("get_definition", name=name, version=version)
            if version
            else tx.one("latest_definition", name=name)
        )
        if row is None:
            suffix = f" version {version!r}" if version else ""
            raise NotFoundError(f"workflow definition {name!r}{suffix} not found")
        versions = [r["version"] for r in tx.all("list_definition_versions", name=name)]
        return {
            "name": row["name"],
            "version": row["version"],
            "created_at": load_time(row["created_at"]),
            "content_hash": row["content_hash"],
            "versions": versions,
            "definition": load_json(row["body"]),
        }

    return JSONResponse(await ctx.store.read(read))


routes = [
    Route("/api/v1/workflow_definitions", create, methods=["POST"]),
    Route("/api/v1/workflow_definitions", list_definitions, methods=["GET"]),
    Route("/api/v1/workflow_definitions/{name}", get_definition, methods=["GET"]),
]

__all__ = ["deploy_definition", "routes"]
