"""The scheduler: fires timers — delays, retry backoff, lease expiry, signal
and workflow timeouts — and recurring schedules.

It sleeps until the earliest due time in the database (or until the engine
arms an earlier one), then runs each timed transition in bounded batches. A
periodic sweep (``max_sleep``) also catches timers armed by other server
processes sharing the database.
"""

from __future__ import annotations

import datetime as dt

import structlog
import trio
import trio.lowlevel

from kflow.clock import Clock
from kflow.errors import StoreError
from kflow.server.timer_ops import BATCH, TimerOps

log = structlog.get_logger("kflow.scheduler")


class Scheduler:
    """Runs due timers; ``arm()`` tells it about an earlier deadline."""

    def __init__(self, ops: TimerOps, clock: Clock, *, max_sleep: float = 2.0) -> None:
        self.ops = ops
        self.clock = clock
        self.max_sleep = max_sleep
        self._next: dt.datetime | None = None
        self._wakeup = trio.Event()
        self.healthy = False
        self.last_run: dt.datetime | None = None

    def arm(self, at: dt.datetime) -> None:
        """Make sure the scheduler looks again no later than ``at`` (sync)."""
        if self._next is None or at < self._next:
            self._next = at
            self._wakeup.set()

    def _armed(self) -> dt.datetime | None:
        """The earliest deadline passed to :meth:`arm` since the last reset."""
        return self._next

    async def run_due(self) -> int:
        """Process everything due now; returns the number of items handled."""
        total = 0
        for step in (
            self.ops.expire_leases,
            self.ops.signal_timeouts,
            self.ops.workflow_timeouts,
            self.ops.promote_due,
            self.ops.fire_schedules,
        ):
            while True:
                count = await step()
                total += count
                if count < BATCH:
                    break
        self.last_run = self.clock.now()
        return total

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Errors of a pass are logged and the pass retried after a
        pause; they never end the scheduler (or the server)."""
        task_status.started()
        while True:
            self._wakeup = trio.Event()
            self._next = None
            try:
                handled = await self.run_due()
                if handled:
                    log.debug("scheduler.fired", items=handled)
                upcoming = await self.ops.next_due()
                self.healthy = True
            except StoreError as exc:
                self.healthy = False
                log.warning("scheduler.store_error", error=str(exc))
                await trio.sleep(1.0)
                continue
            except Exception:
                # Never let one bad pass take the server down; the next pass retries.
                self.healthy = False
                log.exception("scheduler.pass_failed")
                await trio.sleep(1.0)
                continue
            delay = self.max_sleep
            if upcoming is not None:
                delay = min(delay, max(0.0, (upcoming - self.clock.now()).total_seconds()))
            armed = self._armed()  # arm() may have run while we awaited above
            if armed is not None:
                delay = min(delay, max(0.0, (armed - self.clock.now()).total_seconds()))
            with trio.move_on_after(delay):
                await self._wakeup.wait()
                # Let a burst of arms settle into one pass.
                await trio.lowlevel.checkpoint()
