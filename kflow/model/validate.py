"""The rules a workflow definition must keep (PROTOCOL §4 "Validation at deploy").

Identifiers, unique keys not shadowing template names, every reference
known, ``delay`` xor ``scheduled_for`` (and each parses unless it is a
template), every template parses, and every cycle is a loop with an exit.
Validation also computes what the orchestrator needs about loops: it marks
back-edges (``Dependency.is_back_edge``) and activities on a cycle
(``ActivityDefinition.is_loop_activity``).

Back-edges are found by a depth-first search over the edges
dependency → dependent that starts from the roots (activities without
dependencies) and then from the remaining activities, all in declared order;
an edge into an activity on the current search stack is a back-edge (so a
self-dependency is one). A cycle is allowed when its back-edge has a
condition or the loop target (the activity declaring the back-edge) has an
explicit ``iteration_limit``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from kflow._serde import parse_datetime
from kflow.errors import DefinitionError
from kflow.model.definition import (
    IDENTIFIER_PATTERN,
    RESERVED_NAMES,
    ActivityDefinition,
    WorkflowDefinition,
)
from kflow.model.durations import parse_duration
from kflow.model.graph import find_back_edges, nodes_on_cycles, shortest_path
from kflow.templates import TemplateEngine, has_template

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_SIGNAL_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_IDENTIFIER_HELP = "may contain only letters, digits, '_' and '-'"
_TEMPLATES = TemplateEngine()

Errors = dict[str, list[str]]


@attrs.frozen(kw_only=True)
class SourceMap:
    """Where the parts of a built definition were written, for error paths.

    Without one, paths follow the model (``activities[1].depends_on[0]``).
    The loader passes one because merging ``dependency_of`` and duplicate
    edges moves dependencies away from their declared position.
    ``explicit_iteration_limits`` holds the indices of activities whose
    ``iteration_limit`` was written out; ``None`` means "read it from the
    model" (``iteration_limit is not None``).
    """

    dependency_paths: Mapping[tuple[int, int], str] = attrs.field(factory=dict)
    condition_paths: Mapping[tuple[int, int, int], str] = attrs.field(factory=dict)
    explicit_iteration_limits: frozenset[int] | None = None

    def dependency_path(self, index: int, dep: int) -> str:
        return self.dependency_paths.get((index, dep), f"activities[{index}].depends_on[{dep}]")

    def condition_path(self, index: int, dep: int, cond: int) -> str:
        default = f"{self.dependency_path(index, dep)}.conditions[{cond}]"
        return self.condition_paths.get((index, dep, cond), default)

    def has_explicit_limit(self, index: int, activity: ActivityDefinition) -> bool:
        if self.explicit_iteration_limits is None:
            return activity.iteration_limit is not None
        return index in self.explicit_iteration_limits


def unknown_activity(key: str) -> str:
    """The message for a reference to an activity key that does not exist."""
    return f"unknown activity {key!r}"


def validate_definition(
    defn: WorkflowDefinition, *, source_map: SourceMap | None = None
) -> WorkflowDefinition:
    """Check every rule; return ``defn`` with back-edges and loop activities marked.

    Raises:
        DefinitionError: one or more rules are broken; ``field_errors`` holds
            every problem found, by path.
    """
    marked, errors = check_definition(defn, source_map=source_map)
    if errors:
        raise definition_error(errors)
    return marked


def check_definition(
    defn: WorkflowDefinition, *, source_map: SourceMap | None = None
) -> tuple[WorkflowDefinition, Errors]:
    """Like :func:`validate_definition` but returns the problems instead of raising."""
    smap = source_map or SourceMap()
    errors: Errors = {}
    _check_names(defn, errors)
    for index, act in enumerate(defn.activities):
        _check_activity(index, act, smap, errors)
    return _mark_loops(defn, smap, errors), errors


def definition_error(errors: Mapping[str, Sequence[str]]) -> DefinitionError:
    """One :class:`DefinitionError` summarizing ``errors``."""
    count = sum(len(v) for v in errors.values())
    first = next(iter(errors.items()), ("definition", ["invalid"]))
    summary = f"{first[0]}: {first[1][0]}"
    more = f" (and {count - 1} more)" if count > 1 else ""
    return DefinitionError(f"invalid workflow definition: {summary}{more}", errors)


def _add(errors: Errors, path: str, message: str) -> None:
    errors.setdefault(path, []).append(message)


def _check_identifier(value: str, path: str, errors: Errors) -> None:
    if not _IDENTIFIER.fullmatch(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        _add(errors, path, f"{_IDENTIFIER_HELP}, got {shown!r}")


def _check_names(defn: WorkflowDefinition, errors: Errors) -> None:
    _check_identifier(defn.name, "name", errors)
    if not defn.activities:
        _add(errors, "activities", "must contain at least one activity")
    first_use: dict[str, int] = {}
    for index, act in enumerate(defn.activities):
        path = f"activities[{index}].key"
        _check_identifier(act.key, path, errors)
        if act.key in RESERVED_NAMES:
            reserved = ", ".join(sorted(RESERVED_NAMES))
            _add(errors, path, f"{act.key!r} is reserved for templates ({reserved})")
        if act.key in first_use:
            _add(
                errors,
                path,
                f"duplicate key {act.key!r} (already used by activities[{first_use[act.key]}])",
            )
        first_use.setdefault(act.key, index)


def _check_activity(index: int, act: ActivityDefinition, smap: SourceMap, errors: Errors) -> None:
    path = f"activities[{index}]"
    _check_identifier(act.activity_name, f"{path}.activity_name", errors)
    _check_identifier(act.worker, f"{path}.worker", errors)
    seen: set[str] = set()
    for o, output in enumerate(act.outputs):
        _check_identifier(output.name, f"{path}.outputs[{o}].name", errors)
        if output.name in seen:
            _add(errors, f"{path}.outputs[{o}].name", f"duplicate output {output.name!r}")
        seen.add(output.name)
    _check_templates(act.parameters, f"{path}.parameters", errors)
    settings = act.settings
    spath = f"{path}.settings"
    if settings.delay is not None and settings.scheduled_for is not None:
        _add(errors, spath, "set either delay or scheduled_for, not both")
    if settings.delay is not None:
        if has_template(settings.delay):
            _check_templates(settings.delay, f"{spath}.delay", errors)
        else:
            try:
                parse_duration(settings.delay)
            except ValueError as exc:
                _add(errors, f"{spath}.delay", str(exc))
    if settings.scheduled_for is not None:
        if has_template(settings.scheduled_for):
            _check_templates(settings.scheduled_for, f"{spath}.scheduled_for", errors)
        else:
            try:
                parse_datetime(settings.scheduled_for)
            except ValueError:
                _add(
                    errors,
                    f"{spath}.scheduled_for",
                    "expected an RFC 3339 timestamp (2030-01-31T09:00:00Z) or a template",
                )
    if settings.cache.key is not None:
        _check_templates(settings.cache.key, f"{spath}.cache.key", errors)
    signal = settings.wait_for_signal
    if signal is not None and not _SIGNAL_NAME.fullmatch(signal.event_name):
        _add(
            errors,
            f"{spath}.wait_for_signal.event_name",
            "must be non-empty and contain only letters, digits, '_', '-', '.' and ':'",
        )
    for d, dep in enumerate(act.depends_on):
        for c, condition in enumerate(dep.conditions):
            _check_templates(condition, smap.condition_path(index, d, c), errors, condition=True)


def _check_templates(value: Any, path: str, errors: Errors, *, condition: bool = False) -> None:
    try:
        if condition:
            found = _TEMPLATES.check_condition(value, path=path)
        else:
            found = _TEMPLATES.check(value, path=path)
    except Exception as exc:  # Jinja on pathological text (nested too deep, huge numbers)
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_templates(item, f"{path}.{key}", errors)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                _check_templates(item, f"{path}[{i}]", errors)
        else:
            _add(errors, path, f"template cannot be parsed ({type(exc).__name__})")
        return
    for where, messages in found.items():
        for message in messages:
            _add(errors, where, message)


def _mark_loops(defn: WorkflowDefinition, smap: SourceMap, errors: Errors) -> WorkflowDefinition:
    acts = defn.activities
    index: dict[str, int] = {}
    for i, act in enumerate(acts):
        index.setdefault(act.key, i)
    # out[s] = [(t, d)]: activity t's depends_on[d] names s; in declared order of t.
    out: list[list[tuple[int, int]]] = [[] for _ in acts]
    for t, act in enumerate(acts):
        for d, dep in enumerate(act.depends_on):
            s = index.get(dep.activity_key)
            if s is None:
                _add(errors, smap.dependency_path(t, d), unknown_activity(dep.activity_key))
            else:
                out[s].append((t, d))
    roots = [i for i, act in enumerate(acts) if not act.depends_on]
    back = find_back_edges(out, roots + [i for i, act in enumerate(acts) if act.depends_on])
    forward = [[t for t, d in edges if (t, d) not in back] for edges in out]
    for t, d in sorted(back):
        dep = acts[t].depends_on[d]
        if dep.conditions or smap.has_explicit_limit(t, acts[t]):
            continue
        cycle = [*shortest_path(forward, t, index[dep.activity_key]), t]
        names = " -> ".join(acts[i].key for i in cycle)
        _add(
            errors,
            smap.dependency_path(t, d),
            f"cycle {names} has no exit (add a condition to the back-edge or an iteration_limit)",
        )
    on_cycle = nodes_on_cycles([[t for t, _ in edges] for edges in out])
    activities = tuple(
        attrs.evolve(
            act,
            depends_on=tuple(
                attrs.evolve(dep, is_back_edge=(t, d) in back)
                for d, dep in enumerate(act.depends_on)
            ),
            is_loop_activity=t in on_cycle,
        )
        for t, act in enumerate(acts)
    )
    return attrs.evolve(defn, activities=activities)
