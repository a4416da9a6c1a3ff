"""``POST /api/v1/oauth/token``: client credentials for a bearer token (PROTOCOL §2)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from kflow.errors import InvalidInputError, ValidationFailed
from kflow.server.context import context_of
from kflow.server.http import JSONResponse, read_json


async def _fields(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ValidationFailed(
            "the token request must be a JSON object or a form", {"body": ["expected an object"]}
        )
    return data


async def token(request: Request) -> JSONResponse:
    """Exchange ``client_credentials`` for a JWT."""
    ctx = context_of(request)
    fields = await _fields(request)
    missing = [
        f
        for f in ("grant_type", "client_id", "client_secret")
        if not isinstance(fields.get(f), str) or not fields.get(f)
    ]
    if missing:
        raise InvalidInputError(
            f"missing field(s): {', '.join(missing)}", details={"missing": missing}
        )
    if fields["grant_type"] != "client_credentials":
        raise InvalidInputError(
            f"unsupported grant_type {fields['grant_type']!r}; "
            "kflow issues tokens for 'client_credentials'"
        )
    scope = fields.get("scope") if isinstance(fields.get("scope"), str) else None
    access = await ctx.auth.issue(fields["client_id"], fields["client_secret"], scope)
    return JSONResponse(
        {"access_token": access, "token_type": "Bearer", "expires_in": ctx.auth.token_ttl_seconds}
    )


routes = [Route("/api/v1/oauth/token", token, methods=["POST"])]
