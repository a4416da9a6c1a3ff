"""Files of activities: upload a raw body, download it back (PROTOCOL §3, Files)."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kflow.errors import InvalidInputError, NotFoundError
from kflow.server.context import context_of
from kflow.server.http import JSONResponse, path_uuid
from kflow.store.codec import load_time

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def check_filename(name: str) -> str:
    """A filename that is one safe path segment.

    Raises:
        InvalidInputError: empty, ``.``/``..``, a separator, a control character,
            or longer than 255 bytes.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise InvalidInputError(
            f"invalid filename {name!r}: it must be a single path segment",
            details={"filename": name},
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInputError(
            "invalid filename: control characters are not allowed", details={"filename": name}
        )
    if len(name.encode()) > 255:
        raise InvalidInputError("invalid filename: longer than 255 bytes")
    return name


def _target(request: Request) -> tuple[Any, str, str]:
    workflow_id = path_uuid(request, "workflow_id", "workflow")
    key = request.path_params["key"]
    if not _KEY.match(key):
        raise InvalidInputError(f"invalid activity key {key!r}")
    return workflow_id, key, check_filename(request.path_params["filename"])


async def upload(request: Request) -> JSONResponse:
    ctx = context_of(request)
    principal = await ctx.auth.authenticate(request.headers.get("authorization"))
    if "worker" not in principal.scopes:
        principal.require("workflows:write")
    workflow_id, key, filename = _target(request)
    data = await request.body()
    content_type = request.headers.get("content-type") or "application/octet-stream"
    now = ctx.engine.clock.now()

    def put(tx: Any) -> None:
        if tx.one("activity_by_key", workflow_id=str(workflow_id), key=key) is None:
            raise NotFoundError(f"activity {key!r} of workflow {workflow_id} not found")
        tx.run(
            "put_file",
            workflow_id=str(workflow_id),
            activity_key=key,
            filename=filename,
            content_type=content_type,
            size=len(data),
            data=data,
            now=tx.time(now),
        )

    await ctx.store.write(put)
    return JSONResponse(
        {
            "workflow_id": str(workflow_id),
            "activity_key": key,
            "filename": filename,
            "size": len(data),
            "content_type": content_type,
            "created_at": now,
            "reference": f"postgres://{workflow_id}/{key}/{filename}",
        },
        status_code=201,
    )


async def download(request: Request) -> Response:
    ctx = context_of(request)
    principal = await ctx.auth.authenticate(request.headers.get("authorization"))
    if "worker" not in principal.scopes:
        principal.require("workflows:read")
    workflow_id, key, filename = _target(request)
    row = await ctx.store.read(
        lambda tx: tx.one(
            "get_file", workflow_id=str(workflow_id), activity_key=key, filename=filename
        )
    )
    if row is None:
        raise NotFoundError(
            f"file {filename!r} of activity {key!r} in workflow {workflow_id} not found"
        )
    created = load_time(row["created_at"])
    headers = {
        "content-length": str(row["size"]),
        "x-kflow-created-at": created.isoformat() if created else "",
    }
    return Response(bytes(row["data"]), media_type=row["content_type"], headers=headers)


_FILE = "/api/v1/workflows/{workflow_id}/activities/{key}/files/{filename}"
# A fallback that takes the rest of the (percent-decoded) path, so an encoded
# separator (``a%2Fb``) reaches check_filename and is refused with 400 instead
# of falling through to "no such route".
_FILE_PATH = "/api/v1/workflows/{workflow_id}/activities/{key}/files/{filename:path}"

routes = [
    Route(_FILE, upload, methods=["POST", "PUT"]),
    Route(_FILE, download, methods=["GET"]),
    Route(_FILE_PATH, upload, methods=["POST", "PUT"], include_in_schema=False),
    Route(_FILE_PATH, download, methods=["GET"], include_in_schema=False),
]
