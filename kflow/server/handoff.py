"""Work a transaction made ready, handed to parked polls inside that transaction.

Without it, a start (or a report whose transition made several activities
ready) wakes every poll parked on the queue; one of them claims the work in
a transaction of its own and the others find nothing, each also in a
transaction of its own. With it, the transaction that made the work ready
claims it for a poll parked in this process (the longest-parked first, up
to the number of activities that poll asked for) before it commits, and
the poll answers with those items once the commit is done: one transaction
and one wake-up fewer for the work, none for the polls that would have
found nothing. Queues with nothing of it left are not woken (nor announced
to other servers).

The server turns it on for PostgreSQL, where each claim is a transaction
with its own round trips and durable commit. On SQLite claims are cheap
(concurrent units share one commit) and the hand-over cost more than it
saved: the built-in workers' polls, each answered with a single hand-over,
came back more often (embedded Sequential-5, interleaved: 90 → 84 runs/s).

Only the transaction's own runs (``Effects.own_runs``: created or locked by
it) are searched, so the claim takes no lock the transaction does not hold
already (their rows, which the hand-out needs, are read in the claim's round
trip), and whatever it hands out is recorded exactly as a poll's claim
records it (:meth:`~kflow.server.worker_claims.WorkerClaims._hand_out`: the
run marked running, ``activity.started`` appended, budgets, secrets).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import attrs

from kflow.server.dispatcher import Dispatcher, ParkedPoll
from kflow.server.transitions import Effects
from kflow.server.worker_claims import claim_known
from kflow.store.base import Row, Tx

if TYPE_CHECKING:
    from kflow.server.worker_claims import WorkerClaims


@attrs.frozen
class Handed:
    """Items claimed for one parked poll, to deliver after the commit."""

    poll: ParkedPoll
    items: list[dict[str, Any]]


class ParkedHandOff:
    """The engine's :class:`~kflow.server.transitions.HandOff` for one server process."""

    def __init__(self, dispatcher: Dispatcher, claims: WorkerClaims) -> None:
        self._dispatcher = dispatcher
        self._claims = claims

    def claim(self, tx: Tx, effects: Effects, now: dt.datetime) -> list[Handed]:
        """Inside ``tx``: claim the ready work of ``effects.own_runs`` in each woken
        queue for the polls parked on it, one poll after another while work is
        left; a queue whose work is all taken is no longer woken."""
        handed: list[Handed] = []
        try:
            self._claim(tx, effects, now, handed)
        except BaseException:  # nothing will be delivered: the polls wait on
            self.release(handed)
            raise
        return handed

    def _claim(self, tx: Tx, effects: Effects, now: dt.datetime, handed: list[Handed]) -> None:
        if self._claim_new(tx, effects, now, handed):
            return
        runs = tx.json(sorted(str(run) for run in effects.own_runs))
        grace = int(self._claims.engine.settings.lease_grace_seconds * 1_000_000)
        for queue in sorted(effects.queues):
            while (poll := self._dispatcher.reserve(queue)) is not None:
                assert poll.worker_id is not None  # reserve() only returns polls that take work
                handed.append(Handed(poll, []))  # released with the others if this raises
                effects.claimed_queues.add(queue)
                # The runs' rows for the hand-out, as they are now, in the claim's round trip.
                run_rows = tx.all_later("lock_workflows", ids=runs)
                rows = tx.all(
                    "claim_ready_of_runs",
                    ids=runs,
                    queue=queue,
                    worker_id=poll.worker_id,
                    client_id=poll.client_id,
                    now=tx.time(now),
                    limit=poll.limit,
                    lease_grace_micros=grace,
                )
                items: list[dict[str, Any]] = []
                if rows:
                    by_id = {str(row["id"]): row for row in run_rows()}
                    items = self._claims._hand_out(
                        tx, effects, rows, poll.worker_id, now, runs_of=by_id
                    )
                    handed[-1] = Handed(poll, items)
                else:
                    self.release([handed.pop()])
                if len(rows) < poll.limit:
                    # Nothing of these runs is left in the queue — unless an item
                    # could not be sent and its failure made work ready again.
                    if len(items) == len(rows):
                        effects.queues.discard(queue)
                    break

    def _claim_new(self, tx: Tx, effects: Effects, now: dt.datetime, handed: list[Handed]) -> bool:
        """The hand-over of a transaction whose own runs it all created (a start):
        their ready work is known (``effects.new_runs``), nobody else can see it,
        so each claim names its rows and goes out without waiting for an answer —
        the same rows, in the same order, as ``claim_ready_of_runs`` would take
        (an item whose parameters cannot be completed fails in the hand-out, as
        after the database's claim). False (nothing done) for any other
        transaction."""
        new = effects.new_runs
        if not new or not effects.own_runs <= new.keys():
            return False
        ready = [row for run in new.values() for row in run.ready]
        grace = dt.timedelta(seconds=self._claims.engine.settings.lease_grace_seconds)
        runs_of = {str(run_id): run.row for run_id, run in new.items()}
        for queue in sorted(effects.queues):
            left = sorted(
                (row for row in ready if row["queue"] == queue),
                key=lambda row: (row["available_at"], row["workflow_id"], row["position"]),
            )
            while (poll := self._dispatcher.reserve(queue)) is not None:
                assert poll.worker_id is not None  # reserve() only returns polls that take work
                handed.append(Handed(poll, []))  # released with the others if this raises
                effects.claimed_queues.add(queue)
                taken, left = left[: poll.limit], left[poll.limit :]
                rows: list[Row] = []
                for row in taken:
                    lease = now + dt.timedelta(seconds=int(row["timeout_seconds"])) + grace
                    rows.append(claimed := {**row, "lease_expires_at": lease})
                    claim_known(tx, claimed, poll.worker_id, poll.client_id, now, claimed_with=None)
                items: list[dict[str, Any]] = []
                if rows:
                    items = self._claims._hand_out(
                        tx, effects, rows, poll.worker_id, now, runs_of=runs_of
                    )
                    handed[-1] = Handed(poll, items)
                    for item in items:  # their runs were marked running by the hand-out
                        run = item["workflow_id"]
                        runs_of[run] = {**runs_of[run], "status": "running"}
                else:
                    self.release([handed.pop()])
                if len(rows) < poll.limit:
                    # Nothing of these runs is left in the queue — unless an item
                    # could not be sent and its failure made work ready again.
                    if len(items) == len(rows):
                        effects.queues.discard(queue)
                    break
        return True

    def deliver(self, handed: list[Handed]) -> None:
        for one in handed:
            self._dispatcher.deliver(one.poll, one.items)

    def release(self, handed: list[Handed]) -> None:
        for one in handed:
            self._dispatcher.release(one.poll)
