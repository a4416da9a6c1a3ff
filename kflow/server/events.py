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

import uuid
from collections.abc import Hashable

import trio


def finished_key(workflow_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    """The hub key that moves only when ``workflow_id`` reaches a final status."""
    return ("finished", workflow_id)


#: Beyond this many keys with news of their own, the hub forgets those nobody waits on.
KEEP_KEYS = 100_000


class EventHub:
    """Versioned wake-ups per run, plus one for "any run" (key ``None``).

    Keys are run ids, ``None`` and :func:`finished_key` of a run. A version is
    a number that only moves forward: each piece of news for a key gives it
    the hub's next sequence number; a key without news of its own has the
    :meth:`baseline`. When the hub forgets keys (too many, or everything may
    have changed) the baseline moves past every number handed out, so a
    version taken before is never seen again: its waiter wakes, looks and, if
    nothing changed, waits again.
    """

    def __init__(self) -> None:
        self._sequence = 0
        self._baseline = 0
        self._versions: dict[Hashable, int] = {}
        self._events: dict[Hashable, trio.Event] = {}

    def version(self, key: Hashable) -> int:
        """A number that moves whenever the key's run (for None, any run) has news."""
        return self._versions.get(key, self._baseline)

    def baseline(self) -> int:
        """The version of every key without news so far — such as a run that a
        caller is about to start (its id unknown yet): taken before the start
        commits, it moves for the run's first news, or whenever the hub forgets."""
        return self._baseline

    def _bump(self, key: Hashable) -> None:
        self._sequence += 1
        self._versions[key] = self._sequence
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def _forget_unwatched(self) -> None:
        """Drop the keys nobody waits on; their versions move to a new baseline."""
        self._sequence += 1
        self._baseline = self._sequence
        self._versions = {k: v for k, v in self._versions.items() if k in self._events}

    def notify(self, workflow_id: uuid.UUID, *, finished: bool = False) -> None:
        """The history of ``workflow_id`` grew (sync; never blocks).

        ``finished``: the run reached a final status in the same commit.
        """
        self._bump(workflow_id)
        self._bump(None)
        if finished:
            self._bump(finished_key(workflow_id))
        if len(self._versions) > KEEP_KEYS:
            self._forget_unwatched()

    def notify_all(self) -> None:
        """Everything may have changed (another server's big batch, a reconnection).

        Every watcher wakes, including those waiting for a run to finish: they
        look again and go back to waiting if it has not. So does every caller
        holding a version it has not waited with yet.
        """
        for key in list(self._events):
            self._bump(key)
        self._forget_unwatched()

    async def wait(self, key: Hashable, seen: int, timeout: float) -> bool:
        """Wait until :meth:`version` of ``key`` moves past ``seen``; False after ``timeout`` s."""
        with trio.move_on_after(timeout):
            while self.version(key) == seen:
                event = self._events.get(key)
                if event is None:
                    event = self._events[key] = trio.Event()
                await event.wait()
            return True
        return False
