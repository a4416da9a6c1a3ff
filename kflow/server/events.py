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
long-poll ``GET /workflows/{id}?wait_seconds=N``, a start held until its run
ends) sleeps through the run's intermediate transitions instead of re-reading
it after each one. When someone waits for that (:meth:`EventHub.watched`),
the transaction that finishes the run reads the run's final detail with its
``COMMIT`` and the announcement carries it (:meth:`EventHub.final`): the
waiter answers without reading the run again. It is kept only for the
version of the announcement, so a later announcement (the run retried,
another server's news, a reconnection) always sends the waiter back to the
database.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from typing import Any

import trio


def finished_key(workflow_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    """The hub key that moves only when ``workflow_id`` reaches a final status."""
    return ("finished", workflow_id)


#: Beyond this many keys with news of their own, the hub forgets those nobody waits on.
KEEP_KEYS = 100_000
#: At most this many finished runs' final details wait for their waiters to take them.
KEEP_FINALS = 256


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
        #: Tasks in :meth:`wait` per key.
        self._waiters: dict[Hashable, int] = {}
        #: Run id -> [version of its finished key, final detail, waiters yet to
        #: take it], oldest first.
        self._finals: dict[uuid.UUID, list[Any]] = {}

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

    def watched(self, key: Hashable) -> bool:
        """Whether a task waits on ``key`` now."""
        return self._waiters.get(key, 0) > 0

    def notify(
        self,
        workflow_id: uuid.UUID,
        *,
        finished: bool = False,
        final: dict[str, Any] | None = None,
    ) -> None:
        """The history of ``workflow_id`` grew (sync; never blocks).

        ``finished``: the run reached a final status in the same commit;
        ``final``: its detail (``GET /workflows/{id}``) as of that commit, for
        :meth:`final`.
        """
        self._bump(workflow_id)
        self._bump(None)
        if finished:
            key = finished_key(workflow_id)
            self._bump(key)
            self._finals.pop(workflow_id, None)
            waiting = self._waiters.get(key, 0)
            if final is not None and waiting:
                self._finals[workflow_id] = [self._versions[key], final, waiting]
                if len(self._finals) > KEEP_FINALS:  # waiters that never came to take it
                    del self._finals[next(iter(self._finals))]
        if len(self._versions) > KEEP_KEYS:
            self._forget_unwatched()

    def final(self, workflow_id: uuid.UUID, version: int) -> dict[str, Any] | None:
        """The final detail the announcement of ``workflow_id``'s finish carried, if
        that announcement is what moved its :func:`finished_key` to ``version``
        (nothing came after it). Each waiter the announcement woke takes it once;
        it is forgotten when the last has. Shared between them: do not change it."""
        kept = self._finals.get(workflow_id)
        if kept is None or kept[0] != version:
            return None
        kept[2] -= 1
        if kept[2] <= 0:
            del self._finals[workflow_id]
        detail: dict[str, Any] = kept[1]
        return detail

    def notify_all(self) -> None:
        """Everything may have changed (another server's big batch, a reconnection).

        Every watcher wakes, including those waiting for a run to finish: they
        look again and go back to waiting if it has not. So does every caller
        holding a version it has not waited with yet.
        """
        for key in list(self._events):
            self._bump(key)
        self._finals.clear()
        self._forget_unwatched()

    async def wait(self, key: Hashable, seen: int, timeout: float) -> bool:
        """Wait until :meth:`version` of ``key`` moves past ``seen``; False after ``timeout`` s."""
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            with trio.move_on_after(timeout):
                while self.version(key) == seen:
                    event = self._events.get(key)
                    if event is None:
                        event = self._events[key] = trio.Event()
                    await event.wait()
                return True
            return False
        finally:
            left = self._waiters[key] - 1
            if left:
                self._waiters[key] = left
            else:  # the last waiter gave up or woke: nobody watches the key now
                del self._waiters[key]
                event = self._events.get(key)
                if event is not None and not event.is_set():
                    del self._events[key]
