"""``WorkerManager``: the poll loop, the activity slots and shutdown of one worker process.

One Trio nursery holds everything. Slots are tokens of a
:class:`trio.CapacityLimiter` sized ``max_activities``: before each poll the
loop waits for one free slot, reserves every other free one (at most
``poll_max_activities``) on behalf of per-slot tokens, asks the server for
exactly that many activities, hands each claimed activity its token and gives
back the rest. A slot is free again once its activity has been reported.

Against a kflow server (``"long_poll"`` in ``GET /api/v1/info``) each poll
waits up to ``long_poll_seconds`` for work and the next poll follows at once;
against other servers an empty answer is followed by ``poll_interval`` of sleep.

Start-up: contact the server (readiness), report what the outbox holds (each
entry with the ``worker_id`` stored with it), then poll. Shutdown: the first
request stops polling (cancelling a long-poll in flight) and lets running
activities finish within ``shutdown_timeout``; after that they are cancelled
and reported as ``WORKER_SHUTDOWN``. An *immediate* request cancels everything
at once; unacknowledged results stay in the outbox.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import structlog
import trio

from kflow._version import __version__
from kflow.errors import KflowError
from kflow.worker.api import WorkerApi
from kflow.worker.config import WorkerConfig
from kflow.worker.outbox import Outbox, Reporter
from kflow.worker.registry import ActivityRegistry
from kflow.worker.runner import ActivityRunner
from kflow.worker.wire import ClaimedActivity

log = structlog.get_logger("kflow.worker")


class WorkerManager:
    """Runs activities of ``registry`` for the queue ``config.worker`` until stopped.

    ``http`` is the client to talk through (tests and the in-process server
    pass one; it is left open). Without it the manager creates and closes its
    own. ``outbox`` overrides the default outbox file in ``config.state_dir``.
    ``burst=True`` makes :meth:`run` return once a poll comes back empty and
    all in-flight work has been reported.
    """

    def __init__(
        self,
        config: WorkerConfig,
        registry: ActivityRegistry,
        *,
        http: httpx.AsyncClient | None = None,
        burst: bool = False,
        outbox: Outbox | None = None,
        api_factory: Callable[[httpx.AsyncClient, WorkerConfig], WorkerApi] = WorkerApi,
    ) -> None:
        self.config = config
        self._api_factory = api_factory
        self.registry = registry
        self._http = http
        self._burst = burst
        self._outbox = outbox
        self._stopping = False
        self._immediate = False
        self._intake: trio.CancelScope | None = None
        self._everything: trio.CancelScope | None = None
        self._reporter: Reporter | None = None
        self._api: WorkerApi | None = None
        #: The server's ``GET /api/v1/info`` answer (``{}`` when it has none), once known.
        self.server_info: dict[str, Any] | None = None

    def request_shutdown(self, *, immediate: bool = False) -> None:
        """Stop polling and let in-flight work finish (within ``shutdown_timeout``).

        ``immediate=True`` cancels everything at once, reports in flight
        included (they stay in the outbox). Never blocks; safe to call again
        and before :meth:`run`. Call it from the Trio thread.
        """
        if not self._stopping:
            self._stopping = True
            log.info("worker.shutdown_requested", worker_id=self.config.worker_id)
            if self._api is not None:
                self._api.claim_next = False  # no new work, from polls or reports
            if self._intake is not None:
                self._intake.cancel()
        if immediate and not self._immediate:
            self._immediate = True
            log.warning("worker.shutdown_immediate", worker_id=self.config.worker_id)
            if self._reporter is not None:
                self._reporter.hard_stop()
            if self._everything is not None:
                self._everything.cancel()

    async def run_until_shutdown(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """:meth:`run` with SIGINT/SIGTERM handling (main thread only).

        The first signal is a graceful :meth:`request_shutdown`, the second an
        immediate one.

        Raises:
            UnauthorizedError, ApiError: as :meth:`run`.
        """
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals)
                await self.run(task_status=task_status)
                nursery.cancel_scope.cancel()

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            immediate = self._stopping
            log.warning("worker.signal", signal=signal.Signals(signum).name, immediate=immediate)
            self.request_shutdown(immediate=immediate)

    async def run(
        self,
        *,
        burst: bool | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until shut down (or, in burst mode, until idle).

        Readiness (``task_status.started()``) follows the first answer of the
        server. Unreachable servers and 408/429/5xx answers are waited out with
        backoff; a 401 is retried once with a fresh token.

        Raises:
            UnauthorizedError: the server refused the client credentials.
            ApiError: a poll got any other error answer (401 again after the
                token refresh, 403, 404, 422, ...) or an answer that is no poll
                answer (``INVALID_RESPONSE``): such a worker fails loudly.
            sqlite3.Error, OSError: the outbox in ``state_dir`` cannot be used.
        """
        burst = self._burst if burst is None else burst
        self._intake, self._everything = trio.CancelScope(), trio.CancelScope()
        if self._stopping:
            self._intake.cancel()
        if self._immediate:
            self._everything.cancel()
        try:
            async with self._client() as http:
                outbox = self._outbox or Outbox.in_dir(
                    self.config.state_dir,
                    owner=self.config.worker_id,
                    claim_seconds=max(120.0, 4 * self.config.report_timeout),
                )
                api = self._api_factory(http, self.config)
                async with outbox:
                    reporter = Reporter(api, outbox, report_timeout=self.config.report_timeout)
                    self._reporter = reporter
                    if self._immediate:
                        reporter.hard_stop()
                    await self._serve(api, reporter, burst, task_status)
        except BaseExceptionGroup as group:
            leaf = _single_leaf(group)
            if isinstance(leaf, KflowError):
                raise leaf from group
            raise
        finally:
            log.info("worker.stopped", worker_id=self.config.worker_id)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        client = httpx.AsyncClient(
            timeout=self.config.http_timeout,
            headers={"User-Agent": f"kflow-worker/{__version__}"},
            verify=server_tls(self.config.api_urls),
        )
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def _serve(
        self, api: WorkerApi, reporter: Reporter, burst: bool, task_status: trio.TaskStatus[None]
    ) -> None:
        assert self._intake is not None
        assert self._everything is not None
        config = self.config
        slots = trio.CapacityLimiter(config.max_activities)
        runner = ActivityRunner(
            config=config,
            registry=self.registry,
            api=api,
            reporter=reporter,
            thread_limiter=trio.CapacityLimiter(config.max_activities),
        )
        with self._everything:
            async with trio.open_nursery() as root:
                await root.start(runner.heartbeats.serve)
                async with trio.open_nursery() as work:
                    with self._intake:
                        self.server_info = await api.info()
                        features = self.server_info.get("features") or []
                        long_poll = (
                            "long_poll" in features and config.long_poll_seconds > 0 and not burst
                        )
                        if "report_batch" in features and config.report_batch:
                            api.batch_reports()
                            # a report's freed slot takes its run's next step at once
                            api.claim_next = (
                                config.claim_next
                                and "report_claim_next" in features
                                and not self._stopping
                            )
                            self._api = api
                        stream = (
                            long_poll
                            and config.poll_stream
                            and "poll_stream" in features
                            and api.streams_polls
                        )
                        self._log_start(long_poll, stream)
                        task_status.started()
                        await reporter.drain_until_empty()
                        root.start_soon(reporter.serve)
                        if stream:
                            await self._stream_loop(api, runner, work, slots)
                        else:
                            await self._poll_loop(api, runner, work, slots, long_poll, burst)
                    if self._stopping and slots.borrowed_tokens:
                        log.info(
                            "worker.draining",
                            in_flight=slots.borrowed_tokens,
                            shutdown_timeout=config.shutdown_timeout,
                        )
                        work.cancel_scope.deadline = trio.current_time() + config.shutdown_timeout
                root.cancel_scope.cancel()

    def _log_start(self, long_poll: bool, stream: bool) -> None:
        config = self.config
        served = self.registry.names(config.worker)
        log.info(
            "worker.started",
            worker=config.worker,
            worker_id=config.worker_id,
            api_url=config.api_url,
            long_poll=long_poll,
            poll_stream=stream,
            max_activities=config.max_activities,
            activities=served,
            server_version=(self.server_info or {}).get("version"),
        )
        if not served:
            log.warning(
                "worker.no_activities",
                worker=config.worker,
                registered=self.registry.activity_types(),
            )
        if config.insecure:
            log.warning("worker.insecure", detail="no credentials; requests carry no token")

    async def _poll_loop(
        self,
        api: WorkerApi,
        runner: ActivityRunner,
        work: trio.Nursery,
        slots: trio.CapacityLimiter,
        long_poll: bool,
        burst: bool,
    ) -> None:
        wait = self.config.long_poll_seconds if long_poll else None
        while True:
            tokens = await self._reserve(slots)
            asked_at = trio.current_time()
            try:
                items = await self._poll(api, len(tokens), wait)
                self._start_each(runner, work, slots, tokens, len(tokens), items)
            finally:
                for token in tokens:  # the slots no item took
                    slots.release_on_behalf_of(token)
            if items:
                continue
            if burst:
                if not slots.borrowed_tokens:
                    return
                await _wait_idle(slots)
            elif wait is None or trio.current_time() - asked_at < wait / 2:
                # no long-poll, or a server that ignored wait_seconds: never a tight loop
                await trio.sleep(self.config.poll_interval)

    async def _stream_loop(
        self,
        api: WorkerApi,
        runner: ActivityRunner,
        work: trio.Nursery,
        slots: trio.CapacityLimiter,
    ) -> None:
        """Long-polls, streamed (server feature ``poll_stream``) while work comes
        one activity at a time: each asks for the free slots, and every activity
        a stream brings starts in one of them as soon as its line arrives; slots
        it did not fill are freed when it ends. (A slot freed meanwhile waits
        for the next poll.)

        A poll that came back with every slot it asked for filled found work
        waiting: the next is a plain long-poll, which answers at once with
        what is there in one piece — a stream would have ended after its first
        line anyway, at the cost of a chunked answer. One that came back short
        is followed by a stream again. (PostgreSQL, interleaved: High-Concurrency-3,
        where every poll finds work waiting, lost 4 to 12 % to streams always on.)

        Raises:
            ApiError, UnauthorizedError: as :meth:`_poll`.
        """
        wait = self.config.long_poll_seconds
        backlog = False
        while True:
            tokens = await self._reserve(slots)
            asked = len(tokens)
            try:
                if backlog:
                    items = await self._poll(api, asked, wait)
                    self._start_each(runner, work, slots, tokens, asked, items)
                    brought = len(items)
                else:
                    take = functools.partial(self._start_each, runner, work, slots, tokens, asked)
                    brought = await api.poll_stream(asked, wait, take)
            finally:
                for token in tokens:
                    slots.release_on_behalf_of(token)
            backlog = brought >= asked

    def _start_each(
        self,
        runner: ActivityRunner,
        work: trio.Nursery,
        slots: trio.CapacityLimiter,
        tokens: list[object],
        asked: int,
        items: list[ClaimedActivity],
    ) -> None:
        """Start each of ``items`` in the slot of one of ``tokens`` (taking it);
        items beyond the tokens (more than the poll asked for) are not run."""
        for item in items:
            if tokens:
                work.start_soon(self._slot, runner, slots, item, tokens.pop(0))
            else:
                log.error(
                    "worker.poll.too_many",
                    activity_id=str(item.activity_id),
                    asked=asked,
                    got=len(items),
                )

    async def _reserve(self, slots: trio.CapacityLimiter) -> list[object]:
        """Wait for one free slot, then take every other free one (up to the poll cap)."""
        first = object()
        await slots.acquire_on_behalf_of(first)
        tokens = [first]
        while len(tokens) < self.config.poll_max_activities:
            token = object()
            try:
                slots.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                break
            tokens.append(token)
        return tokens

    async def _poll(self, api: WorkerApi, count: int, wait: float | None) -> list[ClaimedActivity]:
        """One poll. :meth:`WorkerApi.poll` waits out network errors and 408/429/5xx
        answers with backoff (forever) and refreshes the token once on a 401.

        Raises:
            ApiError: any other error answer, or an answer that is no poll answer.
            UnauthorizedError: the token endpoint refused the credentials.
        """
        return await api.poll(count, wait)

    async def _slot(
        self,
        runner: ActivityRunner,
        slots: trio.CapacityLimiter,
        item: ClaimedActivity,
        token: object,
    ) -> None:
        """Run ``item`` in the slot of ``token``, then each activity its report
        claimed (the run's next step), until a report brings none."""
        current: ClaimedActivity | None = item
        try:
            while current is not None:
                try:
                    await runner.run(current)
                except Exception:
                    log.exception("worker.slot_failed", activity_id=str(current.activity_id))
                current = runner.take_next(current)  # leased to this worker: run it
        finally:
            slots.release_on_behalf_of(token)


def server_tls(urls: list[str]) -> ssl.SSLContext | bool:
    """TLS verification for the worker's client of its own server(s).

    With an https server: httpx's default (the CA bundle, ``SSL_CERT_FILE``...).
    With plain-http servers only: a verifying context with no CA loaded — the
    bundle would cost an idle worker 3.4 MiB for nothing, and any TLS peer
    (a redirect to https) fails verification instead of skipping it.
    """
    if any(url.startswith("https://") for url in urls):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


async def _wait_idle(slots: trio.CapacityLimiter) -> None:
    """Return once every slot is free (all in-flight work reported)."""
    held: list[object] = []
    try:
        for _ in range(int(slots.total_tokens)):
            token = object()
            await slots.acquire_on_behalf_of(token)
            held.append(token)
    finally:
        for token in held:
            slots.release_on_behalf_of(token)


def _single_leaf(group: BaseExceptionGroup[Any]) -> BaseException | None:
    leaves = _leaves(group)
    return leaves[0] if len(leaves) == 1 else None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
