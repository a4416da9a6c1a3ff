"""The scenarios of BENCHMARKS.md and their workflow definitions.

Every activity is an ``echo``: kflow's ``std`` ``echo`` for kflow's workers,
or the py-std ``script`` ``OUTPUT = INPUT`` for the reference SDK's worker
(its published benchmark does the same). The Celery versions of the shapes
are in :mod:`bench.celery_app`.
"""

from __future__ import annotations

from typing import Any

import attrs

PY_ECHO = "OUTPUT = INPUT"


@attrs.frozen
class Scenario:
    key: str  # seq5 | par10 | hc3
    title: str
    workflows: int
    submitters: int

    @property
    def activities_per_workflow(self) -> int:
        return {"seq5": 5, "par10": 12, "hc3": 3}[self.key]


def scenarios(quick: bool) -> list[Scenario]:
    """The three scenarios; quick mode scales the counts down (same shapes and submitters)."""
    if quick:
        return [
            Scenario("seq5", "Sequential-5", 40, 10),
            Scenario("par10", "Parallel-10", 20, 10),
            Scenario("hc3", "High-Concurrency-3", 100, 100),
        ]
    return [
        Scenario("seq5", "Sequential-5", 100, 10),
        Scenario("par10", "Parallel-10", 50, 10),
        Scenario("hc3", "High-Concurrency-3", 300, 100),
    ]


def _activity(key: str, worker: str, deps: list[str]) -> dict[str, Any]:
    if worker == "std":
        act: dict[str, Any] = {
            "key": key,
            "worker": "std",
            "activity_name": "echo",
            "parameters": {"step": key},
        }
    else:
        act = {
            "key": key,
            "worker": worker,
            "activity_name": "script",
            "parameters": {"script": PY_ECHO, "inputs": {"step": key}},
        }
    if deps:
        act["depends_on"] = deps
    return act


def definition(shape: str, worker: str = "std", name: str | None = None) -> dict[str, Any]:
    """The definition of ``shape`` (seq5, par10, hc3, one, wide100) for ``worker``."""
    acts: list[dict[str, Any]]
    if shape in ("seq5", "hc3"):
        keys = ["a", "b", "c", "d", "e"][: 5 if shape == "seq5" else 3]
        acts = [_activity(k, worker, [keys[i - 1]] if i else []) for i, k in enumerate(keys)]
    elif shape == "par10":
        middle = [f"p{i}" for i in range(10)]
        acts = [
            _activity("start", worker, []),
            *(_activity(k, worker, ["start"]) for k in middle),
            _activity("end", worker, middle),
        ]
    elif shape == "one":
        acts = [_activity("a", worker, [])]
    elif shape == "wide100":
        acts = [_activity(f"n{i}", worker, []) for i in range(100)]
    else:
        raise ValueError(shape)
    suffix = "" if worker == "std" else "_" + worker.replace("-", "_")
    return {"name": name or f"bench_{shape}{suffix}", "activities": acts}


def definition_name(shape: str, worker: str = "std") -> str:
    return str(definition(shape, worker)["name"])


def activity_keys(shape: str) -> list[str]:
    return [a["key"] for a in definition(shape)["activities"]]
