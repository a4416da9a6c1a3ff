"""Run budgets: what a run may still spend, net of what running attempts set aside.

A run's budget (``settings.budget.limit`` of its definition) is shared by
its activities. An attempt that is about to spend asks to *reserve* its
estimate (``POST /activities/{id}/budget/reserve``); the reservation is
granted only if it fits the limit minus what the run has spent minus what
its other running attempts have reserved, all read under the run's row
lock — so parallel branches cannot jointly overspend. A reservation lasts
while its attempt runs: when the attempt finishes, its real cost is added
to the run's total in the same transaction and the reservation no longer
counts. Claims hand each attempt the budget that remains at that moment
(``budget_remaining_usd``).
"""

from __future__ import annotations

import decimal
import uuid

from kflow.model.definition import BudgetSettings
from kflow.server.definitions import DefinitionCache
from kflow.store.base import Row, Tx
from kflow.store.codec import load_money

ZERO = decimal.Decimal(0)


def run_budget(tx: Tx, cache: DefinitionCache, run: Row) -> BudgetSettings | None:
    """The budget of the definition version ``run`` was started from, if any."""
    loaded = cache.load(tx, run["definition_name"], run["definition_version"])
    return loaded.definition.settings.budget


def available(
    tx: Tx, run: Row, limit: decimal.Decimal, *, besides: uuid.UUID | str | None = None
) -> decimal.Decimal:
    """``limit`` minus the run's spend minus the reservations of its running
    attempts (other than ``besides``). Read it under the run's row lock."""
    reserved = ZERO
    skip = str(besides) if besides is not None else None
    for row in tx.all("run_reservations", workflow_id=str(run["id"])):
        if str(row["attempt_id"]) != skip:
            reserved += load_money(row["reserved_usd"])
    return limit - load_money(run["total_cost_usd"]) - reserved
