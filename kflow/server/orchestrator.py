"""The orchestrator: pure decisions about one workflow run.

``decide(state, event, ctx)`` reads a :class:`~kflow.server.state.WorkflowState`
and one event and returns the commands that bring the run forward: which
activities become ready (their templates resolved), wait, retry, are skipped
or loop; whether the run is finished. It performs no I/O and never blocks;
the engine applies the commands in the transaction that loaded the state.

Readiness follows PROTOCOL §4 ("Dependency semantics"): plain edges AND,
mutually exclusive conditional edges OR, skip cascades, conditional edges as
failure handlers, and loops through back-edges bounded by ``iteration_limit``.

A decision is made by :class:`_Decider`, composed of one part per concern:
the working state and its primitives (``decide_base``), event handling
(``decide_events``), readiness (``decide_readiness``), scheduling
(``decide_scheduling``) and loops (``decide_loops``).
"""

from __future__ import annotations

from kflow.server.decide_base import INTERRUPTED, MAX_PARAMETERS_BYTES, DecideContext
from kflow.server.decide_events import EventHandling
from kflow.server.decide_loops import Loops
from kflow.server.decide_readiness import Readiness
from kflow.server.decide_scheduling import Scheduling
from kflow.server.state import Command, Event, WorkflowState


def decide(state: WorkflowState, event: Event, ctx: DecideContext) -> list[Command]:
    """Commands that apply ``event`` to the run described by ``state``.

    Never raises for workflow-level problems: a template that fails to
    render fails its activity with ``TEMPLATE_ERROR`` instead.
    """
    decider = _Decider(state, ctx)
    decider.handle(event)
    return decider.commands()


class _Decider(EventHandling, Readiness, Scheduling, Loops):
    """One decision in progress: a private, mutable copy of the activity states."""


__all__ = ["INTERRUPTED", "MAX_PARAMETERS_BYTES", "DecideContext", "decide"]
