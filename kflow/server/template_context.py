"""The names a template sees when the orchestrator resolves an activity.

``INPUT``, ``SECRET`` (names only; values are substituted at dispatch),
``WORKFLOW``, ``ACTIVITY``, ``SIGNAL`` and one entry per activity key holding
its outputs plus ``status`` and ``iteration`` (PROTOCOL §4, Templates).
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from typing import Any

from kflow.server.state import ActivityState, WorkflowState
from kflow.templates import SecretNamespace


def activity_view(act: ActivityState) -> dict[str, Any]:
    """What ``{{ <key>... }}`` resolves to: outputs, then engine fields on top."""
    view: dict[str, Any] = dict(act.outputs or {})
    view["status"] = act.status.value
    view["iteration"] = act.iteration
    if act.error is not None:
        view["error"] = act.error.as_dict()
    return view


def build_context(
    state: WorkflowState,
    activities: Mapping[str, ActivityState],
    *,
    key: str,
    iteration: int,
    secrets: SecretNamespace,
    total_cost: decimal.Decimal,
    signal_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Template context for resolving activity ``key`` at ``iteration``."""
    budget = state.definition.settings.budget
    remaining = None if budget is None else budget.limit - total_cost
    context: dict[str, Any] = {k: activity_view(a) for k, a in activities.items()}
    context.update(
        INPUT=state.input,
        SECRET=secrets,
        WORKFLOW={"id": str(state.id), "status": state.status.value, "name": state.definition.name},
        ACTIVITY={
            "key": key,
            "iteration": iteration,
            "accumulated_cost_usd": total_cost,
            "remaining_budget_usd": remaining,
        },
        SIGNAL=dict(signal_data or {}),
    )
    return context
