"""Long-poll wake-ups per queue (PROTOCOL §3, ``wait_seconds``).

A poll that finds nothing parks on its queue until the engine commits work
for that queue (:meth:`Dispatcher.wake`) or its wait ends. A per-queue
sequence number closes the race between "claimed nothing" and "started
waiting": a poller records the sequence before claiming and only parks if it
has not moved since.
"""

from __future__ import annotations

import collections

import trio


class Dispatcher:
    """Per-queue wake-up signals for parked polls (one process)."""

    def __init__(self) -> None:
        self._sequence: collections.Counter[str] = collections.Counter()
        self._events: dict[str, trio.Event] = {}
        self._parked: collections.Counter[str] = collections.Counter()

    def sequence(self, queue: str) -> int:
        """A number that changes whenever work is enqueued for ``queue``."""
        return self._sequence[queue]

    def wake(self, queue: str) -> None:
        """Wake every poll parked on ``queue`` (sync; never blocks)."""
        self._sequence[queue] += 1
        event = self._events.pop(queue, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every parked poll (used after recovery sweeps)."""
        for queue in list(self._events):
            self.wake(queue)

    async def wait(self, queue: str, seen: int, deadline: float) -> bool:
        """Park until ``queue``'s sequence moves past ``seen`` or ``deadline`` (trio time).

        Returns True if woken by new work, False if the deadline passed.
        Cancellation propagates (the caller's request was abandoned). The last
        poll to leave a queue drops its wake-up event, so queues nobody waits
        on any more are forgotten.
        """
        self._parked[queue] += 1
        try:
            with trio.move_on_at(deadline):
                while self._sequence[queue] == seen:
                    event = self._events.get(queue)
                    if event is None:
                        event = self._events[queue] = trio.Event()
                    await event.wait()
                return True
            return False
        finally:
            self._parked[queue] -= 1
            if self._parked[queue] <= 0:
                del self._parked[queue]
                self._events.pop(queue, None)

    def waiting_queues(self) -> list[str]:
        """Queues that have at least one parked poll right now."""
        return sorted(self._parked)
