"""Read-side views of what runs cost (PROTOCOL §7): per run, per attempt, and over time.

Every finished attempt is stored with its cost (the worker's ``cost_usd``
plus the cost of each usage entry) and its usage entries (provider, model,
token counts). These views only read that record.

``cost/history`` has one row per usage entry of each attempt, plus one row
for the part of an attempt's cost no usage entry accounts for (a worker's
bare ``cost_usd``), so the rows of an attempt always add up to its cost.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from kflow.errors import NotFoundError
from kflow.model.definition import BudgetSettings
from kflow.server.definitions import DefinitionCache, LoadedDefinition
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_money, load_time

ZERO = decimal.Decimal(0)
GROUPS = ("provider", "model", "definition", "day")


def _run(tx: Tx, workflow_id: uuid.UUID) -> Row:
    row = tx.one("get_workflow", id=str(workflow_id))
    if row is None:
        raise NotFoundError(f"workflow {workflow_id} not found")
    return row


def _limit(budget: BudgetSettings | None) -> decimal.Decimal | None:
    return budget.limit if budget is not None else None


def _activity_budget(loaded: LoadedDefinition, key: str) -> BudgetSettings | None:
    for activity in loaded.definition.activities:
        if activity.key == key:
            return activity.settings.budget
    return None


def workflow_cost(tx: Tx, cache: DefinitionCache, workflow_id: uuid.UUID) -> dict[str, Any]:
    """``GET /workflows/{id}/cost``. ``budget_remaining_usd`` is negative when a
    budget with ``action: continue`` was overspent.

    Raises:
        NotFoundError: no such run.
    """
    row = _run(tx, workflow_id)
    loaded = cache.load(tx, row["definition_name"], row["definition_version"])
    total = load_money(row["total_cost_usd"])
    limit = _limit(loaded.definition.settings.budget)
    count = tx.one("count_workflow_activities", workflow_id=str(workflow_id))
    return {
        "workflow_id": str(workflow_id),
        "workflow_name": row["definition_name"],
        "total_cost_usd": total,
        "budget_limit_usd": limit,
        "budget_remaining_usd": None if limit is None else limit - total,
        "total_activities": int(count["total"]) if count else 0,
    }


def _entries(attempt: Row) -> Iterator[tuple[dict[str, Any], decimal.Decimal]]:
    """(usage entry, its cost) for each entry, then the uncovered remainder if any."""
    cost = load_money(attempt["cost_usd"])
    covered = ZERO
    usage = load_json(attempt["usage"]) or []
    for entry in usage:
        if not isinstance(entry, Mapping):
            continue
        part = load_money(entry.get("cost_usd"))
        covered += part
        yield dict(entry), part
    if not usage or cost != covered:
        yield {}, cost - covered


def _tokens(entry: Mapping[str, Any]) -> dict[str, int]:
    def count(name: str) -> int:
        value = entry.get(name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    cached = count("cache_read_tokens")
    prompt = count("input_tokens") + cached + count("cache_creation_tokens")
    output = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "cached_tokens": cached,
    }


def cost_history(tx: Tx, cache: DefinitionCache, workflow_id: uuid.UUID) -> list[dict[str, Any]]:
    """``GET /workflows/{id}/cost/history``: what each attempt spent, oldest first.

    ``budget_limit_usd`` is the activity's budget, else the run's;
    ``budget_exceeded`` says whether the run's spend so far (this row
    included) is over the run's budget, or the attempt's over its
    activity's. ``budget_event`` is what the worker reported for the call
    (``downgrade``: a fallback chain picked a cheaper model; ``budget_exceeded``:
    nothing fitted and the budget's action was ``continue``), else null.

    Raises:
        NotFoundError: no such run.
    """
    row = _run(tx, workflow_id)
    loaded = cache.load(tx, row["definition_name"], row["definition_version"])
    run_limit = _limit(loaded.definition.settings.budget)
    rows: list[dict[str, Any]] = []
    spent = ZERO
    for attempt in tx.all("workflow_attempts", workflow_id=str(workflow_id)):
        key = attempt["activity_key"]
        activity_limit = _limit(_activity_budget(loaded, key))
        attempt_cost = load_money(attempt["cost_usd"])
        for entry, part in _entries(attempt):
            spent += part
            over_run = run_limit is not None and spent > run_limit
            over_activity = activity_limit is not None and attempt_cost > activity_limit
            rows.append(
                {
                    "activity_key": key,
                    "attempt": int(attempt["attempt"]),
                    "iteration": int(attempt["iteration"]),
                    "outcome": attempt["outcome"],
                    "cost_usd": part,
                    **_tokens(entry),
                    "provider": entry.get("provider"),
                    "model": entry.get("model"),
                    "budget_limit_usd": activity_limit if activity_limit is not None else run_limit,
                    "budget_exceeded": over_run or over_activity,
                    "budget_event": entry.get("budget_event"),
                    "created_at": load_time(attempt["finished_at"]),
                }
            )
    return rows


def _group_key(group_by: str, entry: Mapping[str, Any], row: Row) -> str:
    if group_by == "definition":
        return str(row["definition_name"])
    if group_by == "day":
        finished = load_time(row["finished_at"])
        return finished.date().isoformat() if finished else "unknown"
    provider = entry.get("provider") or "unattributed"
    if group_by == "provider":
        return str(provider)
    model = entry.get("model")
    return f"{provider}/{model}" if model else str(provider)


def cost_analytics(
    tx: Tx, *, start: dt.datetime, end: dt.datetime, group_by: str
) -> dict[str, Any]:
    """``GET /cost/analytics``: spend of attempts finished in ``[start, end)``, grouped.

    Groups are ordered by cost, highest first. Spend no usage entry
    accounts for is grouped as provider ``unattributed``.
    """
    totals: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: {
            "cost_usd": ZERO,
            "attempts": set(),
            "prompt_tokens": 0,
            "output_tokens": 0,
            "cached_tokens": 0,
        }
    )
    rows = tx.all("attempts_finished_between", start=tx.time(start), end=tx.time(end))
    for row in rows:
        for entry, part in _entries(row):
            bucket = totals[_group_key(group_by, entry, row)]
            bucket["cost_usd"] += part
            bucket["attempts"].add(str(row["id"]))
            tokens = _tokens(entry)
            for name in ("prompt_tokens", "output_tokens", "cached_tokens"):
                bucket[name] += tokens[name]
    groups = [
        {
            "key": key,
            "total_cost_usd": bucket["cost_usd"],
            "attempts": len(bucket["attempts"]),
            "prompt_tokens": bucket["prompt_tokens"],
            "output_tokens": bucket["output_tokens"],
            "cached_tokens": bucket["cached_tokens"],
        }
        for key, bucket in totals.items()
    ]
    groups.sort(key=lambda g: (-g["total_cost_usd"], g["key"]))
    return {
        "group_by": group_by,
        "start_date": start,
        "end_date": end,
        "total_cost_usd": sum((g["total_cost_usd"] for g in groups), ZERO),
        "attempts": len({str(r["id"]) for r in rows}),
        "groups": groups,
    }
