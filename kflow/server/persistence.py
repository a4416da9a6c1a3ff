"""Rows to orchestrator state and commands to rows, inside one transaction.

These synchronous functions run inside a store unit of work (a worker
thread). They only use named queries through :class:`~kflow.store.base.Tx`,
so they work unchanged on every dialect.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from kflow._types import ActivityStatus, WorkflowStatus
from kflow.ids import new_id
from kflow.model.definition import ActivitySettings
from kflow.model.normalize import settings_dict
from kflow.server.deferred_writes import DeferredWrites
from kflow.server.definitions import LoadedDefinition
from kflow.server.state import (
    ZERO,
    ActivityState,
    BufferedSignal,
    Emit,
    ErrorInfo,
    PutActivity,
    WorkflowState,
)
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_money, load_time


def activity_state(row: Row) -> ActivityState:
    """An activity row as orchestrator state."""
    status = ActivityStatus(row["status"])
    return ActivityState(
        key=row["key"],
        status=status,
        iteration=int(row["iteration"]),
        attempt=int(row["attempt"]),
        parameters=load_json(row["parameters"]),
        available_at=load_time(row["available_at"]),
        wait_signal=row["wait_signal"],
        wait_timeout_at=load_time(row["wait_timeout_at"]),
        signal_data=load_json(row["signal_data"]),
        outputs=load_json(row["outputs"]),
        error=ErrorInfo.from_dict(load_json(row["error"])),
        failure_handled=bool(row["failure_handled"]),
        cost_usd=load_money(row["cost_usd"]),
        started_at=load_time(row["started_at"]),
        completed_at=load_time(row["completed_at"]),
        has_run=row["outputs"] is not None or row["error"] is not None,
    )


def workflow_state(
    tx: Tx, row: Row, loaded: LoadedDefinition, activity_rows: Iterable[Row]
) -> WorkflowState:
    """The full orchestrator state of a run whose workflow row is ``row``."""
    acts = {r["key"]: activity_state(r) for r in activity_rows}
    signals: tuple[BufferedSignal, ...] = ()
    if loaded.waits_for_signals:
        signals = tuple(
            BufferedSignal(
                id=uuid.UUID(str(s["id"])),
                activity_key=s["activity_key"],
                event_name=s["event_name"],
                data=load_json(s["data"]),
            )
            for s in tx.all("workflow_signals", workflow_id=str(row["id"]))
        )
    return WorkflowState(
        id=uuid.UUID(str(row["id"])),
        status=WorkflowStatus(row["status"]),
        definition=loaded.definition,
        graph=loaded.graph,
        input=load_json(row["input"]) or {},
        activities=acts,
        total_cost_usd=load_money(row["total_cost_usd"]),
        created_at=load_time(row["created_at"]) or dt.datetime.now(dt.UTC),
        signals=signals,
    )


def insert_run(
    tx: Tx,
    workflow_id: uuid.UUID,
    loaded: LoadedDefinition,
    data: Mapping[str, Any],
    unique_key: str | None,
    now: dt.datetime,
    timeout_at: dt.datetime | None,
) -> list[dict[str, Any]]:
    """Insert a new run (``created``) and one ``not_scheduled`` row per activity of
    its definition — on PostgreSQL in one statement, on SQLite in two; returns
    the activities' fixed columns as inserted (``key``, ``position``, ``queue``,
    ``activity_name``, ``timeout_seconds``, ``settings``, ``output_definitions``).
    The statements go out without waiting: a ``unique_key`` a concurrent start
    took fails the transaction at its next wait (a ``ConflictError``).
    """
    rows = [
        {
            "key": act.key,
            "position": position,
            "queue": act.worker,
            "activity_name": act.activity_name,
            "timeout_seconds": act.settings.timeout_seconds,
            "settings": dispatch_settings(act.settings),
            "output_definitions": [{"name": o.name, "type": o.type.value} for o in act.outputs]
            or None,
        }
        for position, act in enumerate(loaded.definition.activities)
    ]
    run = {
        "id": str(workflow_id),
        "definition_name": loaded.name,
        "definition_version": loaded.version,
        "input": tx.json(dict(data)),
        "unique_key": unique_key,
        "now": tx.time(now),
        "timeout_at": tx.time(timeout_at),
    }
    if tx.dialect == "postgres":
        tx.send("insert_workflow_with_activities", **run, activities=tx.json(rows))
        return rows
    tx.send("insert_workflow", **run)
    tx.send(
        "insert_activities",
        workflow_id=str(workflow_id),
        activities=tx.json(rows),
        now=tx.time(now),
    )
    return rows


def dispatch_settings(settings: ActivitySettings) -> dict[str, Any]:
    """The ``settings`` object a worker receives with a claimed activity.

    The canonical form, with ``cache`` as a flag (plus ``cache_ttl``) and
    ``budget`` as an object (empty when there is none), as the reference
    engine sends them; settings that are not set are left out.
    """
    form = settings_dict(settings)
    form["cache"] = settings.cache.enabled
    if settings.cache.ttl_seconds is not None:
        form["cache_ttl"] = settings.cache.ttl_seconds
    form["budget"] = form["budget"] or {}
    return {key: value for key, value in form.items() if value is not None}


def _put_row(tx: Tx, put: PutActivity, attempt_id: uuid.UUID | None) -> dict[str, Any]:
    """One activity's new state as ``update_activities_of_runs`` binds it (a JSON
    object, without its run and time)."""
    act = put.activity
    return {
        "key": act.key,
        "status": act.status.value,
        "iteration": act.iteration,
        "attempt": act.attempt,
        "new_attempt_id": None if attempt_id is None else str(attempt_id),
        "parameters": act.parameters,
        "available_at": tx.time(act.available_at),
        "wait_signal": act.wait_signal,
        "wait_timeout_at": tx.time(act.wait_timeout_at),
        "signal_data": act.signal_data,
        "outputs": act.outputs,
        "error": None if act.error is None else act.error.as_dict(),
        "failure_handled": act.failure_handled,
        "cost_usd": tx.money(act.cost_usd),
        "completed_at": tx.time(act.completed_at),
        "clear_lease": put.release_lease or put.new_attempt,
        "clear_details": put.new_attempt and act.attempt <= 1,
    }


def apply_put(
    tx: Tx, workflow_id: uuid.UUID, put: PutActivity, now: dt.datetime
) -> uuid.UUID | None:
    """Write one activity's new state (in a :class:`DeferredWrites`, kept for
    its next write); returns the new attempt id if one was made."""
    act = put.activity
    attempt_id = new_id() if put.new_attempt else None
    if isinstance(tx, DeferredWrites):
        tx.update_activities(str(workflow_id), [_put_row(tx, put, attempt_id)], tx.time(now))
        return attempt_id
    tx.send(
        "update_activity",
        workflow_id=str(workflow_id),
        key=act.key,
        status=act.status.value,
        iteration=act.iteration,
        attempt=act.attempt,
        new_attempt_id=None if attempt_id is None else str(attempt_id),
        parameters=tx.json(act.parameters),
        available_at=tx.time(act.available_at),
        wait_signal=act.wait_signal,
        wait_timeout_at=tx.time(act.wait_timeout_at),
        signal_data=tx.json(act.signal_data),
        outputs=tx.json(act.outputs),
        error=tx.json(None if act.error is None else act.error.as_dict()),
        failure_handled=act.failure_handled,
        cost_usd=tx.money(act.cost_usd),
        completed_at=tx.time(act.completed_at),
        clear_lease=put.release_lease or put.new_attempt,
        clear_details=put.new_attempt and act.attempt <= 1,
        now=tx.time(now),
    )
    return attempt_id


def apply_puts(
    tx: Tx, workflow_id: uuid.UUID, puts: list[PutActivity], now: dt.datetime
) -> dict[str, uuid.UUID]:
    """Write several activities' new states of one run; returns the new attempt
    ids by activity key.

    Two or more distinct activities go in one statement (``update_activities_of_runs``:
    a JSON array of the same fields :func:`apply_put` binds one by one), or in
    a :class:`DeferredWrites` are kept for its next write; one activity, or a
    list naming an activity twice (whose updates must apply in order), goes
    row by row.
    """
    keys = [put.activity.key for put in puts]
    attempts: dict[str, uuid.UUID] = {}
    if len(puts) < 2 or len(set(keys)) != len(keys):
        for put in puts:
            made = apply_put(tx, workflow_id, put, now)
            if made is not None:
                attempts[put.activity.key] = made
        return attempts
    rows = []
    for put in puts:
        attempt_id = new_id() if put.new_attempt else None
        if attempt_id is not None:
            attempts[put.activity.key] = attempt_id
        rows.append(_put_row(tx, put, attempt_id))
    if isinstance(tx, DeferredWrites):
        tx.update_activities(str(workflow_id), rows, tx.time(now))
        return attempts
    run, at = str(workflow_id), tx.time(now)
    tx.send(
        "update_activities_of_runs",
        activities=tx.json([{**row, "workflow_id": run, "now": at} for row in rows]),
    )
    return attempts


def append_events(tx: Tx, workflow_id: uuid.UUID, emits: Iterable[Emit], now: dt.datetime) -> int:
    """Append events to the run's history, in order, in one statement (or, in a
    :class:`DeferredWrites`, kept for its next write); returns how many."""
    events = list(emits)
    if isinstance(tx, DeferredWrites):
        tx.append_events(
            str(workflow_id),
            [{"type": e.type, "activity_key": e.activity_key, "data": e.data} for e in events],
            tx.time(now),
        )
    elif len(events) == 1:
        [event] = events
        tx.send(
            "insert_event",
            workflow_id=str(workflow_id),
            type=event.type,
            activity_key=event.activity_key,
            data=tx.json(event.data),
            now=tx.time(now),
        )
    elif events:
        tx.send(
            "insert_events",
            workflow_id=str(workflow_id),
            events=tx.json(
                [{"type": e.type, "activity_key": e.activity_key, "data": e.data} for e in events]
            ),
            now=tx.time(now),
        )
    return len(events)


def record_attempt(
    tx: Tx,
    *,
    attempt_id: str,
    row: Row,
    outcome: str,
    now: dt.datetime,
    error: ErrorInfo | None = None,
    cost: Any = None,
    usage: Any = None,
) -> None:
    """Keep a finished attempt in the audit trail (once per attempt id); in a
    :class:`DeferredWrites`, kept for its next write."""
    values = {
        "id": attempt_id,
        "workflow_id": str(row["workflow_id"]),
        "activity_key": row["key"],
        "iteration": int(row["iteration"]),
        "attempt": int(row["attempt"]),
        "worker_id": row["worker_id"],
        "outcome": outcome,
        "cost_usd": tx.money(cost if cost is not None else ZERO),
        "started_at": row["claimed_at"],
        "now": tx.time(now),
    }
    error_value = None if error is None else error.as_dict()
    if isinstance(tx, DeferredWrites):
        tx.append_attempt({**values, "error": error_value, "usage": usage or None})
        return
    tx.send("insert_attempt", **values, error=tx.json(error_value), usage=tx.json(usage or None))


def event_row(row: Row) -> dict[str, Any]:
    """An events row as the JSON object the API and the stream return."""
    return {
        "event_id": int(row["id"]),
        "workflow_id": str(row["workflow_id"]),
        "type": row["type"],
        "activity_key": row["activity_key"],
        "data": load_json(row["data"]) or {},
        "created_at": load_time(row["created_at"]),
    }


def json_object(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty mapping."""
    return value if isinstance(value, Mapping) else {}
