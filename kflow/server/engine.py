"""The engine: applies orchestrator decisions to the store, one transaction each.

Every state transition of a run — start, an activity's completion or failure,
a signal, a timer, a cancellation — is one unit of work: lock the workflow
row, load its state, ``decide``, write the commands and the events, commit.
Only after the commit are pollers woken, timers armed and event streams
notified (:class:`EngineHooks`), so nobody ever sees uncommitted work.

The machinery lives in :mod:`kflow.server.transitions` (transactions,
effects, hooks) and the operations on runs in :mod:`kflow.server.run_ops`;
:class:`Engine` is both, and this module is where callers import them from.
"""

from __future__ import annotations

import decimal

from kflow.server.run_ops import RunOps, StartedWorkflow
from kflow.server.state import ZERO
from kflow.server.transitions import Effects, EngineHooks, EngineSettings, NullHooks, Transition


class Engine(RunOps):
    """Transitions of runs, each in one store transaction."""


def money(value: decimal.Decimal | None) -> decimal.Decimal:
    """``value`` or zero."""
    return ZERO if value is None else value


__all__ = [
    "Effects",
    "Engine",
    "EngineHooks",
    "EngineSettings",
    "NullHooks",
    "StartedWorkflow",
    "Transition",
    "money",
]
