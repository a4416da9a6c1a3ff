"""In-process notification of new history events, for streams and waiters.

The engine calls :meth:`EventHub.notify` after committing events of a run;
event streams (SSE, ``kflow run``) park in :meth:`EventHub.wait` and then
read the new rows from the events table, so a notification can never carry
or lose data — it only says "look again".
"""

from __future__ import annotations

import uuid

import trio


class EventHub:
    """Wake-ups per run, plus one for "any run"."""

    def __init__(self) -> None:
        self._runs: dict[uuid.UUID, trio.Event] = {}
        self._any = trio.Event()

    def notify(self, workflow_id: uuid.UUID) -> None:
        """The history of ``workflow_id`` grew (sync; never blocks)."""
        event = self._runs.pop(workflow_id, None)
        if event is not None:
            event.set()
        self._any.set()
        self._any = trio.Event()

    async def wait(self, workflow_id: uuid.UUID | None, timeout: float) -> bool:
        """Wait for news about one run (or any run); False after ``timeout`` seconds."""
        if workflow_id is None:
            event = self._any
        else:
            event = self._runs.get(workflow_id)
            if event is None:
                event = self._runs[workflow_id] = trio.Event()
        with trio.move_on_after(timeout):
            await event.wait()
            return True
        return False
