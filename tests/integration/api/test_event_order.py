"""A run's live event stream delivers exactly the history that is stored, in order,
also while many workers claim and complete its activities concurrently."""

from __future__ import annotations

import trio

from kflow.client import AsyncClient, ClientConfig
from tests.integration.conftest import Api

WIDE = (
    "name: wide\nactivities:\n  - {key: start, activity_name: echo}\n"
    + "".join(f"  - {{key: p{i}, activity_name: echo, depends_on: [start]}}\n" for i in range(16))
    + "  - {key: end, activity_name: echo, depends_on: ["
    + ", ".join(f"p{i}" for i in range(16))
    + "]}\n"
)


async def test_streams_match_the_stored_history_under_concurrent_workers(api: Api) -> None:
    await api.deploy(WIDE)
    runs = [await api.start("wide") for _ in range(6)]
    streamed: dict[str, list[int]] = {run: [] for run in runs}
    client = AsyncClient(config=ClientConfig(api_url="http://kflow.test"), http=api.client)

    async def follow(workflow_id: str) -> None:
        async for event in client.events(workflow_id):
            streamed[workflow_id].append(event["event_id"])

    async def work(worker_id: str, done: trio.Event) -> None:
        while not done.is_set():
            for item in await api.poll(worker_id=worker_id, n=1):
                assert (await api.complete(item, worker_id=worker_id, echo={})).status_code == 200

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            for index in range(6):
                nursery.start_soon(work, f"w{index}", done)
            async with trio.open_nursery() as followers:
                for run in runs:
                    followers.start_soon(follow, run)
            done.set()
    for run in runs:
        stored = [
            e["event_id"]
            for e in (
                await api.client.get(
                    f"/api/v1/workflows/{run}/events", headers={"accept": "application/json"}
                )
            ).json()
        ]
        assert streamed[run] == stored, run
