"""Loading a workflow definition from YAML/JSON text or a mapping (PROTOCOL §4).

:func:`load_definition` parses text as YAML (JSON is YAML), reads every field
with its type checked and its default filled, translates the ``kruxiaflow``
SDK's spellings, folds ``dependency_of`` into ``depends_on``, and then
validates the result (:mod:`kflow.model.validate`). Every problem found in
that one pass is reported together in a single
:class:`~kflow.errors.DefinitionError` whose ``field_errors`` are keyed by
path (``activities[2].settings.retry.max_attempts``); YAML syntax errors are
reported under ``definition`` with their line and column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
import yaml

from kflow._types import OutputType
from kflow.model import _readers as r
from kflow.model._settings import read_activity_settings, read_workflow_settings
from kflow.model.definition import (
    ActivityDefinition,
    Dependency,
    OutputDefinition,
    WorkflowDefinition,
)
from kflow.model.validate import SourceMap, check_definition, definition_error, unknown_activity
from kflow.templates import normalize_sdk_expression

_OUTPUT_TYPES = {t.value: t.value for t in OutputType}


def load_definition(source: str | bytes | Mapping[str, Any]) -> WorkflowDefinition:
    """A validated definition from YAML or JSON text, or from an already parsed mapping.

    Raises:
        DefinitionError: the text is not YAML, its top level is not a mapping,
            or the definition breaks any rule; ``field_errors`` lists every
            problem by path.
    """
    if isinstance(source, Mapping):
        return definition_from_dict(source)
    data = parse_text(source)
    if not isinstance(data, Mapping):
        raise definition_error(
            {
                "definition": [
                    f"expected an object (mapping) at the top level, got {r.describe(data)}"
                ]
            }
        )
    return definition_from_dict(data)


class _DuplicateKey(ValueError):
    """A JSON object names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


# PyYAML ships no type hints here, so its SafeLoader base is ``Any``.
class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` that refuses a mapping naming the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def parse_text(source: str | bytes) -> Any:
    """Parse YAML (or JSON) text.

    Text that is valid JSON is read as JSON exactly (PyYAML alone would read
    ``1e-7`` as a string and split escaped surrogate pairs); anything else is
    read as YAML 1.1 with PyYAML's safe loader (as the ``kruxiaflow`` SDK writes
    it). A key repeated in one mapping is an error in both, never "last wins".

    Raises:
        DefinitionError: the text cannot be parsed (under ``definition``,
            with line and column when YAML reports them).
    """
    try:
        return json.loads(source, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        message = f"invalid JSON: duplicate key {exc.args[0]!r}"
        raise definition_error({"definition": [message]}) from None
    except (ValueError, TypeError, RecursionError):
        pass  # not JSON (or too deep for it): read it as YAML
    try:
        return yaml.load(source, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        message = f"invalid YAML{where}: {what or 'syntax error'}"
    except yaml.YAMLError as exc:  # ReaderError: bad encoding or control characters
        message = "invalid YAML: " + " ".join(str(exc).split())
    except RecursionError:
        message = "invalid YAML: nested too deeply"
    except Exception as exc:  # PyYAML raises ValueError etc. for odd scalars
        message = f"invalid YAML: {type(exc).__name__}: {exc}"
    raise definition_error({"definition": [message]})


def definition_from_dict(data: Mapping[str, Any]) -> WorkflowDefinition:
    """A validated definition from a parsed mapping (see :func:`load_definition`).

    Raises:
        DefinitionError: ``data`` is not a mapping or breaks any rule.
    """
    if not isinstance(data, Mapping):
        raise definition_error(
            {"definition": [f"expected an object (mapping), got {r.describe(data)}"]}
        )
    problems = r.Problems()
    draft, source_map = _Builder(problems).build(data)
    checked, found = check_definition(draft, source_map=source_map)
    # A rule broken by a value the loader already rejected says nothing new.
    errors = dict(problems.errors)
    for path, messages in found.items():
        if not problems.covers(path):
            errors.setdefault(path, []).extend(messages)
    if errors:
        raise definition_error(errors)
    return checked


@attrs.define
class _Edge:
    """A dependency being assembled: conditions and where each part was written."""

    path: str
    conditions: list[str] = attrs.field(factory=list)
    condition_paths: list[str] = attrs.field(factory=list)

    def add(self, conditions: list[tuple[str, str]]) -> None:
        for text, path in conditions:
            if text not in self.conditions:
                self.conditions.append(text)
                self.condition_paths.append(path)


class _Builder:
    def __init__(self, problems: r.Problems) -> None:
        self.problems = problems
        # per activity: source key -> edge, in insertion order
        self.edges: list[dict[str, _Edge]] = []
        self.reverse: list[list[tuple[str, list[tuple[str, str]], str]]] = []
        self.placeholders: set[int] = set()

    def build(self, data: Mapping[str, Any]) -> tuple[WorkflowDefinition, SourceMap]:
        p = self.problems
        name = r.require(r.read_str(data, "name", "", p), "name", p)
        description = r.read_str(data, "description", "", p)
        settings = read_workflow_settings(data, p)
        items = r.require(r.field(data, "activities"), "activities", p)
        entries = r.as_list(items, "activities", p) if items is not r.BAD else None
        explicit: set[int] = set()
        activities = [self._activity(i, raw, explicit) for i, raw in enumerate(entries or ())]
        activities = self._attach_edges(activities)
        dep_paths: dict[tuple[int, int], str] = {}
        cond_paths: dict[tuple[int, int, int], str] = {}
        for i, act in enumerate(activities):
            for d, dep in enumerate(act.depends_on):
                edge = self.edges[i][dep.activity_key]
                dep_paths[i, d] = edge.path
                for c, cpath in enumerate(edge.condition_paths):
                    cond_paths[i, d, c] = cpath
        definition = WorkflowDefinition(
            name=name if isinstance(name, str) else "",
            description=description if isinstance(description, str) else None,
            settings=settings,
            activities=tuple(activities),
        )
        smap = SourceMap(
            dependency_paths=dep_paths,
            condition_paths=cond_paths,
            explicit_iteration_limits=frozenset(explicit),
        )
        return definition, smap

    def _activity(self, i: int, raw: Any, explicit: set[int]) -> ActivityDefinition:
        p, path = self.problems, f"activities[{i}]"
        self.edges.append({})
        self.reverse.append([])
        placeholder = f"#{i}"  # never a valid key, so nothing can refer to it
        self.placeholders.add(i)
        if not isinstance(raw, Mapping):
            p.add(path, f"expected an object, got {r.describe(raw)}")
            return ActivityDefinition(key=placeholder, activity_name="")
        key = r.require(r.read_str(raw, "key", path, p), f"{path}.key", p)
        if isinstance(key, str):
            self.placeholders.discard(i)
        name = r.require(r.read_str(raw, "activity_name", path, p), f"{path}.activity_name", p)
        worker = r.read_str(raw, "worker", path, p)
        params = r.read_mapping(raw, "parameters", path, p)
        settings, loop = read_activity_settings(raw, path, p)
        scoped = r.read_bool(raw, "iteration_scoped", path, p)
        limit = r.read_int(raw, "iteration_limit", path, p, minimum=1)
        if not isinstance(scoped, bool):
            scoped = loop.iteration_scoped
        if not isinstance(limit, int):
            limit = loop.iteration_limit
        if isinstance(limit, int):
            explicit.add(i)
        for entry in self._dependency_entries(raw, "depends_on", path):
            self._edge(i, entry)
        self.reverse[i] = self._dependency_entries(raw, "dependency_of", path)
        return ActivityDefinition(
            key=key if isinstance(key, str) else placeholder,
            activity_name=name if isinstance(name, str) else "",
            worker=worker if isinstance(worker, str) else "std",
            parameters=r.json_value(params, f"{path}.parameters", p)
            if isinstance(params, Mapping)
            else {},
            outputs=self._outputs(raw, path),
            settings=settings,
            iteration_scoped=scoped if isinstance(scoped, bool) else False,
            iteration_limit=limit if isinstance(limit, int) else None,
        )

    def _outputs(self, raw: Mapping[str, Any], path: str) -> tuple[OutputDefinition, ...]:
        value = r.field(raw, "outputs")
        if value is r.MISSING:
            return ()
        items = r.as_list(value, f"{path}.outputs", self.problems) or ()
        outputs = []
        for o, item in enumerate(items):
            opath = f"{path}.outputs[{o}]"
            if isinstance(item, str):
                outputs.append(OutputDefinition(name=item))
            elif isinstance(item, Mapping):
                name = r.require(
                    r.read_str(item, "name", opath, self.problems), f"{opath}.name", self.problems
                )
                spelling = "type" if r.field(item, "type") is not r.MISSING else "output_type"
                kind = r.read_choice(item, spelling, opath, self.problems, _OUTPUT_TYPES)
                outputs.append(
                    OutputDefinition(
                        name=name if isinstance(name, str) else "",
                        type=OutputType(kind) if isinstance(kind, str) else OutputType.VALUE,
                    )
                )
            else:
                self.problems.add(opath, f"expected a name or an object, got {r.describe(item)}")
        return tuple(outputs)

    def _dependency_entries(
        self, raw: Mapping[str, Any], name: str, path: str
    ) -> list[tuple[str, list[tuple[str, str]], str]]:
        """``(activity_key, [(condition, path)], path)`` for each well-formed entry."""
        value = r.field(raw, name)
        if value is r.MISSING:
            return []
        items = r.as_list(value, f"{path}.{name}", self.problems) or ()
        found: list[tuple[str, list[tuple[str, str]], str]] = []
        for d, item in enumerate(items):
            dpath = f"{path}.{name}[{d}]"
            if isinstance(item, str):
                found.append((item, [], dpath))
            elif isinstance(item, Mapping):
                key = r.require(
                    r.read_str(item, "activity_key", dpath, self.problems),
                    f"{dpath}.activity_key",
                    self.problems,
                )
                conditions = self._conditions(item, dpath)
                if isinstance(key, str):
                    found.append((key, conditions, dpath))
            else:
                self.problems.add(
                    dpath, f"expected an activity key or an object, got {r.describe(item)}"
                )
        return found

    def _conditions(self, item: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
        value = r.field(item, "conditions")
        cpath = f"{path}.conditions"
        if value is r.MISSING:
            return []
        texts: list[tuple[Any, str]]
        if isinstance(value, str):
            texts = [(value, cpath)]
        else:
            texts = [
                (text, f"{cpath}[{c}]")
                for c, text in enumerate(r.as_list(value, cpath, self.problems) or ())
            ]
        result = []
        for text, where in texts:
            clean = r.clean_text(text) if isinstance(text, str) else None
            if not isinstance(text, str):
                self.problems.add(where, f"expected a condition string, got {r.describe(text)}")
            elif clean is None:
                self.problems.add(where, "contains characters that are not valid Unicode")
            else:
                result.append((normalize_sdk_expression(clean), where))
        return result

    def _edge(self, target: int, entry: tuple[str, list[tuple[str, str]], str]) -> None:
        source, conditions, path = entry
        edge = self.edges[target].setdefault(source, _Edge(path))
        edge.add(conditions)

    def _attach_edges(self, activities: list[ActivityDefinition]) -> list[ActivityDefinition]:
        index: dict[str, int] = {}
        for i, act in enumerate(activities):
            index.setdefault(act.key, i)
        for i, entries in enumerate(self.reverse):
            for target, conditions, path in entries:
                if target not in index:
                    self.problems.add(path, unknown_activity(target))
                elif i not in self.placeholders:
                    self._edge(index[target], (activities[i].key, conditions, path))
        unknown = len(activities)  # unknown keys sort last, in declared order
        return [
            attrs.evolve(
                act,
                depends_on=tuple(
                    Dependency(activity_key=key, conditions=tuple(edge.conditions))
                    for key, edge in sorted(
                        self.edges[i].items(), key=lambda item: index.get(item[0], unknown)
                    )
                ),
            )
            for i, act in enumerate(activities)
        ]
