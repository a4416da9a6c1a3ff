"""The other figures of BENCHMARKS.md: dispatch latency, worker overhead, idle
footprint, physical limit and cost growth."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from bench import pg
from bench.kflow_side import (
    BenchClient,
    Stack,
    bench_client,
    fetch_events,
    kflow_argv,
    open_stack,
    request_counts,
    run_scenario,
    start_worker,
    wait_events,
)
from bench.procs import BenchError, ProcSet, Unavailable, free_port, rss_mib, wait_http
from bench.shapes import Scenario
from bench.util import best_of, parse_time, percentile, rnd

# ---- dispatch latency -----------------------------------------------------------------


async def dispatch_latency(stack: Stack, client: BenchClient, count: int) -> dict[str, Any]:
    """Submit a one-activity workflow ``count`` times, one after the other (the
    worker is idle, parked in its long-poll, each time), and take enqueue → start
    from the server's own timestamps: ``activity.scheduled`` vs ``activity.started``
    ``created_at`` of the run's history."""
    name = stack.definition_name("one")
    gaps: list[float] = []
    end_to_end: list[float] = []
    failures = 0
    with trio.move_on_after(max(60.0, count * 0.5)) as scope:
        for i in range(count):
            t0 = time.perf_counter()
            run = await client.kf.start(name, {"i": i})
            wid = run["workflow_id"]
            status, events = await wait_events(client, wid, timeout=30)
            end_to_end.append((time.perf_counter() - t0) * 1000)
            gap = _gap(events)
            if gap is None:  # the live stream may have skipped one: read the stored history
                gap = _gap((await fetch_events(client, [wid]))[wid])
            if status != "completed" or gap is None:
                failures += 1
                continue
            gaps.append(gap)
    return {
        "runs": count,
        "measured": len(gaps),
        "failures": failures,
        "timed_out": scope.cancelled_caught,
        "p50_ms": rnd(percentile(gaps, 50), 2),
        "p99_ms": rnd(percentile(gaps, 99), 2),
        "max_ms": rnd(max(gaps, default=None) if gaps else None, 2),
        "end_to_end_p50_ms": rnd(percentile(end_to_end, 50), 2),
        "end_to_end_p99_ms": rnd(percentile(end_to_end, 99), 2),
        "workers": len(stack.workers) or "in-process",
        "database": stack.db,
    }


def _gap(events: list[dict[str, Any]]) -> float | None:
    scheduled = next((e for e in events if e["type"] == "activity.scheduled"), None)
    started = next((e for e in events if e["type"] == "activity.started"), None)
    if scheduled is None or started is None:
        return None
    delta = parse_time(started["created_at"]) - parse_time(scheduled["created_at"])
    return delta.total_seconds() * 1000


# ---- worker overhead --------------------------------------------------------------------


async def worker_overhead(stack: Stack, client: BenchClient, activities: int) -> dict[str, Any]:
    """``activities`` no-op activities (workflows of 100 independent echoes) through
    the stack's one worker process: activities/s and the worker's CPU ms per activity.

    All runs are submitted at once (10 submitters); completion is watched by
    counting completed runs (one cheap list request every 100 ms), so no event
    streams load the server.
    """
    if len(stack.workers) != 1:
        raise BenchError("worker overhead needs a stack with exactly one worker process")
    name = stack.definition_name("wide100")
    runs = max(1, activities // 100)
    before = await _completed_count(client, name)
    indexes = iter(range(runs))
    errors: list[str] = []

    async def submitter() -> None:
        for i in indexes:
            try:
                await client.kf.start(name, {"i": i})
            except Exception as exc:
                errors.append(repr(exc)[:200])

    requests_before = await request_counts(client)
    stack.sampler.begin()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(submitter)
    submitted = time.perf_counter() - t0
    done = 0
    with trio.move_on_after(max(120.0, activities / 20)) as scope:
        while done < runs - len(errors):
            await trio.sleep(0.1)
            done = await _completed_count(client, name) - before
    wall = time.perf_counter() - t0
    resources = stack.sampler.end()
    requests_after = await request_counts(client)
    completed = done * 100
    worker_cpu = resources["workers"]["cpu_s"]
    server_cpu = resources["server"]["cpu_s"]
    return {
        "activities": runs * 100,
        "completed": completed,
        "timed_out": scope.cancelled_caught,
        "errors": errors[:3],
        "submit_s": rnd(submitted, 2),
        "wall_s": rnd(wall, 2),
        "activities_per_s": rnd(completed / wall, 1) if wall and completed else None,
        "worker_cpu_ms_per_activity": rnd(worker_cpu * 1000 / completed, 3) if completed else None,
        "server_cpu_ms_per_activity": rnd(server_cpu * 1000 / completed, 3) if completed else None,
        "worker_peak_rss_mib": resources["workers"]["peak_rss_mib"],
        "database": stack.db,
        "requests": _delta(requests_before, requests_after),
    }


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


async def _completed_count(client: BenchClient, name: str) -> int:
    page = await client.kf.list_workflows(status="completed", definition_name=name, limit=1)
    return int(page.get("total", 0))


# ---- idle footprint -----------------------------------------------------------------------


async def idle_footprint(workdir: pathlib.Path, env: dict[str, str]) -> dict[str, Any]:
    """RSS of a fresh embedded ``kflow serve`` and of a ``kflow worker --std`` after
    start-up (1.5 s settled), their CPU while idle, and the import time of ``kflow.worker``."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = ProcSet(workdir, env)
    out: dict[str, Any] = {}
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        db = f"sqlite:///{workdir / 'idle.db'}"
        server = procs.spawn(
            "idle-server", kflow_argv("serve", "--port", str(port), "--db", db, "--seed-client")
        )
        out["server_start_s"] = rnd(await wait_http(server, url + "/health"), 2)
        await trio.sleep(1.5)
        out["server_rss_mib"] = rnd(rss_mib(server.pid))
        out["server_idle_cpu_ms_per_s"] = rnd(await _idle_cpu(server.pid, 2.0), 2)
        worker = await start_worker(procs, "std", url, 0)
        await trio.sleep(1.5)
        out["worker_rss_mib"] = rnd(rss_mib(worker.pid))
        out["worker_idle_cpu_ms_per_s"] = rnd(await _idle_cpu(worker.pid, 2.0), 2)
    finally:
        await procs.close()
    fastest, median = await trio.to_thread.run_sync(_import_time, env)
    out["import_kflow_worker_ms"] = fastest
    out["import_kflow_worker_median_ms"] = median
    return out


async def _idle_cpu(pid: int, seconds: float) -> float:
    import psutil

    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    await trio.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) * 1000 / seconds


_IMPORT = (
    "import time; t = time.perf_counter(); import kflow.worker; "
    "print((time.perf_counter() - t) * 1000)"
)


def _import_time(env: dict[str, str], repeats: int = 5) -> tuple[float, float]:
    """Fastest and median ms of ``import kflow.worker`` in a fresh interpreter
    (bytecode cached; the fastest is the least disturbed by a busy machine)."""
    times = []
    for _ in range(repeats + 1):
        done = subprocess.run(
            [sys.executable, "-c", _IMPORT],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        times.append(float(done.stdout.strip()))
    times = times[1:]  # the first run may write bytecode
    return round(min(times), 1), round(statistics.median(times), 1)


# ---- physical limit ---------------------------------------------------------------------------


def sqlite_commits_per_s(directory: pathlib.Path, seconds: float, synchronous: str) -> float:
    """Committed one-row write transactions per second (WAL, ``synchronous``)."""
    path = directory / f"physical-{synchronous}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
        count = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (count,))
            conn.execute("COMMIT")
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)


def pgbench_tps(seconds: int, clients: int) -> dict[str, Any]:
    """``pgbench`` simple-update tps on a database of its own (created and dropped).

    Raises:
        Unavailable: no ``pgbench`` on PATH, or PostgreSQL is down.
        BenchError: pgbench failed.
    """
    binary = shutil.which("pgbench")
    if binary is None:
        raise Unavailable("pgbench is not on PATH")
    name, url = pg.create_database("kflow_bench_pgbench")
    try:
        init = subprocess.run(
            [binary, "-i", "-s", "1", "-q", url], capture_output=True, text=True, timeout=120
        )
        if init.returncode:
            raise BenchError(f"pgbench -i failed: {init.stderr[-500:]}")
        run = subprocess.run(
            [
                binary,
                "-b",
                "simple-update",
                "-n",
                "-c",
                str(clients),
                "-j",
                "2",
                "-T",
                str(seconds),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if run.returncode:
            raise BenchError(f"pgbench failed: {run.stderr[-500:]}")
        match = re.search(r"tps = ([\d.]+)", run.stdout)
        if not match:
            raise BenchError(f"no tps in pgbench's output: {run.stdout[-500:]}")
        return {"tps": round(float(match[1]), 1), "clients": clients, "seconds": seconds}
    finally:
        pg.drop_database(name)


async def physical_limit(seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    directory = pathlib.Path(tempfile.mkdtemp(prefix="kflow-bench-physical-"))
    try:
        for level in ("FULL", "NORMAL"):
            tps = await trio.to_thread.run_sync(sqlite_commits_per_s, directory, seconds, level)
            out[f"sqlite_wal_{level.lower()}_tps"] = round(tps, 1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    try:
        out["pgbench"] = await trio.to_thread.run_sync(pgbench_tps, max(2, round(seconds * 2)), 8)
    except BenchError as exc:
        out["pgbench"] = {"error": str(exc)}
    return out


# ---- cost growth --------------------------------------------------------------------------------


_UUID_SQLITE = (
    "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
    "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(6)))"
)


def _history_tables(columns: dict[str, list[tuple[str, str]]]) -> list[str]:
    return [
        t
        for t, cols in columns.items()
        if t != "workflows" and any(c == "workflow_id" for c, _ in cols)
    ]


def _select_list(cols: list[tuple[str, str]], *, new_uuid: str, id_expr: str) -> tuple[str, str]:
    """Column list and select list copying a row to the new run ``id_expr``."""
    names, exprs = [], []
    for col, kind in cols:
        low = kind.lower()
        if col == "id" and ("int" in low or "serial" in low):
            continue  # an identity/autoincrement key: let the database number it
        names.append(col)
        if col == "workflow_id":
            exprs.append(id_expr)
        elif col == "id" or col.endswith("attempt_id"):
            exprs.append(f"CASE WHEN s.{col} IS NULL THEN NULL ELSE {new_uuid} END")
        else:
            exprs.append(f"s.{col}")
    return ", ".join(names), ", ".join(exprs)


def clone_history_sqlite(path: pathlib.Path, definition_name: str, target: int) -> int:
    """Copy completed runs of ``definition_name`` (rows of every table keyed by
    ``workflow_id``, with fresh ids) until there are ``target`` of them; returns how
    many were added."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 60000")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        columns = {
            t: [(r[1], r[2] or "") for r in conn.execute(f'PRAGMA table_info("{t}")')]
            for t in tables
            if not t.startswith("sqlite_")
        }
        src = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM workflows WHERE definition_name = ? AND status = 'completed'",
                (definition_name,),
            )
        ]
        need = target - len(src)
        if need <= 0 or not src:
            return 0
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TEMP TABLE clone_map (new_id TEXT PRIMARY KEY, old_id TEXT)")
        conn.executemany(
            "INSERT INTO clone_map VALUES (?, ?)",
            ((_uuid7ish(), src[i % len(src)]) for i in range(need)),
        )
        wf_cols = columns["workflows"]
        names = ", ".join(c for c, _ in wf_cols)
        exprs = ", ".join("m.new_id" if c == "id" else f"s.{c}" for c, _ in wf_cols)
        conn.execute(
            f"INSERT INTO workflows ({names}) SELECT {exprs} FROM clone_map m "
            "JOIN workflows s ON s.id = m.old_id"
        )
        for table in _history_tables(columns):
            names, exprs = _select_list(columns[table], new_uuid=_UUID_SQLITE, id_expr="m.new_id")
            conn.execute(
                f'INSERT INTO "{table}" ({names}) SELECT {exprs} FROM clone_map m '
                f'JOIN "{table}" s ON s.workflow_id = m.old_id'
            )
        conn.execute("DROP TABLE clone_map")
        conn.execute("COMMIT")
        # Settle the bulk load before measuring: otherwise the measured run's
        # commits pay for checkpointing these thousands of pages out of the
        # WAL, a cost that history grown run by run spreads thin.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return need
    finally:
        conn.close()


def clone_history_postgres(url: str, definition_name: str, target: int) -> int:
    """:func:`clone_history_sqlite` for PostgreSQL."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        columns = {
            t: [
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (t,),
                )
            ]
            for t in tables
        }
        count = conn.execute(
            "SELECT count(*) FROM workflows WHERE definition_name = %s AND status = 'completed'",
            (definition_name,),
        ).fetchone()[0]
        need = target - count
        if need <= 0 or not count:
            return 0
        conn.execute(
            "CREATE TEMP TABLE clone_map AS WITH src AS (SELECT id, row_number() OVER "
            "(ORDER BY id) - 1 AS rn FROM workflows WHERE definition_name = %s "
            "AND status = 'completed') SELECT gen_random_uuid() AS new_id, src.id AS old_id "
            "FROM generate_series(0, %s - 1) g JOIN src ON src.rn = g %% %s",
            (definition_name, need, count),
        )
        wf_cols = columns["workflows"]
        names = ", ".join(c for c, _ in wf_cols)
        exprs = ", ".join("m.new_id" if c == "id" else f"s.{c}" for c, _ in wf_cols)
        conn.execute(
            f"INSERT INTO workflows ({names}) SELECT {exprs} FROM clone_map m "
            "JOIN workflows s ON s.id = m.old_id"
        )
        for table in _history_tables(columns):
            names, exprs = _select_list(
                columns[table], new_uuid="gen_random_uuid()", id_expr="m.new_id"
            )
            conn.execute(
                f'INSERT INTO "{table}" ({names}) SELECT {exprs} FROM clone_map m '
                f'JOIN "{table}" s ON s.workflow_id = m.old_id'
            )
        conn.execute("ANALYZE")
        conn.commit()
        return need


def _uuid7ish() -> str:
    import uuid

    return str(uuid.uuid4())


async def cost_growth(
    config: str,
    workdir: pathlib.Path,
    env: dict[str, str],
    scenario: Scenario,
    levels: list[int],
    repeats: int = 1,
) -> dict[str, Any]:
    """Throughput and p95 of ``scenario`` with ``level × workflows`` completed runs of
    it already stored (cloned from real ones), for each level.

    Every level gets a stack of its own (server, workers, database), all
    filled first; the measured runs then go round the levels ``repeats``
    times (1×, 10×, 100×, 1×, 10×, 100×, ...), so a drift of the shared
    machine falls on every level alike. Each level shows the best of its
    runs, as the scenarios do; every run must be correct.
    """
    out: dict[str, Any] = {
        "config": config,
        "scenario": scenario.key,
        "levels": [],
        "order": "interleaved",
    }
    async with contextlib.AsyncExitStack() as stacks:
        prepared: list[tuple[int, Stack, BenchClient, int, int, float]] = []
        for level in levels:
            stack = await stacks.enter_async_context(
                open_stack(config, workdir / f"level-{level}", env)
            )
            client = await stacks.enter_async_context(bench_client(stack.url))
            name = stack.definition_name(scenario.key)
            await run_scenario(stack, client, scenario)  # the first 1× of history, for real
            target = level * scenario.workflows
            started = time.perf_counter()
            if stack.db == "postgres":
                assert stack.db_name is not None
                url = pg.with_database(pg.admin_url(), stack.db_name)
                added = await trio.to_thread.run_sync(clone_history_postgres, url, name, target)
            else:
                assert stack.db_path is not None
                added = await trio.to_thread.run_sync(
                    clone_history_sqlite, stack.db_path, name, target
                )
            prepared.append((level, stack, client, target, added, time.perf_counter() - started))
        runs: dict[int, list[dict[str, Any]]] = {level: [] for level in levels}
        for _ in range(repeats):
            for level, stack, client, *_ in prepared:
                runs[level].append(await run_scenario(stack, client, scenario))
        for level, stack, _, target, added, fill_s in prepared:
            figures = best_of(runs[level])
            out["levels"].append(
                {
                    "level": level,
                    "stored_runs": target,
                    "cloned": added,
                    "fill_s": rnd(fill_s, 2),
                    "throughput_wf_s": figures["throughput_wf_s"],
                    "p50_ms": figures["p50_ms"],
                    "p95_ms": figures["p95_ms"],
                    "success_rate": min(r["success_rate"] or 0.0 for r in runs[level]),
                    "exactly_once": all(r["executions"]["exactly_once"] for r in runs[level]),
                    "repetitions": [r["throughput_wf_s"] for r in runs[level]],
                }
            )
            if stack.db_path is not None and os.path.exists(stack.db_path):
                out["db_file_mib"] = rnd(os.path.getsize(stack.db_path) / 2**20)
    return out
