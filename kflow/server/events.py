"""In-process notification of new history events, for streams and waiters.

The engine calls :meth:`EventHub.notify` after committing events of a run;
event streams (SSE, WebSocket, ``kflow run``) wait in :meth:`EventHub.wait`
and then read the new rows from the events table, so a notification never
carries or loses data — it only says "look again".

Waiters pass the :meth:`version` they saw *before* reading the table; a
notification that lands between that read and the wait is therefore never
missed (the version has moved, so ``wait`` returns at once).
"""

from __future__ import annotations

import collections
import uuid

import trio


class EventHub:
    """Versioned wake-ups per run, plus one for "any run" (key ``None``)."""

    def __init__(self) -> None:
        self._versions: collections.Counter[uuid.UUID | None] = collections.Counter()
        self._events: dict[uuid.UUID | None, trio.Event] = {}

    def version(self, workflow_id: uuid.UUID | None) -> int:
        """A number that moves whenever the run (or, for None, any run) has news."""
        return self._versions[workflow_id]

    def notify(self, workflow_id: uuid.UUID) -> None:
        """The history of ``workflow_id`` grew (sync; never blocks)."""
        for key in (workflow_id, None):
            self._versions[key] += 1
            event = self._events.pop(key, None)
            if event is not None:
                event.set()
        if len(self._versions) > 100_000:  # keep only runs someone is watching
            watched = set(self._events)
            for key in [k for k in self._versions if k is not None and k not in watched]:
                del self._versions[key]

    def notify_all(self) -> None:
        """Everything may have changed (another server's big batch, a reconnection)."""
        for key in [k for k in self._events if k is not None]:
            self.notify(key)
        self._versions[None] += 1
        event = self._events.pop(None, None)
        if event is not None:
            event.set()

    async def wait(self, workflow_id: uuid.UUID | None, seen: int, timeout: float) -> bool:
        """Wait until :meth:`version` moves past ``seen``; False after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while self._versions[workflow_id] == seen:
                event = self._events.get(workflow_id)
                if event is None:
                    event = self._events[workflow_id] = trio.Event()
                await event.wait()
            return True
        return False
