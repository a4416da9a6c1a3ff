"""The error table: every exception becomes the JSON envelope with the right status.

kflow errors carry their wire ``code``; this module maps codes to HTTP
statuses. Framework errors (unknown route, wrong method) get the envelope
too. Anything unexpected is logged with its traceback and answered with a
500 that names the request id and leaks neither traceback nor SQL.
"""

from __future__ import annotations

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from kflow.errors import KflowError
from kflow.server.http import error_response

log = structlog.get_logger("kflow.server")

STATUS_BY_CODE = {
    "BAD_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "VALIDATION_ERROR": 422,
    "TEMPLATE_ERROR": 422,
    "RATE_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
}

_CODE_BY_STATUS = {
    status: code for code, status in STATUS_BY_CODE.items() if code != "TEMPLATE_ERROR"
}


def _request_id(request: Request) -> str:
    """The id the middleware echoed or generated for ``request``."""
    return str(request.scope.get("state", {}).get("request_id", "")) or request.headers.get(
        "x-request-id", ""
    )


def _internal_error(request: Request, headers: dict[str, str] | None = None) -> Response:
    """The 500 envelope: names the request id, says nothing about the cause."""
    return error_response(
        500,
        "INTERNAL_ERROR",
        f"internal error; see the server log for request {_request_id(request)}".strip(),
        headers=headers,
    )


async def kflow_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KflowError)
    status = STATUS_BY_CODE.get(exc.code, 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status >= 500:
        log.error(
            "http.error", code=exc.code, error=exc.message, path=request.url.path, exc_info=exc
        )
    if status == 500:
        # Store errors carry database text (table and column names, SQL): log only.
        return _internal_error(request)
    return error_response(status, exc.code, exc.message, exc.details or None, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, "BAD_REQUEST")
    message = {
        404: f"Not found: no route for {request.method} {request.url.path}",
        405: f"method {request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, code, message, headers=exc.headers)


def _single_leaf(exc: BaseException) -> BaseException | None:
    """The one exception inside (nested) exception groups, or None if there are several."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # A route that runs a nursery (long-polls, streams) raises its errors in a group:
    # one error inside is answered as itself, so a 503 stays a 503.
    leaf = _single_leaf(exc)
    if leaf is not exc and isinstance(leaf, KflowError):
        return await kflow_error(request, leaf)
    if leaf is not exc and isinstance(leaf, HTTPException):
        return await http_error(request, leaf)
    log.error("http.unhandled_error", path=request.url.path, method=request.method, exc_info=exc)
    # Answered outside the request-id middleware, so the header is set here.
    request_id = _request_id(request)
    return _internal_error(request, {"x-request-id": request_id} if request_id else None)


EXCEPTION_HANDLERS = {
    KflowError: kflow_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
