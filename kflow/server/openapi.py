"""The OpenAPI document, derived from the routing table and the handlers' docstrings."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Route

from kflow._version import __version__

_PUBLIC = ("/health", "/api/v1/info", "/api/v1/openapi.json", "/api/v1/oauth/token")
_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "enum": [
                        "BAD_REQUEST",
                        "UNAUTHORIZED",
                        "FORBIDDEN",
                        "NOT_FOUND",
                        "CONFLICT",
                        "VALIDATION_ERROR",
                        "PAYLOAD_TOO_LARGE",
                        "RATE_LIMIT_EXCEEDED",
                        "INTERNAL_ERROR",
                        "SERVICE_UNAVAILABLE",
                        "TEMPLATE_ERROR",
                        "METHOD_NOT_ALLOWED",
                    ],
                },
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def _summary(route: Route) -> tuple[str, str]:
    doc = (route.endpoint.__doc__ or route.endpoint.__module__.rsplit(".", 1)[-1]).strip()
    first, _, rest = doc.partition("\n")
    return first.strip().rstrip("."), rest.strip()


def build_openapi(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """An OpenAPI 3.1 document describing ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or route.methods is None or not route.include_in_schema:
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        summary, description = _summary(route)
        public = route.path.startswith(_PUBLIC)
        # Handlers of different modules share names (``create``); operation ids
        # must be unique in the document, so the module is part of them.
        tag = route.endpoint.__module__.rsplit(".", 1)[-1]
        for method in sorted(route.methods - {"HEAD"}):
            operation: dict[str, Any] = {
                "summary": summary,
                "operationId": f"{method.lower()}_{tag}_{route.name}",
                "tags": [tag],
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in _PARAM.findall(route.path)
                ],
                "responses": {
                    "200": {"description": "success"},
                    "default": {
                        "description": "error envelope",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
            if description:
                operation["description"] = description
            if not public:
                operation["security"] = [{"bearer": []}]
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kflow API",
            "version": __version__,
            "description": "The Kruxia Flow wire protocol as served by kflow.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
