"""Run the kflow benchmark suite: ``python -m bench.run [--quick]`` (bench/README.md).

One invocation runs every scenario on every configuration (kflow's four and
Celery) — in full mode in two rounds over the configurations, the second in
reverse order, so that a slow phase of a shared machine meets every
configuration alike — the other figures, checks correctness, prints a markdown report on
stdout (progress goes to stderr) and writes ``bench/results/<UTC time>.json``
and ``.md``. Exit status: 0, or 1 when a correctness check failed or a kflow
configuration or figure could not run (a missing PostgreSQL/Redis/pgbench is
reported as unavailable and does not fail the run); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bench import figures, machine, pg, report
from bench.celery_side import run_celery
from bench.kflow_side import base_env, bench_client, open_stack, run_scenario
from bench.procs import Unavailable
from bench.shapes import Scenario, scenarios
from bench.util import best_of, utc_stamp

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ORDER = ("embedded", "celery", "sqlite+worker", "postgres+workers", "reference-sdk")

_T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _failure(exc: BaseException) -> dict[str, Any]:
    leaf = _leaf(exc)
    status = "unavailable" if isinstance(leaf, Unavailable) else "failed"
    return {"status": status, "reason": f"{type(leaf).__name__}: {leaf}"[:600]}


async def guarded(label: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """``await fn()``; an exception becomes ``{"status": ..., "reason": ...}``."""
    try:
        return await fn()
    except Exception as exc:
        failure = _failure(exc)
        say(f"{label}: {failure['status']}: {failure['reason'][:300]}")
        return {**failure, "error": failure["reason"]}


class Plan:
    """What one mode runs (README: "Quick mode")."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.scenarios = scenarios(quick)
        self.budget = 90.0 if quick else 300.0
        #: Rounds over the configurations, every other one in reverse order; each
        #: scenario runs once per round and its fastest run is reported.
        self.rounds = 1 if quick else 2
        self.dispatch_runs = 200 if quick else 1000
        self.dispatch_configs = (
            ("sqlite+worker",) if quick else ("sqlite+worker", "embedded", "postgres+workers")
        )
        self.overhead_activities = 2000 if quick else 10_000
        self.poll_scenarios = ["seq5"] if quick else ["seq5", "par10", "hc3"]
        self.physical_seconds = 1.0 if quick else 2.0
        self.growth: list[tuple[str, int]] = (
            [("embedded", 10)] if quick else [("embedded", 100), ("postgres+workers", 100)]
        )
        #: Rounds over the history levels (each level shows its best run).
        self.growth_repeats = 2 if quick else 3

    def round_order(self, wanted: list[str], index: int) -> list[str]:
        """The configurations of round ``index``: ``wanted``, reversed in odd rounds."""
        return wanted if index % 2 == 0 else wanted[::-1]

    def growth_levels(self, top: int) -> list[int]:
        return [lv for lv in (1, 10, 100) if lv <= top]

    def growth_scenario(self) -> Scenario:
        return next(s for s in self.scenarios if s.key == "seq5")


def merge_rounds(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's entry from its entries of every round: the first round's
    entry with each scenario's fastest run (:func:`best_of`, every run kept for
    the correctness checks); the first failure when a round failed."""
    for entry in entries:
        if entry.get("status") != "ok":
            return entry
    merged = dict(entries[0])
    keys = [key for key in entries[0].get("scenarios", {})]
    merged["scenarios"] = {
        key: best_of([e["scenarios"][key] for e in entries if key in e.get("scenarios", {})])
        for key in keys
    }
    if len(entries) > 1:
        merged["start_s_by_round"] = [e.get("start_s") for e in entries]
    return merged


async def run_kflow_config(
    name: str,
    plan: Plan,
    workdir: pathlib.Path,
    env: dict[str, str],
    result: dict[str, Any],
    *,
    first_round: bool = True,
) -> dict[str, Any]:
    """One round of configuration ``name``: every scenario once, and in the first
    round also the other ways of waiting, dispatch latency and worker overhead."""
    entry: dict[str, Any] = {"status": "ok", "scenarios": {}}
    async with open_stack(name, workdir, env) as stack:
        entry["start_s"] = round(stack.start_seconds, 2)
        say(f"{name}: up in {stack.start_seconds:.1f} s")
        async with bench_client(stack.url) as client:
            for sc in plan.scenarios:
                fig = await run_scenario(stack, client, sc, budget=plan.budget)
                entry["scenarios"][sc.key] = fig
                say(
                    f"{name}/{sc.key}: {fig['throughput_wf_s']} wf/s, p95 {fig['p95_ms']} ms, "
                    f"success {fig['success_rate']}, exec/act "
                    f"{fig['executions']['exec_per_activity']}"
                )
            if not first_round:
                return entry
            other_wait = {"postgres+workers": "poll", "embedded": "events"}.get(name)
            if other_wait is not None:
                rows: dict[str, Any] = {"status": "ok", "scenarios": {}}
                for sc in plan.scenarios:
                    if sc.key in plan.poll_scenarios:
                        fig = await run_scenario(
                            stack, client, sc, wait=other_wait, budget=plan.budget
                        )
                        rows["scenarios"][sc.key] = fig
                        say(
                            f"{name}/{sc.key} waiting by {other_wait}: "
                            f"{fig['throughput_wf_s']} wf/s, p95 {fig['p95_ms']} ms"
                        )
                result["poll_mode" if other_wait == "poll" else "stream_mode"] = rows
            if name in plan.dispatch_configs:
                d = await guarded(
                    f"{name} dispatch",
                    lambda: figures.dispatch_latency(stack, client, plan.dispatch_runs),
                )
                result["dispatch"][name] = d
                say(f"{name} dispatch: p50 {d.get('p50_ms')} ms, p99 {d.get('p99_ms')} ms")
            if name == "sqlite+worker":
                wo = await guarded(
                    "worker overhead",
                    lambda: figures.worker_overhead(stack, client, plan.overhead_activities),
                )
                result["worker_overhead"] = wo
                say(
                    f"worker overhead: {wo.get('activities_per_s')} activities/s, "
                    f"{wo.get('worker_cpu_ms_per_activity')} ms CPU/activity"
                )
    return entry


def engine_vs_storage(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Activities/s against the storage ceiling ÷ transactions per activity."""
    phys = result.get("physical") or {}
    rows = []
    for config in ("embedded", "sqlite+worker", "postgres+workers"):
        entry = result["configs"].get(config) or {}
        for sc in result["scenarios"]:
            fig = (entry.get("scenarios") or {}).get(sc["key"])
            if not fig or not fig.get("throughput_wf_s"):
                continue
            per_wf = {"seq5": 5, "par10": 12, "hc3": 3}[sc["key"]]
            acts_per_s = fig["throughput_wf_s"] * per_wf
            activities = fig["completed"] * per_wf
            if config.startswith("postgres"):
                tx = fig.get("db_write_transactions_per_activity")
                ceiling = (phys.get("pgbench") or {}).get("tps")
                source = "PostgreSQL write transactions"
            else:
                req = fig.get("requests") or {}
                writes = sum(
                    v
                    for k, v in req.items()
                    if k.rsplit(" ", 1)[0]
                    in (
                        "POST /api/v1/workflows",
                        "POST /api/v1/workers/poll",
                        "POST /api/v1/activities/{activity_id}/complete",
                    )
                )
                tx = writes / activities if activities and writes else None
                ceiling = phys.get("sqlite_wal_full_tps")
                source = "starts + polls + completions"
            if not tx or not ceiling:
                continue
            limit = ceiling / tx
            rows.append(
                {
                    "config": config,
                    "scenario": sc["key"],
                    "activities_per_s": round(acts_per_s, 1),
                    "tx_per_activity": round(tx, 2),
                    "tx_source": source,
                    "ceiling_activities_per_s": round(limit, 1),
                    "share_pct": round(100 * acts_per_s / limit, 1),
                }
            )
    return rows


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan(args.quick)
    if getattr(args, "rounds", None):
        plan.rounds = args.rounds
    wanted = [c for c in ORDER if not args.only or c in args.only]
    env = base_env(dict(os.environ))
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kflow-bench-"))
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mode": "quick" if args.quick else "full",
        "rounds": plan.rounds,
        "machine": machine.describe(),
        "scenarios": [
            {"key": s.key, "title": s.title, "workflows": s.workflows, "submitters": s.submitters}
            for s in plan.scenarios
        ],
        "configs": {},
        "dispatch": {},
    }
    try:
        result["machine"]["postgresql"] = await trio.to_thread.run_sync(pg.server_version)
    except Unavailable as exc:
        result["machine"]["postgresql"] = None
        say(f"PostgreSQL: {exc}")
    say(f"mode {result['mode']}; work files in {workdir}")
    try:
        if not args.only:
            say("idle footprint")
            result["idle"] = await guarded(
                "idle", lambda: figures.idle_footprint(workdir / "idle", env)
            )
            say(f"idle: {result['idle']}")
        by_round: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
        for index in range(plan.rounds):
            for name in plan.round_order(wanted, index):
                say(f"configuration {name} (round {index + 1} of {plan.rounds})")
                where = workdir / f"{name}-{index + 1}"
                if name == "celery":

                    async def celery(where: pathlib.Path = where) -> dict[str, Any]:
                        out = await run_celery(where, env, plan.scenarios, budget=plan.budget)
                        result["machine"]["redis_server"] = out.pop("redis_version")
                        for key, fig in out["scenarios"].items():
                            say(
                                f"celery/{key}: {fig['throughput_wf_s']} wf/s, "
                                f"p95 {fig['p95_ms']} ms"
                            )
                        return {"status": "ok", **out}

                    entry = await guarded(name, celery)
                else:
                    entry = await guarded(
                        name,
                        lambda n=name, w=where, first=index == 0: run_kflow_config(
                            n, plan, w, env, result, first_round=first
                        ),
                    )
                by_round[name].append(entry)
        for name in wanted:
            result["configs"][name] = merge_rounds(by_round[name])
        if not args.only:
            result["cost_growth"] = []
            for config, top in plan.growth:
                say(f"cost growth on {config}")
                g = await guarded(
                    f"cost growth {config}",
                    lambda c=config, t=top: figures.cost_growth(
                        c,
                        workdir / f"growth-{c}",
                        env,
                        plan.growth_scenario(),
                        plan.growth_levels(t),
                        repeats=plan.growth_repeats,
                    ),
                )
                g.setdefault("config", config)
                g.setdefault("scenario", plan.growth_scenario().key)
                result["cost_growth"].append(g)
                for lv in g.get("levels", []):
                    say(f"  {lv['level']}x: {lv['throughput_wf_s']} wf/s, p95 {lv['p95_ms']} ms")
            # Last: pgbench and the SQLite commit loop saturate the disk, and
            # PostgreSQL keeps flushing their writes for a while afterwards;
            # measured first, they slowed the scenarios that followed.
            say("physical limit")
            result["physical"] = await figures.physical_limit(plan.physical_seconds)
            say(f"physical: {result['physical']}")
    finally:
        if args.keep:
            say(f"work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["ratios"] = report.ratios(result)
    if result.get("physical"):
        result["physical"]["engine_vs_storage"] = engine_vs_storage(result)
    result["targets"] = report.targets(result)
    result["correctness"], result["faults"] = report.correctness(result)
    result["machine"]["load_average_at_end"] = machine.load()
    return result


async def bench_until_signalled(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`bench`, stopped like Ctrl-C by SIGTERM or SIGHUP: the children it started
    run in their own sessions, so only the bench's own cleanup can stop them."""
    result: dict[str, Any] = {}

    async def run_bench(cancel: trio.CancelScope) -> None:
        result.update(await bench(args))
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_bench, nursery.cancel_scope)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                say(f"received {signal.Signals(signum).name}: stopping")
                raise KeyboardInterrupt
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced run (< 3 minutes)")
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated configurations ({', '.join(ORDER)}); skips the other figures",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=RESULTS,
        help="directory of the JSON and markdown results (default bench/results)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work files (logs, databases)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds over the configurations (default: 2, quick 1)",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: expected at least 1")
    if args.only and (unknown := set(args.only) - set(ORDER)):
        parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    try:
        result = trio.run(bench_until_signalled, args)
    except BaseException as exc:  # every child is already killed by its finally
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None
        )
        if interrupted:
            say("interrupted: no results written")
            return 130
        raise
    result["duration_s"] = round(time.perf_counter() - started, 1)
    text = report.markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = utc_stamp() + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    say(f"wrote {args.out / stem}.json and .md in {result['duration_s']:.0f} s")
    if result["correctness"]:
        say(f"CORRECTNESS VIOLATIONS: {len(result['correctness'])} (see the report)")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
