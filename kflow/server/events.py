"""In-process notification of new history events, for streams and waiters.

The engine calls :meth:`EventHub.notify` after committing events of a run;
event streams (SSE, WebSocket, ``kflow run``) wait in :meth:`EventHub.wait`
and then read the new rows from the events table, so a notification never
carries or loses data — it only says "look again".

Waiters pass the :meth:`version` they saw *before* reading the table; a
notification that lands between that read and the wait is therefore never
missed (the version has moved, so ``wait`` returns at once).

A run that reaches a final status is also announced under
:func:`finished_key`, so a caller waiting only for the end of a run (the
long-poll ``GET /workflows/{id}?wait_seconds=N``) sleeps through the run's
intermediate transitions instead of re-reading it after each one.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Hashable

import trio


def finished_key(workflow_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    """The hub key that moves only when ``workflow_id`` reaches a final status."""
    return ("finished", workflow_id)


class EventHub:
    """Versioned wake-ups per run, plus one for "any run" (key ``None``).

    Keys are run ids, ``None`` and :func:`finished_key` of a run.
    """

    def __init__(self) -> None:
        self._versions: collections.Counter[Hashable] = collections.Counter()
        self._events: dict[Hashable, trio.Event] = {}

    def version(self, key: Hashable) -> int:
        """A number that moves whenever the key's run (for None, any run) has news."""
        return self._versions[key]

    def _bump(self, key: Hashable) -> None:
        self._versions[key] += 1
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def notify(self, workflow_id: uuid.UUID, *, finished: bool = False) -> None:
        """The history of ``workflow_id`` grew (sync; never blocks).

        ``finished``: the run reached a final status in the same commit.
        """
        self._bump(workflow_id)
        self._bump(None)
        if finished:
            self._bump(finished_key(workflow_id))
        if len(self._versions) > 100_000:  # keep only runs someone is watching
            watched = set(self._events)
            for key in [k for k in self._versions if k is not None and k not in watched]:
                del self._versions[key]

    def notify_all(self) -> None:
        """Everything may have changed (another server's big batch, a reconnection).

        Every watcher wakes, including those waiting for a run to finish: they
        look again and go back to waiting if it has not.
        """
        for key in list(self._events):
            self._bump(key)
        if None not in self._events:
            self._versions[None] += 1

    async def wait(self, key: Hashable, seen: int, timeout: float) -> bool:
        """Wait until :meth:`version` of ``key`` moves past ``seen``; False after ``timeout`` s."""
        with trio.move_on_after(timeout):
            while self._versions[key] == seen:
                event = self._events.get(key)
                if event is None:
                    event = self._events[key] = trio.Event()
                await event.wait()
            return True
        return False
