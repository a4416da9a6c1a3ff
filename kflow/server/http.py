"""HTTP plumbing shared by the routes: JSON responses, the error envelope,
body reading with limits, query-parameter parsing with field-named errors."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kflow._serde import dumps, loads, parse_datetime
from kflow.errors import InvalidInputError, NotFoundError, ValidationFailed


class JSONResponse(Response):
    """JSON via orjson: Decimals as strings, datetimes RFC 3339 with Z."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class HeldJSONResponse(Response):
    """A JSON answer whose status line and headers go out at once and whose body
    (chunked) follows when ``body_of()`` returns.

    ``body_of`` watches for the caller hanging up itself. (Starlette's
    ``StreamingResponse`` runs its body in a task group beside a watcher of its
    own: two more tasks per answer, ~5 % of the server's CPU on PostgreSQL
    Sequential-5, where every run is one held start.)
    """

    media_type = "application/json"

    def __init__(
        self,
        body_of: Callable[[], Awaitable[Any]],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._body_of = body_of
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)  # no body yet: no Content-Length, so chunked

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = dumps(await self._body_of())
        await send({"type": "http.response.body", "body": body, "more_body": False})


class LinesResponse(Response):
    """A stream of JSON lines (``application/x-ndjson``, chunked): one line for
    each value ``produce`` emits, as it emits it; the answer ends when
    ``produce`` returns.

    The status line and headers go out with the first line (or at the end):
    until then an exception of ``produce`` is answered as any route's error is
    (a database that cannot be reached is a 503 the caller backs off from,
    not a 200 cut short). ``produce`` watches for the caller hanging up itself
    (as ``HeldJSONResponse``'s ``body_of`` does).
    """

    media_type = "application/x-ndjson"

    def __init__(
        self,
        produce: Callable[[Callable[[Any], Awaitable[None]]], Awaitable[None]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._produce = produce
        self.status_code = 200
        self.background = None
        self.init_headers(headers)  # no body yet: no Content-Length, so chunked

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def start() -> None:
            nonlocal started
            if not started:
                started = True
                start_message = {"type": "http.response.start", "status": 200}
                await send({**start_message, "headers": self.raw_headers})

        async def emit(value: Any) -> None:
            line = dumps(value) + b"\n"
            await start()
            await send({"type": "http.response.body", "body": line, "more_body": True})

        await self._produce(emit)
        await start()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def envelope(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The error envelope of PROTOCOL §1."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        envelope(code, message, details), status_code=status, headers=dict(headers or {})
    )


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (an empty body is an error).

    Raises:
        InvalidInputError: empty or not JSON (400).
        kflow.errors.PayloadTooLargeError: above the body limit (413).
    """
    body = await request.body()
    if not body.strip():
        raise InvalidInputError("the request body is empty; expected a JSON object")
    try:
        return loads(body)
    except InvalidInputError as exc:
        raise InvalidInputError(f"the request body is not valid JSON: {exc}") from exc


async def read_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object.

    Raises:
        InvalidInputError: not JSON (400).
        ValidationFailed: JSON but not an object (422, field ``body``).
    """
    if allow_empty and not (await request.body()).strip():
        return {}
    data = await read_json(request)
    if not isinstance(data, dict):
        kind = type(data).__name__.replace("dict", "object").replace("list", "array")
        raise ValidationFailed(
            "the request body must be a JSON object", {"body": [f"expected an object, got {kind}"]}
        )
    return data


def path_uuid(request: Request, name: str, what: str) -> uuid.UUID:
    """A UUID path parameter; a malformed one is simply not found (404)."""
    raw = request.path_params[name]
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFoundError(f"{what} {raw} not found") from None


async def hung_up(request: Request) -> None:
    """Return once the caller of a held request (a long-poll) has disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class QueryParams:
    """Typed access to query parameters, collecting every problem by name."""

    def __init__(self, request: Request) -> None:
        self._params = request.query_params
        self.errors: dict[str, list[str]] = {}

    def text(self, name: str, *, choices: tuple[str, ...] | None = None) -> str | None:
        value = self._params.get(name)
        if value is not None and choices is not None and value not in choices:
            self.errors.setdefault(name, []).append(f"must be one of {', '.join(choices)}")
            return None
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self._params.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.errors.setdefault(name, []).append(f"expected an integer, got {raw!r}")
            return default
        if not low <= value <= high:
            self.errors.setdefault(name, []).append(f"must be between {low} and {high}")
            return default
        return value

    def number(self, name: str, *, low: float, high: float) -> float | None:
        raw = self._params.get(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            self.errors.setdefault(name, []).append(f"expected a number, got {raw!r}")
            return None
        if not low <= value <= high:
            self.errors.setdefault(name, []).append(f"must be between {low:g} and {high:g}")
            return None
        return value

    def timestamp(self, name: str) -> dt.datetime | None:
        raw = self._params.get(name)
        if raw is None:
            return None
        try:
            return parse_datetime(raw)
        except (ValueError, OverflowError):  # OverflowError: out of range once in UTC
            self.errors.setdefault(name, []).append(f"expected an RFC 3339 timestamp, got {raw!r}")
            return None

    def check(self) -> None:
        """Raises ValidationFailed (422) naming every bad parameter."""
        if self.errors:
            summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.errors.items())
            raise ValidationFailed(f"invalid query parameters: {summary}", self.errors)
