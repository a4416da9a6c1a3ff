"""Workflow definitions: deploy (YAML or JSON), list, fetch (PROTOCOL §4).

Parsing and validating a definition is CPU work whose cost the sender
controls (a small YAML document with nested aliases expands enormously), so
it runs in a worker thread: the event loop keeps answering other requests.
At most :data:`PARSE_THREADS` parses run at once per server (a per-run
:class:`trio.CapacityLimiter`); further deploys wait their turn.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request
from starlette.routing import Route

from kflow.errors import DefinitionError, NotFoundError
from kflow.model.definition import WorkflowDefinition
from kflow.model.loader import load_definition
from kflow.server.context import ServerContext, context_of
from kflow.server.http import JSONResponse, QueryParams
from kflow.store.codec import load_json, load_time

#: Definitions parsed at the same time, per server (each in its own thread).
PARSE_THREADS = 2

# A limiter belongs to one Trio run; a RunVar gives each run (server, test) its own.
_parse_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
    "kflow_definition_parse_limiter"
)


def parse_limiter() -> trio.CapacityLimiter:
    """The limiter of definition parsing threads of the current Trio run (made on first use)."""
    try:
        return _parse_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(PARSE_THREADS)
        _parse_limiter.set(limiter)
        return limiter


async def parse_definition(source: str | dict[str, Any]) -> WorkflowDefinition:
    """:func:`~kflow.model.loader.load_definition` in a worker thread.

    Not cancellable once the thread runs (the parse finishes, its result is
    dropped); waiting for a free thread is.

    Raises:
        DefinitionError: the definition is invalid (``field_errors`` by path).
    """
    return await trio.to_thread.run_sync(load_definition, source, limiter=parse_limiter())


async def deploy_definition(ctx: ServerContext, source: str | dict[str, Any]) -> JSONResponse:
    """Validate and store a definition; 201 when new, 200 ``unchanged`` otherwise.

    Raises:
        DefinitionError: the definition is invalid (a 422 answer).
    """
    definition = await parse_definition(source)
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
    """The normalized definition (PROTOCOL §4: ``name``, ``description``, ``settings``,
    ``activities``) plus kflow's ``version``, ``created_at``, ``content_hash`` and
    ``versions`` (every deployed version of the name, newest first).

    Raises:
        NotFoundError: no such definition or version (404).
    """
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
        normalized: dict[str, Any] = load_json(row["body"])  # stored as normalized_dict()
        return {
            **normalized,
            "version": row["version"],
            "created_at": load_time(row["created_at"]),
            "content_hash": row["content_hash"],
            "versions": versions,
        }

    return JSONResponse(await ctx.store.read(read))


routes = [
    Route("/api/v1/workflow_definitions", create, methods=["POST"]),
    Route("/api/v1/workflow_definitions", list_definitions, methods=["GET"]),
    Route("/api/v1/workflow_definitions/{name}", get_definition, methods=["GET"]),
]

__all__ = ["deploy_definition", "routes"]
