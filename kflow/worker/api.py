"""``WorkerApi``: the HTTP client of the worker protocol (PROTOCOL §2 and §3).

Every call goes through the injected :class:`httpx.AsyncClient`. Bodies are
JSON written by :func:`kflow._serde.dumps` (money as decimal strings).

Authentication: a static bearer token, OAuth client credentials (a token from
``POST /api/v1/oauth/token``, cached, refreshed shortly before ``expires_in``
runs out), or none at all (insecure mode). A 401 makes an OAuth client fetch a
new token once and repeat that request once; a second 401 is an error.

Retries (tenacity, exponential backoff with jitter) cover network errors and
408/429/5xx answers only; other 4xx answers are final. With several server
URLs (``KRUXIAFLOW_API_URL=http://a:8080,http://b:8080``), a network error or
a 502/503/504 moves the next attempt to the next server. Polls and reports
retry until the server answers; a caller bounds them with a cancel scope.
Non-2xx answers become :class:`~kflow.errors.ApiError` built from the error
envelope ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import contextlib
import decimal
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypeGuard, TypeVar, cast
from urllib.parse import quote

import httpx
import structlog
import trio

from kflow._serde import dumps, loads
from kflow.errors import (
    ActivityCancelled,
    ApiError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnauthorizedError,
)
from kflow.worker.config import WorkerConfig
from kflow.worker.report_batch import BATCH_PATH, ReportBatcher, SendAlone
from kflow.worker.wire import (
    POLL_BACKOFF_CAP,
    REPORT_BACKOFF_CAP,
    ClaimedActivity,
    Report,
    ReportOutcome,
    describe,
    error_from_response,
    is_transient,
    retrying,
)

T = TypeVar("T")

log = structlog.get_logger("kflow.worker.api")


class WorkerApi:
    """Client of the worker protocol; also the :class:`~kflow.worker.context.ActivityApi`.

    Methods are cancel points; cancellation abandons the request in flight.
    """

    #: Whether :meth:`poll_stream` may be used. (An API that calls the routes in
    #: the server's own process answers a poll with a function call: a stream
    #: saves it nothing.)
    streams_polls = True

    def __init__(self, http: httpx.AsyncClient, config: WorkerConfig) -> None:
        self._http = http
        self.config = config
        self._bases = [f"{url}/api/v1" for url in config.api_urls]
        self._current = 0
        self._token: str | None = None
        self._token_expires_at: float | None = None
        self._token_lock = trio.Lock()
        self._batcher: ReportBatcher | None = None
        #: Whether batched reports ask for their run's next activity (``claim_next``).
        self.claim_next = False
        #: Activities claimed by reports, by the reported attempt's id (see :meth:`take_next`).
        self._next: dict[uuid.UUID, ClaimedActivity] = {}

    # -- calls ------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """``GET /api/v1/info`` (public). ``{}`` from a server without the route (404).

        Retries transient failures forever (a worker waits for its server).

        Raises:
            ApiError: another non-2xx answer.
        """
        try:
            response: httpx.Response = await retrying(cap=POLL_BACKOFF_CAP, what="info")(
                self._send, "GET", "/info", auth=False
            )
        except ApiError as exc:
            if exc.status == 404:
                return {}
            raise
        data = self._json(response)
        return data if isinstance(data, dict) else {}

    async def poll(
        self, max_activities: int, wait_seconds: float | None = None
    ) -> list[ClaimedActivity]:
        """Claim up to ``max_activities`` activities of this worker's queue.

        ``wait_seconds`` (kflow long-poll) holds the request until work arrives;
        ``None`` asks for an immediate answer. Transient failures are retried
        forever with backoff; items that do not parse are logged and skipped.

        Raises:
            ApiError: a non-transient error answer (4xx).
            UnauthorizedError: the token endpoint refused the credentials.
        """
        body = self._poll_body(max_activities, wait_seconds)
        timeout = self._poll_timeout(wait_seconds)
        response: httpx.Response = await retrying(cap=POLL_BACKOFF_CAP, what="poll")(
            self._send, "POST", "/workers/poll", body=dumps(body), limits=timeout
        )
        return _poll_items(self._json(response), response.status_code)

    def _poll_body(self, max_activities: int, wait_seconds: float | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "worker": self.config.worker,
            "worker_id": self.config.worker_id,
            "max_activities": max_activities,
        }
        if wait_seconds is not None:
            body["wait_seconds"] = wait_seconds
        return body

    def _poll_timeout(self, wait_seconds: float | None) -> httpx.Timeout:
        """A poll's time bound: the wait plus ``http_timeout``, never cut short."""
        return httpx.Timeout(
            self.config.http_timeout, read=self.config.http_timeout + (wait_seconds or 0)
        )

    async def poll_stream(
        self,
        max_activities: int,
        wait_seconds: float,
        take: Callable[[list[ClaimedActivity]], None],
    ) -> int:
        """A streamed long-poll (server feature ``poll_stream``): the answer stays
        open for up to ``wait_seconds`` and brings, one line at a time, the
        activities claimed for it (``max_activities`` in all at most);
        ``take(items)`` gets each line's items as soon as it arrives. Returns how
        many activities came.

        Opening the stream retries as :meth:`poll` does (network errors and
        408/429/5xx with backoff, forever; one token refresh on a 401). A stream
        cut short by a network error ends the call with what it brought (the
        caller polls again); one cut before it brought anything first waits
        ``poll_interval``, so a server that keeps cutting causes no tight loop.

        Raises:
            ApiError: a non-transient error answer (4xx), or a line that is no poll answer.
            UnauthorizedError: the token endpoint refused the credentials.
        """
        body = dumps({**self._poll_body(max_activities, wait_seconds), "stream": True})
        timeout = self._poll_timeout(wait_seconds)
        base = self._bases[self._current]
        response: httpx.Response = await retrying(cap=POLL_BACKOFF_CAP, what="poll")(
            self._open_stream, "/workers/poll", body, timeout
        )
        brought = 0
        try:
            # an async generator in fact (httpx types it as a plain iterator)
            lines = cast(AsyncGenerator[str, None], response.aiter_lines())
            async with contextlib.aclosing(lines):
                async for line in lines:
                    if not line.strip():
                        continue
                    data = _parsed(line, response.status_code, "a poll stream line")
                    items = _poll_items(data, response.status_code)
                    brought += len(items)
                    take(items)
        except httpx.TransportError as exc:
            log.warning("worker.poll.stream_cut", error=describe(exc), brought=brought)
            self._fail_over(base)
            if not brought:
                await trio.sleep(self.config.poll_interval)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()
        return brought

    async def heartbeat(
        self, activity_id: uuid.UUID, worker_id: str, details: Any | None = None
    ) -> float | None:
        """Extend the lease (one attempt, no retry); returns ``next_heartbeat_seconds``.

        Raises:
            ActivityCancelled: 409 — the lease is held elsewhere or the run was cancelled.
            ApiError: another error answer. httpx.TransportError: network failure.
        """
        body: dict[str, Any] = {"worker_id": worker_id}
        if details is not None:
            body["details"] = details
        try:
            response = await self._send(
                "POST", f"/activities/{activity_id}/heartbeat", body=dumps(body)
            )
        except ApiError as exc:
            if exc.status == 409:
                raise ActivityCancelled(exc.message) from exc
            raise
        data = self._json(response)
        nxt = data.get("next_heartbeat_seconds") if isinstance(data, dict) else None
        return float(nxt) if _positive_number(nxt) else None

    async def reserve_budget(
        self, activity_id: uuid.UUID, worker_id: str, amount: decimal.Decimal
    ) -> dict[str, Any]:
        """Reserve part of the run's budget for a running attempt (one try, no retry).

        Raises:
            kflow.errors.ConflictError: 409 — the attempt is not running here any more.
            ApiError: another error answer. httpx.TransportError: network failure.
        """
        body = {"worker_id": worker_id, "amount_usd": format(amount, "f")}
        try:
            response = await self._send(
                "POST", f"/activities/{activity_id}/budget/reserve", body=dumps(body)
            )
        except ApiError as exc:
            if exc.status == 409:
                raise ConflictError(exc.message, details=dict(exc.details)) from exc
            raise
        data = self._json(response)
        if not isinstance(data, dict):
            raise ApiError(
                "reservation answer is not an object",
                status=response.status_code,
                code="INVALID_RESPONSE",
            )
        return data

    async def complete(
        self,
        activity_id: uuid.UUID,
        worker_id: str,
        output: Mapping[str, Any],
        cost_usd: Any = None,
        usage: Any = (),
    ) -> ReportOutcome:
        """Report success; retries until the server answers (see :meth:`report`).

        Raises:
            TypeError: ``output`` is not JSON-serialisable.
        """
        return await self.report(Report.complete(activity_id, worker_id, output, cost_usd, usage))

    async def fail(
        self,
        activity_id: uuid.UUID,
        worker_id: str,
        failure: Any,
        cost_usd: Any = None,
        usage: Any = (),
    ) -> ReportOutcome:
        """Report failure (a :class:`~kflow.worker.activity.Failure`); see :meth:`report`."""
        return await self.report(Report.fail(activity_id, worker_id, failure, cost_usd, usage))

    def batch_reports(self, **options: Any) -> None:
        """Let :meth:`report` calls with ``batched=True`` share requests
        (``POST /activities/reports``; the server must offer ``report_batch``).
        ``options`` go to :class:`~kflow.worker.report_batch.ReportBatcher`."""
        self._batcher = ReportBatcher(self._post_batch, **options)

    def take_next(self, activity_id: uuid.UUID) -> ClaimedActivity | None:
        """The activity the report of ``activity_id`` claimed for this worker, once."""
        return self._next.pop(activity_id, None)

    async def _post_batch(self, body: bytes) -> httpx.Response:
        return await self._send("POST", BATCH_PATH, body=body)

    async def report(
        self, report: Report, *, retry: bool = True, batched: bool = False
    ) -> ReportOutcome:
        """Deliver a complete/fail report and classify the server's answer.

        200 → ACKNOWLEDGED; 409 → LEASE_LOST (warning); 404 → UNKNOWN_ACTIVITY
        (error); other 4xx or refused credentials → REJECTED (error). With
        ``retry`` transient failures are retried until the server answers.
        ``batched`` (one try only, without ``retry``) lets the report share a
        request with others finishing at the same time, once
        :meth:`batch_reports` was called; its answer is classified the same way.

        Raises:
            httpx.TransportError, ApiError: a transient failure, only with ``retry=False``.
        """
        send = retrying(cap=REPORT_BACKOFF_CAP, what=report.kind) if retry else _once
        try:
            response = await self._send_report(report, send, batched and not retry)
        except UnauthorizedError as exc:
            bound = _report_log(report)
            bound.error("worker.report.rejected", status=401, message=exc.message)
            return ReportOutcome.REJECTED
        except ApiError as exc:
            if is_transient(exc):
                raise
            bound = _report_log(report)
            if exc.status == 409:
                bound.warning("worker.report.lease_lost", message=exc.message)
                return ReportOutcome.LEASE_LOST
            if exc.status == 404:
                bound.error("worker.report.unknown_activity", message=exc.message)
                return ReportOutcome.UNKNOWN_ACTIVITY
            bound.error(
                "worker.report.rejected", status=exc.status, code=exc.code, message=exc.message
            )
            return ReportOutcome.REJECTED
        try:
            data = loads(response.content) if response.content else {}
        except InvalidInputError:
            data = {}  # acknowledged all the same: the status says so
        if isinstance(data, dict) and data.get("warnings"):
            _report_log(report).warning("worker.report.warnings", warnings=data["warnings"])
        if isinstance(data, dict) and data.get("activities"):
            self._keep_next(report, data["activities"])
        return ReportOutcome.ACKNOWLEDGED

    def _keep_next(self, report: Report, raw_items: Any) -> None:
        """Keep the activity a report claimed for :meth:`take_next` (at most one)."""
        items = raw_items if isinstance(raw_items, list) else [raw_items]
        for raw in items:
            try:
                claimed = ClaimedActivity.from_wire(raw)
            except (TypeError, ValueError) as exc:
                log.error(  # noqa: TRY400 (a bad item needs no traceback)
                    "worker.report.bad_next_item",
                    activity_id=str(report.activity_id),
                    error=str(exc),
                )
                continue
            if report.activity_id in self._next:
                log.error(
                    "worker.report.too_many_next",
                    activity_id=str(report.activity_id),
                    dropped=str(claimed.activity_id),
                )
                continue
            self._next[report.activity_id] = claimed

    async def _send_report(
        self, report: Report, send: Callable[..., Awaitable[httpx.Response]], batched: bool
    ) -> httpx.Response:
        """The server's answer to ``report``: through the batcher when allowed and
        possible, else on the report's own route with ``send``.

        Raises:
            ApiError: a non-2xx answer (the report's own, or the batch's transient one).
            httpx.TransportError: a network failure.
        """
        batcher = self._batcher
        if batched and batcher is not None and batcher.enabled:
            try:
                response = await batcher.submit(report, claim_next=self.claim_next)
            except SendAlone:
                pass
            else:
                if response.is_error:
                    raise error_from_response(response)
                return response
        path = report.path
        if batched and self.claim_next:
            path += "?claim_next=true"
        answer: httpx.Response = await send(self._send, "POST", path, body=report.body)
        return answer

    async def upload_file(
        self,
        workflow_id: uuid.UUID,
        activity_key: str,
        filename: str,
        data: bytes,
        content_type: str | None,
    ) -> Mapping[str, Any]:
        """Store a file under (workflow, activity); returns the server's metadata.

        Raises:
            ApiError: the server refused it (e.g. 400 bad filename, 413 too large).
        """
        response: httpx.Response = await retrying(
            cap=POLL_BACKOFF_CAP, attempts=5, what="upload_file"
        )(
            self._send,
            "POST",
            _file_path(workflow_id, activity_key, filename),
            body=data,
            content_type=content_type or "application/octet-stream",
        )
        result = self._json(response)
        return result if isinstance(result, dict) else {}

    async def download_file(
        self, workflow_id: uuid.UUID, activity_key: str, filename: str
    ) -> bytes:
        """Fetch a stored file's bytes.

        Raises:
            NotFoundError: no such file. ApiError: another error answer.
        """
        try:
            response: httpx.Response = await retrying(
                cap=POLL_BACKOFF_CAP, attempts=5, what="download_file"
            )(self._send, "GET", _file_path(workflow_id, activity_key, filename))
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundError(
                    f"file {filename!r} of {workflow_id}/{activity_key} not found"
                ) from exc
            raise
        return response.content

    # -- plumbing ---------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        limits: httpx.Timeout | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        """One request (plus one repeat after a token refresh on 401)."""
        token = await self._current_token() if auth else None
        response = await self._request(method, path, body, content_type, limits, token)
        if response.status_code == 401 and auth and self.config.uses_oauth:
            log.info("worker.api.token_refresh", reason="401")
            await self._refresh_token(stale=token)
            token = await self._current_token()
            response = await self._request(method, path, body, content_type, limits, token)
        if response.is_error:
            raise error_from_response(response)
        return response

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str,
        limits: httpx.Timeout | None,
        token: str | None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self._sent(
            method, path, body, headers, limits or httpx.Timeout(self.config.http_timeout)
        )

    async def _sent(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        limits: httpx.Timeout,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """The answer of the current server (``stream``: its body left unread);
        a network error or a 502/503/504 moves the next attempt to the next server.

        Raises:
            httpx.TransportError: network failure.
        """
        base = self._bases[self._current]
        request = self._http.build_request(
            method, base + path, content=body, headers=headers, timeout=limits
        )
        try:
            response = await self._http.send(request, stream=stream)
        except httpx.TransportError:
            self._fail_over(base)
            raise
        if response.status_code in (502, 503, 504):
            self._fail_over(base)
        return response

    async def _open_stream(self, path: str, body: bytes, limits: httpx.Timeout) -> httpx.Response:
        """``POST path`` with its answer left open to be read as it comes (the
        caller closes it); one repeat after a token refresh on 401.

        Raises:
            ApiError: a non-2xx answer. httpx.TransportError: network failure.
        """
        token = await self._current_token()
        response = await self._request_stream(path, body, limits, token)
        if response.status_code == 401 and self.config.uses_oauth:
            await response.aclose()
            log.info("worker.api.token_refresh", reason="401")
            await self._refresh_token(stale=token)
            token = await self._current_token()
            response = await self._request_stream(path, body, limits, token)
        if response.is_error:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise error_from_response(response)
        return response

    async def _request_stream(
        self, path: str, body: bytes, limits: httpx.Timeout, token: str | None
    ) -> httpx.Response:
        headers = {"Accept": "application/x-ndjson", "Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self._sent("POST", path, body, headers, limits, stream=True)

    def _fail_over(self, base: str) -> None:
        """After a failure at ``base``, let the next attempt use the next server."""
        if len(self._bases) > 1 and self._bases[self._current] == base:
            self._current = (self._current + 1) % len(self._bases)
            log.warning(
                "worker.api.fail_over",
                failed=base.removesuffix("/api/v1"),
                next=self._bases[self._current].removesuffix("/api/v1"),
            )

    async def _current_token(self) -> str | None:
        if not self.config.uses_oauth:
            return self.config.access_token
        expires = self._token_expires_at
        if self._token is None or (expires is not None and trio.current_time() >= expires):
            await self._refresh_token(stale=self._token)
        return self._token

    async def _refresh_token(self, *, stale: str | None) -> None:
        async with self._token_lock:
            if self._token is not None and self._token != stale:
                return  # another task refreshed it while we waited
            self._token, self._token_expires_at = await self._fetch_token()

    async def _fetch_token(self) -> tuple[str, float | None]:
        body = dumps(
            {
                "grant_type": "client_credentials",
                "client_id": self.config.client_id,
                "client_secret": self.config.client_secret,
            }
        )
        response = await self._request("POST", "/oauth/token", body, "application/json", None, None)
        if response.status_code in (400, 401, 403):
            exc = error_from_response(response)
            raise UnauthorizedError(
                f"the server refused the worker's client credentials: {exc.message}",
                details={"status": exc.status},
            ) from exc
        if response.is_error:
            raise error_from_response(response)
        data = self._json(response)
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(
                "token answer has no access_token",
                status=response.status_code,
                code="INVALID_RESPONSE",
            )
        expires_in = data.get("expires_in")
        if _positive_number(expires_in):
            return token, trio.current_time() + expires_in - min(60.0, expires_in / 10)
        return token, None

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        return _parsed(response.content, response.status_code, "answer")


def _parsed(text: bytes | str, status: int, what: str) -> Any:
    """``text`` decoded as JSON.

    Raises:
        ApiError: it is no JSON (``INVALID_RESPONSE``; the message names ``what``).
    """
    try:
        return loads(text)
    except InvalidInputError as exc:
        raise ApiError(
            f"invalid JSON in {what}: {exc.message}", status=status, code="INVALID_RESPONSE"
        ) from exc


def _poll_items(data: Any, status: int) -> list[ClaimedActivity]:
    """The activities of a poll answer (or of one line of a streamed one); items
    that do not parse are logged and skipped.

    Raises:
        ApiError: ``data`` is no poll answer (no ``activities`` array).
    """
    raw_items = data.get("activities") if isinstance(data, dict) else None
    if not isinstance(raw_items, list):
        raise ApiError(
            "poll answer has no 'activities' array", status=status, code="INVALID_RESPONSE"
        )
    claimed: list[ClaimedActivity] = []
    for raw in raw_items:
        try:
            claimed.append(ClaimedActivity.from_wire(raw))
        except (TypeError, ValueError) as exc:
            log.error(  # noqa: TRY400 (a bad item needs no traceback)
                "worker.poll.bad_item",
                error=str(exc),
                activity_id=raw.get("activity_id") if isinstance(raw, dict) else None,
            )
    return claimed


async def _once(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    return await fn(*args, **kwargs)


def _report_log(report: Report) -> Any:
    return log.bind(
        activity_id=str(report.activity_id), kind=report.kind, worker_id=report.worker_id
    )


def _file_path(workflow_id: uuid.UUID, activity_key: str, filename: str) -> str:
    return f"/workflows/{workflow_id}/activities/{activity_key}/files/{quote(filename, safe='')}"


def _positive_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
