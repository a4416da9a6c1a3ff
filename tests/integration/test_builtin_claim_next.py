"""``kflow serve``'s built-in workers take a run's next step with the report of its
previous one (``KFLOW_WORKER_CLAIM_NEXT``), instead of polling for it."""

from __future__ import annotations

import pathlib
import re

import pytest
import trio

from kflow.client import AsyncClient, ClientConfig
from kflow.server.serve import RunningServer, serve
from tests.integration.conftest import DIALECTS, database_for, make_config

CHAIN = """
name: four-steps
activities:
  - {key: a, activity_name: echo, parameters: {n: 1}}
  - {key: b, activity_name: echo, parameters: {n: "{{ a.echo.n + 1 }}"}, depends_on: [a]}
  - {key: c, activity_name: echo, parameters: {n: "{{ b.echo.n + 1 }}"}, depends_on: [b]}
  - {key: d, activity_name: echo, parameters: {n: "{{ c.echo.n + 1 }}"}, depends_on: [c]}
"""

_POLLS = re.compile(
    r'^kflow_http_requests_total\{method="POST",route="/api/v1/workers/poll",status="200"\} (\S+)$',
    re.MULTILINE,
)


def answered_polls(running: RunningServer) -> float:
    return sum(float(n) for n in _POLLS.findall(running.context.metrics.render().decode()))


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    return database_for(request, tmp_path)


@pytest.mark.parametrize(("claim_next", "polls"), [(True, 1), (False, 4)])
async def test_built_in_workers_take_the_next_step_with_the_report(
    tmp_path: pathlib.Path, database_url: str, claim_next: bool, polls: int
) -> None:
    config = make_config(
        tmp_path,
        database_url=database_url,
        port=0,
        run_workers=True,
        worker_claim_next=claim_next,
        script_pool_size=1,
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        async with AsyncClient(config=ClientConfig(api_url=running.url)) as kf:
            await kf.deploy(CHAIN)
            with trio.fail_after(30):
                done = await kf.run("four-steps", {})
            assert done["status"] == "completed"
            outputs = await kf.output(done["workflow_id"])
        [last] = outputs["terminal_outputs"]
        assert last["output"][0]["value"] == {"n": 4}
        assert answered_polls(running) == polls  # the first step always comes by poll
        shutdown.set()
