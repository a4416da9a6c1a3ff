"""The reports of one batch request, applied in one transaction.

A report batch (``POST /activities/reports``) used to apply each report in
a transaction of its own, all at once. With a group the batch's reports
that get as far as writing join one transaction instead: one ``BEGIN`` and
``COMMIT``, one notification to other servers and one commit for the
database to make durable, instead of one each. Nothing is answered before
that transaction commits, so every answer still means "durably recorded".

The transaction first locks the runs of every report's attempt, in run id
order (as claims lock runs), then applies the reports one after another in
that order: two groups, or a group and a claim, never wait on each other in
a cycle. A report that asks for its run's next step sends its claim with its
transition; the claims of the runs with a single report in the group are
answered together and handed out after all transitions, so the group waits
for the database at most twice (the lock with the runs' activities, the
claims) however many reports it holds, then commits — once when every claim
names the attempt its transition made ready (PostgreSQL:
:meth:`~kflow.server.worker_claims.WorkerClaims.claim_next`). Each report keeps its own
effects until then, so one report's "no need to wake this queue" never
drops a wake another report of the group needs. A report may never leave a
transaction half written, so if any of them raises (a lease lost to another
worker, an engine error), nothing of the group is kept and each report runs
again on its own, exactly as without a group, with its own error handling.
A batch with a single report to write runs it on its own from the start.

Every item of the batch must settle with the group — :meth:`ReportSlot.write`
for a report that writes, :meth:`ReportSlot.skip` for one that will not
(its validation failed) — and :meth:`ReportGroup.run` applies the group
once all have.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from kflow.server.deferred_writes import DeferredWrites
from kflow.server.transitions import Effects
from kflow.store.base import Row, Tx

if TYPE_CHECKING:
    from kflow.server.engine import Engine

log = structlog.get_logger("kflow.engine")

#: A run's row (as ``lock_workflow_of_attempt`` reads it) and its activities (as
#: ``workflow_activities`` reads them), read and locked for a report by its group.
Loaded = tuple[Row, list[Row]]


#: What a report's unit of work returns: its answer, or a function that
#: finishes the report (hands out the next step its claim took) and returns it.
ReportAnswer = dict[str, Any] | Callable[[], dict[str, Any]]


def settled(answer: ReportAnswer) -> dict[str, Any]:
    """The answer of a report, finishing it first if it has not finished."""
    return answer() if callable(answer) else answer


class ReportUnit(Protocol):
    """A report's unit of work, as :meth:`TransitionEngine.write` takes it (through
    :func:`settled`); a group passes ``loaded`` when it read the report's run
    already (the run is locked)."""

    def __call__(
        self, tx: Tx, effects: Effects, loaded: Loaded | None = None, /
    ) -> ReportAnswer: ...


class ReportGroup:
    """The reports of one batch of ``expected`` items (see the module docstring)."""

    def __init__(self, engine: Engine, expected: int) -> None:
        self._engine = engine
        self._expected = expected
        self._units: dict[int, tuple[str, ReportUnit]] = {}
        self._settled: set[int] = set()
        self._answers: dict[int, dict[str, Any]] = {}
        self._alone = False
        self._all_in = trio.Event()
        self._done = trio.Event()
        if expected == 0:
            self._all_in.set()

    def slot(self, index: int) -> ReportSlot:
        """The place of the batch's item ``index`` in the group."""
        if not 0 <= index < self._expected:
            raise ValueError(f"item {index} is not in a group of {self._expected}")
        return ReportSlot(self, index)

    def _settle(self, index: int) -> None:
        if index in self._settled:
            return
        self._settled.add(index)
        if len(self._settled) == self._expected:
            self._all_in.set()

    async def _write(self, index: int, attempt_id: str, unit: ReportUnit) -> dict[str, Any]:
        if index in self._settled:
            raise RuntimeError(f"item {index} of the report group settled already")
        self._units[index] = (attempt_id, unit)
        self._settle(index)
        await self._done.wait()
        if self._alone:
            answer: dict[str, Any] = await self._engine.write(
                lambda tx, effects: settled(unit(tx, effects))
            )
            return answer
        return self._answers[index]

    async def run(self) -> None:
        """Once every item has settled, apply the reports that write (see the module
        docstring); returns when their answers are ready (or when each must run alone).

        Raises:
            trio.Cancelled: the request was cancelled (nothing of the group is
                committed unless its ``COMMIT`` went out already, as for a
                report applied on its own).
        """
        await self._all_in.wait()
        try:
            if len(self._units) < 2:
                self._alone = True
                return
            try:
                self._answers = await self._engine.write(self._apply_all)
            except Exception as exc:  # each report runs again alone, with its own handling
                log.info(
                    "engine.report_group_split",
                    reports=len(self._units),
                    reason=f"{type(exc).__name__}: {exc}"[:300],
                )
                self._alone = True
        finally:
            self._done.set()

    def _apply_all(self, tx: Tx, effects: Effects) -> dict[int, dict[str, Any]]:
        """Lock the reports' runs in id order, then apply each report in that order.

        The reports' attempt records and events are appended together
        (:class:`~kflow.server.deferred_writes.DeferredWrites`). The runs'
        rows come with the lock, and their activities with the statement sent
        right after it (one wait for both), so the first report of each run
        reads nothing itself. A run with several reports here is read again
        for each after the first (each must see what the one before changed),
        under the group's lock: its row and activities in one round trip.
        """
        attempts = sorted({attempt for attempt, _ in self._units.values()})
        # The lock and the locked runs' activities: two statements, one wait.
        locking = tx.all_later("lock_workflows_of_attempts", ids=tx.json(attempts))
        reading = tx.all_later("activities_of_attempts_runs", ids=tx.json(attempts))
        locked = locking()
        rank = {str(row["attempt_id"]): n for n, row in enumerate(locked)}
        runs = {
            str(row["attempt_id"]): {k: v for k, v in row.items() if k != "attempt_id"}
            for row in locked
        }
        activities: dict[str, list[Row]] = {}
        for row in reading():
            activities.setdefault(str(row["workflow_id"]), []).append(row)
        wanted = {str(run["id"]) for run in runs.values()}
        missing = sorted(wanted - activities.keys())
        if missing:  # an activity gave its attempt id up before the lock
            for row in tx.all("activities_of_workflows", ids=tx.json(missing)):
                activities.setdefault(str(row["workflow_id"]), []).append(row)
        order = sorted(self._units, key=lambda i: (rank.get(self._units[i][0], -1), i))
        reports_per_run = Counter(str(run["id"]) for run in runs.values())
        answers: dict[int, dict[str, Any]] = {}
        unfinished: dict[int, Callable[[], dict[str, Any]]] = {}
        appending = DeferredWrites(tx)
        # Each report collects its own effects: its "no need to wake the queue"
        # must not undo a wake another report of the group needs.
        own_effects: list[Effects] = []
        applied: set[str] = set()  # runs a report of the group has changed
        try:
            for index in order:
                attempt, unit = self._units[index]
                run = runs.get(attempt)
                run_id = str(run["id"]) if run is not None else None
                own_effects.append(own := Effects())
                if run is None or run_id is None:
                    answers[index] = settled(unit(appending, own))
                elif reports_per_run[run_id] == 1:
                    answer = unit(appending, own, (run, activities[run_id]))
                    if callable(answer):  # the only report of its run: finish it below
                        unfinished[index] = answer
                        continue
                    answers[index] = answer
                elif run_id not in applied:  # the first of several: as read with the lock
                    applied.add(run_id)
                    answers[index] = settled(unit(appending, own, (run, activities[run_id])))
                else:
                    # A later report of its run: it must see what the reports before
                    # it changed, so the run is read again — without another lock
                    # (the group holds it), in one round trip.
                    answers[index] = settled(unit(appending, own, _read_again(appending, run_id)))
            for index, finish in unfinished.items():  # their claims answer together
                answers[index] = finish()
        finally:  # if a report raises, the queues claimed so far must still be woken
            for own in own_effects:
                effects.claimed_queues |= own.claimed_queues
        for own in own_effects:
            effects.merge(own)
        appending.flush()
        return answers


def _read_again(tx: Tx, run_id: str) -> Loaded:
    """The row and activities of a run the group has locked, as they are now in
    ``tx`` (both statements sent together, one wait for their answers)."""
    run = tx.all_later("get_workflow", id=run_id)
    activities = tx.all_later("workflow_activities", workflow_id=run_id)
    [row] = run()
    return row, activities()


class ReportSlot:
    """One item's place in a :class:`ReportGroup`."""

    def __init__(self, group: ReportGroup, index: int) -> None:
        self._group = group
        self.index = index

    async def write(self, attempt_id: str, unit: ReportUnit) -> dict[str, Any]:
        """Apply ``unit`` (the report of ``attempt_id``) with the group; its answer.

        Raises:
            Exception: whatever ``unit`` or the store raise when it runs alone.
            RuntimeError: this item settled already.
        """
        return await self._group._write(self.index, attempt_id, unit)

    def skip(self) -> None:
        """This item writes nothing (or settled already): the group need not wait for it."""
        self._group._settle(self.index)
