"""Whether any other server listens on this PostgreSQL database.

Every write transaction that changes what others may wait for sends a
notification (see :mod:`kflow.server.listener`): one more statement in the
transaction, and a commit that takes PostgreSQL's notification-queue lock.
A single server is the common deployment and nobody receives those
notifications there, so :class:`PeerWatch` looks every
:data:`CHECK_SECONDS` for other servers' listening connections (they show
in ``pg_stat_activity`` by name, to every role) and sets
:attr:`~kflow.server.transitions.TransitionEngine.notify_peers` accordingly.

A server that starts sees its notifications skipped for up to
:data:`CHECK_SECONDS`, until the others notice it; its listener wakes
everything once more after :data:`SETTLE_SECONDS` (see
:meth:`kflow.server.listener.Listener.serve`), so that window costs
latency at most, never work — as a lost notification always could. When
the check fails, notifications are sent.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from kflow.errors import StoreError

log = structlog.get_logger("kflow.peers")

#: How often the listening connections of other servers are counted.
CHECK_SECONDS = 1.0

#: After its listener connects, how long before a server wakes everything a
#: second time: every other server has counted it by then.
SETTLE_SECONDS = 2 * CHECK_SECONDS + 0.5

#: How a server names its listening connection (followed by its instance id).
LISTENER_PREFIX = "kflow-listener-"


def listener_name(instance_id: str) -> str:
    """The ``application_name`` of the listening connection of server ``instance_id``."""
    return LISTENER_PREFIX + instance_id[:12]


class PeerWatch:
    """Keeps ``ctx.engine.notify_peers`` true while another server listens."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._own = listener_name(ctx.engine.instance_id)
        self._failing = False

    async def count(self) -> int:
        """How many other servers' listening connections this database has.

        Raises:
            StoreError: the database could not be asked.
        """
        row = await self.ctx.store.read(
            lambda tx: tx.one("other_listeners", prefix=LISTENER_PREFIX + "%", own=self._own)
        )
        return int(row["listeners"]) if row else 0

    async def check(self) -> None:
        """Count once and set ``notify_peers`` (true when the count failed)."""
        engine = self.ctx.engine
        try:
            others = await self.count()
        except StoreError as exc:
            if not self._failing:
                log.warning("peers.check_failed", error=str(exc).splitlines()[0][:200])
            self._failing = True
            engine.notify_peers = True
            return
        self._failing = False
        alone = others == 0
        if alone == engine.notify_peers:  # a change: say so once
            log.info("peers.changed", other_servers=others)
        engine.notify_peers = not alone

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check every :data:`CHECK_SECONDS` until cancelled (the first after one
        interval: notifications go out until then)."""
        task_status.started()
        while True:
            await trio.sleep(CHECK_SECONDS)
            await self.check()
