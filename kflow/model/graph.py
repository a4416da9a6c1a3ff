"""The dependency graph of a validated definition, as the orchestrator reads it.

:class:`DefinitionGraph` is built once per definition (it is immutable and
cheap to keep in a cache) from the back-edge marks that validation put on
the definition. Edges run dependency → dependent; *forward* edges are the
ones not marked ``is_back_edge`` and always form a DAG. The module also
holds the index-based graph algorithms validation uses to find back-edges
and cycles; all are iterative, so a long chain cannot exhaust the stack.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Sequence

from kflow.model.definition import Dependency, WorkflowDefinition

#: out[s] = [(t, d), ...]: activity t's ``depends_on[d]`` names activity s.
Edges = Sequence[Sequence[tuple[int, int]]]


class DefinitionGraph:
    """Derived structure of one validated :class:`WorkflowDefinition`.

    Every method taking a key raises :class:`KeyError` for a key the
    definition does not have.
    """

    def __init__(self, definition: WorkflowDefinition) -> None:
        self.definition = definition
        self._keys = definition.keys
        self._index: dict[str, int] = {}
        for i, key in enumerate(self._keys):
            self._index.setdefault(key, i)
        n = len(self._keys)
        self._forward: list[tuple[Dependency, ...]] = []
        self._back: list[tuple[Dependency, ...]] = []
        dependents: list[set[int]] = [set() for _ in range(n)]
        self._succ: list[list[int]] = [[] for _ in range(n)]  # forward edges only
        self._pred: list[list[int]] = [[] for _ in range(n)]
        back_edges: list[tuple[str, str]] = []
        for t, act in enumerate(definition.activities):
            known = [d for d in act.depends_on if d.activity_key in self._index]
            self._forward.append(tuple(d for d in known if not d.is_back_edge))
            self._back.append(tuple(d for d in known if d.is_back_edge))
            for dep in known:
                s = self._index[dep.activity_key]
                dependents[s].add(t)
                if dep.is_back_edge:
                    back_edges.append((dep.activity_key, act.key))
                elif t not in self._succ[s]:
                    self._succ[s].append(t)
                    self._pred[t].append(s)
        self._dependents = [tuple(self._keys[t] for t in sorted(ts)) for ts in dependents]
        self._back_edges = tuple(back_edges)
        self._roots = tuple(self._keys[i] for i in range(n) if not self._forward[i])
        self._bodies: dict[tuple[str, str], frozenset[str]] = {}

    def _at(self, key: str) -> int:
        return self._index[key]

    def dependents(self, key: str) -> tuple[str, ...]:
        """Activities with an edge (forward or back) from ``key``, in declared order."""
        return self._dependents[self._at(key)]

    def forward_dependencies(self, key: str) -> tuple[Dependency, ...]:
        """``key``'s dependencies that are not back-edges."""
        return self._forward[self._at(key)]

    def back_dependencies(self, key: str) -> tuple[Dependency, ...]:
        """``key``'s back-edge dependencies (``key`` is the target of those loops)."""
        return self._back[self._at(key)]

    def roots(self) -> tuple[str, ...]:
        """Activities without forward dependencies (ready when a run starts)."""
        return self._roots

    def back_edges(self) -> tuple[tuple[str, str], ...]:
        """Every back-edge as ``(source, target)``; the target declares the dependency."""
        return self._back_edges

    def loop_body(self, target: str, source: str) -> frozenset[str]:
        """Activities on a forward path from ``target`` to ``source``, both included.

        For the back-edge ``source -> target`` this is what runs again on each
        iteration; for a self-loop it is ``{target}``. Empty if ``source`` is
        not reachable from ``target``.
        """
        cached = self._bodies.get((target, source))
        if cached is None:
            t, s = self._at(target), self._at(source)
            inside = _reach(self._succ, t) & _reach(self._pred, s)
            cached = frozenset(self._keys[i] for i in inside)
            self._bodies[target, source] = cached
        return cached

    def topological_order(self) -> tuple[str, ...]:
        """All activities ordered so each comes after its forward dependencies.

        Ties are broken by declared order.

        Raises:
            ValueError: forward edges form a cycle (the definition was not
                validated, so its back-edges are not marked).
        """
        indegree = [len(p) for p in self._pred]
        ready = [i for i, deg in enumerate(indegree) if deg == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            node = heapq.heappop(ready)
            order.append(node)
            for nxt in self._succ[node]:
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    heapq.heappush(ready, nxt)
        if len(order) != len(self._keys):
            raise ValueError("forward edges form a cycle: validate the definition first")
        return tuple(self._keys[i] for i in order)


def _reach(adjacent: Sequence[Sequence[int]], start: int) -> set[int]:
    seen = {start}
    queue = collections.deque([start])
    while queue:
        for nxt in adjacent[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def find_back_edges(out: Edges, order: Sequence[int]) -> set[tuple[int, int]]:
    """Back-edges ``(t, d)`` of a depth-first search started from ``order`` in turn.

    An edge into a node on the current search stack is a back-edge.
    """
    visited = [False] * len(out)
    on_stack = [False] * len(out)
    back: set[tuple[int, int]] = set()
    for start in order:
        if visited[start]:
            continue
        visited[start] = on_stack[start] = True
        stack = [(start, iter(out[start]))]
        while stack:
            node, edges = stack[-1]
            for t, d in edges:
                if on_stack[t]:
                    back.add((t, d))
                elif not visited[t]:
                    visited[t] = on_stack[t] = True
                    stack.append((t, iter(out[t])))
                    break
            else:
                on_stack[node] = False
                stack.pop()
    return back


def shortest_path(succ: Sequence[Sequence[int]], start: int, goal: int) -> list[int]:
    """Nodes of a shortest path ``start .. goal`` (``[start]`` when equal, ``[]`` if none)."""
    parent: dict[int, int] = {start: start}
    queue = collections.deque([start])
    while queue and goal not in parent:
        node = queue.popleft()
        for nxt in succ[node]:
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    if goal not in parent:
        return []
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


def nodes_on_cycles(succ: Sequence[Sequence[int]]) -> set[int]:
    """Nodes on some cycle: strongly connected components of size > 1, and self-loops.

    Tarjan's algorithm with an explicit stack.
    """
    n = len(succ)
    order, low, on_stack = [-1] * n, [0] * n, [False] * n
    stack: list[int] = []
    counter = 0
    result: set[int] = set()
    for root in range(n):
        if order[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            v, pos = work.pop()
            if pos == 0:
                order[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            for i in range(pos, len(succ[v])):
                w = succ[v][i]
                if order[w] == -1:
                    work.extend(((v, i + 1), (w, 0)))
                    break
                if on_stack[w]:
                    low[v] = min(low[v], order[w])
            else:
                if low[v] == order[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1 or v in succ[v]:
                        result.update(component)
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
    return result
