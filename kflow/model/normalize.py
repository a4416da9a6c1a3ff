"""The normalized form of a definition and its content hash (PROTOCOL §4).

:func:`normalized_dict` is what ``GET /api/v1/workflow_definitions/{name}``
returns: every field present with its default filled in (``null`` where
there is none), dependencies as ``{activity_key, conditions}`` objects,
outputs as ``{name, type}``, money as decimal strings, keys in a fixed
order. Loading it again gives an equal definition.

:func:`content_hash` identifies a definition's content: texts that differ
only in formatting, YAML vs JSON, ``dependency_of`` vs the equivalent
``depends_on``, or defaults written out vs omitted hash the same.
"""

from __future__ import annotations

import copy
import decimal
import hashlib
from typing import Any

import orjson

from kflow._serde import format_decimal
from kflow.model.definition import (
    ActivityDefinition,
    ActivitySettings,
    BudgetSettings,
    WorkflowDefinition,
)


def normalized_dict(defn: WorkflowDefinition) -> dict[str, Any]:
    """The canonical JSON-ready form of ``defn`` (plain dicts, lists, strings, numbers).

    Derived marks (``is_back_edge``, ``is_loop_activity``) are left out: they
    are recomputed whenever the form is loaded.
    """
    return {
        "name": defn.name,
        "description": defn.description,
        "settings": {
            "timeout": defn.settings.timeout_seconds,
            "budget": _budget(defn.settings.budget),
        },
        "activities": [_activity(act) for act in defn.activities],
    }


def content_hash(defn: WorkflowDefinition) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`normalized_dict` (sorted keys, compact).

    Money is hashed by value, so ``1.0`` and ``"1.00"`` give the same hash.

    Raises:
        TypeError: a parameter holds a value JSON cannot carry (impossible
            for a definition built by :func:`~kflow.model.loader.load_definition`).
    """
    canonical = _canonical_money(normalized_dict(defn), defn)
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _activity(act: ActivityDefinition) -> dict[str, Any]:
    return {
        "key": act.key,
        "worker": act.worker,
        "activity_name": act.activity_name,
        "parameters": copy.deepcopy(dict(act.parameters)),
        "outputs": [{"name": o.name, "type": o.type.value} for o in act.outputs],
        "depends_on": [
            {"activity_key": d.activity_key, "conditions": list(d.conditions)}
            for d in act.depends_on
        ],
        "settings": settings_dict(act.settings),
        "iteration_scoped": act.iteration_scoped,
        "iteration_limit": act.iteration_limit,
    }


def settings_dict(settings: ActivitySettings) -> dict[str, Any]:
    """The canonical JSON form of activity settings (defaults filled in)."""
    retry, cache, signal = settings.retry, settings.cache, settings.wait_for_signal
    return {
        "timeout_seconds": settings.timeout_seconds,
        "retry": {
            "max_attempts": retry.max_attempts,
            "strategy": retry.strategy,
            "base_seconds": retry.base_seconds,
            "factor": retry.factor,
            "max_seconds": retry.max_seconds,
        },
        "budget": _budget(settings.budget),
        "cache": {"enabled": cache.enabled, "ttl": cache.ttl_seconds, "key": cache.key},
        "delay": settings.delay,
        "scheduled_for": settings.scheduled_for,
        "wait_for_signal": None
        if signal is None
        else {
            "event_name": signal.event_name,
            "timeout_seconds": signal.timeout_seconds,
            "on_timeout": signal.on_timeout,
        },
    }


def _budget(budget: BudgetSettings | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    return {"limit": format_decimal(budget.limit), "action": budget.action}


def _money(value: decimal.Decimal) -> str:
    """A decimal by value: no exponent, no trailing zeros (``"1.50"`` → ``"1.5"``)."""
    return format_decimal(value.normalize())


def _canonical_money(form: dict[str, Any], defn: WorkflowDefinition) -> dict[str, Any]:
    budgets = [(form["settings"], defn.settings.budget)]
    budgets += [
        (act_form["settings"], act.settings.budget)
        for act_form, act in zip(form["activities"], defn.activities, strict=True)
    ]
    for settings_form, budget in budgets:
        if budget is not None:
            settings_form["budget"]["limit"] = _money(budget.limit)
    return form
