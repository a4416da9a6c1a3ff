"""Cross-server wake-ups over PostgreSQL LISTEN/NOTIFY.

Every transaction that enqueues work, arms a timer or appends history sends
one notification on the ``kflow`` channel (see ``Effects.payload``) while
another server listens on the database (:mod:`kflow.server.peers`); it is
delivered on commit. Each server listens on a dedicated connection and
turns notifications of *other* servers into local wake-ups: parked long-polls
of the queue return at once, the scheduler looks at the new timer, event
streams read the new history.

A dropped listener connection is reopened with backoff; after every
(re)connection all parked polls and streams are woken and the scheduler
looks again, at once and once more when the other servers have had time to
count this one as a listener, and a sweep every few seconds wakes parked polls of
queues that have claimable work — so a lost notification costs latency at
most, never work.

The listening connection waits on the Trio thread itself (a cancellable
unit of :mod:`kflow.store.pg_green`): no thread, and no hand-off per
notification.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import structlog
import trio

from kflow._serde import dumps_str, loads
from kflow.errors import InvalidInputError, StoreError
from kflow.server.peers import SETTLE_SECONDS, listener_name
from kflow.server.transitions import NOTIFY_CHANNEL
from kflow.store.pg_green import connect, run_unit

log = structlog.get_logger("kflow.listener")

SWEEP_SECONDS = 5.0
CONNECT_TIMEOUT = 10.0

_CONNECTED = "\x00connected"


class Listener:
    """Turns other servers' notifications into this server's wake-ups."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.connected = False
        #: How the listening connection shows in ``pg_stat_activity``.
        self.application_name = listener_name(ctx.engine.instance_id)
        #: How this server's own payloads begin (``Effects.payload`` writes the
        #: origin first): a single server receives every one of its own
        #: notifications, and they need no decoding to be ignored.
        self._own_prefix = dumps_str({"s": ctx.engine.instance_id})[:-1] + ","
        #: Set on each (re)connection; see :meth:`_wake_after_settling`.
        self._settle = trio.Event()

    def handle(self, payload: str) -> None:
        """Apply one notification payload (sync; never blocks)."""
        ctx = self.ctx
        if payload == _CONNECTED:
            self.connected = True
            self.wake_everything()
            self._settle.set()
            return
        if payload.startswith(self._own_prefix):
            return  # our own transaction: already woken locally
        try:
            data = loads(payload)
        except InvalidInputError:
            log.warning("listener.bad_payload", payload=payload[:200])
            return
        if not isinstance(data, dict) or data.get("s") == ctx.engine.instance_id:
            return  # our own transaction: already woken locally
        for queue in data.get("q") or ():
            ctx.dispatcher.wake(str(queue))
        workflows = data.get("w") or ()
        if workflows == "*":
            ctx.hub.notify_all()
        else:
            finished = {str(w) for w in data.get("f") or ()}
            for workflow_id in workflows:
                ctx.hub.notify(uuid.UUID(str(workflow_id)), finished=str(workflow_id) in finished)
        if data.get("t"):
            ctx.scheduler.arm(dt.datetime.fromisoformat(str(data["t"])))

    def wake_everything(self) -> None:
        """After a (re)connection: anything may have happened meanwhile."""
        self.ctx.dispatcher.wake_all()
        self.ctx.hub.notify_all()
        self.ctx.scheduler.arm(self.ctx.engine.clock.now())

    async def serve(
        self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled, reconnecting with backoff; also sweep periodically."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep)
            nursery.start_soon(self._wake_after_settling)
            started = False
            delay = 0.5
            while True:
                if not started:
                    task_status.started()
                    started = True
                try:
                    await self._listen(url)
                except (psycopg.Error, StoreError) as exc:
                    self.connected = False
                    log.warning(
                        "listener.disconnected",
                        error=str(exc).splitlines()[0][:200],
                        retry_in=delay,
                    )
                    await trio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5

    async def _listen(self, url: str) -> None:
        """LISTEN and apply every notification until cancelled.

        Raises:
            psycopg.Error: the connection failed or dropped.
            StoreUnavailableError: PostgreSQL cannot be reached.
        """
        conn = await connect(
            url,
            timeout=CONNECT_TIMEOUT,
            autocommit=True,
            application_name=self.application_name,
        )
        try:
            await run_unit(self._receive, conn, cancellable=True)
        finally:
            conn.close()

    def _receive(self, conn: psycopg.Connection[Any]) -> None:
        """The listening unit: runs until its connection drops or it is cancelled."""
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self.handle(_CONNECTED)
        while True:
            for notification in conn.notifies():
                try:
                    self.handle(notification.payload)
                except (ValueError, TypeError) as exc:  # a malformed payload: skip it
                    log.warning("listener.bad_payload", error=str(exc)[:200])

    async def _wake_after_settling(self) -> None:
        """Wake everything again :data:`~kflow.server.peers.SETTLE_SECONDS` after
        each (re)connection: until the other servers count this one as a
        listener, they may skip their notifications (see :mod:`kflow.server.peers`)."""
        while True:
            await self._settle.wait()
            self._settle = trio.Event()
            await trio.sleep(SETTLE_SECONDS)
            self.wake_everything()

    async def _sweep(self) -> None:
        """Every few seconds, wake parked polls of queues that have claimable work."""
        ctx = self.ctx
        while True:
            await trio.sleep(SWEEP_SECONDS)
            waiting = ctx.dispatcher.waiting_queues()
            if not waiting:
                continue
            try:
                rows = await ctx.store.read(lambda tx: tx.all("pending_queues"))
            except StoreError as exc:
                log.warning("listener.sweep_failed", error=str(exc))
                continue
            ready = {str(r["queue"]) for r in rows}
            for queue in waiting:
                if queue in ready:
                    ctx.dispatcher.wake(queue)
