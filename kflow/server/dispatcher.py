"""Long-poll wake-ups per queue (PROTOCOL §3, ``wait_seconds``), and work handed
straight to a parked poll.

A poll that finds nothing parks on its queue until the engine commits work
for that queue (:meth:`Dispatcher.wake`) or its wait ends. A per-queue
sequence number closes the race between "claimed nothing" and "started
waiting": a poller records the sequence before claiming and only parks if it
has not moved since.

A parked long-poll may also take work directly (:class:`ParkedPoll`): a
transaction that makes work ready in its own runs :meth:`reserves
<Dispatcher.reserve>` a parked poll, claims that work for the poll's worker
inside the same transaction, and after the commit :meth:`delivers
<Dispatcher.deliver>` the claimed items — the poll answers with them and
needs no claim transaction of its own, and no other poll is woken for work
that is already taken. A reservation the transaction does not commit is
:meth:`released <Dispatcher.release>`; the poll then carries on as before.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import trio


@attrs.define(eq=False)  # compared by identity: a queue lists each parked poll once
class ParkedPoll:
    """One parked wait; with ``worker_id`` set, a long-poll that may be handed work."""

    worker_id: str | None = None
    client_id: str = ""
    #: At most this many activities may be handed to it.
    limit: int = 1
    #: A transaction has claimed (or is about to claim) work for it.
    reserved: bool = False
    #: The poll items handed over by a committed transaction.
    items: list[dict[str, Any]] | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def takes_work(self) -> bool:
        return self.worker_id is not None and not self.reserved and self.items is None

    def _poke(self) -> None:
        self._changed.set()

    async def _next_change(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    async def settled(self) -> list[dict[str, Any]]:
        """Once no reservation is pending: the items handed over (none if nothing was).

        A poll that stops waiting while reserved must call this before it
        answers, and must release what it returns if its caller is gone.
        """
        while self.reserved:
            await self._next_change()
        return self.items or []


class Dispatcher:
    """Per-queue wake-up signals and work hand-over for parked polls (one process)."""

    def __init__(self) -> None:
        self._sequence: collections.Counter[str] = collections.Counter()
        self._parked: dict[str, list[ParkedPoll]] = {}
        #: The sequence of each queue at which a claim left it empty.
        self._drained: dict[str, int] = {}

    def sequence(self, queue: str) -> int:
        """A number that changes whenever work is enqueued for ``queue``."""
        return self._sequence[queue]

    def wake(self, queue: str) -> None:
        """Wake every poll parked on ``queue`` (sync; never blocks)."""
        self._sequence[queue] += 1
        for parked in self._parked.get(queue, ()):
            parked._poke()

    def wake_all(self) -> None:
        """Wake every parked poll and forget every queue found empty (after a
        reconnection to other servers' news: anything may have happened)."""
        self._drained.clear()
        for queue in set(self._parked) | set(self._sequence):
            self.wake(queue)

    def drained(self, queue: str, seen: int) -> None:
        """A claim that began at sequence ``seen`` took everything ready in ``queue``."""
        if self._sequence[queue] == seen:
            self._drained[queue] = seen

    def known_empty(self, queue: str) -> bool:
        """Whether a claim found ``queue`` empty and no work was announced for it since.

        Every commit that makes work ready wakes its queue (here, or through
        another server's notification), so a poll may park without a claim of
        its own — it still claims once before it answers empty.
        """
        return self._drained.get(queue, -1) == self._sequence[queue]

    async def wait(
        self, queue: str, seen: int, deadline: float, parked: ParkedPoll | None = None
    ) -> bool:
        """Park until ``queue``'s sequence moves past ``seen``, work is handed to
        ``parked``, or ``deadline`` (trio time) passes.

        Returns True if woken (by new work or a hand-over), False if the
        deadline passed. Cancellation propagates (the caller's request was
        abandoned). Either way a caller that passed ``parked`` must then await
        :meth:`ParkedPoll.settled`: a reservation may still be pending.
        """
        waiter = parked if parked is not None else ParkedPoll()
        waiters = self._parked.setdefault(queue, [])
        waiters.append(waiter)
        try:
            with trio.move_on_at(deadline):
                while self._sequence[queue] == seen and waiter.items is None:
                    await waiter._next_change()
                return True
            return False
        finally:
            waiters.remove(waiter)
            if not waiters:
                del self._parked[queue]

    def reserve(self, queue: str) -> ParkedPoll | None:
        """The longest-parked poll of ``queue`` that may be handed work, now
        reserved for the caller's transaction (None if there is none)."""
        for parked in self._parked.get(queue, ()):
            if parked.takes_work:
                parked.reserved = True
                return parked
        return None

    @staticmethod
    def deliver(parked: ParkedPoll, items: list[dict[str, Any]]) -> None:
        """The reserving transaction committed ``items`` to ``parked``: wake it with them."""
        parked.items = items
        parked.reserved = False
        parked._poke()

    @staticmethod
    def release(parked: ParkedPoll) -> None:
        """The reserving transaction did not commit: ``parked`` waits on as before."""
        parked.reserved = False
        parked._poke()

    def waiting_queues(self) -> list[str]:
        """Queues that have at least one parked poll right now."""
        return sorted(self._parked)
