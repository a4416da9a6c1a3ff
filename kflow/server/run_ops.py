"""The run operations of the engine: deploy, start, cancel, signal.

Each is one transaction built on :class:`~kflow.server.transitions.TransitionEngine`:
starting a run inserts it and decides ``WorkflowStarted``; cancelling decides
``CancelRequested``; a signal is delivered to the activity waiting for it or
buffered until the activity starts waiting.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._types import ActivityStatus, WorkflowStatus
from kflow.errors import ConflictError, NotFoundError
from kflow.ids import new_id
from kflow.model.definition import WorkflowDefinition
from kflow.server.definitions import LoadedDefinition, deploy_in_tx
from kflow.server.persistence import append_events, insert_run
from kflow.server.start_group import StartGroups
from kflow.server.state import (
    ActivityState,
    CancelRequested,
    Emit,
    PutActivity,
    SignalDelivered,
    WorkflowStarted,
    WorkflowState,
)
from kflow.server.transitions import Effects, NewRun, Transition, TransitionEngine
from kflow.store.base import Row, Tx


@attrs.frozen(kw_only=True)
class StartedWorkflow:
    id: uuid.UUID
    definition_name: str
    definition_version: str
    status: WorkflowStatus
    created_at: dt.datetime


def _new_run(
    result: Transition,
    inserted: list[dict[str, Any]],
    loaded: LoadedDefinition,
    data: dict[str, Any],
    unique_key: str | None,
    now: dt.datetime,
    timeout_at: dt.datetime | None,
) -> NewRun:
    """A just-started run as a hand-over to parked polls would read it: the run's
    row (``lock_workflows``) and its activities the start made pending and due
    (``claim_ready_of_runs``, without the lease the claim sets)."""
    fixed = {row["key"]: row for row in inserted}
    ready: list[Row] = []
    for command in result.commands:
        if not isinstance(command, PutActivity):
            continue
        act = command.activity
        attempt_id = result.attempt_ids.get(act.key)
        due = act.available_at is not None and act.available_at <= now
        if act.status is not ActivityStatus.PENDING or attempt_id is None or not due:
            continue
        row = fixed[act.key]
        ready.append(
            {
                "workflow_id": result.state.id,
                "key": act.key,
                "position": row["position"],
                "available_at": act.available_at,
                "attempt_id": attempt_id,
                "queue": row["queue"],
                "activity_name": row["activity_name"],
                "timeout_seconds": row["timeout_seconds"],
                "settings": row["settings"],
                "output_definitions": row["output_definitions"],
                "parameters": act.parameters,
                "signal_data": act.signal_data,
                "heartbeat_details": None,
                "attempt": act.attempt,
                "iteration": act.iteration,
            }
        )
    run = {
        "id": result.state.id,
        "definition_name": loaded.name,
        "definition_version": loaded.version,
        "status": result.status.value,
        "input": data,
        "unique_key": unique_key,
        "error_message": None,
        "total_cost_usd": decimal.Decimal(0),
        "created_at": now,
        "updated_at": now,
        "completed_at": None,
        "timeout_at": timeout_at,
    }
    return NewRun(row=run, ready=ready)


class RunOps(TransitionEngine):
    """Operations on runs and definitions, each in one store transaction."""

    # ---- definitions ------------------------------------------------------------------

    async def deploy(self, definition: WorkflowDefinition) -> tuple[LoadedDefinition, bool]:
        """Store a definition (new version unless identical to the newest)."""
        now = self.clock.now()
        result: tuple[LoadedDefinition, bool] = await self.store.write(
            lambda tx: deploy_in_tx(tx, self.definitions, definition, now)
        )
        self.definitions.note_latest(result[0])
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
        """Create a run and start its roots, in one transaction (shared with
        starts made at the same time: :mod:`kflow.server.start_group`).

        Raises:
            NotFoundError: no such definition (or version).
            ConflictError: ``unique_key`` is held by a run that has not failed.
        """
        now = self.clock.now()

        def start_tx(tx: Tx, effects: Effects) -> StartedWorkflow:
            return self.start_in_tx(
                tx,
                effects,
                name,
                version=version,
                input=input,
                unique_key=unique_key,
                now=now,
                expect_latest=True,
            )

        started: StartedWorkflow = await self._start_groups.start(start_tx)
        return started

    @functools.cached_property
    def _start_groups(self) -> StartGroups:
        """Concurrent starts share transactions (:mod:`kflow.server.start_group`)."""
        return StartGroups(self)

    def start_in_tx(
        self,
        tx: Tx,
        effects: Effects,
        name: str,
        *,
        version: str | None = None,
        input: Mapping[str, Any] | None = None,
        unique_key: str | None = None,
        now: dt.datetime,
        expect_latest: bool = False,
    ) -> StartedWorkflow:
        """Create a run and start its roots inside the caller's transaction ``tx``.

        The unit of work of :meth:`start`, for callers that must start a run
        atomically with writes of their own (a schedule firing). Post-commit
        work is added to ``effects``; the caller applies it after the commit
        (:meth:`write` does). ``expect_latest``: as for
        :meth:`~kflow.server.definitions.DefinitionCache.load` (a caller inside
        :meth:`write`, which runs the transaction again if it was stale).

        Raises:
            NotFoundError: no such definition (or version).
            ConflictError: ``unique_key`` is held by a run that has not failed.
                Both are raised before anything is written in ``tx``.
        """
        data = dict(input or {})
        loaded = self.definitions.load(tx, name, version, expect_latest=expect_latest)
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
        inserted = insert_run(tx, workflow_id, loaded, data, unique_key, now, timeout_at)
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
        effects.own_runs.add(workflow_id)  # created here: its ready roots may go to parked polls
        result = self.transition(tx, effects, state, WorkflowStarted(), now)
        if self.handoff is not None and result.status is WorkflowStatus.CREATED:
            effects.new_runs[workflow_id] = _new_run(
                result, inserted, loaded, data, unique_key, now, timeout_at
            )
        return StartedWorkflow(
            id=workflow_id,
            definition_name=loaded.name,
            definition_version=loaded.version,
            status=result.status,
            created_at=now,
        )

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
                tx.send(
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
