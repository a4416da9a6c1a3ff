"""The transition machinery of the engine: one transaction per transition.

:class:`TransitionEngine` locks the workflow row, loads the run's state,
asks the orchestrator to ``decide`` an event, and writes the commands and the
events, all in one store transaction. Post-commit work is gathered in
:class:`Effects` and handed to the :class:`EngineHooks` only after the commit.
:class:`~kflow.server.engine.Engine` builds the run operations on this base.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
import structlog

from kflow._serde import dumps_str
from kflow._types import WorkflowStatus
from kflow.clock import Clock
from kflow.errors import NotFoundError, StaleReadError
from kflow.ids import new_id
from kflow.server.definitions import READ_LATEST, DefinitionCache
from kflow.server.orchestrator import DecideContext, decide
from kflow.server.persistence import append_events, apply_puts, workflow_state
from kflow.server.state import (
    ZERO,
    AddCost,
    ArmTimer,
    Command,
    ConsumeSignal,
    Emit,
    Event,
    PutActivity,
    PutWorkflow,
    WakeQueue,
    WorkflowState,
)
from kflow.server.views import detail_from_rows
from kflow.store.base import Row, Store, Tx
from kflow.templates import TemplateEngine

#: PostgreSQL notification channel of kflow's cross-server wake-ups.
NOTIFY_CHANNEL = "kflow"

log = structlog.get_logger("kflow.engine")


class EngineHooks(Protocol):
    """What the engine tells the rest of the server after a commit."""

    def wake(self, queue: str) -> None:
        """Work became claimable in ``queue``."""
        ...

    def arm(self, at: dt.datetime) -> None:
        """Something is due at ``at``."""
        ...

    def notify(
        self,
        workflow_id: uuid.UUID,
        *,
        finished: bool = False,
        final: dict[str, Any] | None = None,
    ) -> None:
        """The run's history grew; ``finished``: the run reached a final status;
        ``final``: its detail as of that commit (when :meth:`wants_final` said so)."""
        ...

    def wants_final(self, workflow_id: uuid.UUID) -> bool:
        """Whether someone waits for ``workflow_id`` to finish (its final detail
        is then read with the commit that finishes it)."""
        ...


class NullHooks:
    """Hooks that do nothing (tools that only write, such as migrations)."""

    def wake(self, queue: str) -> None:
        pass

    def arm(self, at: dt.datetime) -> None:
        pass

    def notify(
        self,
        workflow_id: uuid.UUID,
        *,
        finished: bool = False,
        final: dict[str, Any] | None = None,
    ) -> None:
        pass

    def wants_final(self, workflow_id: uuid.UUID) -> bool:
        return False


class HandOff(Protocol):
    """Hands work a transaction made ready to parked polls, inside that transaction
    (:class:`kflow.server.handoff.ParkedHandOff`)."""

    def claim(self, tx: Tx, effects: Effects, now: dt.datetime) -> list[Any]:
        """Claim ready work of ``effects.own_runs`` for parked polls; the hand-overs
        to :meth:`deliver` after the commit (or :meth:`release` without one)."""
        ...

    def deliver(self, handed: list[Any]) -> None:
        """The transaction committed: give each poll its items."""
        ...

    def release(self, handed: list[Any]) -> None:
        """The transaction did not commit (or runs again): the polls wait on."""
        ...


@attrs.frozen(kw_only=True)
class EngineSettings:
    """Timing rules of the engine."""

    #: Added to an activity's timeout to form its lease at claim time.
    lease_grace_seconds: float = 10.0
    #: Heartbeat cadence suggested to workers; a heartbeat extends the lease
    #: to at least three of these (plus the grace).
    heartbeat_interval_seconds: float = 30.0
    #: Secret values by name (``SECRET.NAME``); substituted only at dispatch.
    secrets: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class NewRun:
    """A run created in this transaction, as a hand-over to parked polls needs it
    (:meth:`kflow.server.handoff.ParkedHandOff.claim`): ``row`` as
    ``lock_workflows`` would read it, ``ready`` its activities pending and due
    with a new attempt, as ``claim_ready_of_runs`` would return them (before
    their lease, which the claim sets). Nobody else can see these rows before
    the transaction commits, so a claim of them needs no answer."""

    row: Row
    ready: list[Row]


@attrs.define
class Effects:
    """What to do after a transaction commits."""

    queues: set[str] = attrs.field(factory=set)
    timers: list[dt.datetime] = attrs.field(factory=list)
    workflows: set[uuid.UUID] = attrs.field(factory=set)
    #: Runs that reached a final status (also in ``workflows``: their history grew).
    finished: set[uuid.UUID] = attrs.field(factory=set)
    #: Runs this transaction created or locked: the work it made ready in them
    #: may be handed to parked polls inside it (:class:`HandOff`). Only a
    #: transaction that holds every one of them may name them.
    own_runs: set[uuid.UUID] = attrs.field(factory=set)
    #: Queues in which a claim of this transaction locked ready rows. Claims
    #: skip rows another transaction holds (``SKIP LOCKED``), so a concurrent
    #: poll may have found such a queue empty; if this transaction does not
    #: commit, the rows are ready again and the queue must be woken
    #: (:meth:`TransitionEngine.write`).
    claimed_queues: set[str] = attrs.field(factory=set)
    #: Runs this transaction created, when it may hand their work to parked polls
    #: (:attr:`TransitionEngine.handoff`): each run's row and its activities ready
    #: now, as the claim would read them (:class:`NewRun`).
    new_runs: dict[uuid.UUID, NewRun] = attrs.field(factory=dict)

    def merge(self, other: Effects) -> None:
        self.queues |= other.queues
        self.timers.extend(other.timers)
        self.workflows |= other.workflows
        self.finished |= other.finished
        self.own_runs |= other.own_runs
        self.claimed_queues |= other.claimed_queues
        self.new_runs.update(other.new_runs)

    def clear(self) -> None:
        """Forget everything (a retried transaction starts over)."""
        self.queues.clear()
        self.timers.clear()
        self.workflows.clear()
        self.finished.clear()
        self.own_runs.clear()
        self.claimed_queues.clear()
        self.new_runs.clear()

    def finish(self, workflow_id: uuid.UUID) -> None:
        """``workflow_id`` reached a final status (and its history grew)."""
        self.workflows.add(workflow_id)
        self.finished.add(workflow_id)

    def __bool__(self) -> bool:
        return bool(self.queues or self.timers or self.workflows)

    def payload(self, origin: str) -> str:
        """The JSON other server processes receive (see :mod:`kflow.server.listener`).

        Long lists of runs collapse to ``"*"`` (wake every watcher) to stay far
        below PostgreSQL's 8000-byte notification limit; ``"f"`` lists the runs
        that finished.
        """
        workflows: list[str] | str = sorted(str(w) for w in self.workflows)
        finished: list[str] | str = sorted(str(w) for w in self.finished)
        if len(workflows) > 50:
            workflows = finished = "*"
        timer = min(self.timers).isoformat() if self.timers else None
        return dumps_str(
            {
                "s": origin,
                "q": sorted(self.queues)[:100],
                "w": workflows,
                "f": finished,
                "t": timer,
            }
        )


@attrs.frozen(kw_only=True)
class Transition:
    """The outcome of one applied decision."""

    state: WorkflowState
    commands: list[Command]
    attempt_ids: Mapping[str, uuid.UUID]
    status: WorkflowStatus

    def put_for(self, key: str) -> PutActivity | None:
        for command in self.commands:
            if isinstance(command, PutActivity) and command.activity.key == key:
                return command
        return None


class TransitionEngine:
    """Transitions of runs, each in one store transaction (the base of the engine)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        hooks: EngineHooks | None = None,
        settings: EngineSettings | None = None,
        templates: TemplateEngine | None = None,
        definitions: DefinitionCache | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hooks: EngineHooks = hooks or NullHooks()
        self.settings = settings or EngineSettings()
        self.templates = templates or TemplateEngine()
        self.definitions = definitions or DefinitionCache()
        self._secret_names = frozenset(self.settings.secrets)
        #: Names this process in cross-server notifications (it ignores its own).
        self.instance_id = new_id().hex
        #: Whether transactions notify other servers (:mod:`kflow.server.peers`
        #: clears it while no other server listens on the database).
        self.notify_peers = True
        #: Set by the server: work made ready in a transaction's own runs goes
        #: straight to parked polls of this process.
        self.handoff: HandOff | None = None

    # ---- plumbing ---------------------------------------------------------------

    def after_commit(
        self,
        effects: Effects,
        finals: Mapping[uuid.UUID, Callable[[], list[Row]]] | None = None,
    ) -> None:
        """Wake queues, arm timers and notify streams for committed work.

        ``finals``: the ``workflow_detail`` rows of finished runs, read with the
        commit (:meth:`final_reads`).
        """
        for queue in effects.queues:
            self.hooks.wake(queue)
        if effects.timers:
            self.hooks.arm(min(effects.timers))
        for workflow_id in effects.workflows:  # finished runs are in it too (Effects.finish)
            finished = workflow_id in effects.finished
            read = finals.get(workflow_id) if finals and finished else None
            final = None
            if read is not None:
                try:
                    final = detail_from_rows(read(), workflow_id)
                except Exception:  # committed all the same: its waiters read the run themselves
                    log.exception("engine.final_detail_failed", workflow_id=str(workflow_id))
            self.hooks.notify(workflow_id, finished=finished, final=final)

    def final_reads(self, tx: Tx, effects: Effects) -> dict[uuid.UUID, Callable[[], list[Row]]]:
        """For each run ``effects`` finished that someone waits for, its detail read
        as the transaction's last statement (see :meth:`after_commit`)."""
        return {
            run: tx.read_with_commit("workflow_detail", id=str(run))
            for run in effects.finished
            if self.hooks.wants_final(run)
        }

    async def write(self, fn: Callable[[Tx, Effects], Any]) -> Any:
        """Run ``fn(tx, effects)`` in a transaction, then apply the effects.

        Other server processes on the same database learn about the effects
        through a notification sent in the transaction (delivered on commit),
        while any listens (:attr:`notify_peers`).
        If the store retries the transaction, the effects start over.

        Work that ``fn`` made ready in its own runs (``effects.own_runs``) is
        claimed, in the same transaction, for polls parked in this process
        (:attr:`handoff`) and given to them after the commit; queues left
        with nothing of it are not woken.

        A claim that did not commit (the transaction failed, or ran again)
        leaves the rows it locked ready, unseen by polls that skipped them
        meanwhile: their queues (``effects.claimed_queues``) are woken here.
        """
        effects = Effects()
        handoff = self.handoff
        handed: list[Any] = []
        rolled_back: set[str] = set()
        finals: dict[uuid.UUID, Callable[[], list[Row]]] = {}

        def unit(tx: Tx) -> Any:
            rolled_back.update(effects.claimed_queues)  # a rerun: those claims were undone
            effects.clear()
            finals.clear()
            if handed and handoff is not None:  # a rerun: the polls wait on
                handoff.release(handed)
                handed.clear()
            result = fn(tx, effects)
            if handoff is not None and effects.own_runs and effects.queues:
                handed.extend(handoff.claim(tx, effects, self.clock.now()))
            if effects.finished:
                finals.update(self.final_reads(tx, effects))
            if effects and self.notify_peers:
                tx.notify(NOTIFY_CHANNEL, effects.payload(self.instance_id))
            return result

        try:
            try:
                result = await self.store.write(unit)
            except StaleReadError as stale:  # a cached newest definition: read it this time
                log.info("engine.stale_read", reason=str(stale)[:200])
                self.definitions.forget_latest()
                reading = READ_LATEST.set(True)
                try:
                    result = await self.store.write(unit)
                finally:
                    READ_LATEST.reset(reading)
        except BaseException:
            if handed and handoff is not None:
                handoff.release(handed)
            for queue in rolled_back | effects.claimed_queues:
                self.hooks.wake(queue)
            raise
        if handed and handoff is not None:
            handoff.deliver(handed)
        for queue in rolled_back:
            self.hooks.wake(queue)
        self.after_commit(effects, finals)
        return result

    def load_state(self, tx: Tx, row: Row, activities: list[Row] | None = None) -> WorkflowState:
        """The run of ``row`` as the orchestrator sees it; ``activities``: its
        ``workflow_activities`` rows when the caller read them already in ``tx``."""
        loaded = self.definitions.load(tx, row["definition_name"], row["definition_version"])
        if activities is None:
            activities = tx.all("workflow_activities", workflow_id=str(row["id"]))
        return workflow_state(tx, row, loaded, activities)

    def lock(self, tx: Tx, workflow_id: uuid.UUID | str) -> Row:
        """Lock and return the workflow row.

        Raises:
            NotFoundError: no such workflow.
        """
        row = tx.one("lock_workflow", id=str(workflow_id))
        if row is None:
            raise NotFoundError(f"workflow {workflow_id} not found")
        return row

    def lock_many(self, tx: Tx, workflow_ids: Iterable[str]) -> dict[str, Row]:
        """Lock several runs in one statement, in id order; returns their rows by id
        (as strings), in that order.

        Raises:
            NotFoundError: one of them does not exist.
        """
        wanted = sorted(set(workflow_ids))
        if not wanted:
            return {}
        rows = {str(row["id"]): row for row in tx.all("lock_workflows", ids=tx.json(wanted))}
        missing = [w for w in wanted if w not in rows]
        if missing:
            raise NotFoundError(f"workflow {missing[0]} not found")
        return {w: rows[w] for w in wanted}

    def transition(
        self,
        tx: Tx,
        effects: Effects,
        state: WorkflowState,
        event: Event,
        now: dt.datetime,
        *,
        hold_events: list[Emit] | None = None,
    ) -> Transition:
        """Decide ``event`` for ``state`` and write the result (inside ``tx``).

        ``hold_events``: the events are added to this list instead of appended;
        the caller appends them (with events of its own) before ``tx`` ends.
        """
        ctx = DecideContext(now=now, templates=self.templates, secret_names=self._secret_names)
        commands = decide(state, event, ctx)
        attempt_ids: dict[str, uuid.UUID] = {}
        emits: list[Emit] = []
        cost = ZERO
        status = state.status
        puts: list[PutActivity] = []
        for command in commands:
            match command:
                case PutActivity():
                    puts.append(command)
                case PutWorkflow(status=new_status, error_message=message, finished=finished):
                    status = new_status
                    if new_status.is_terminal:
                        effects.finish(state.id)
                    tx.send(
                        "set_workflow_status",
                        id=str(state.id),
                        status=new_status.value,
                        error_message=message,
                        finished=finished,
                        now=tx.time(now),
                    )
                case AddCost(amount=amount):
                    cost += amount
                case ConsumeSignal(signal_id=signal_id):
                    tx.send("delete_signal", id=str(signal_id))
                case Emit():
                    emits.append(command)
                case WakeQueue(queue=queue):
                    effects.queues.add(queue)
                case ArmTimer(at=at):
                    effects.timers.append(at)
        attempt_ids.update(apply_puts(tx, state.id, puts, now))
        if cost:
            tx.send(
                "set_workflow_cost",
                id=str(state.id),
                total_cost_usd=tx.money(state.total_cost_usd + cost),
                now=tx.time(now),
            )
        if hold_events is not None:
            hold_events.extend(emits)
        elif append_events(tx, state.id, emits, now):
            effects.workflows.add(state.id)
        return Transition(state=state, commands=commands, attempt_ids=attempt_ids, status=status)

    async def fail_run_directly(self, workflow_id: uuid.UUID | str, reason: str) -> None:
        """Fail a run without the orchestrator, after a transition of it broke.

        The last resort that keeps one bad run from blocking the engine: the
        run becomes ``failed`` with ``reason``, its open activities
        ``cancelled`` (running attempts keep their lease fields, so their
        workers are told to stop). Plain SQL, no templates: it cannot fail the
        way the broken transition did.
        """
        now = self.clock.now()
        workflow = uuid.UUID(str(workflow_id))

        def fail_tx(tx: Tx, effects: Effects) -> None:
            if not tx.run(
                "fail_workflow_directly", id=str(workflow), error_message=reason, now=tx.time(now)
            ):
                return
            tx.send("cancel_open_activities", workflow_id=str(workflow), now=tx.time(now))
            append_events(
                tx,
                workflow,
                [
                    Emit(
                        type="workflow.failed", data={"error_message": reason, "engine_error": True}
                    )
                ],
                now,
            )
            effects.finish(workflow)

        log.error("engine.run_failed_directly", workflow_id=str(workflow), reason=reason)
        await self.write(fail_tx)

    def transition_row(
        self,
        tx: Tx,
        effects: Effects,
        workflow_id: uuid.UUID | str,
        make_event: Callable[[WorkflowState], Event],
        now: dt.datetime,
        *,
        locked: Row | None = None,
        activities: list[Row] | None = None,
        hold_events: list[Emit] | None = None,
    ) -> Transition:
        """Lock the run (unless ``locked`` is its row, locked earlier in ``tx``), load it
        (its ``activities`` rows may be passed, read under that lock and unchanged
        since), and apply the event ``make_event(state)`` (``hold_events``: as for
        :meth:`transition`)."""
        row = locked if locked is not None else self.lock(tx, workflow_id)
        state = self.load_state(tx, row, activities)
        return self.transition(tx, effects, state, make_event(state), now, hold_events=hold_events)
