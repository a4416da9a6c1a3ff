"""The ``http_request`` activity of the ``std`` worker (PROTOCOL §9).

Parameters ``{method, url, headers?, query?, body?, timeout_seconds?}``;
output ``response`` = ``{status, success, headers, body, body_encoding}``.

- A non-2xx status is a normal result (``success`` is false), not an error.
- ``body`` of the request: a dict/list (or number/bool) is sent as JSON, a
  string as-is, absent/None sends nothing.
- ``body`` of the response: parsed JSON when the content-type is JSON
  (``application/json`` or ``*+json``) and parses; base64 text when the
  content-type is binary (``image/*``, ``audio/*``, ``video/*``, ``font/*``,
  ``application/octet-stream``, pdf, zip, ...) or the bytes are not text;
  decoded text otherwise. ``body_encoding`` says which: ``json`` | ``text`` |
  ``base64`` (always present, so templates can test it).
- Response headers are lower-cased; repeated headers are joined with ``, ``.
- Redirects are followed (bounded by the client's ``max_redirects``).

Every call goes through the injected ``httpx.AsyncClient``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from typing import Any

import attrs
import httpx
import trio

from kflow.errors import ActivityError
from kflow.worker.activity import Activity, ActivityResult
from kflow.worker.context import ActivityContext

DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 10
DEFAULT_TIMEOUT_SECONDS = 30.0
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_BINARY_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/wasm",
        "application/protobuf",
        "application/x-protobuf",
        "application/msgpack",
        "application/x-msgpack",
    }
)
_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/")
_SCALARS = (str, int, float, bool, type(None))


def new_http_client() -> httpx.AsyncClient:
    """The client :func:`kflow.activities.std_registry` makes when none is injected."""
    return httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=DEFAULT_MAX_REDIRECTS,
        timeout=httpx.Timeout(DEFAULT_TIMEOUT_SECONDS),
    )


def mask_url(url: str | httpx.URL) -> str:
    """``url`` with any password in its userinfo replaced by ``***``."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    if parsed.password:
        parsed = parsed.copy_with(username=parsed.username, password="***")
    return str(parsed)


def _invalid(field: str, why: str) -> ActivityError:
    return ActivityError(
        f"invalid parameter {field!r}: {why}", code="INVALID_PARAMETERS", retryable=False
    )


@attrs.frozen(kw_only=True)
class HttpRequestParams:
    """Validated parameters of one ``http_request`` attempt."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    query: dict[str, Any]
    body: Any
    timeout_seconds: float | None


def parse_params(params: dict[str, Any]) -> HttpRequestParams:
    """Validate ``http_request`` parameters.

    Raises:
        ActivityError: code ``INVALID_PARAMETERS`` (not retryable), naming the field.
    """
    method = params.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _invalid("method", f"{method!r} is not one of {', '.join(sorted(METHODS))}")
    raw_url = params.get("url")
    if not isinstance(raw_url, str) or not raw_url.strip():
        raise _invalid("url", "a non-empty string is required")
    try:
        url = httpx.URL(raw_url.strip())
    except httpx.InvalidURL as exc:
        raise _invalid("url", str(exc)) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _invalid("url", f"{mask_url(url)!r} is not an absolute http(s) URL")
    headers = params.get("headers") or {}
    if not isinstance(headers, dict):
        raise _invalid("headers", "an object of name → string is required")
    clean_headers: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(value, _SCALARS) or value is None:
            raise _invalid(f"headers.{name}", "a string value is required")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if any(c in f"{name}{text}" for c in "\r\n\0") or not name:
            raise _invalid(f"headers.{name}", "empty name or control characters")
        clean_headers[name] = text
    query = params.get("query") or {}
    if not isinstance(query, dict):
        raise _invalid("query", "an object of name → value (or list of values) is required")
    for name, value in query.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, _SCALARS) for v in values):
            raise _invalid(f"query.{name}", "values must be strings, numbers, booleans or lists")
    timeout = params.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise _invalid("timeout_seconds", "a positive number is required")
    return HttpRequestParams(
        method=method.upper(),
        url=url,
        headers=clean_headers,
        query=query,
        body=params.get("body"),
        timeout_seconds=None if timeout is None else float(timeout),
    )


def decode_body(content_type: str, data: bytes, charset: str | None) -> tuple[Any, str]:
    """Decode a response body → ``(body, encoding)``; encoding is json|text|base64."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if not data:
        return "", "text"
    if mime == "application/json" or mime.endswith("+json"):
        try:
            return json.loads(data), "json"
        except ValueError:
            pass
    if mime not in _BINARY_TYPES and not mime.startswith(_BINARY_PREFIXES):
        try:
            return data.decode(charset or "utf-8"), "text"
        except (UnicodeDecodeError, LookupError):
            pass
    return base64.b64encode(data).decode("ascii"), "base64"


class HttpRequestActivity(Activity):
    """``http_request``: one HTTP call through the injected client.

    Without a client (``http=None``) the activity makes its own with
    :func:`new_http_client` when it first runs — a worker that never makes
    an HTTP call does not load the CA bundle — and owns it. ``owns_client=True``
    makes :meth:`aclose` close an injected client too (set by the registry
    builder when it created the client itself).
    """

    name = "http_request"

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        owns_client: bool = False,
    ) -> None:
        self._http = http
        self.max_response_bytes = max_response_bytes
        self.owns_client = owns_client or http is None

    @property
    def http(self) -> httpx.AsyncClient:
        """The client requests go through (created on first use when none was given)."""
        if self._http is None:
            self._http = new_http_client()
        return self._http

    async def aclose(self) -> None:
        """Close the client if this activity owns it; otherwise do nothing."""
        if self.owns_client and self._http is not None:
            await self._http.aclose()

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Send the request and return ``response``.

        Raises:
            ActivityError: ``INVALID_PARAMETERS`` (not retryable); ``TIMEOUT``
                (retryable); ``HTTP_ERROR`` for network failures (retryable) or
                too many redirects (not retryable); ``RESPONSE_TOO_LARGE``
                (not retryable).
        """
        req = parse_params(params)
        where = f"{req.method} {mask_url(req.url)}"
        deadline = req.timeout_seconds if req.timeout_seconds is not None else math.inf
        try:
            with trio.fail_after(deadline):
                response, data = await self._send(req)
        except (trio.TooSlowError, httpx.TimeoutException) as exc:
            raise ActivityError(
                f"{where}: timed out ({type(exc).__name__})", code="TIMEOUT", retryable=True
            ) from exc
        except httpx.TooManyRedirects as exc:
            raise ActivityError(f"{where}: {exc}", code="HTTP_ERROR", retryable=False) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ActivityError(f"{where}: {exc}", code="HTTP_ERROR", retryable=False) from exc
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise ActivityError(f"{where}: {reason}", code="HTTP_ERROR", retryable=True) from exc
        body, encoding = decode_body(
            response.headers.get("content-type", ""), data, response.charset_encoding
        )
        ctx.logger.info(
            "http_request.finished",
            method=req.method,
            url=mask_url(req.url),
            status=response.status_code,
            size=len(data),
        )
        return ActivityResult.value(
            "response",
            {
                "status": response.status_code,
                "success": response.is_success,
                "headers": dict(response.headers.items()),
                "body": body,
                "body_encoding": encoding,
            },
        )

    async def _send(self, req: HttpRequestParams) -> tuple[httpx.Response, bytes]:
        kwargs: dict[str, Any] = {}
        if isinstance(req.body, str):
            kwargs["content"] = req.body.encode()
        elif req.body is not None:
            kwargs["json"] = req.body
        if req.timeout_seconds is not None:
            kwargs["timeout"] = httpx.Timeout(req.timeout_seconds)
        request = self.http.build_request(
            req.method, req.url, headers=req.headers, params=req.query or None, **kwargs
        )
        response = await self.http.send(request, stream=True, follow_redirects=True)
        try:
            return response, await self._read_capped(response, req)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    async def _read_capped(self, response: httpx.Response, req: HttpRequestParams) -> bytes:
        cap = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        too_large = ActivityError(
            f"{req.method} {mask_url(req.url)}: response body exceeds {cap} bytes",
            code="RESPONSE_TOO_LARGE",
            retryable=False,
        )
        if req.method != "HEAD" and declared.isdigit() and int(declared) > cap:
            raise too_large
        data = bytearray()
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            data += chunk
            if len(data) > cap:
                break
        else:
            return bytes(data)
        # Over the cap: close the connection, then let the iterator fail so that
        # every layer of httpx's generator chain finishes (none is left to the GC).
        await response.aclose()
        with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
            async for _ in chunks:
                pass
        raise too_large
