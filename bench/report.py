"""Targets, correctness and the markdown report of one bench run."""

from __future__ import annotations

from typing import Any

from bench.util import fmt

KFLOW_CONFIGS = ("embedded", "sqlite+worker", "postgres+workers", "reference-sdk")
RATIO_CONFIGS = ("embedded", "postgres+workers")
POLL_LABEL = "postgres+workers, polled 50 ms"
STREAM_LABEL = "embedded, event stream"
RATIO_TARGET = 1.5
FLAT_THROUGHPUT = 0.8  # top level keeps at least 80 % of the 1x throughput
FLAT_P95 = 1.25  # and at most 125 % of its p95


def _scen(result: dict[str, Any], config: str, key: str) -> dict[str, Any] | None:
    entry = result["configs"].get(config) or {}
    return (entry.get("scenarios") or {}).get(key)


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """kflow/celery throughput per scenario, for every kflow configuration that ran."""
    out: dict[str, dict[str, float | None]] = {}
    for config in KFLOW_CONFIGS:
        row: dict[str, float | None] = {}
        for sc in result["scenarios"]:
            mine = _scen(result, config, sc["key"])
            peer = _scen(result, "celery", sc["key"])
            a = mine and mine.get("throughput_wf_s")
            b = peer and peer.get("throughput_wf_s")
            row[sc["key"]] = round(a / b, 2) if a and b else None
        out[config] = row
    return out


def extra_rows(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The rows run with another way of waiting: polled every 50 ms, event stream."""
    rows = []
    if result.get("poll_mode"):
        rows.append((POLL_LABEL, result["poll_mode"]))
    if result.get("stream_mode"):
        rows.append((STREAM_LABEL, result["stream_mode"]))
    return rows


def _problems(where: str, fig: dict[str, Any]) -> list[str]:
    found = []
    if fig.get("success_rate") != 1.0:
        found.append(f"{where}: success {fig.get('success_rate')} ({fig.get('errors')})")
    ex = fig.get("executions") or {}
    if not ex.get("exactly_once"):
        found.append(
            f"{where}: executions per activity not exactly 1 ({ex.get('violations')} "
            f"activities, e.g. {ex.get('violation_examples', [])[:2]})"
        )
    if fig.get("stream_missed_events"):
        found.append(
            f"{where}: the live event stream skipped {fig['stream_missed_events']} stored "
            f"events in {fig.get('stream_gap_runs')} runs "
            f"(e.g. {fig.get('stream_gap_examples', [])[:2]})"
        )
    return found


def correctness(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(violations, under_faults)``: success below 100 %, an execution count other
    than 1, a stored event the live stream did not deliver, a kflow configuration
    that failed. Problems of a scenario during which an outside fault was seen
    (PostgreSQL restarted by someone else) go to the second list: exactly-once
    is only promised without faults."""
    problems: list[str] = []
    faulted: list[str] = []
    rows = list(result["configs"].items()) + extra_rows(result)
    for config, entry in rows:
        if entry.get("status") == "failed":
            problems.append(f"{config}: failed: {entry.get('reason')}")
            continue
        for key, shown in (entry.get("scenarios") or {}).items():
            for fig in (shown, *shown.get("other_repetitions", [])):
                found = _problems(f"{config}/{key}", fig)
                if fig.get("fault"):
                    faulted += [f"{p} — during an outside fault: {fig['fault']}" for p in found]
                else:
                    problems += found
    others = [
        ("idle footprint", result.get("idle")),
        ("worker overhead", result.get("worker_overhead")),
        *((f"dispatch latency on {c}", d) for c, d in (result.get("dispatch") or {}).items()),
        *((f"cost growth on {g.get('config')}", g) for g in result.get("cost_growth") or []),
    ]
    for label, figure in others:
        if isinstance(figure, dict) and figure.get("status") == "failed":
            problems.append(f"{label}: failed: {figure.get('reason')}")
    return problems, faulted


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    rs = result.get("ratios") or {}
    for config in RATIO_CONFIGS:
        row = rs.get(config) or {}
        values = [row.get(sc["key"]) for sc in result["scenarios"]]
        shown = " / ".join(fmt(v, 2) for v in values)
        met = None if any(v is None for v in values) else all(v >= RATIO_TARGET for v in values)
        add(
            f"{config}/celery ≥ {RATIO_TARGET} in every scenario (Seq-5 / Par-10 / HC-3)",
            shown,
            met,
        )
    disp = (result.get("dispatch") or {}).get("sqlite+worker") or {}
    p50, p99 = disp.get("p50_ms"), disp.get("p99_ms")
    add(
        "dispatch latency p50 ≤ 3 ms (sqlite+worker)",
        f"{fmt(p50, 2)} ms",
        None if p50 is None else p50 <= 3,
    )
    add(
        "dispatch latency p99 ≤ 20 ms (sqlite+worker)",
        f"{fmt(p99, 2)} ms",
        None if p99 is None else p99 <= 20,
    )
    hc = _scen(result, "sqlite+worker", "hc3")
    if hc:
        total = (hc["resources"]["server"]["peak_rss_mib"] or 0) + (
            hc["resources"]["workers"]["peak_rss_mib"] or 0
        )
        add(
            "server + one worker peak RSS under HC-3 ≤ 150 MiB (sqlite+worker)",
            f"{fmt(total)} MiB",
            total <= 150,
        )
    else:
        add("server + one worker peak RSS under HC-3 ≤ 150 MiB (sqlite+worker)", "not run", None)
    emb = _scen(result, "embedded", "hc3")
    if emb:
        total = emb["resources"]["server"]["peak_rss_mib"]
        add(
            "embedded server (its worker inside) peak RSS under HC-3 ≤ 150 MiB",
            f"{fmt(total)} MiB",
            total <= 150,
        )
    idle = result.get("idle") or {}
    server, worker = idle.get("server_rss_mib"), idle.get("worker_rss_mib")
    add(
        "idle server (embedded) ≤ 60 MiB",
        f"{fmt(server)} MiB",
        None if server is None else server <= 60,
    )
    add("idle worker ≤ 40 MiB", f"{fmt(worker)} MiB", None if worker is None else worker <= 40)
    for growth in result.get("cost_growth") or []:
        levels = growth.get("levels") or []
        if len(levels) < 2:
            add(f"flat cost growth ({growth.get('config')})", growth.get("error", "not run"), None)
            continue
        first, last = levels[0], levels[-1]
        t0, t1 = first["throughput_wf_s"], last["throughput_wf_s"]
        q0, q1 = first["p95_ms"], last["p95_ms"]
        if not (t0 and t1 and q0 and q1):
            add(f"flat cost growth ({growth['config']})", "incomplete", None)
            continue
        met = t1 >= FLAT_THROUGHPUT * t0 and q1 <= FLAT_P95 * q0
        add(
            f"flat cost growth ({growth['config']}, {growth['scenario']}, "
            f"{first['level']}× → {last['level']}× history: throughput ≥ 80 %, p95 ≤ 125 %)",
            f"{t0:.1f} → {t1:.1f} wf/s ({t1 / t0:.0%}), p95 {q0:.0f} → {q1:.0f} ms ({q1 / q0:.0%})",
            met,
        )
    return out


# ---- markdown ---------------------------------------------------------------------------------


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def _main_rows(result: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | configuration | wf/s | p50 ms | p95 ms | success | exec/activity "
        "| CPU s server / workers / db / client | peak RSS MiB server / workers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    configs = list(result["configs"].items()) + extra_rows(result)
    for sc in result["scenarios"]:
        title = f"{sc['title']} ({sc['workflows']} wf, {sc['submitters']} sub.)"
        for config, entry in configs:
            if entry.get("status") in ("failed", "unavailable"):
                lines.append(
                    f"| {title} | {config} | **{entry['status'].upper()}**: "
                    f"{_short(entry.get('reason'))} | | | | | | |"
                )
                continue
            fig = (entry.get("scenarios") or {}).get(sc["key"])
            if fig is None:
                continue
            res = fig["resources"]
            success = fig["success_rate"]
            ex = fig["executions"]
            s_cell = f"{success:.0%}" if success == 1.0 else f"**⚠ {success:.1%}**"
            e_val = ex.get("exec_per_activity")
            e_cell = f"{e_val:.2f}" if ex.get("exactly_once") else f"**⚠ {fmt(e_val, 3)}**"
            if fig.get("stream_missed_events"):
                e_cell += f" (**⚠ stream skipped {fig['stream_missed_events']} events**)"
            if fig.get("fault"):
                e_cell += " (fault: PostgreSQL restarted)"
            if any(_problems("", r) for r in fig.get("other_repetitions", [])):
                e_cell += " (**⚠ in another repetition**)"
            cpu = " / ".join(
                fmt(res.get(g, {}).get("cpu_s"), 1) for g in ("server", "workers", "db", "client")
            )
            rss = " / ".join(
                fmt(res.get(g, {}).get("peak_rss_mib"), 0) for g in ("server", "workers")
            )
            lines.append(
                f"| {title} | {config} | {fmt(fig['throughput_wf_s'])} | {fmt(fig['p50_ms'], 0)} "
                f"| {fmt(fig['p95_ms'], 0)} | {s_cell} | {e_cell} | {cpu} | {rss} |"
            )
    return lines


def _short(text: Any, limit: int = 160) -> str:
    text = str(text or "").replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    out = [
        f"# kflow bench — {result['started_at']} ({result['mode']} mode, "
        f"{result.get('duration_s', 0):.0f} s)",
        "",
    ]
    problems = result.get("correctness") or []
    faulted = result.get("faults") or []
    if problems:
        out += ["## ⚠ CORRECTNESS VIOLATIONS", "", *(f"- **{p}**" for p in problems), ""]
    if faulted:
        out += [
            "## ⚠ Problems during outside faults (not counted as violations)",
            "",
            *(f"- {p}" for p in faulted),
            "",
        ]
    if not problems and not faulted:
        out += [
            "Correctness: every run completed, every activity executed exactly once "
            "(engine history), every stored event was delivered by the live event stream.",
            "",
        ]
    out += ["## Scenarios", ""] + _main_rows(result) + [""]
    if result.get("rounds", 1) > 1:
        out += [
            f"Each scenario ran once in each of {result['rounds']} rounds over the "
            "configurations (every other round in reverse order, so that a slow phase of "
            "the machine meets kflow and Celery alike; the polled and event-stream rows "
            "in the first round only); the fastest run is shown, every one is in the JSON "
            "and counts for correctness.",
            "",
        ]
    out += [
        "kflow's clients call `AsyncClient.run()` (one start request that the server "
        "answers when the run finishes), Celery's `apply_async()` and `AsyncResult.get()`; "
        f"the `{STREAM_LABEL}` rows follow each run's event stream (SSE) instead, and "
        f"the `{POLL_LABEL}` rows use the reference's method (GET the run every 50 ms). "
        "CPU and RSS include child processes; `db` is the PostgreSQL backends of the "
        "bench database; `client` is the load generator (this bench's process for kflow, "
        "the Celery client process for celery); for celery the server is Redis.",
        "",
        "## kflow / celery throughput (same run)",
        "",
        "| configuration | " + " | ".join(sc["title"] for sc in result["scenarios"]) + " |",
        "|---|" + "---:|" * len(result["scenarios"]),
    ]
    for config, row in (result.get("ratios") or {}).items():
        if all(v is None for v in row.values()):
            continue
        out.append(
            f"| {config} | "
            + " | ".join(fmt(row.get(sc["key"]), 2) for sc in result["scenarios"])
            + " |"
        )
    out += [""] + _other_figures(result)
    out += ["## Targets (BENCHMARKS.md)", "", "| target | measured | |", "|---|---|---|"]
    out += [
        f"| {t['target']} | {t['measured']} | {_mark(t['met'])} |"
        for t in result.get("targets") or []
    ]
    out += ["", "## Machine", ""]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    out += [
        f"- {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB, {m['os']}; "
        f"load average at start {m.get('load_average_at_start')}, at end "
        f"{m.get('load_average_at_end')}",
        f"- Python {m['python']}; SQLite {m['sqlite']}; PostgreSQL "
        f"{m.get('postgresql') or 'n/a'}; Redis server {m.get('redis_server') or 'n/a'}",
        f"- {pkgs}",
        "",
    ]
    return "\n".join(out)


def _other_figures(result: dict[str, Any]) -> list[str]:
    out = ["## Other figures", ""]
    dispatch = result.get("dispatch") or {}
    if dispatch:
        out += [
            "**Dispatch latency** (enqueue → start, server timestamps of "
            "`activity.scheduled` → `activity.started`; one-activity runs one at a time):",
            "",
            "| configuration | runs | p50 ms | p99 ms | max ms | end-to-end p50 / p99 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for config, d in dispatch.items():
            if "error" in d:
                out.append(f"| {config} | **FAILED**: {_short(d['error'])} | | | | |")
                continue
            out.append(
                f"| {config} | {d['measured']}/{d['runs']} | {fmt(d['p50_ms'], 2)} | "
                f"{fmt(d['p99_ms'], 2)} | {fmt(d['max_ms'], 2)} | "
                f"{fmt(d['end_to_end_p50_ms'], 1)} / {fmt(d['end_to_end_p99_ms'], 1)} |"
            )
        out.append("")
    wo = result.get("worker_overhead") or {}
    if "error" in wo:
        out += [f"**Worker overhead**: FAILED: {_short(wo['error'])}", ""]
    elif wo:
        out += [
            f"**Worker overhead** ({wo['completed']:,} of {wo['activities']:,} no-op "
            f"activities through one `kflow worker --std`, {wo['database']}): "
            f"{fmt(wo['activities_per_s'])} activities/s; worker CPU "
            f"{fmt(wo['worker_cpu_ms_per_activity'], 3)} ms/activity (server "
            f"{fmt(wo['server_cpu_ms_per_activity'], 3)} ms/activity); worker peak RSS "
            f"{fmt(wo['worker_peak_rss_mib'])} MiB.",
            "",
        ]
    idle = result.get("idle") or {}
    if "error" in idle:
        out += [f"**Idle footprint**: FAILED: {_short(idle['error'])}", ""]
    elif idle:
        out += [
            f"**Idle footprint**: `kflow serve` (embedded, SQLite) "
            f"{fmt(idle['server_rss_mib'])} MiB RSS after start-up "
            f"({fmt(idle['server_start_s'], 2)} s to answer; idle CPU "
            f"{fmt(idle['server_idle_cpu_ms_per_s'], 2)} ms/s); `kflow worker --std` "
            f"{fmt(idle['worker_rss_mib'])} MiB (idle CPU "
            f"{fmt(idle['worker_idle_cpu_ms_per_s'], 2)} ms/s); `import kflow.worker` "
            f"{fmt(idle['import_kflow_worker_ms'])} ms in a fresh interpreter (fastest of "
            f"5; median {fmt(idle.get('import_kflow_worker_median_ms'))} ms).",
            "",
        ]
    phys = result.get("physical") or {}
    if phys:
        pgb = phys.get("pgbench") or {}
        pg_text = (
            f"pgbench simple-update {fmt(pgb.get('tps'))} tps ({pgb.get('clients')} clients)"
            if "tps" in pgb
            else f"pgbench: {_short(pgb.get('error'))}"
        )
        out += [
            f"**Physical limit**: SQLite committed write transactions/s (WAL) "
            f"{fmt(phys.get('sqlite_wal_full_tps'), 0)} at synchronous=FULL (kflow's), "
            f"{fmt(phys.get('sqlite_wal_normal_tps'), 0)} at NORMAL; {pg_text}.",
            "",
        ]
        rows = phys.get("engine_vs_storage") or []
        if rows:
            out += [
                "| configuration | scenario | activities/s | transactions/activity "
                "| ceiling activities/s | share of ceiling |",
                "|---|---|---:|---:|---:|---:|",
            ]
            out += [
                f"| {r['config']} | {r['scenario']} | {fmt(r['activities_per_s'])} | "
                f"{fmt(r['tx_per_activity'], 2)} ({r['tx_source']}) | "
                f"{fmt(r['ceiling_activities_per_s'], 0)} | {fmt(r['share_pct'], 1)} % |"
                for r in rows
            ]
            out.append("")
    growth = result.get("cost_growth") or []
    if growth:
        out += [
            "**Cost growth** (completed runs of the scenario stored before the measured "
            "run; history beyond the first 1× is cloned from real runs):",
            "",
            "| configuration | scenario | history | stored runs | wf/s | p50 ms | p95 ms | "
            "correct |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for g in growth:
            if "error" in g:
                out.append(
                    f"| {g['config']} | {g.get('scenario')} | **FAILED**: "
                    f"{_short(g['error'])} | | | | | |"
                )
                continue
            for lv in g["levels"]:
                ok = lv["success_rate"] == 1.0 and lv["exactly_once"]
                out.append(
                    f"| {g['config']} | {g['scenario']} | {lv['level']}× | "
                    f"{lv['stored_runs']:,} | {fmt(lv['throughput_wf_s'])} | "
                    f"{fmt(lv['p50_ms'], 0)} | {fmt(lv['p95_ms'], 0)} | "
                    f"{'yes' if ok else '**⚠ no**'} |"
                )
        out.append("")
    return out
