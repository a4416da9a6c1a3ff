"""Interleaved A/B comparison of kflow source trees on one configuration.

``python -m bench.ab --tree A=/path/to/old --tree B=. --config postgres+workers
--scenario hc3 --reps 8`` starts one stack per tree (server and workers run
with that tree first on ``PYTHONPATH``), all at once, then runs the scenario
on each in turn, alternating the order every repetition, so that every tree
meets the same phases of a noisy machine. It prints each run and, per tree,
the median throughput and the median CPU per activity of the server, the
database and the workers. Correctness is checked as in ``make bench``: every
run must complete and every activity execute exactly once.

Make the old tree with ``git worktree add /tmp/old <commit>``. On a shared
2-core machine a full ``make bench`` moves by 20 to 30 % from run to run;
this is how bench/README.md's A/B figures were measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import tempfile
from typing import Any

import trio

from bench import kflow_side
from bench.procs import BenchError
from bench.shapes import Scenario

#: The scenarios' shapes with the bench's submitters; counts default larger
#: than the full run's so that each run lasts a few seconds.
SHAPES = {"seq5": (200, 10), "par10": (100, 10), "hc3": (300, 100)}
COMPONENTS = ("server", "db", "workers", "client")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tree",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a source tree to compare (give two or more)",
    )
    parser.add_argument("--config", default="postgres+workers", choices=sorted(kflow_side.CONFIGS))
    parser.add_argument("--scenario", default="hc3", choices=sorted(SHAPES))
    parser.add_argument("--workflows", type=int, help="runs per repetition")
    parser.add_argument("--reps", type=int, default=8, help="repetitions per tree")
    args = parser.parse_args(argv)
    trees = []
    for spec in args.tree:
        name, sep, path = spec.partition("=")
        root = pathlib.Path(path).resolve()
        if not sep or not name or not (root / "kflow" / "__init__.py").is_file():
            parser.error(f"--tree {spec!r}: expected NAME=PATH of a kflow source tree")
        trees.append((name, root))
    if len(trees) < 2 or len({n for n, _ in trees}) != len(trees):
        parser.error("--tree: give two or more trees with distinct names")
    if args.reps < 1:
        parser.error("--reps: expected at least 1")
    args.trees = trees
    return args


def per_activity(figures: dict[str, Any], activities: int) -> dict[str, float]:
    """CPU milliseconds per activity of each process group that has any."""
    found = {}
    for group, value in figures["resources"].items():
        if isinstance(value, dict) and value.get("cpu_s") is not None and activities:
            found[group] = value["cpu_s"] / activities * 1000
    return found


async def compare(args: argparse.Namespace) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Run the comparison; ``{tree: [(wf/s, cpu ms per activity by group), ...]}``.

    Raises:
        BenchError: a stack did not start, or a run was not correct.
    """
    workflows, submitters = SHAPES[args.scenario]
    scenario = Scenario(args.scenario, args.scenario, args.workflows or workflows, submitters)
    results: dict[str, list[tuple[float, dict[str, float]]]] = {n: [] for n, _ in args.trees}
    with tempfile.TemporaryDirectory(prefix="kflow-ab-") as work:
        async with contextlib.AsyncExitStack() as stacks:
            opened = []
            for name, root in args.trees:
                env = kflow_side.base_env(dict(os.environ))
                env["PYTHONPATH"] = str(root)
                stack = await stacks.enter_async_context(
                    kflow_side.open_stack(args.config, pathlib.Path(work) / name, env)
                )
                client = await stacks.enter_async_context(kflow_side.bench_client(stack.url))
                opened.append((name, stack, client))
            for rep in range(args.reps):
                for name, stack, client in opened if rep % 2 == 0 else opened[::-1]:
                    figures = await kflow_side.run_scenario(stack, client, scenario)
                    executions = figures["executions"]
                    if figures["success_rate"] != 1.0 or not executions["exactly_once"]:
                        raise BenchError(f"{name}: run {rep + 1} was not correct: {figures}")
                    activities = figures["completed"] * scenario.activities_per_workflow
                    cpu = per_activity(figures, activities)
                    results[name].append((figures["throughput_wf_s"], cpu))
                    shown = " ".join(f"{k} {cpu[k]:.2f}" for k in COMPONENTS if k in cpu)
                    print(
                        f"{name} {args.scenario} rep {rep + 1}: "
                        f"{figures['throughput_wf_s']:.1f} wf/s, p50 {figures['p50_ms']:.0f} ms; "
                        f"CPU ms/activity {shown}",
                        flush=True,
                    )
    return results


def summary(results: dict[str, list[tuple[float, dict[str, float]]]]) -> list[str]:
    lines = []
    for name, runs in results.items():
        rates = [rate for rate, _ in runs]
        cpu = {
            k: statistics.median(c[k] for _, c in runs)
            for k in COMPONENTS
            if all(k in c for _, c in runs)
        }
        shown = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        lines.append(
            f"{name}: median {statistics.median(rates):.1f} wf/s "
            f"({', '.join(f'{r:.1f}' for r in rates)}); median CPU ms/activity {shown}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = trio.run(compare, args)
    except BenchError as exc:
        print(f"bench.ab: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
