"""The engine: applies orchestrator decisions to the store, one transaction each.

Every state transition of a run — start, an activity's completion or failure,
a signal, a timer, a cancellation — is one unit of work: lock the workflow
row, load its state, ``decide``, write the commands and the events, commit.
Only after the commit are pollers woken, timers armed and event streams
notified (:class:`EngineHooks`), so nobody ever sees uncommitted work.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import structlog

from kflow._types import ActivityStatus, WorkflowStatus
from kflow.clock import Clock
from kflow.errors import ConflictError, NotFoundError
from kflow.ids import new_id
from kflow.model.definition import WorkflowDefinition
from kflow.server.definitions import DefinitionCache, LoadedDefinition, deploy_in_tx
from kflow.server.orchestrator import DecideContext, decide
from kflow.server.persistence import (
    append_events,
    apply_put,
    insert_activities,
    workflow_state,
)
from kflow.server.state import (
    ZERO,
    ActivityState,
    AddCost,
    ArmTimer,
    CancelRequested,
    Command,
    ConsumeSignal,
    Emit,
    Event,
    PutActivity,
    PutWorkflow,
    SignalDelivered,
    WakeQueue,
    WorkflowStarted,
    WorkflowState,
)
from kflow.store.base import Row, Store, Tx
from kflow.templates import TemplateEngine

log = structlog.get_logger("kflow.engine")


class EngineHooks(Protocol):
    """What the engine tells the rest of the server after a commit."""

    def wake(self, queue: str) -> None:
        """Work became claimable in ``queue``."""
        ...

    def arm(self, at: dt.datetime) -> None:
        """Something is due at ``at``."""
        ...

    def notify(self, workflow_id: uuid.UUID) -> None:
        """The run's history grew."""
        ...


class NullHooks:
    """Hooks that do nothing (tools that only write, such as migrations)."""

    def wake(self, queue: str) -> None:
        pass

    def arm(self, at: dt.datetime) -> None:
        pass

    def notify(self, workflow_id: uuid.UUID) -> None:
        pass


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


@attrs.define
class Effects:
    """What to do after a transaction commits."""

    queues: set[str] = attrs.field(factory=set)
    timers: list[dt.datetime] = attrs.field(factory=list)
    workflows: set[uuid.UUID] = attrs.field(factory=set)

    def merge(self, other: Effects) -> None:
        self.queues |= other.queues
        self.timers.extend(other.timers)
        self.workflows |= other.workflows


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


@attrs.frozen(kw_only=True)
class StartedWorkflow:
    id: uuid.UUID
    definition_name: str
    definition_version: str
    status: WorkflowStatus
    created_at: dt.datetime


class Engine:
    """Transitions of runs, each in one store transaction."""

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

    # ---- plumbing ---------------------------------------------------------------

    def after_commit(self, effects: Effects) -> None:
        """Wake queues, arm timers and notify streams for committed work."""
        for queue in effects.queues:
            self.hooks.wake(queue)
        if effects.timers:
            self.hooks.arm(min(effects.timers))
        for workflow_id in effects.workflows:
            self.hooks.notify(workflow_id)

    async def write(self, fn: Callable[[Tx, Effects], Any]) -> Any:
        """Run ``fn(tx, effects)`` in a transaction, then apply the effects."""
        effects = Effects()
        result = await self.store.write(lambda tx: fn(tx, effects))
        self.after_commit(effects)
        return result

    def load_state(self, tx: Tx, row: Row) -> WorkflowState:
        loaded = self.definitions.load(tx, row["definition_name"], row["definition_version"])
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

    def transition(
        self, tx: Tx, effects: Effects, state: WorkflowState, event: Event, now: dt.datetime
    ) -> Transition:
        """Decide ``event`` for ``state`` and write the result (inside ``tx``)."""
        ctx = DecideContext(now=now, templates=self.templates, secret_names=self._secret_names)
        commands = decide(state, event, ctx)
        attempt_ids: dict[str, uuid.UUID] = {}
        emits: list[Emit] = []
        cost = ZERO
        status = state.status
        for command in commands:
            match command:
                case PutActivity():
                    new_attempt = apply_put(tx, state.id, command, now)
                    if new_attempt is not None:
                        attempt_ids[command.activity.key] = new_attempt
                case PutWorkflow(status=new_status, error_message=message, finished=finished):
                    status = new_status
                    tx.run(
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
                    tx.run("delete_signal", id=str(signal_id))
                case Emit():
                    emits.append(command)
                case WakeQueue(queue=queue):
                    effects.queues.add(queue)
                case ArmTimer(at=at):
                    effects.timers.append(at)
        if cost:
            tx.run(
                "set_workflow_cost",
                id=str(state.id),
                total_cost_usd=tx.money(state.total_cost_usd + cost),
                now=tx.time(now),
            )
        if append_events(tx, state.id, emits, now):
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
            tx.run("cancel_open_activities", workflow_id=str(workflow), now=tx.time(now))
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
            effects.workflows.add(workflow)

        log.error("engine.run_failed_directly", workflow_id=str(workflow), reason=reason)
        await self.write(fail_tx)

    def transition_row(
        self,
        tx: Tx,
        effects: Effects,
        workflow_id: uuid.UUID | str,
        make_event: Callable[[WorkflowState], Event],
        now: dt.datetime,
    ) -> Transition:
        """Lock the run, load it, and apply the event ``make_event(state)``."""
        state = self.load_state(tx, self.lock(tx, workflow_id))
        return self.transition(tx, effects, state, make_event(state), now)

    # ---- definitions ------------------------------------------------------------------

    async def deploy(self, definition: WorkflowDefinition) -> tuple[LoadedDefinition, bool]:
        """Store a definition (new version unless identical to the newest)."""
        now = self.clock.now()
        result: tuple[LoadedDefinition, bool] = await self.store.write(
            lambda tx: deploy_in_tx(tx, self.definitions, definition, now)
        )
        return result

    # ---- runs -----------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        *,
        version: str | None = None,
        input: Mapping[str, Any] | None = None,
        unique_key: str | None = None,
    ) -> StartedWorkflow:
        """Create a run and start its roots, in one transaction.

        Raises:
            NotFoundError: no such definition (or version).
            ConflictError: ``unique_key`` is held by a run that has not failed.
        """
        now = self.clock.now()
        data = dict(input or {})

        def start_tx(tx: Tx, effects: Effects) -> StartedWorkflow:
            loaded = self.definitions.load(tx, name, version)
            if unique_key is not None:
                held = tx.one("workflow_by_unique_key", unique_key=unique_key)
                if held is not None:
                    raise ConflictError(
                        f"unique_key {unique_key!r} is already used by workflow {held['id']} "
                        f"({held['status']})",
                        details={"workflow_id": str(held["id"]), "status": held["status"]},
                    )
            workflow_id = new_id()
            timeout = loaded.definition.settings.timeout_seconds
            timeout_at = None if timeout is None else now + dt.timedelta(seconds=timeout)
            tx.run(
                "insert_workflow",
                id=str(workflow_id),
                definition_name=loaded.name,
                definition_version=loaded.version,
                input=tx.json(data),
                unique_key=unique_key,
                now=tx.time(now),
                timeout_at=tx.time(timeout_at),
            )
            insert_activities(tx, workflow_id, loaded.definition, now)
            state = WorkflowState(
                id=workflow_id,
                status=WorkflowStatus.CREATED,
                definition=loaded.definition,
                graph=loaded.graph,
                input=data,
                created_at=now,
                activities={a.key: ActivityState(key=a.key) for a in loaded.definition.activities},
            )
            if timeout_at is not None:
                effects.timers.append(timeout_at)
            result = self.transition(tx, effects, state, WorkflowStarted(), now)
            return StartedWorkflow(
                id=workflow_id,
                definition_name=loaded.name,
                definition_version=loaded.version,
                status=result.status,
                created_at=now,
            )

        started: StartedWorkflow = await self.write(start_tx)
        return started

    async def cancel(self, workflow_id: uuid.UUID, reason: str = "cancelled by request") -> str:
        """Cancel a run; returns its status afterwards. Idempotent for cancelled runs.

        Raises:
            NotFoundError: no such run.
            ConflictError: the run already completed or failed.
        """
        now = self.clock.now()

        def cancel_tx(tx: Tx, effects: Effects) -> str:
            row = self.lock(tx, workflow_id)
            status = WorkflowStatus(row["status"])
            if status == WorkflowStatus.CANCELLED:
                return status.value
            if status.is_terminal:
                raise ConflictError(
                    f"workflow {workflow_id} already {status.value}",
                    details={"status": status.value},
                )
            state = self.load_state(tx, row)
            return self.transition(
                tx, effects, state, CancelRequested(reason=reason), now
            ).status.value

        result: str = await self.write(cancel_tx)
        return result

    async def signal(
        self,
        workflow_id: uuid.UUID,
        activity_key: str,
        event_name: str,
        data: Mapping[str, Any] | None,
    ) -> tuple[bool, str]:
        """Deliver (or buffer) a signal; returns ``(signaled, message)``.

        Raises:
            NotFoundError: no such run or activity.
        """
        now = self.clock.now()

        def signal_tx(tx: Tx, effects: Effects) -> tuple[bool, str]:
            row = self.lock(tx, workflow_id)
            state = self.load_state(tx, row)
            if activity_key not in state.activities:
                raise NotFoundError(
                    f"activity {activity_key!r} not found in workflow {workflow_id}"
                )
            if state.status.is_terminal:
                return False, f"workflow is {state.status.value}; signal ignored"
            wait = state.definition.activity(activity_key).settings.wait_for_signal
            if wait is None:
                return False, f"activity {activity_key!r} does not wait for a signal"
            if wait.event_name != event_name:
                return False, (
                    f"activity {activity_key!r} waits for {wait.event_name!r}, not {event_name!r}"
                )
            act = state.activities[activity_key]
            if act.status == ActivityStatus.WAITING and act.wait_signal == event_name:
                self.transition(
                    tx, effects, state, SignalDelivered(key=activity_key, data=data), now
                )
                return True, f"signal {event_name!r} delivered to {activity_key!r}"
            if act.status == ActivityStatus.NOT_SCHEDULED or (
                act.status.is_terminal and state.definition.activity(activity_key).is_loop_activity
            ):
                tx.run(
                    "insert_signal",
                    id=str(new_id()),
                    workflow_id=str(workflow_id),
                    activity_key=activity_key,
                    event_name=event_name,
                    data=tx.json(data),
                    now=tx.time(now),
                )
                append_events(
                    tx,
                    state.id,
                    [
                        Emit(
                            type="activity.signal_buffered",
                            activity_key=activity_key,
                            data={"event_name": event_name},
                        )
                    ],
                    now,
                )
                effects.workflows.add(state.id)
                return True, (
                    f"signal {event_name!r} stored; delivered when {activity_key!r} starts waiting"
                )
            return False, (
                f"activity {activity_key!r} is {act.status.value}; it no longer waits for a signal"
            )

        result: tuple[bool, str] = await self.write(signal_tx)
        return result


def money(value: decimal.Decimal | None) -> decimal.Decimal:
    """``value`` or zero."""
    return ZERO if value is None else value
