"""The ``celery`` configuration: a Celery worker (threads pool) on Redis, driven by
:mod:`bench.celery_client` in a process of its own.

Redis is the machine's (``KFLOW_BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/13``): the bench flushes that database number before
and after, and counts it as the "server" of this configuration (its CPU and
RSS, by the pid Redis reports in ``INFO``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from typing import Any

import trio

from bench.kflow_side import summarise
from bench.procs import BenchError, ProcSet, Sampler, Unavailable
from bench.shapes import Scenario

REPO = pathlib.Path(__file__).resolve().parents[1]
CONCURRENCY = 16


def redis_url(env: dict[str, str]) -> str:
    return env.get("KFLOW_BENCH_REDIS_URL") or "redis://127.0.0.1:6379/13"


def redis_info(url: str) -> dict[str, Any]:
    """Ping Redis, flush the bench's database, return ``INFO server``.

    Raises:
        Unavailable: Redis cannot be reached.
    """
    import redis

    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
        conn.ping()
        conn.flushdb()
        info = conn.info("server")
    except redis.RedisError as exc:
        raise Unavailable(f"Redis unreachable at {url}: {exc}") from exc
    return {"version": info.get("redis_version"), "pid": int(info.get("process_id", 0))}


def _flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()


def exec_counts(url: str) -> dict[str, int]:
    import redis

    from bench.celery_app import EXEC_KEY

    raw = redis.Redis.from_url(url, socket_connect_timeout=3).hgetall(EXEC_KEY)
    return {k.decode(): int(v) for k, v in raw.items()}


def _clear_counts(url: str) -> None:
    import redis

    from bench.celery_app import EXEC_KEY

    redis.Redis.from_url(url, socket_connect_timeout=3).delete(EXEC_KEY)


class _Lines:
    """Lines of a child's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise BenchError("the celery client closed its output early")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def run_celery(
    workdir: pathlib.Path,
    env: dict[str, str],
    scenarios: list[Scenario],
    *,
    budget: float = 300.0,
) -> dict[str, Any]:
    """Run every scenario on Celery; returns ``{"scenarios": {key: figures}, ...}``.

    Raises:
        Unavailable: Redis is down.
        BenchError: the worker or a client failed.
    """
    url = redis_url(env)
    info = await trio.to_thread.run_sync(redis_info, url)
    workdir.mkdir(parents=True, exist_ok=True)
    child_env = {**env, "KFLOW_BENCH_REDIS_URL": url, "PYTHONPATH": str(REPO)}
    procs = ProcSet(workdir, child_env)
    out: dict[str, Any] = {"redis_version": info["version"], "scenarios": {}}
    try:
        worker = procs.spawn(
            "celery-worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_app",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(CONCURRENCY),
                "--prefetch-multiplier",
                "1",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                "kflow_bench",
                "-n",
                "kflow-bench@%h",
            ],
            cwd=REPO,
        )
        sampler = Sampler({"server": lambda: [info["pid"]], "workers": lambda: [worker.pid]})
        async with trio.open_nursery() as nursery:
            await nursery.start(sampler.run)
            for scenario in scenarios:
                if not worker.alive():
                    raise worker.died()
                out["scenarios"][scenario.key] = await _scenario(
                    scenario, url, child_env, sampler, budget
                )
            nursery.cancel_scope.cancel()
    finally:
        await procs.close()
        with trio.CancelScope(shield=True):
            with contextlib.suppress(Exception):  # Redis went away: nothing left to clean
                await trio.to_thread.run_sync(_flush, url)
    return out


async def _scenario(
    scenario: Scenario, url: str, env: dict[str, str], sampler: Sampler, budget: float
) -> dict[str, Any]:
    from bench.celery_app import steps

    argv = [
        sys.executable,
        "-m",
        "bench.celery_client",
        scenario.key,
        str(scenario.workflows),
        str(scenario.submitters),
        "--warmup",
        "4",
    ]
    process = await trio.lowlevel.open_process(
        argv, stdin=-1, stdout=-1, stderr=None, env=env, cwd=str(REPO)
    )
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        lines = _Lines(process.stdout)
        with trio.fail_after(90):
            ready = json.loads(await lines.next())
        if ready.get("warmup_ok") != 4:
            raise BenchError(f"celery warm-up failed ({ready}): is the worker running?")
        await trio.to_thread.run_sync(_clear_counts, url)
        load = os.getloadavg()[0]
        sampler.groups["client"] = lambda: [process.pid]
        sampler.begin()
        await process.stdin.send_all(b"go\n")
        timed_out = False
        results: list[dict[str, Any] | None] = [None] * scenario.workflows
        with trio.move_on_after(budget) as scope:
            results = json.loads(await lines.next())["results"]
        timed_out = scope.cancelled_caught
        resources = sampler.end()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
    figures = summarise(results, scenario.workflows, timed_out=timed_out)
    counts = await trio.to_thread.run_sync(exec_counts, url)
    figures["executions"] = _executions(results, counts, steps(scenario.key))
    figures["resources"] = resources
    figures["load_1m_before"] = round(load, 2)
    figures["wait"] = "AsyncResult.get"
    figures["workflows"] = scenario.workflows
    figures["submitters"] = scenario.submitters
    return figures


def _executions(
    results: list[dict[str, Any] | None], counts: dict[str, int], keys: list[str]
) -> dict[str, Any]:
    expected = 0
    executions = 0
    bad: list[str] = []
    for r in results:
        if r is None:
            continue
        for key in keys:
            n = counts.get(f"{r['id']}:{key}", 0)
            expected += 1
            executions += n
            if n != 1:
                bad.append(f"{r['id']}/{key}: executed {n}")
    return {
        "activities": expected,
        "executions": executions,
        "exec_per_activity": executions / expected if expected else None,
        "exactly_once": not bad and expected > 0,
        "violations": len(bad),
        "violation_examples": bad[:5],
        "source": "the task's own counter in Redis (Celery keeps no history)",
    }
