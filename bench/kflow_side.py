"""kflow configurations: start the processes, run scenarios, check the engine's records.

A :class:`Stack` is one configuration of BENCHMARKS.md — a ``kflow serve``
on a fresh database plus its workers — with a :class:`~bench.procs.Sampler`
watching the server, the workers and (PostgreSQL) the database backends.
:func:`run_scenario` drives it with closed-loop submitters: each starts a
workflow, waits for it to finish, then starts the next.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import pathlib
import re
import secrets
import ssl
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import trio

from bench import pg
from bench.procs import BenchError, Proc, ProcSet, Sampler, free_port, wait_http, wait_log
from bench.shapes import Scenario, activity_keys, definition, definition_name
from bench.util import percentile, rnd
from kflow.client import FINAL_EVENTS, FINAL_STATUSES, AsyncClient, ClientConfig

CLIENT_ID = "kflow-bench"
CLIENT_SECRET = "bench-" + secrets.token_urlsafe(24)

#: Each configuration: database, how many workers, which worker program.
CONFIGS: dict[str, dict[str, Any]] = {
    "embedded": {"db": "sqlite", "workers": 0, "worker": "std"},
    "sqlite+worker": {"db": "sqlite", "workers": 1, "worker": "std"},
    "postgres+workers": {"db": "postgres", "workers": 2, "worker": "std"},
    "reference-sdk": {"db": "postgres", "workers": 2, "worker": "sdk"},
}

WORKFLOW_TIMEOUT = 120.0


def base_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment of every child: ours less KFLOW_*/KRUXIAFLOW_* (the bench's own
    KFLOW_BENCH_* settings kept), plus the credential."""
    env = {
        k: v
        for k, v in environ.items()
        if k.startswith("KFLOW_BENCH_") or not k.startswith(("KFLOW_", "KRUXIAFLOW_"))
    }
    env.update(
        {
            "KRUXIAFLOW_CLIENT_ID": CLIENT_ID,
            "KRUXIAFLOW_CLIENT_SECRET": CLIENT_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@attrs.define
class Stack:
    name: str
    url: str
    procs: ProcSet
    server: Proc
    workers: list[Proc]
    sampler: Sampler
    worker_kind: str
    db: str
    db_name: str | None = None
    db_path: pathlib.Path | None = None
    start_seconds: float = 0.0

    @property
    def queue(self) -> str:
        return "py-std" if self.worker_kind == "sdk" else "std"

    def definition_name(self, shape: str) -> str:
        return definition_name(shape, self.queue)


def kflow_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kflow", "--log-format", "json", *args]


async def start_worker(procs: ProcSet, kind: str, url: str, index: int) -> Proc:
    """Start one worker (kflow's ``--std`` or the SDK's py-std) and wait until it polls."""
    state = procs.workdir / f"worker-state-{index}"
    if kind == "sdk":
        proc = procs.spawn(
            f"sdk-worker{index}",
            [sys.executable, "-m", "kruxiaflow.workers"],
            {"KRUXIAFLOW_API_URL": url, "KRUXIAFLOW_WORKER": "py-std"},
        )
        await wait_log(proc, "Starting py-std worker", timeout=60)
    else:
        proc = procs.spawn(
            f"worker{index}",
            kflow_argv("worker", "--api-url", url, "--std"),
            {"KFLOW_WORKER_STATE_DIR": str(state)},
        )
        await wait_log(proc, "worker.started", timeout=60)
    return proc


@contextlib.asynccontextmanager
async def open_stack(
    name: str,
    workdir: pathlib.Path,
    env: dict[str, str],
    *,
    db: str | None = None,
    workers: int | None = None,
    worker_kind: str | None = None,
    server_env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """Start configuration ``name`` (see :data:`CONFIGS`; keywords override) and
    yield it warm; everything is killed and the database dropped on exit.

    Raises:
        Unavailable: PostgreSQL is needed and cannot be reached.
        BenchError: a process did not start or the warm-up failed.
    """
    spec = {**CONFIGS.get(name, {})}
    db = db or spec["db"]
    workers = spec["workers"] if workers is None else workers
    worker_kind = worker_kind or spec["worker"]
    workdir.mkdir(parents=True, exist_ok=True)
    db_name = None
    db_path = None
    if db == "postgres":
        db_name, db_url = await trio.to_thread.run_sync(pg.create_database)
    else:
        db_path = workdir / "kflow.db"
        db_url = f"sqlite:///{db_path}"
    procs = ProcSet(workdir, env)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        args = ["serve", "--port", str(port), "--db", db_url, "--seed-client"]
        if workers or worker_kind == "sdk":
            args.append("--no-worker")
        server = procs.spawn("server", kflow_argv(*args), server_env)
        await wait_http(server, url + "/health", timeout=60)
        worker_procs = [await start_worker(procs, worker_kind, url, i) for i in range(workers)]
        groups: dict[str, Any] = {
            "server": lambda: [server.pid],
            "workers": lambda: [w.pid for w in worker_procs],
            "client": lambda: [os.getpid()],  # the bench process: submitters and waiters
        }
        watcher = None
        if db_name is not None:
            watcher = pg.BackendWatcher(db_name)
            groups["db"] = watcher
        # The bench counts alone; PostgreSQL backends have no children of their own.
        sampler = Sampler(groups, without_children=frozenset({"client", "db"}))
        async with trio.open_nursery() as inner:
            if watcher is not None:
                await inner.start(watcher.run)
            await inner.start(sampler.run)
            stack = Stack(
                name=name,
                url=url,
                procs=procs,
                server=server,
                workers=worker_procs,
                sampler=sampler,
                worker_kind=worker_kind,
                db=db,
                db_name=db_name,
                db_path=db_path,
            )
            async with bench_client(url) as client:
                await deploy_all(client, stack.queue)
                await warm_up(client, stack)
            stack.start_seconds = time.perf_counter() - started
            try:
                yield stack
            finally:
                inner.cancel_scope.cancel()
    finally:
        await procs.close()
        if db_name is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await trio.to_thread.run_sync(pg.drop_database, db_name)


@attrs.define
class BenchClient:
    """kflow's public :class:`AsyncClient` (``kf``) plus raw HTTP for the few
    routes it has no method for (history as JSON, metrics)."""

    kf: AsyncClient
    http: httpx.AsyncClient
    url: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @contextlib.asynccontextmanager
    async def own(self) -> AsyncIterator[BenchClient]:
        """A client of its own (same credential, its own keep-alive connections),
        as a separate user or process of kflow would have: one per submitter."""
        # The bench talks plain HTTP; one shared TLS context spares each client
        # loading the CA bundle (~20 ms of CPU per client).
        tls = _shared_tls_context()
        async with httpx.AsyncClient(timeout=60.0, verify=tls) as http:
            async with AsyncClient(config=self.kf.config, http=http) as kf:
                yield attrs.evolve(self, kf=kf, http=http)


@functools.cache
def _shared_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def fetch_token(http: httpx.AsyncClient, url: str) -> str:
    response = await http.post(
        url + "/api/v1/oauth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@contextlib.asynccontextmanager
async def bench_client(
    url: str, connections: int = 250, keepalive: int = 20
) -> AsyncIterator[BenchClient]:
    """A client with the bench credential and room for many concurrent requests.

    Up to ``connections`` requests are in flight at once (every waiting
    submitter holds one); idle connections beyond ``keepalive`` (httpx's
    default, 20) are closed. A large keep-alive pool is slow: httpcore scans
    every pooled connection once per idle connection on each request.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as http:
        token = await fetch_token(http, url)
        config = ClientConfig(api_url=url, token=token, timeout=60.0)
        async with AsyncClient(config=config, http=http) as kf:
            yield BenchClient(kf=kf, http=http, url=url, token=token)


async def deploy_all(client: BenchClient, queue: str) -> None:
    for shape in ("seq5", "par10", "hc3", "one", "wide100"):
        await client.kf.deploy(definition(shape, queue))


async def warm_up(client: BenchClient, stack: Stack, count: int = 6) -> None:
    """A few runs that must complete: proves the workers poll and warms caches.

    Raises:
        BenchError: a warm-up run did not complete within 60 s.
    """
    name = stack.definition_name("hc3")

    async def one(i: int) -> None:
        run = await client.kf.start(name, {"warmup": i})
        outcome, _ = await wait_events(client, run["workflow_id"], timeout=60)
        if outcome != "completed":
            raise BenchError(f"warm-up run {run['workflow_id']} ended {outcome}")

    try:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    except BaseExceptionGroup as group:
        raise BenchError(f"warm-up failed: {_first_leaf(group)!r}") from group
    except trio.TooSlowError as exc:
        raise BenchError("warm-up runs did not finish within 60 s") from exc


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def wait_events(
    client: BenchClient, workflow_id: str, timeout: float = WORKFLOW_TIMEOUT
) -> tuple[str, list[dict[str, Any]]]:
    """Follow the run's event stream to its final event: ``(status, events)``.

    Raises:
        trio.TooSlowError: not finished within ``timeout``.
    """
    events: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        async with contextlib.aclosing(client.kf.events(workflow_id)) as stream:
            async for event in stream:
                events.append(event)
                if event["type"] in FINAL_EVENTS:
                    return event["type"].split(".", 1)[1], events
    return (await client.kf.status(workflow_id))["status"], events


async def wait_poll(
    client: BenchClient, workflow_id: str, timeout: float = WORKFLOW_TIMEOUT
) -> str:
    """The reference's method: ``GET /workflows/{id}`` every 50 ms until final."""
    with trio.fail_after(timeout):
        while True:
            status = (await client.kf.status(workflow_id))["status"]
            if status in FINAL_STATUSES:
                return str(status)
            await trio.sleep(0.05)


async def fetch_events(
    client: BenchClient, workflow_ids: list[str], concurrency: int = 8
) -> dict[str, list[dict[str, Any]]]:
    """The recorded history of each run (``GET .../events`` as JSON)."""
    found: dict[str, list[dict[str, Any]]] = {}
    limiter = trio.CapacityLimiter(concurrency)

    async def one(wid: str) -> None:
        async with limiter:
            response = await client.http.get(
                f"{client.url}/api/v1/workflows/{wid}/events",
                headers={**client.auth, "Accept": "application/json"},
                params={"from_event_id": 0},
            )
            response.raise_for_status()
            found[wid] = response.json()

    async with trio.open_nursery() as nursery:
        for wid in workflow_ids:
            nursery.start_soon(one, wid)
    return found


def check_executions(
    events_by_run: dict[str, list[dict[str, Any]]], keys: list[str]
) -> dict[str, Any]:
    """Executions per activity from the engine's history: ``activity.started``
    (claims handed to a worker) and ``activity.completed`` events per activity.

    Exactly one of each per activity is the only correct answer without faults.
    """
    starts_total = 0
    expected = 0
    bad: list[str] = []
    histogram: collections.Counter[int] = collections.Counter()
    for wid, events in events_by_run.items():
        started = collections.Counter(
            e["activity_key"] for e in events if e["type"] == "activity.started"
        )
        completed = collections.Counter(
            e["activity_key"] for e in events if e["type"] == "activity.completed"
        )
        for key in keys:
            expected += 1
            starts_total += started[key]
            histogram[started[key]] += 1
            if started[key] != 1 or completed[key] != 1:
                bad.append(f"{wid}/{key}: started {started[key]}, completed {completed[key]}")
    return {
        "activities": expected,
        "executions": starts_total,
        "exec_per_activity": (starts_total / expected) if expected else None,
        "exactly_once": not bad and expected > 0,
        "violations": len(bad),
        "violation_examples": bad[:5],
        "histogram": {str(k): v for k, v in sorted(histogram.items())},
    }


def stream_gaps(
    streamed: dict[str, list[dict[str, Any]]], stored: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Stored events (up to each run's final one) that its live stream never delivered."""
    missed = 0
    runs = 0
    examples: list[str] = []
    for wid, history in stored.items():
        if wid not in streamed:
            continue
        seen = {e["event_id"] for e in streamed[wid]}
        last = max(seen, default=0)
        gaps = [e for e in history if e["event_id"] not in seen and e["event_id"] < last]
        if gaps:
            runs += 1
            missed += len(gaps)
            if len(examples) < 5:
                g = gaps[0]
                examples.append(f"{wid}: event {g['event_id']} {g['type']} {g['activity_key']}")
    return {
        "stream_missed_events": missed,
        "stream_gap_runs": runs,
        "stream_gap_examples": examples,
    }


_METRIC = re.compile(
    r'^kflow_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} (\S+)$'
)


async def request_counts(client: BenchClient) -> dict[str, float]:
    """``{route: requests}`` from the server's ``/metrics`` (empty if unavailable)."""
    try:
        response = await client.http.get(client.url + "/metrics", headers=client.auth)
        response.raise_for_status()
    except httpx.HTTPError:
        return {}
    counts: dict[str, float] = collections.defaultdict(float)
    for line in response.text.splitlines():
        match = _METRIC.match(line)
        if match:
            counts[f"{match[1]} {match[2]} {match[3]}"] += float(match[4])
    return dict(counts)


async def run_scenario(
    stack: Stack,
    client: BenchClient,
    scenario: Scenario,
    *,
    wait: str = "result",
    shape: str | None = None,
    budget: float = 300.0,
) -> dict[str, Any]:
    """Run ``scenario`` on ``stack``; returns its figures (see :func:`summarise`).

    ``wait``: how each submitter waits for its run — ``result`` (the client's
    ``run()``: one start held until the run ends, ``wait()`` after it), ``events`` (the event stream, checked against the
    stored history afterwards) or ``poll`` (GET the run every 50 ms).
    """
    shape = shape or scenario.key
    name = stack.definition_name(shape)
    n = scenario.workflows
    results: list[dict[str, Any] | None] = [None] * n
    histories: dict[str, list[dict[str, Any]]] = {}
    indexes = iter(range(n))

    async def submitter() -> None:
        async with client.own() as mine:
            await submit_until_done(mine)

    async def submit_until_done(client: BenchClient) -> None:
        for i in indexes:
            t0 = time.perf_counter()
            wid = None
            try:
                if wait == "result":  # one start held until the run ends (then wait())
                    done = await client.kf.run(name, {"i": i})
                    wid, status = done["workflow_id"], done["status"]
                    results[i] = {"t0": t0, "t1": time.perf_counter(), "status": status, "id": wid}
                    continue
                run = await client.kf.start(name, {"i": i})
                wid = run["workflow_id"]
                if wait == "events":
                    status, events = await wait_events(client, wid)
                    histories[wid] = events
                else:
                    status = await wait_poll(client, wid)
                results[i] = {"t0": t0, "t1": time.perf_counter(), "status": status, "id": wid}
            except Exception as exc:  # reported per run; the scenario goes on
                results[i] = {
                    "t0": t0,
                    "t1": time.perf_counter(),
                    "status": " ".join(f"error: {type(exc).__name__}: {exc}".split())[:200],
                    "id": wid,
                }

    load = os.getloadavg()[0]
    before = await request_counts(client)
    writes_before = await _write_transactions(stack)
    pg_started = await _postmaster_started(stack)
    stack.sampler.begin()
    with trio.move_on_after(budget) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(scenario.submitters):
                nursery.start_soon(submitter)
    resources = stack.sampler.end()
    after = await request_counts(client)
    writes_after = await _write_transactions(stack)
    ids = [r["id"] for r in results if r and r["id"]]
    stored: dict[str, list[dict[str, Any]]] = {}
    with trio.move_on_after(120):
        stored = await fetch_events(client, ids)
    figures = summarise(results, n, timed_out=scope.cancelled_caught)
    figures["executions"] = check_executions(
        {wid: stored.get(wid, []) for wid in ids}, activity_keys(shape)
    )
    figures["executions"]["source"] = "stored history (GET /workflows/{id}/events)"
    if wait == "events":
        figures.update(stream_gaps(histories, stored))
    figures["resources"] = resources
    figures["requests"] = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    activities = figures["completed"] * scenario.activities_per_workflow
    if writes_before is not None and writes_after is not None and activities:
        writes = writes_after - writes_before
        figures["db_write_transactions_per_activity"] = rnd(writes / activities, 2)
    if pg_started is not None and pg_started != await _postmaster_started(stack):
        figures["fault"] = "PostgreSQL restarted during this scenario (not by the bench)"
    figures["load_1m_before"] = round(load, 2)
    figures["wait"] = wait
    figures["workflows"] = n
    figures["submitters"] = scenario.submitters
    return figures


async def _write_transactions(stack: Stack) -> int | None:
    """The PostgreSQL cluster's next transaction id (see :func:`bench.pg.next_transaction_id`)."""
    if stack.db_name is None:
        return None
    try:
        return await trio.to_thread.run_sync(pg.next_transaction_id)
    except Exception:
        return None


async def _postmaster_started(stack: Stack) -> str | None:
    if stack.db_name is None:
        return None
    try:
        return await trio.to_thread.run_sync(pg.postmaster_started)
    except Exception:  # down right now: a later comparison shows the restart
        return "unreachable"


def summarise(results: list[dict[str, Any] | None], n: int, *, timed_out: bool) -> dict[str, Any]:
    """Throughput, latency percentiles and success of one scenario run."""
    done = [r for r in results if r is not None]
    ok = [r for r in done if r["status"] == "completed"]
    errors = collections.Counter(r["status"] for r in done if r["status"] != "completed")
    if len(done) < n:
        errors["not finished (budget)"] += n - len(done)
    first = min((r["t0"] for r in done), default=None)
    last = max((r["t1"] for r in ok), default=None)
    wall = (last - first) if first is not None and last is not None else None
    latencies = [(r["t1"] - r["t0"]) * 1000 for r in ok]
    return {
        "completed": len(ok),
        "success_rate": len(ok) / n if n else None,
        "wall_s": rnd(wall, 3),
        "throughput_wf_s": rnd(len(ok) / wall, 2) if wall else None,
        "p50_ms": rnd(percentile(latencies, 50)),
        "p95_ms": rnd(percentile(latencies, 95)),
        "p99_ms": rnd(percentile(latencies, 99)),
        "max_ms": rnd(max(latencies, default=None) if latencies else None),
        "errors": dict(errors.most_common(5)),
        "timed_out": timed_out,
    }
