"""The orchestrator's loops: back-edges that run a loop body again.

When an activity becomes terminal, a back-edge from it whose conditions hold
re-runs its target and the loop body between them (bounded by the target's
``max_iterations``); completed activities of a later iteration re-arm their
forward dependents so they run again on the new data.
"""

from __future__ import annotations

import attrs

from kflow.server.decide_base import DeciderBase, S


class Loops(DeciderBase):
    """The part of a decision that loops."""

    def after_terminal(self, key: str) -> None:
        self.loop_back(key)
        if self.acts[key].status == S.COMPLETED and self.acts[key].iteration > 0:
            self.rearm_dependents(key)
        self.settle()

    def loop_back(self, source: str) -> None:
        src = self.acts[source]
        for target in self.state.graph.dependents(source):
            for dep in self.definition(target).depends_on:
                if dep.activity_key != source or not dep.is_back_edge:
                    continue
                tgt = self.acts[target]
                if target != source and tgt.status != S.COMPLETED:
                    continue
                applies = self.edge_applies(dep, target, tgt.iteration)
                if dep.conditions and applies and src.status == S.FAILED:
                    self.put(attrs.evolve(self.acts[source], failure_handled=True))
                if not applies or (not dep.conditions and src.status != S.COMPLETED):
                    continue
                limit = self.definition(target).max_iterations
                if tgt.iteration + 1 >= limit:
                    self.emit("activity.loop_limit_reached", target, limit=limit, source=source)
                    continue
                self.run_loop(target, source)
                break

    def run_loop(self, target: str, source: str) -> None:
        body = self.state.graph.loop_body(target, source)
        for member in (k for k in self.state.definition.keys if k in body):
            act = self.acts[member]
            if member != target and act.status.is_terminal:
                self.put(attrs.evolve(act, status=S.NOT_SCHEDULED), release_lease=True)
        self.put(attrs.evolve(self.acts[target], status=S.NOT_SCHEDULED), release_lease=True)
        self.emit("activity.loop", target, iteration=self.acts[target].iteration + 1, source=source)
        self.schedule(target)

    def rearm_dependents(self, key: str) -> None:
        """New data from a loop: finished forward dependents may run again."""
        for dependent in self.state.graph.dependents(key):
            edges = [
                d
                for d in self.definition(dependent).depends_on
                if d.activity_key == key and not d.is_back_edge
            ]
            act = self.acts[dependent]
            if edges and act.status.is_terminal and dependent != key:
                self.put(attrs.evolve(act, status=S.NOT_SCHEDULED), release_lease=True)
