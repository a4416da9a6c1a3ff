"""The orchestrator's readiness rules: when an activity's turn has come.

PROTOCOL §4 ("Dependency semantics"): plain edges AND, mutually exclusive
conditional edges OR, skip cascades, and conditional edges as failure
handlers. A condition that cannot be evaluated fails its activity.
"""

from __future__ import annotations

import enum

import attrs

from kflow.errors import TemplateError
from kflow.model.definition import Dependency
from kflow.server.decide_base import DeciderBase, S
from kflow.server.state import ActivityState, ErrorInfo


class _Verdict(enum.Enum):
    WAIT = "wait"
    READY = "ready"
    SKIP = "skip"
    ERROR = "error"  # a condition could not be evaluated


class Readiness(DeciderBase):
    """The part of a decision that finds what can start, must be skipped or fails."""

    def settle(self) -> None:
        """Start, skip or fail every not-scheduled activity whose turn has come."""
        changed = True
        while changed and not self.status.is_terminal:
            changed = False
            for key in self.state.graph.topological_order():
                if self.acts[key].status != S.NOT_SCHEDULED:
                    continue
                verdict, reason = self.readiness(key)
                if verdict == _Verdict.READY:
                    self.schedule(key)
                    changed = True
                elif verdict == _Verdict.SKIP:
                    self.skip(key, reason)
                    changed = True
                elif verdict == _Verdict.ERROR:
                    self.fail_now(key, ErrorInfo(code="TEMPLATE_ERROR", message=reason))
                    self.loop_back(key)
                    changed = True

    def readiness(self, key: str) -> tuple[_Verdict, str]:
        forward = self.state.graph.forward_dependencies(key)
        if not forward:
            return _Verdict.READY, ""
        iteration = self._next_iteration(self.acts[key])
        applicable: list[tuple[Dependency, ActivityState]] = []
        for dep in forward:
            if not self.acts[dep.activity_key].status.is_terminal:
                return _Verdict.WAIT, ""
        for dep in forward:
            upstream = self.acts[dep.activity_key]
            if dep.conditions:
                try:
                    applies = self.edge_applies(dep, key, iteration, raise_errors=True)
                except TemplateError as exc:
                    return _Verdict.ERROR, f"condition on dependency {dep.activity_key!r}: {exc}"
                if not applies:
                    continue
                if upstream.status == S.FAILED and not upstream.failure_handled:
                    self.put(attrs.evolve(upstream, failure_handled=True))
            applicable.append((dep, upstream))
        if not applicable:
            return _Verdict.SKIP, "no dependency applies (all conditions false)"
        for dep, upstream in applicable:
            if not dep.conditions and upstream.status != S.COMPLETED:
                return _Verdict.SKIP, f"dependency {dep.activity_key!r} {upstream.status.value}"
        return _Verdict.READY, ""

    def edge_applies(
        self, dep: Dependency, key: str, iteration: int, *, raise_errors: bool = False
    ) -> bool:
        """Whether every condition of ``dep`` is truthy (True for plain edges)."""
        if not dep.conditions:
            return True
        context = self.context_for(key, iteration)
        try:
            return all(self.ctx.templates.evaluate_condition(c, context) for c in dep.conditions)
        except TemplateError as exc:
            if raise_errors:
                raise
            self.emit(
                "activity.condition_error", key, dependency=dep.activity_key, message=str(exc)
            )
            return False
