"""The ``kruxiaflow`` SDK (from PyPI, unchanged) against a kflow server.

Its standard worker (``python -m kruxiaflow.workers``) polls kflow, runs
``script`` activities and reports them; its client deploys and starts
workflows through the routes it expects.
"""

from __future__ import annotations

import sys

import httpx
import pytest
import trio

from tests.processes import CLIENT_ID, CLIENT_SECRET, Cluster

pytestmark = pytest.mark.slow
kruxiaflow = pytest.importorskip("kruxiaflow", reason="the compat extra installs kruxiaflow")

SCRIPTED = """
name: sdk_scripts
activities:
  - key: double
    worker: py-std
    activity_name: script
    parameters:
      inputs: {n: "{{ INPUT.n }}"}
      script: |
        OUTPUT = {"doubled": INPUT["n"] * 2}
  - key: describe
    worker: py-std
    activity_name: script
    depends_on: [double]
    parameters:
      inputs: {value: "{{ double.result.doubled }}"}
      script: |
        OUTPUT = {"text": f"the answer is {INPUT['value']}"}
  - key: broken
    worker: py-std
    activity_name: script
    depends_on: [{activity_key: double, conditions: ["{{ INPUT.break | coalesce(false) }}"]}]
    parameters:
      script: |
        raise ValueError("no good")
"""


async def sdk_worker(cluster: Cluster) -> None:
    await cluster.spawn_raw(
        "sdk-worker",
        [sys.executable, "-m", "kruxiaflow.workers"],
        extra_env={"KRUXIAFLOW_API_URL": cluster.url, "KRUXIAFLOW_WORKER": "py-std"},
    )


async def test_sdk_worker_runs_script_activities_and_completes_a_workflow(
    cluster: Cluster,
) -> None:
    await cluster.serve("--no-worker")
    await sdk_worker(cluster)
    async with cluster.client() as kf:
        await kf.deploy(SCRIPTED)
        run = await kf.start("sdk_scripts", {"n": 21})
        done = await kf.wait(run["workflow_id"], timeout=60)
    assert done["status"] == "completed", done
    outputs = {a["activity_key"]: a["outputs"] for a in done["activities"]}
    assert outputs["double"] == [{"name": "result", "type": "value", "value": {"doubled": 42}}]
    assert outputs["describe"][0]["value"] == {"text": "the answer is 42"}
    statuses = {a["activity_key"]: a["status"] for a in done["activities"]}
    assert statuses["broken"] == "skipped"


async def test_sdk_script_errors_fail_the_workflow_without_retries(cluster: Cluster) -> None:
    await cluster.serve("--no-worker")
    await sdk_worker(cluster)
    async with cluster.client() as kf:
        await kf.deploy(SCRIPTED)
        run = await kf.start("sdk_scripts", {"n": 1, "break": True})
        done = await kf.wait(run["workflow_id"], timeout=60)
    assert done["status"] == "failed"
    broken = next(a for a in done["activities"] if a["activity_key"] == "broken")
    assert broken["error"]["code"] == "SCRIPT_ERROR"
    assert broken["attempt"] == 1
    assert "no good" in done["error_message"]


async def test_sdk_client_deploys_starts_and_reads_a_workflow(cluster: Cluster) -> None:
    from kruxiaflow import Activity, AsyncKruxiaFlow, Workflow

    await cluster.serve()  # with the built-in std worker
    async with httpx.AsyncClient() as http:
        token = (
            await http.post(
                f"{cluster.url}/api/v1/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                },
            )
        ).json()["access_token"]
    greet = Activity(
        key="greet",
        worker="std",
        activity_name="echo",
        parameters={"text": "hello {{ INPUT.who }}"},
    )
    workflow = Workflow(name="sdk_client", activities=[greet])
    client = AsyncKruxiaFlow(api_url=cluster.url, api_token=token)
    try:
        deployed = await client.deploy(workflow)
        assert deployed["name"] == "sdk_client"
        async with cluster.client() as kf:
            started = await kf.start("sdk_client", {"who": "sdk"})
            with trio.fail_after(30):
                while (state := await client.get_workflow(started["workflow_id"]))[
                    "status"
                ] != "completed":
                    await trio.sleep(0.1)
        assert state["workflow_id"] == started["workflow_id"]
        assert state["activities"][0]["outputs"][0]["value"] == {"text": "hello sdk"}
    finally:
        await client.close()
