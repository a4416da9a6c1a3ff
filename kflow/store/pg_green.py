"""Synchronous psycopg on the Trio thread, without blocking it.

A unit of work is a plain function that calls psycopg (``conn.execute``,
``conn.transaction()``). :func:`run_unit` runs it in its own greenlet; every
time psycopg would block on the socket, :meth:`GreenConnection.wait` hands the
file descriptor to the Trio task that started the greenlet, which waits with
``trio.lowlevel.wait_readable``/``wait_writable`` and resumes the unit. Other
tasks run meanwhile, so many units proceed at once on one thread.

Why not worker threads: a query in a thread releases the GIL while it waits
for PostgreSQL and must take it back from a busy Trio thread afterwards —
up to a switch interval (5 ms) per statement, and half of the server's CPU
went to futex hand-offs (measured with ``perf``; see bench/README.md).

:class:`GreenPool` is the matching connection pool: LIFO reuse, bounded
size, broken connections dropped on return, connecting in a thread.
"""

from __future__ import annotations

import contextvars
import select
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import greenlet
import psycopg
import trio
from psycopg import generators as psycopg_generators
from psycopg import pq
from psycopg.rows import dict_row
from psycopg.waiting import Ready, Wait

from kflow.errors import StoreUnavailableError

T = TypeVar("T")

_IDLE = pq.TransactionStatus.IDLE


class _UnitGreenlet(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet running one unit of work for :func:`run_unit`."""


class BatchingPipeline(psycopg.Pipeline):
    """A pipeline that sends the statements queued since the last sync together.

    psycopg's pipeline hands each statement to libpq and flushes the socket as
    it is executed: one ``send`` per statement, and PostgreSQL's backend woken
    for each. kflow never reads an answer before it syncs (``PgTx`` syncs
    first), so here an execute only queues its statement; a sync (or the end
    of the pipeline, or a fetch that asks PostgreSQL to flush) hands every
    queued statement to libpq, which buffers them, and flushes until all of
    it went out — one write for the usual few statements. Measured on Sequential-5: the server
    spent 13 % of its samples flushing statement by statement
    (bench/README.md).

    This overrides psycopg's private pipeline generators (``_communicate_gen``,
    ``_sync_gen``, ``_exit_gen``, ``_fetch_gen``); tests/integration/store/
    test_pg_batching.py fails if a psycopg release changes them.
    """

    def _hand_over(self) -> None:
        """Give libpq every queued statement (it buffers them; nothing is sent yet)."""
        queue = self.command_queue
        while queue:
            queue.popleft()()

    def _send_all(self) -> Any:
        """Hand over every queued statement, then flush until libpq's buffer is empty,
        reading what PostgreSQL answers meanwhile (psycopg's ``send``). One flush
        is not enough for a large batch: the socket takes part of it, and
        PostgreSQL, still waiting for the rest, would never answer."""
        self._hand_over()
        yield from psycopg_generators.send(self.pgconn)

    def _communicate_gen(self) -> Any:
        """An execute: its statement stays queued until the next sync."""
        yield from ()

    def _sync_gen(self) -> Any:
        self._enqueue_sync()
        yield from self._send_all()
        yield from super()._communicate_gen()
        yield from self._fetch_gen(flush=False)

    def _exit_gen(self) -> Any:
        try:
            self._enqueue_sync()
            yield from self._send_all()
            yield from super()._communicate_gen()
        finally:
            yield from self._fetch_gen(flush=True)

    def _fetch_gen(self, *, flush: bool) -> Any:
        if flush:  # results wanted before a sync: what they answer must go out first
            self._hand_over()
        return (yield from super()._fetch_gen(flush=flush))


class GreenConnection(psycopg.Connection[Any]):
    """A psycopg connection that, inside :func:`run_unit`, waits through Trio.

    Anywhere else (a plain thread) it blocks like any psycopg connection.
    Its pipelines are :class:`BatchingPipeline`.
    """

    def pipeline(self) -> Any:
        if self._pipeline is None:
            self._pipeline = BatchingPipeline(self)  # psycopg's pipeline() takes it up
        return super().pipeline()

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        here = greenlet.getcurrent()
        if not isinstance(here, _UnitGreenlet):
            return super().wait(gen, interval, timeout)
        fileno = self.pgconn.socket
        try:
            state = next(gen)
            while True:
                # Pipeline mode asks "readable or writable?" many times per round
                # trip, and the socket is nearly always writable: answer that here
                # instead of switching to Trio and back each time.
                ready = _ready_now(fileno, state) if state != Wait.R else 0
                if not ready:
                    ready = here.parent.switch((fileno, state, timeout))
                state = gen.send(ready)
        except StopIteration as done:
            return done.value


def _ready_now(fileno: int, state: int) -> int:
    """What ``fileno`` is ready for right now, of what ``state`` asks (0: nothing yet).

    ``poll``, not ``select``: a busy server's sockets get descriptors above
    1023, which ``select`` refuses.
    """
    poller = select.poll()
    poller.register(fileno, (select.POLLIN if state & Wait.R else 0) | select.POLLOUT)
    events = poller.poll(0)
    flags = events[0][1] if events else 0
    ready = 0
    if state & Wait.R and flags & (select.POLLIN | select.POLLERR | select.POLLHUP):
        ready |= Ready.R
    if state & Wait.W and flags & (select.POLLOUT | select.POLLERR | select.POLLHUP):
        ready |= Ready.W
    return ready


async def _ready(fileno: int, state: int, timeout: float | None) -> int:
    """Wait until ``fileno`` is ready as ``state`` (a psycopg ``Wait``) asks.

    Raises:
        trio.TooSlowError: ``timeout`` passed first.
    """
    if timeout is None:
        return await _ready_for(fileno, state)
    with trio.fail_after(timeout):
        return await _ready_for(fileno, state)


async def _ready_for(fileno: int, state: int) -> int:
    if state == Wait.R:
        await trio.lowlevel.wait_readable(fileno)
        return int(Ready.R)
    if state == Wait.W:
        await trio.lowlevel.wait_writable(fileno)
        return int(Ready.W)
    # Both: whichever comes first (output still to flush while input arrives).
    ready = _ready_now(fileno, state)
    if ready:
        return ready
    async with trio.open_nursery() as nursery:

        async def on(wait: Callable[[int], Any], flag: int) -> None:
            nonlocal ready
            await wait(fileno)
            ready |= flag
            nursery.cancel_scope.cancel()

        nursery.start_soon(on, trio.lowlevel.wait_readable, int(Ready.R))
        nursery.start_soon(on, trio.lowlevel.wait_writable, int(Ready.W))
    return ready


async def run_unit(fn: Callable[..., T], *args: Any, cancellable: bool = False) -> T:
    """Run ``fn(*args)`` — synchronous psycopg code — without blocking Trio.

    By default the unit cannot be cancelled half-way: a cancellation of the
    caller waits for it to finish (as a worker thread would), so a
    transaction is never abandoned in the middle of the protocol. With
    ``cancellable`` (a unit that only waits, such as LISTEN), the cancellation
    is raised inside ``fn`` where it waits; its connection must then be closed.

    Raises:
        Exception: whatever ``fn`` raised.
    """
    unit = _UnitGreenlet(fn)
    unit.gr_context = contextvars.copy_context()
    with trio.CancelScope(shield=not cancellable):
        request = unit.switch(*args)
        while not unit.dead:
            try:
                ready = await _ready(*request)
            except BaseException as exc:
                request = unit.throw(exc)  # raised where the unit waits; re-raised here
            else:
                request = unit.switch(ready)
    result: T = request
    return result


async def connect(url: str, *, timeout: float, **options: Any) -> GreenConnection:
    """A new :class:`GreenConnection` (made in a thread: libpq connects blocking).

    Raises:
        StoreUnavailableError: PostgreSQL cannot be reached.
    """
    # A cancelled caller (a server shutting down) does not wait for libpq: the
    # thread is abandoned, and whichever side comes second closes the connection
    # it made, so none is left to the garbage collector.
    lock = threading.Lock()
    made: list[GreenConnection] = []
    abandoned = False

    def make() -> GreenConnection:
        conn = GreenConnection.connect(url, connect_timeout=max(1, int(timeout)), **options)
        with lock:
            if abandoned:
                conn.close()
            else:
                made.append(conn)
        return conn

    try:
        conn: GreenConnection = await trio.to_thread.run_sync(make, abandon_on_cancel=True)
    except trio.Cancelled:
        with lock:
            abandoned = True
            leftover = made[:]
        for conn in leftover:
            conn.close()
        raise
    except psycopg.Error as exc:
        raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
    return conn


class GreenPool:
    """A bounded pool of :class:`GreenConnection` for one Trio thread.

    Raises (from :meth:`connection`):
        StoreUnavailableError: no connection could be made, or every one stayed
            busy for ``timeout`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        max_size: int,
        timeout: float,
        configure: Callable[[psycopg.Connection[Any]], None],
    ) -> None:
        self.url = url
        self.max_size = max_size
        self.timeout = timeout
        self._configure = configure
        self._slots = trio.Semaphore(max_size)
        self._idle: list[GreenConnection] = []
        self._closed = False

    async def open(self, min_size: int) -> None:
        """Make ``min_size`` connections now.

        Raises:
            StoreUnavailableError: PostgreSQL cannot be reached.
        """
        made = [await self._connect() for _ in range(min(min_size, self.max_size))]
        self._idle.extend(made)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[GreenConnection]:
        """A connection for one unit of work, returned (or dropped if broken) after."""
        with trio.move_on_after(self.timeout) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            raise StoreUnavailableError(
                f"all {self.max_size} PostgreSQL connections stayed busy for {self.timeout:g} s"
            )
        try:
            conn = await self._checkout()
            try:
                yield conn
            finally:
                self._checkin(conn)
        finally:
            self._slots.release()

    async def _checkout(self) -> GreenConnection:
        while self._idle:
            conn = self._idle.pop()
            if not (conn.closed or conn.broken):
                return conn
            conn.close()
        return await self._connect()

    def _checkin(self, conn: GreenConnection) -> None:
        usable = not (conn.closed or conn.broken) and conn.pgconn.transaction_status == _IDLE
        if usable and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> GreenConnection:
        conn = await connect(self.url, timeout=self.timeout, autocommit=False, row_factory=dict_row)
        self._configure(conn)
        return conn

    def close(self) -> None:
        """Close the idle connections; those in use are closed when returned."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
