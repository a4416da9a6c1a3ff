"""Read-side views of runs: the JSON shapes of PROTOCOL §5.

Each function runs inside a read transaction and returns plain data ready
for the JSON encoder (datetimes and Decimals are encoded there).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from kflow._types import ActivityStatus
from kflow.errors import InvalidInputError, NotFoundError
from kflow.server.definitions import DefinitionCache, LoadedDefinition
from kflow.server.persistence import event_row
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_money, load_time


def _workflow_row(tx: Tx, workflow_id: uuid.UUID) -> Row:
    row = tx.one("get_workflow", id=str(workflow_id))
    if row is None:
        raise NotFoundError(f"workflow {workflow_id} not found")
    return row


def _outputs_array(row: Row) -> list[dict[str, Any]]:
    outputs = load_json(row["outputs"]) or {}
    types = {d["name"]: d.get("type", "value") for d in load_json(row["output_definitions"]) or []}
    return [
        {"name": name, "type": types.get(name, "value"), "value": value}
        for name, value in outputs.items()
    ]


def _activity(row: Row) -> dict[str, Any]:
    return {
        "activity_key": row["key"],
        "activity_name": row["activity_name"],
        "worker": row["queue"],
        "status": row["status"],
        "outputs": _outputs_array(row),
        "error": load_json(row["error"]),
        "iteration": row["iteration"],
        "attempt": row["attempt"],
        "cost_usd": load_money(row["cost_usd"]),
        "available_at": load_time(row["available_at"]) if row["status"] == "waiting" else None,
        "waits_for_signal": row["wait_signal"],
        "worker_id": row["worker_id"] if row["status"] == "running" else None,
        "started_at": load_time(row["started_at"]),
        "completed_at": load_time(row["completed_at"]),
    }


def workflow_summary(row: Row) -> dict[str, Any]:
    """A workflows row in the list form."""
    return {
        "id": str(row["id"]),
        "workflow_id": str(row["id"]),
        "status": row["status"],
        "definition_name": row["definition_name"],
        "definition_version": row["definition_version"],
        "created_at": load_time(row["created_at"]),
        "updated_at": load_time(row["updated_at"]),
        "completed_at": load_time(row["completed_at"]),
        "error_message": row["error_message"],
        "total_cost_usd": load_money(row["total_cost_usd"]),
    }


def workflow_detail(tx: Tx, workflow_id: uuid.UUID) -> dict[str, Any]:
    """``GET /workflows/{id}``: the run with every activity (outputs as arrays),
    read in one statement.

    Raises:
        NotFoundError: no such run.
    """
    return detail_from_rows(tx.all("workflow_detail", id=str(workflow_id)), workflow_id)


def detail_from_rows(rows: list[Row], workflow_id: uuid.UUID) -> dict[str, Any]:
    """The detail form of the rows of the ``workflow_detail`` query.

    Raises:
        NotFoundError: no rows (no such run).
    """
    if not rows:
        raise NotFoundError(f"workflow {workflow_id} not found")
    first = rows[0]
    row = {name[len(_RUN) :]: value for name, value in first.items() if name.startswith(_RUN)}
    return detail_of(row, [a for a in rows if a["key"] is not None])


def detail_of(row: Row, activities: list[Row]) -> dict[str, Any]:
    """The detail form of a workflows row and its activities' rows (in position order)."""
    detail = workflow_summary(row)
    detail.update(
        activities=[_activity(a) for a in activities],
        input=load_json(row["input"]),
        state_data={
            "input": load_json(row["input"]),
            "unique_key": row["unique_key"],
            "timeout_at": load_time(row["timeout_at"]),
        },
    )
    return detail


#: How ``workflow_detail`` names the run's columns beside its activities'.
_RUN = "run_"


def list_workflows(
    tx: Tx,
    *,
    status: str | None,
    definition_name: str | None,
    created_after: dt.datetime | None,
    created_before: dt.datetime | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """``GET /workflows`` with filters, newest first."""
    params = {
        "status": status,
        "definition_name": definition_name,
        "created_after": tx.time(created_after),
        "created_before": tx.time(created_before),
    }
    rows = tx.all("list_workflows", limit=limit, offset=offset, **params)
    total_row = tx.one("count_workflows", **params)
    workflows = [workflow_summary(r) for r in rows]
    return {
        "workflows": workflows,
        "total": int(total_row["total"]) if total_row else 0,
        "count": len(workflows),
        "limit": limit,
        "offset": offset,
    }


def _sinks(loaded: LoadedDefinition) -> frozenset[str]:
    """Activities no other activity depends on through a forward edge.

    A loop's back-edge does not count: the last activity of a loop (or a
    self-loop) still ends the run and its outputs are terminal outputs.
    """
    graph = loaded.graph
    keys = [a.key for a in loaded.definition.activities]
    fed = {dep.activity_key for key in keys for dep in graph.forward_dependencies(key)}
    return frozenset(k for k in keys if k not in fed)


def workflow_output(tx: Tx, cache: DefinitionCache, workflow_id: uuid.UUID) -> dict[str, Any]:
    """``GET /workflows/{id}/output`` (completed runs only).

    Raises:
        NotFoundError: no such run.
        InvalidInputError: the run has not completed (400).
    """
    row = _workflow_row(tx, workflow_id)
    if row["status"] != "completed":
        raise InvalidInputError(
            f"workflow {workflow_id} is {row['status']}; outputs are available once it has "
            "completed",
            details={"status": row["status"]},
        )
    loaded = cache.load(tx, row["definition_name"], row["definition_version"])
    sinks = _sinks(loaded)
    outputs: dict[str, Any] = {}
    terminal: list[dict[str, Any]] = []
    for act in tx.all("workflow_activities", workflow_id=str(workflow_id)):
        sink = act["key"] in sinks
        entry = {
            "status": act["status"],
            "output": _outputs_array(act),
            "cost_usd": load_money(act["cost_usd"]),
            "completed_at": load_time(act["completed_at"]),
            "is_terminal": sink,
        }
        outputs[act["key"]] = entry
        if sink and act["status"] == ActivityStatus.COMPLETED.value:
            terminal.append({"activity_key": act["key"], "output": entry["output"]})
    return {
        "workflow_id": str(workflow_id),
        "status": row["status"],
        "total_cost_usd": load_money(row["total_cost_usd"]),
        "completed_at": load_time(row["completed_at"]),
        "outputs": outputs,
        "terminal_outputs": terminal,
    }


def activity_output(tx: Tx, workflow_id: uuid.UUID, key: str) -> dict[str, Any]:
    """``GET /workflows/{id}/activities/{key}/output``.

    Raises:
        NotFoundError: no such run or activity.
    """
    _workflow_row(tx, workflow_id)
    act = tx.one("activity_by_key", workflow_id=str(workflow_id), key=key)
    if act is None:
        raise NotFoundError(f"activity {key!r} not found in workflow {workflow_id}")
    files = [
        {
            "filename": f["filename"],
            "content_type": f["content_type"],
            "size": f["size"],
            "created_at": load_time(f["created_at"]),
            "reference": f"postgres://{workflow_id}/{key}/{f['filename']}",
        }
        for f in tx.all("list_activity_files", workflow_id=str(workflow_id), activity_key=key)
    ]
    return {
        "workflow_id": str(workflow_id),
        "activity_key": key,
        "status": act["status"],
        "output": _outputs_array(act),
        "error": load_json(act["error"]),
        "cost_usd": load_money(act["cost_usd"]),
        "completed_at": load_time(act["completed_at"]),
        "files": files,
    }


def run_events(
    tx: Tx, workflow_id: uuid.UUID, after_id: int, limit: int = 500
) -> list[dict[str, Any]]:
    """History events of a run after ``after_id``, oldest first."""
    rows = tx.all("workflow_events", workflow_id=str(workflow_id), after_id=after_id, limit=limit)
    return [event_row(r) for r in rows]


def run_status(tx: Tx, workflow_id: uuid.UUID) -> str:
    """Just the status of a run.

    Raises:
        NotFoundError: no such run.
    """
    return str(_workflow_row(tx, workflow_id)["status"])
