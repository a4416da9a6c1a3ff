"""kflow as real processes: a server, worker processes, SIGKILL and restarts."""

from __future__ import annotations

import collections

import pytest
import trio

from tests.processes import Cluster

pytestmark = pytest.mark.slow

WORKER = "tests.acceptance.activities_for_tests:registry"

BRANCHING = """
name: branching
activities:
  - {key: start, worker: acceptance, activity_name: add, parameters: {values: "{{ INPUT.values }}"}}
  - key: classify
    worker: acceptance
    activity_name: classify
    depends_on: [start]
    parameters: {n: "{{ start.sum }}", limit: 10}
  - key: big
    worker: acceptance
    activity_name: add
    depends_on: [{activity_key: classify, conditions: ["{{ classify.kind == 'big' }}"]}]
    parameters: {values: ["{{ start.sum }}", 1000]}
  - key: small
    worker: acceptance
    activity_name: add
    depends_on: [{activity_key: classify, conditions: ["{{ classify.kind == 'small' }}"]}]
    parameters: {values: ["{{ start.sum }}", 1]}
  - key: fan_a
    worker: acceptance
    activity_name: add
    depends_on: [start]
    parameters: {values: [1, 2]}
  - key: fan_b
    worker: acceptance
    activity_name: add
    depends_on: [start]
    parameters: {values: [3, 4]}
  - key: join
    worker: acceptance
    activity_name: add
    depends_on:
      - fan_a
      - fan_b
      - {activity_key: big, conditions: ["{{ big.status == 'completed' }}"]}
      - {activity_key: small, conditions: ["{{ small.status == 'completed' }}"]}
    parameters: {values: ["{{ fan_a.sum }}", "{{ fan_b.sum }}"]}
"""


def outputs(run: dict) -> dict[str, dict]:
    return {
        a["activity_key"]: {o["name"]: o["value"] for o in a["outputs"]} for a in run["activities"]
    }


def assert_each_completed_once(cluster: Cluster, workflow_id: str) -> None:
    completed = cluster.query(
        "SELECT activity_key, iteration, COUNT(*) FROM attempts WHERE workflow_id = ? "
        "AND outcome = 'completed' GROUP BY activity_key, iteration",
        workflow_id,
    )
    assert all(count == 1 for _, _, count in completed), completed
    events = cluster.query(
        "SELECT activity_key, COUNT(*) FROM events WHERE workflow_id = ? "
        "AND type = 'activity.completed' GROUP BY activity_key",
        workflow_id,
    )
    assert all(count == 1 for _, count in events), events


async def test_server_and_worker_processes_run_a_branching_workflow(cluster: Cluster) -> None:
    await cluster.serve("--no-worker")
    await cluster.worker(WORKER)
    async with cluster.client() as kf:
        await kf.deploy(BRANCHING)
        big = await kf.start("branching", {"values": [5, 6, 7]})
        small = await kf.start("branching", {"values": [1, 2]})
        done_big = await kf.wait(big["workflow_id"], timeout=60)
        done_small = await kf.wait(small["workflow_id"], timeout=60)
    assert done_big["status"] == "completed", done_big
    assert done_small["status"] == "completed", done_small
    by_key = {a["activity_key"]: a["status"] for a in done_big["activities"]}
    assert by_key["big"] == "completed"
    assert by_key["small"] == "skipped"
    assert outputs(done_big)["big"] == {"sum": 1018}
    assert outputs(done_small)["small"] == {"sum": 4}
    assert outputs(done_big)["join"] == {"sum": 10}
    runs = collections.Counter((w, k) for w, k, _ in cluster.ledger_lines())
    assert all(count == 1 for count in runs.values()), runs
    assert len(runs) == 12  # 6 executed activities in each run
    assert_each_completed_once(cluster, big["workflow_id"])
    # Both long-running processes froze their start-up objects (kflow._gc).
    assert [("process.gc_frozen" in p.output()) for p in cluster.procs] == [True, True]


SLOW = """
name: slow
activities:
  - key: slow
    worker: acceptance
    activity_name: add
    settings: {timeout_seconds: 3}
    parameters: {values: [1, 2, 3], sleep: 60, sleep_attempt: 1}
  - {key: after, worker: acceptance, activity_name: add, depends_on: [slow],
     parameters: {values: ["{{ slow.sum }}"]}}
"""


async def test_killed_worker_activity_is_redispatched_after_its_lease(cluster: Cluster) -> None:
    await cluster.serve("--no-worker")
    first = await cluster.worker(WORKER)
    async with cluster.client() as kf:
        await kf.deploy(SLOW)
        run = await kf.start("slow")
        workflow_id = run["workflow_id"]
        with trio.fail_after(30):
            while (await kf.status(workflow_id))["activities"][0]["status"] != "running":
                await trio.sleep(0.1)
        first.kill()  # SIGKILL mid-activity: no report, no outbox entry
        await first.wait(10)
        await cluster.worker(WORKER)
        done = await kf.wait(workflow_id, timeout=60)
    assert done["status"] == "completed", done
    assert outputs(done)["after"] == {"sum": 6}
    attempts = cluster.query(
        "SELECT attempt, outcome FROM attempts WHERE workflow_id = ? AND "
        "activity_key = 'slow' ORDER BY attempt",
        workflow_id,
    )
    assert attempts == [(1, "lease_expired"), (2, "completed")]
    slow_runs = [a for w, k, a in cluster.ledger_lines() if k == "slow"]
    assert slow_runs == [2]  # the killed attempt never finished
    assert_each_completed_once(cluster, workflow_id)


CHAIN = """
name: chain
activities:
  - {key: s1, worker: acceptance, activity_name: add, parameters: {values: [1], sleep: 0.4}}
  - {key: s2, worker: acceptance, activity_name: add, depends_on: [s1],
     parameters: {values: ["{{ s1.sum }}", 1], sleep: 0.4}}
  - {key: s3, worker: acceptance, activity_name: add, depends_on: [s2],
     parameters: {values: ["{{ s2.sum }}", 1], sleep: 0.4}}
  - {key: s4, worker: acceptance, activity_name: add, depends_on: [s3],
     parameters: {values: ["{{ s3.sum }}", 1], sleep: 0.4}}
  - {key: s5, worker: acceptance, activity_name: add, depends_on: [s4],
     parameters: {values: ["{{ s4.sum }}", 1], sleep: 0.4}}
"""


async def test_server_killed_and_restarted_mid_workflow_resumes(cluster: Cluster) -> None:
    server = await cluster.serve("--no-worker")
    await cluster.worker(WORKER)
    async with cluster.client() as kf:
        await kf.deploy(CHAIN)
        runs = [(await kf.start("chain"))["workflow_id"] for _ in range(3)]
        with trio.fail_after(30):
            while not any(k == "s2" for _, k, _ in cluster.ledger_lines()):
                await trio.sleep(0.05)
    server.kill()  # SIGKILL: no graceful anything
    await server.wait(10)
    await trio.sleep(1.0)  # the worker keeps working and retrying its reports meanwhile
    await cluster.serve("--no-worker")
    async with cluster.client() as kf:
        finished = [await kf.wait(workflow_id, timeout=60) for workflow_id in runs]
    for run in finished:
        assert run["status"] == "completed", run
        assert outputs(run)["s5"] == {"sum": 5}
    executions = collections.Counter((w, k) for w, k, _ in cluster.ledger_lines())
    assert sorted(executions.values()) == [1] * 15, executions
    for workflow_id in runs:
        assert_each_completed_once(cluster, workflow_id)
