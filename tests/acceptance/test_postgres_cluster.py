"""Proof under load: two kflow servers on one PostgreSQL database, real worker processes.

Every test runs the same topology: two ``kflow serve --no-worker`` processes
(servers ``a`` and ``b``, each on its own port) sharing one database, and four
``kflow worker`` processes of the acceptance registry, two per server (a worker
talks to the one ``--api-url`` it was given, and keeps its outbox in a state
directory of its own, as on separate machines). Runs of a fan-out workflow
(start → N parallel ``add`` → join) are started through both servers.

The oracle is outside kflow: the ledger the activities append to counts
executions across processes, and the ``attempts`` and ``events`` tables say
what the servers recorded. Figures (wall time, throughput, recovery time) are
printed and repeated in the "kflow figures" section of the terminal summary;
they are never asserted.

The PostgreSQL test restarts the local cluster serving the test database
(``pg_ctlcluster``): anything else using that cluster at the time sees its
connections dropped.
"""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import httpx
import psycopg
import pytest
import trio

from tests.processes import CLIENT_ID, CLIENT_SECRET, Cluster, Proc, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKER = "tests.acceptance.activities_for_tests:registry"
TERMINAL = ("completed", "failed", "cancelled")
SERVERS = ("a", "b")
WORKERS_PER_SERVER = 2


# -- the workload ---------------------------------------------------------------------


def fan_out(name: str, width: int, *, timeout_seconds: int, sleep: float = 0.0) -> dict[str, Any]:
    """``start`` → ``width`` parallel ``add`` branches → ``join``: ``width + 2`` activities.

    Branch ``i`` adds ``i`` to the start's sum, the join sums the branches, so
    a run with input ``values`` V ends with ``join.sum == expected_join(width, V)``.
    """

    def add(key: str, values: Any, depends_on: list[str] | None = None) -> dict[str, Any]:
        activity: dict[str, Any] = {
            "key": key,
            "worker": "acceptance",
            "activity_name": "add",
            "settings": {"timeout_seconds": timeout_seconds},
            "parameters": {"values": values, "sleep": sleep},
        }
        if depends_on:
            activity["depends_on"] = depends_on
        return activity

    branches = branch_keys(width)
    return {
        "name": name,
        "activities": [
            add("start", "{{ INPUT.values }}"),
            *(add(key, [i, "{{ start.sum }}"], ["start"]) for i, key in enumerate(branches)),
            add("join", [f"{{{{ {key}.sum }}}}" for key in branches], branches),
        ],
    }


def branch_keys(width: int) -> list[str]:
    return [f"f{i:03d}" for i in range(width)]


def activity_keys(width: int) -> list[str]:
    return ["start", *branch_keys(width), "join"]


def expected_join(width: int, values: list[int]) -> int:
    return width * (width - 1) // 2 + width * sum(values)


# -- the topology -----------------------------------------------------------------------


@attrs.define
class Topology:
    """Two servers on one database, two workers per server."""

    cluster: Cluster
    ports: dict[str, int]
    servers: dict[str, Proc]
    #: server name → ids of the workers talking to it
    worker_ids: dict[str, list[str]]

    def url(self, server: str) -> str:
        return self.cluster.url_of(self.ports[server])

    async def restart(self, server: str) -> Proc:
        """Start ``server`` again on its port (as systemd would after a crash)."""
        proc = await self.cluster.serve(
            "--no-worker", port=self.ports[server], name=f"server-{server}"
        )
        self.servers[server] = proc
        return proc


async def start_topology(cluster: Cluster, *, fail_over: bool = False) -> Topology:
    """Start the servers and workers; with ``fail_over`` each worker is given its own
    server first and the other one second (``--api-url a,b``)."""
    ports = {"a": cluster.port, "b": free_port()}
    servers: dict[str, Proc] = {}
    for name in SERVERS:  # one after the other: see test_two_servers_started_at_once_...
        servers[name] = await cluster.serve("--no-worker", port=ports[name], name=f"server-{name}")
    worker_ids: dict[str, list[str]] = {}
    for name in SERVERS:
        worker_ids[name] = []
        for index in range(1, WORKERS_PER_SERVER + 1):
            worker_id = f"w-{name}{index}"
            worker_ids[name].append(worker_id)
            other = "b" if name == "a" else "a"
            urls = [cluster.url_of(ports[name])] + (
                [cluster.url_of(ports[other])] if fail_over else []
            )
            await cluster.worker(
                WORKER,
                api_url=",".join(urls),
                name=f"worker-{name}{index}",
                extra_env={
                    "KRUXIAFLOW_WORKER_ID": worker_id,
                    "KFLOW_WORKER_STATE_DIR": str(cluster.tmp / f"state-{worker_id}"),
                },
            )
    everyone = sorted(w for ids in worker_ids.values() for w in ids)
    with trio.fail_after(30):  # every worker has polled its server once
        while (
            sorted(r[0] for r in await query(cluster, "SELECT worker_id FROM workers")) != everyone
        ):
            await trio.sleep(0.1)
    return Topology(cluster=cluster, ports=ports, servers=servers, worker_ids=worker_ids)


async def start_runs(
    topology: Topology, definition: dict[str, Any], runs_per_server: int
) -> dict[str, list[int]]:
    """Deploy ``definition`` and start runs through both servers at once; id → input values."""
    async with topology.cluster.client(topology.url("a")) as kf:
        await kf.deploy(definition)
    started: dict[str, list[int]] = {}

    async def start_on(server: str) -> None:
        async with topology.cluster.client(topology.url(server)) as kf:
            for index in range(runs_per_server):
                values = [index, 1 if server == "a" else 2]
                run = await kf.start(definition["name"], {"values": values})
                started[run["workflow_id"]] = values

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for server in SERVERS:
                nursery.start_soon(start_on, server)
    return started


# -- looking at the database --------------------------------------------------------------


async def query(cluster: Cluster, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(lambda: cluster.query(sql, *params))


async def query_retrying(cluster: Cluster, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """:func:`query`, waiting out PostgreSQL being down (the caller bounds the wait)."""
    while True:
        try:
            return await query(cluster, sql, *params)
        except psycopg.OperationalError:
            await trio.sleep(0.1)


def executions(cluster: Cluster) -> int:
    """Executions so far: complete ledger lines (workers may be mid-write)."""
    return cluster.ledger.read_bytes().count(b"\n") if cluster.ledger.exists() else 0


async def wait_finished(cluster: Cluster, count: int, timeout: float) -> None:
    """Wait until ``count`` runs are in a final state; on timeout, say what is stuck."""
    try:
        with trio.fail_after(timeout):
            while True:
                rows = await query_retrying(
                    cluster, "SELECT COUNT(*) FROM workflows WHERE status = ANY(?)", list(TERMINAL)
                )
                if rows[0][0] >= count:
                    return
                await trio.sleep(0.2)
    except trio.TooSlowError:
        statuses = await query(cluster, "SELECT status, COUNT(*) FROM workflows GROUP BY status")
        stuck = await query(
            cluster,
            "SELECT workflow_id::text, key, status, attempt, worker_id, lease_expires_at "
            "FROM activities WHERE status NOT IN ('completed', 'skipped') ORDER BY 1, 2 LIMIT 30",
        )
        raise AssertionError(
            f"runs not finished after {timeout} s: {statuses}; "
            f"{executions(cluster)} executions; unfinished activities: {stuck}"
        ) from None


async def completed_by(cluster: Cluster, worker_ids: list[str]) -> int:
    rows = await query_retrying(
        cluster,
        "SELECT COUNT(*) FROM attempts WHERE outcome = 'completed' AND worker_id = ANY(?)",
        worker_ids,
    )
    return int(rows[0][0])


async def wait_completion_beyond(cluster: Cluster, worker_ids: list[str], baseline: int) -> None:
    """Return once a completion by one of ``worker_ids`` is committed beyond ``baseline``."""
    while await completed_by(cluster, worker_ids) <= baseline:
        await trio.sleep(0.05)


async def first_completion_after_restart(cluster: Cluster, worker_ids: list[str]) -> float:
    """Seconds from PostgreSQL's (re)start to the first completion by one of
    ``worker_ids`` that started after it, once there is one.

    Counted from the database's own clock, not from when the test looked: the
    workers may finish everything before the test's first query after the
    restart gets through.
    """
    [(started,)] = await query_retrying(cluster, "SELECT pg_postmaster_start_time()")
    while True:
        [(first,)] = await query_retrying(
            cluster,
            "SELECT MIN(finished_at) FROM attempts "
            "WHERE outcome = 'completed' AND worker_id = ANY(?) AND finished_at >= ?",
            worker_ids,
            started,
        )
        if first is not None:
            return float((first - started).total_seconds())
        await trio.sleep(0.05)


async def check_runs(topology: Topology, runs: dict[str, list[int]], width: int) -> None:
    """Every run completed, with the right join, as both servers tell it."""
    async with (
        topology.cluster.client(topology.url("a")) as on_a,
        topology.cluster.client(topology.url("b")) as on_b,
    ):
        for index, (workflow_id, values) in enumerate(runs.items()):
            run = await (on_a, on_b)[index % 2].status(workflow_id)
            assert run["status"] == "completed", run
            outputs = {
                a["activity_key"]: {o["name"]: o["value"] for o in a["outputs"]}
                for a in run["activities"]
            }
            assert outputs["join"] == {"sum": expected_join(width, values)}, (workflow_id, outputs)
            assert len(outputs) == width + 2


@attrs.frozen
class Audit:
    """What the ledger and the database say about every (run, activity)."""

    activities: int
    executions: int
    duplicates: dict[tuple[str, str], int]
    never_executed: list[tuple[str, str]]
    #: (run, key) → number of completed attempts
    completed: collections.Counter[tuple[str, str]]
    #: attempts that did not complete: (run, key, attempt, worker_id, outcome)
    other_attempts: list[tuple[str, str, int, str, str]]
    #: (run, key) → number of ``activity.started`` events
    started: collections.Counter[tuple[str, str]]
    #: (run, key) → number of ``activity.released`` events (a claim put back unexecuted)
    released: collections.Counter[tuple[str, str]]
    #: (run, key, attempt) of every execution
    executed_attempts: set[tuple[str, str, int]]

    def summary(self) -> str:
        return (
            f"{self.activities} activities, {self.executions} executions, "
            f"{sum(n - 1 for n in self.duplicates.values())} duplicate executions, "
            f"{len(self.other_attempts)} attempts that did not complete"
        )


async def event_counts(cluster: Cluster, event_type: str) -> collections.Counter[tuple[str, str]]:
    """(run, key) → how many events of ``event_type`` the history holds."""
    rows = await query(
        cluster,
        "SELECT workflow_id::text, activity_key, COUNT(*) FROM events "
        f"WHERE type = '{event_type}' GROUP BY 1, 2",
    )
    return collections.Counter({(run, key): count for run, key, count in rows})


async def audit(cluster: Cluster, runs: dict[str, list[int]], width: int) -> Audit:
    expected = {(run, key) for run in runs for key in activity_keys(width)}
    ledger = cluster.ledger_lines()
    counted = collections.Counter((w, k) for w, k, _ in ledger)
    completed: collections.Counter[tuple[str, str]] = collections.Counter()
    other = []
    for run, key, attempt, worker_id, outcome in await query(
        cluster,
        "SELECT workflow_id::text, activity_key, attempt, worker_id, outcome FROM attempts",
    ):
        if outcome == "completed":
            completed[(run, key)] += 1
        else:
            other.append((run, key, attempt, worker_id, outcome))
    started = await event_counts(cluster, "activity.started")
    released = await event_counts(cluster, "activity.released")
    return Audit(
        activities=len(expected),
        executions=len(ledger),
        duplicates={pair: n for pair, n in counted.items() if n > 1},
        never_executed=sorted(expected - set(counted)),
        completed=completed,
        other_attempts=sorted(other),
        started=started,
        released=released,
        executed_attempts={(w, k, a) for w, k, a in ledger},
    )


def assert_exactly_once(found: Audit, runs: dict[str, list[int]], width: int) -> None:
    """Each activity ran once (ledger) and completed once (attempts); every activity that
    did not complete on its first claim is a claim whose answer never reached a worker:
    its lease expired, or it was put back (released) when that showed."""
    expected = {(run, key) for run in runs for key in activity_keys(width)}
    assert found.duplicates == {}, f"executed more than once: {found.duplicates}"
    assert found.never_executed == [], f"never executed: {found.never_executed[:20]}"
    assert found.executions == found.activities
    assert set(found.completed) == expected
    assert set(found.completed.values()) == {1}, {
        pair: n for pair, n in found.completed.items() if n != 1
    }
    for run, key, attempt, worker_id, outcome in found.other_attempts:
        # Only a lease that expired on an attempt no worker ever executed is acceptable.
        assert outcome == "lease_expired", (run, key, attempt, worker_id, outcome)
        assert (run, key, attempt) not in found.executed_attempts, (run, key, attempt, worker_id)
    claims = collections.Counter((run, key) for run, key, *_ in found.other_attempts)
    wrong = {
        pair: (found.started.get(pair, 0), 1 + claims[pair] + found.released[pair])
        for pair in expected
        if found.started.get(pair, 0) != 1 + claims[pair] + found.released[pair]
    }
    assert wrong == {}, f"activity.started events (found, expected): {wrong}"


def log_lines(cluster: Cluster, prefix: str, needle: str) -> int:
    return sum(
        proc.output().count(needle) for proc in cluster.procs if proc.name.startswith(prefix)
    )


# -- 1. exactly once under load --------------------------------------------------------------

LOAD_WIDTH = 48  # 50 activities per run
LOAD_RUNS_PER_SERVER = 20  # 40 runs: 2,000 activities


async def test_two_servers_four_workers_run_2000_activities_exactly_once(
    pg_cluster: Cluster, figures: Callable[[str], None]
) -> None:
    cluster = pg_cluster
    topology = await start_topology(cluster)
    definition = fan_out("load", LOAD_WIDTH, timeout_seconds=60)
    began = trio.current_time()
    runs = await start_runs(topology, definition, LOAD_RUNS_PER_SERVER)
    assert len(runs) * (LOAD_WIDTH + 2) >= 2000
    await wait_finished(cluster, len(runs), timeout=120)
    wall = trio.current_time() - began

    await check_runs(topology, runs, LOAD_WIDTH)
    found = await audit(cluster, runs, LOAD_WIDTH)
    assert_exactly_once(found, runs, LOAD_WIDTH)
    assert found.other_attempts == []  # no lease expired, nothing failed
    assert set(found.started.values()) == {1}  # no activity was leased twice
    by_worker = dict(
        await query(
            cluster,
            "SELECT worker_id, COUNT(*) FROM attempts GROUP BY worker_id ORDER BY worker_id",
        )
    )
    figures(
        f"[load] {len(runs)} runs of {LOAD_WIDTH + 2} activities through 2 servers, 4 workers: "
        f"{found.summary()}; wall {wall:.1f} s, {found.activities / wall:.0f} activities/s; "
        f"completions per worker {by_worker}"
    )


# -- 2. a server killed mid-run -----------------------------------------------------------------

CHAOS_WIDTH = 48
CHAOS_RUNS_PER_SERVER = 6  # 12 runs: 600 activities
#: Short enough that a claim lost with a dead server is re-dispatched within the test,
#: long enough that no lease of an attempt a worker holds expires during the outage.
CHAOS_TIMEOUT_SECONDS = 20
CHAOS_SLEEP = 0.1


async def test_server_killed_mid_run_restarts_and_every_activity_runs_once(
    pg_cluster: Cluster, figures: Callable[[str], None]
) -> None:
    cluster = pg_cluster
    topology = await start_topology(cluster)
    definition = fan_out(
        "killed", CHAOS_WIDTH, timeout_seconds=CHAOS_TIMEOUT_SECONDS, sleep=CHAOS_SLEEP
    )
    began = trio.current_time()
    runs = await start_runs(topology, definition, CHAOS_RUNS_PER_SERVER)
    total = len(runs) * (CHAOS_WIDTH + 2)
    with trio.fail_after(60):
        while executions(cluster) < total // 3:
            await trio.sleep(0.02)

    victims = topology.worker_ids["b"]
    in_flight = await query(
        cluster,
        "SELECT COUNT(*) FROM activities WHERE status = 'running' AND worker_id = ANY(?)",
        victims,
    )
    assert in_flight[0][0] > 0  # the scenario: b's workers are busy when b dies
    killed_at = trio.current_time()
    topology.servers["b"].kill()  # SIGKILL: no graceful anything
    await topology.servers["b"].wait(10)
    baseline = await completed_by(cluster, victims)
    survivors_before = await completed_by(cluster, topology.worker_ids["a"])
    done_at_kill = executions(cluster)
    await trio.sleep(1.0)  # its workers keep working and retrying their reports meanwhile
    survivors_during = await completed_by(cluster, topology.worker_ids["a"]) - survivors_before
    await topology.restart("b")
    ready = trio.current_time() - killed_at
    with trio.fail_after(60):
        await wait_completion_beyond(cluster, victims, baseline)
    recovery = trio.current_time() - killed_at

    await wait_finished(cluster, len(runs), timeout=90)
    wall = trio.current_time() - began
    await check_runs(topology, runs, CHAOS_WIDTH)
    found = await audit(cluster, runs, CHAOS_WIDTH)
    assert_exactly_once(found, runs, CHAOS_WIDTH)
    lost_claims = [a for a in found.other_attempts if a[3] in victims]
    assert len(lost_claims) == len(found.other_attempts)  # only server b's workers lost any
    deferred = log_lines(cluster, "worker-b", "worker.report.deferred")
    repeated = log_lines(cluster, "worker-b", "attempt already reported as completed")
    figures(
        f"[server killed] {len(runs)} runs, {found.summary()}; killed server b after "
        f"{done_at_kill} executions with {in_flight[0][0]} activities running on its workers; "
        f"server a's workers completed {survivors_during} activities in the 1 s it was down; "
        f"b answering again after {ready:.1f} s; first completion acknowledged by the restarted "
        f"server {recovery:.1f} s after the kill; {deferred} reports of b's workers deferred to "
        f"the outbox, {repeated} of them committed before the kill (acknowledged again as "
        f"already completed); {len(lost_claims)} claims lost with the killed server (lease "
        f"expired, never executed, re-dispatched); {sum(found.released.values())} next steps "
        f"put back when their report was repeated; wall {wall:.1f} s"
    )


async def test_workers_given_both_servers_carry_on_when_one_dies_for_good(
    pg_cluster: Cluster, figures: Callable[[str], None]
) -> None:
    cluster = pg_cluster
    topology = await start_topology(cluster, fail_over=True)
    definition = fan_out(
        "fail_over", CHAOS_WIDTH, timeout_seconds=CHAOS_TIMEOUT_SECONDS, sleep=CHAOS_SLEEP
    )
    began = trio.current_time()
    runs = await start_runs(topology, definition, CHAOS_RUNS_PER_SERVER)
    total = len(runs) * (CHAOS_WIDTH + 2)
    with trio.fail_after(60):
        while executions(cluster) < total // 3:
            await trio.sleep(0.02)
    victims = topology.worker_ids["b"]
    killed_at = trio.current_time()
    topology.servers["b"].kill()  # for good: its workers must move to server a
    await topology.servers["b"].wait(10)
    baseline = await completed_by(cluster, victims)
    with trio.fail_after(60):
        await wait_completion_beyond(cluster, victims, baseline)
    moved = trio.current_time() - killed_at
    await wait_finished(cluster, len(runs), timeout=90)
    wall = trio.current_time() - began
    async with cluster.client(topology.url("a")) as kf:
        for workflow_id in runs:
            assert (await kf.status(workflow_id))["status"] == "completed"
    found = await audit(cluster, runs, CHAOS_WIDTH)
    assert_exactly_once(found, runs, CHAOS_WIDTH)
    switched = log_lines(cluster, "worker-b", "worker.api.fail_over")
    assert switched >= 1
    figures(
        f"[fail-over] {len(runs)} runs, {found.summary()}; server b killed for good, its "
        f"workers moved to server a ({switched} fail-overs logged) and completed work again "
        f"{moved:.1f} s after the kill; wall {wall:.1f} s"
    )


# -- 3. PostgreSQL restarted mid-run ---------------------------------------------------------------


@attrs.frozen
class LocalPostgres:
    version: str
    name: str

    def command(self, action: str) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action]


def local_postgres(url: str) -> LocalPostgres | str:
    """The local cluster serving ``url``, or why the test cannot restart it."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in (None, "", "localhost", "127.0.0.1", "::1"):
        return f"PostgreSQL at {parts.hostname} is not on this machine"
    if shutil.which("pg_ctlcluster") is None:
        return "pg_ctlcluster is not installed"
    etc = pathlib.Path("/etc/postgresql")
    versions = (
        sorted(p.name for p in etc.iterdir() if (p / "main").is_dir()) if etc.is_dir() else []
    )
    if not versions:
        return "no cluster under /etc/postgresql"
    port = str(parts.port or 5432)
    for version in versions:
        conf = etc / version / "main" / "postgresql.conf"
        text = conf.read_text(errors="replace") if conf.exists() else ""
        ports = [
            line.split("=", 1)[1].split("#", 1)[0].strip()
            for line in text.splitlines()
            if line.strip().startswith("port")
        ]
        if (ports[-1] if ports else "5432") == port:
            return LocalPostgres(version=version, name="main")
    return f"no cluster under /etc/postgresql listens on port {port}"


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} — CI must be able to restart PostgreSQL")
    pytest.skip(reason)


def pg_ctl(pg: LocalPostgres, action: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pg.command(action), capture_output=True, text=True, timeout=timeout, check=False
    )


def ensure_postgres_running(pg: LocalPostgres, url: str) -> None:
    """Start the cluster unless it runs, then wait until it accepts connections."""
    if pg_ctl(pg, "status").returncode != 0:
        pg_ctl(pg, "start")
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def test_postgres_restarted_mid_run_everyone_recovers_and_every_activity_runs_once(
    pg_cluster: Cluster, figures: Callable[[str], None]
) -> None:
    cluster = pg_cluster
    assert cluster.postgres is not None
    pg = local_postgres(cluster.postgres)
    if isinstance(pg, str):
        skip_or_fail(f"cannot restart PostgreSQL: {pg}")
    owner = (pathlib.Path("/etc/postgresql") / pg.version / pg.name).stat().st_uid
    if os.geteuid() not in (0, owner):
        skip_or_fail("not allowed to restart PostgreSQL: run the tests as root or its owner")
    try:
        await restart_postgres_mid_run(cluster, pg, figures)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(ensure_postgres_running, pg, cluster.postgres)


async def restart_postgres_mid_run(
    cluster: Cluster, pg: LocalPostgres, figures: Callable[[str], None]
) -> None:
    topology = await start_topology(cluster)
    definition = fan_out(
        "pg_restart", CHAOS_WIDTH, timeout_seconds=CHAOS_TIMEOUT_SECONDS, sleep=CHAOS_SLEEP
    )
    began = trio.current_time()
    runs = await start_runs(topology, definition, CHAOS_RUNS_PER_SERVER)
    total = len(runs) * (CHAOS_WIDTH + 2)
    with trio.fail_after(60):
        while executions(cluster) < total // 3:
            await trio.sleep(0.02)

    everyone = [w for ids in topology.worker_ids.values() for w in ids]
    in_flight = await query(cluster, "SELECT COUNT(*) FROM activities WHERE status = 'running'")
    assert in_flight[0][0] > 0  # the scenario: work is in flight when PostgreSQL goes
    done_before = executions(cluster)
    restart_began = trio.current_time()
    result = await trio.to_thread.run_sync(pg_ctl, pg, "restart")
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        if "permission" in output.lower() or "must be run as" in output.lower():
            skip_or_fail(f"not allowed to restart PostgreSQL: {output}")
        raise AssertionError(f"{' '.join(pg.command('restart'))} failed: {output}")
    outage = trio.current_time() - restart_began
    with trio.fail_after(60):
        recovery = await first_completion_after_restart(cluster, everyone)

    await wait_finished(cluster, len(runs), timeout=90)
    wall = trio.current_time() - began
    await check_runs(topology, runs, CHAOS_WIDTH)
    found = await audit(cluster, runs, CHAOS_WIDTH)
    assert_exactly_once(found, runs, CHAOS_WIDTH)
    retries = log_lines(cluster, "worker", "worker.api.retry")
    deferred = log_lines(cluster, "worker", "worker.report.deferred")
    repeated = log_lines(cluster, "worker", "attempt already reported as completed")
    figures(
        f"[postgres restarted] {len(runs)} runs, {found.summary()}; restarted PostgreSQL "
        f"{pg.version} after {done_before} executions with {in_flight[0][0]} activities "
        f"running; restart took {outage:.1f} s; first completion started "
        f"{recovery:.1f} s after PostgreSQL was up again; workers retried {retries} requests and "
        f"deferred {deferred} reports to the outbox ({repeated} acknowledged again as already "
        f"completed); {len(found.other_attempts)} claims lost (lease expired, never executed, "
        f"re-dispatched); wall {wall:.1f} s"
    )


# -- known kflow bugs, reproduced deterministically --------------------------------------------

#: Run ``kflow`` with a pause between the seed client's "does it exist?" and its INSERT,
#: widening (not creating) the window two servers starting together race through.
SLOW_SEED = """
import sys, time
from kflow.store import postgres
one = postgres.PgTx.one
def slow_one(self, query, /, **params):
    row = one(self, query, **params)
    if query == "get_client" and row is None:
        time.sleep(2.0)
    return row
postgres.PgTx.one = slow_one
from kflow.cli import main
sys.exit(main())
"""


async def test_two_servers_started_at_once_with_seed_client_both_come_up(
    pg_cluster: Cluster,
) -> None:
    cluster = pg_cluster
    ports = [cluster.port, free_port()]
    procs = []
    for index, port in enumerate(ports):
        command = [sys.executable, "-c", SLOW_SEED, "--log-format", "json", "serve"]
        command += [
            "--no-worker",
            "--seed-client",
            "--port",
            str(port),
            "--db",
            cluster.database_url,
        ]
        proc = await cluster.spawn_raw(f"server-{'ab'[index]}", command)
        proc.expected = False  # the test itself says what became of it
        procs.append(proc)
    for proc, port in zip(procs, ports, strict=True):
        await cluster.wait_ready(proc, url=cluster.url_of(port))
    await trio.sleep(0.5)
    assert all(proc.alive() for proc in procs), [p.output()[-500:] for p in procs]


async def test_a_long_poll_answers_503_while_the_database_is_unavailable(
    pg_cluster: Cluster,
) -> None:
    cluster = pg_cluster
    assert cluster.postgres is not None
    # The server's statements give up after 200 ms on a lock: with the activities table
    # locked by the test, every claim fails at once with an OperationalError, which the
    # store reports as StoreUnavailableError — as when PostgreSQL restarts (the restart
    # test's server logs show the same 500 on long polls).
    parts = urllib.parse.urlsplit(cluster.postgres)
    query_string = "options=" + urllib.parse.quote("-c lock_timeout=200")
    cluster.postgres = parts._replace(query=query_string).geturl()
    await cluster.serve("--no-worker")
    body = {"worker": "acceptance", "worker_id": "w-1", "max_activities": 1}
    credentials = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    async with httpx.AsyncClient(base_url=cluster.url + "/api/v1", timeout=30) as http:
        token = (await http.post("/oauth/token", json=credentials)).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        assert (await http.post("/workers/poll", json=body)).status_code == 200  # caches auth
        with psycopg.connect(cluster.postgres, connect_timeout=5) as locker:
            locker.execute("LOCK TABLE activities IN ACCESS EXCLUSIVE MODE")
            with trio.fail_after(20):
                short_poll = await http.post("/workers/poll", json=body)
                long_poll = await http.post("/workers/poll", json={**body, "wait_seconds": 2})
            locker.rollback()
    assert short_poll.status_code == 503, short_poll.text
    assert short_poll.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert long_poll.status_code == 503, long_poll.text
