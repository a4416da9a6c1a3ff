"""Reports that finish together travel together: ``POST /api/v1/activities/reports``.

A worker whose server offers the ``report_batch`` feature sends its final
reports through a :class:`ReportBatcher`. At most ``in_flight`` batch
requests are on their way at once; a report made while they are carries on
with the next request, together with every other report made meanwhile. A
report made while nothing is in flight leaves at once, alone — batching
never adds a wait of its own, it only fills the requests a busy worker
would have sent anyway.

Each report gets back what its own route would have answered (a status and
a body, as an :class:`httpx.Response`), so the caller classifies it exactly
as before. When the batch request itself fails:

* network errors and 408/429/5xx answers reach every report of the batch
  (each then takes the outbox path of :class:`~kflow.worker.outbox.Reporter`,
  which resends it on its own);
* any other error answer (a server without the route, a batch above the
  server's body limit, an answer that is no batch answer) raises
  :class:`SendAlone` for every report: the caller sends it on its own route.
  A server without the route (404/405) also switches batching off.

The server applies a report twice harmlessly (a second report of a finished
attempt is acknowledged), which is what makes resending safe.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import httpx
import structlog
import trio

from kflow._serde import dumps, loads
from kflow.errors import ApiError, InvalidInputError
from kflow.worker.wire import Report, is_transient

log = structlog.get_logger("kflow.worker.api")

#: The route of batched reports, under ``/api/v1``.
BATCH_PATH = "/activities/reports"

Post = Callable[[bytes], Awaitable[httpx.Response]]


class SendAlone(Exception):
    """This report could not travel in a batch: send it on its own route."""


@attrs.define(eq=False)
class _Pending:
    report: Report
    claim_next: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    taken: bool = False
    response: httpx.Response | None = None
    error: BaseException | None = None

    def answer(self, response: httpx.Response | None, error: BaseException | None) -> None:
        self.response, self.error = response, error
        self.done.set()


class ReportBatcher:
    """Carries concurrent reports of one worker in shared requests (see the module).

    ``post(body)`` sends one batch request and returns the server's answer,
    raising :class:`httpx.TransportError` or :class:`~kflow.errors.ApiError`
    (a non-2xx answer) like :meth:`WorkerApi._send`.
    """

    def __init__(
        self,
        post: Post,
        *,
        max_reports: int = 50,
        max_bytes: int = 256 * 1024,
        in_flight: int = 1,
    ) -> None:
        self._post = post
        self._max_reports = max_reports
        self._max_bytes = max_bytes
        self._slots = trio.Semaphore(in_flight)
        self._queue: collections.deque[_Pending] = collections.deque()
        #: False once the server turned out not to have the route.
        self.enabled = True

    async def submit(self, report: Report, *, claim_next: bool = False) -> httpx.Response:
        """The answer the server gives ``report`` (any status; the caller classifies it).
        ``claim_next`` asks the server to claim the run's next activity of the
        same queue with it (feature ``report_claim_next``; the answer's body
        then lists it under ``activities``).

        Raises:
            SendAlone: the report could not travel in a batch.
            httpx.TransportError, ApiError: the request carrying it failed
                transiently (network error, 408/429/5xx).
        """
        pending = _Pending(report, claim_next)
        self._queue.append(pending)
        try:
            while not pending.taken:
                async with self._slots:
                    if not pending.taken:
                        await self._carry(self._take())
        except BaseException:
            if not pending.taken:  # cancelled while waiting: it must not leave later
                self._queue.remove(pending)
            raise
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return pending.response

    def _take(self) -> list[_Pending]:
        """The oldest waiting reports that fit in one request (at least one)."""
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < self._max_reports:
            size += len(self._queue[0].report.body)
            if batch and size > self._max_bytes:
                break
            pending = self._queue.popleft()
            pending.taken = True
            batch.append(pending)
        return batch

    async def _carry(self, batch: list[_Pending]) -> None:
        """Send ``batch`` and hand every report its answer (or the failure)."""
        try:
            response = await self._post(_batch_body(batch))
        except (httpx.TransportError, ApiError) as exc:
            self._failed(batch, exc)
            return
        except BaseException:
            cut = httpx.ReadError("the request carrying this report was cut short")
            for pending in batch:
                pending.answer(None, cut)
            raise
        answers = _answers(response, len(batch))
        if answers is None:
            log.warning("worker.report_batch.bad_answer", status=response.status_code)
            for pending in batch:
                pending.answer(None, SendAlone("the batch answer could not be read"))
            return
        for pending, answer in zip(batch, answers, strict=True):
            pending.answer(answer, None)

    def _failed(self, batch: list[_Pending], exc: Exception) -> None:
        if is_transient(exc):
            for pending in batch:
                pending.answer(None, exc)
            return
        status = exc.status if isinstance(exc, ApiError) else None
        if status in (404, 405):
            self.enabled = False
            log.warning("worker.report_batch.unsupported", status=status)
        else:
            log.warning("worker.report_batch.refused", status=status, error=str(exc))
        for pending in batch:
            pending.answer(None, SendAlone(f"the batch was refused: {exc}"))


def _batch_body(batch: list[_Pending]) -> bytes:
    """``{"reports": [...]}`` with each report's own body embedded as it is."""
    items = [
        b'{"activity_id":"%s","kind":"%s","report":%s%s}'
        % (
            str(p.report.activity_id).encode(),
            p.report.kind.encode(),
            p.report.body,
            b',"claim_next":true' if p.claim_next else b"",
        )
        for p in batch
    ]
    return b'{"reports":[' + b",".join(items) + b"]}"


def _answers(response: httpx.Response, count: int) -> list[httpx.Response] | None:
    """Each report's answer as a response of its own; None when the batch answer
    has not exactly ``count`` well-formed results."""
    try:
        data: Any = loads(response.content)
    except InvalidInputError:
        return None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return None
    answers: list[httpx.Response] = []
    for result in results:
        status = result.get("status") if isinstance(result, dict) else None
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            return None
        content = result.get("body") if status < 300 else {"error": result.get("error")}
        answers.append(
            httpx.Response(
                status, content=dumps(content), headers={"Content-Type": "application/json"}
            )
        )
    return answers
