"""A report batch's reports share one transaction (kflow.server.report_group):
fewer commits, the same answers, and nothing half-applied when one breaks."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from kflow.server.engine import Engine
from tests.integration.conftest import Api

REPORTS = "/api/v1/activities/reports"

CHAIN = """
name: chain
activities:
  - {key: a, activity_name: echo, parameters: {x: 1}}
  - {key: b, activity_name: echo, depends_on: [a]}
"""


def _complete(item: dict[str, Any], *, claim_next: bool = False) -> dict[str, Any]:
    return {
        "activity_id": item["activity_id"],
        "kind": "complete",
        "report": {"worker_id": "w1", "output": {"value": item["workflow_id"]}},
        "claim_next": claim_next,
    }


#: Set in the test's task once it counts: the tasks serving its requests inherit
#: it, the scheduler's task (started with the fixture) does not.
_COUNTING = contextvars.ContextVar("counting_writes", default=False)


def _count_writes(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the store's write transactions made for the test's requests from now on
    (one entry per transaction). The scheduler's passes write too (every 0.1 s,
    promoting due activities) and would land in the count now and then."""
    calls: list[int] = []
    write: Callable[..., Any] = api.ctx.store.write

    async def counting(fn: Any) -> Any:
        if _COUNTING.get():
            calls.append(1)
        return await write(fn)

    monkeypatch.setattr(api.ctx.store, "write", counting)
    _COUNTING.set(True)
    return calls


async def _start_and_poll(api: Api, runs: int) -> tuple[list[str], list[dict[str, Any]]]:
    await api.deploy(CHAIN)
    ids = [await api.start("chain") for _ in range(runs)]
    items = await api.poll(n=runs)
    assert sorted(i["workflow_id"] for i in items) == sorted(ids)
    return ids, items


async def test_a_batch_is_applied_in_one_transaction_with_each_answer_its_own(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, items = await _start_and_poll(api, 3)
    writes = _count_writes(api, monkeypatch)
    response = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in items]}
    )
    assert response.status_code == 200, response.text
    assert len(writes) == 1
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200]
    for item, result in zip(items, results, strict=True):
        [claimed] = result["body"]["activities"]  # each report took its own run's next step
        assert (claimed["workflow_id"], claimed["activity_key"]) == (item["workflow_id"], "b")
    for workflow_id in ids:
        run = await api.run(workflow_id)
        assert [a["status"] for a in run["activities"]] == ["completed", "running"]


async def test_the_group_applies_its_reports_in_run_id_order(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs are locked in id order, as claims lock them, so two groups (or a group
    and a claim) never wait on each other in a cycle."""
    ids, items = await _start_and_poll(api, 4)
    applied: list[str] = []
    original = Engine.transition_row

    def recording(self: Engine, tx: Any, effects: Any, workflow_id: Any, *a: Any, **k: Any) -> Any:
        applied.append(str(workflow_id))
        return original(self, tx, effects, workflow_id, *a, **k)

    monkeypatch.setattr(Engine, "transition_row", recording)
    descending = sorted(items, key=lambda i: i["workflow_id"], reverse=True)
    response = await api.client.post(REPORTS, json={"reports": [_complete(i) for i in descending]})
    assert [r["status"] for r in response.json()["results"]] == [200] * 4
    assert applied == sorted(ids)


async def test_a_report_that_breaks_inside_the_group_leaves_nothing_half_applied(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group is rolled back and every report runs again alone: the healthy ones
    are applied once, the broken one fails its run and is still acknowledged."""
    ids, items = await _start_and_poll(api, 3)
    doomed = ids[1]
    original = Engine.transition_row

    def flaky(self: Engine, tx: Any, effects: Any, workflow_id: Any, *a: Any, **k: Any) -> Any:
        if str(workflow_id) == doomed:
            raise RuntimeError("a bug in a transition")
        return original(self, tx, effects, workflow_id, *a, **k)

    monkeypatch.setattr(Engine, "transition_row", flaky)
    writes = _count_writes(api, monkeypatch)
    response = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in items]}
    )
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200]
    assert len(writes) > 3  # the group, then each report on its own
    for item, result in zip(items, results, strict=True):
        run = await api.run(item["workflow_id"])
        attempts = await api.ctx.store.read(
            lambda tx, w=item["workflow_id"]: tx.all("workflow_attempts", workflow_id=w)
        )
        assert [(a["activity_key"], a["outcome"]) for a in attempts] == [("a", "completed")]
        if item["workflow_id"] == doomed:
            assert run["status"] == "failed"
            assert "workflow was failed" in result["body"]["warnings"][0]
        else:
            assert [a["status"] for a in run["activities"]] == ["completed", "running"]
            assert len(result["body"]["activities"]) == 1


async def test_a_lost_lease_in_the_group_refuses_only_its_report(api: Api) -> None:
    _, items = await _start_and_poll(api, 3)
    batch = [_complete(i) for i in items]
    batch[0]["report"]["worker_id"] = "intruder"
    response = await api.client.post(REPORTS, json={"reports": batch})
    assert [r["status"] for r in response.json()["results"]] == [409, 200, 200]
    assert (await api.run(items[0]["workflow_id"]))["activities"][0]["status"] == "running"
    assert (await api.run(items[1]["workflow_id"]))["activities"][0]["status"] == "completed"


PAIR = """
name: pair
activities:
  - {key: left, activity_name: echo}
  - {key: right, activity_name: echo}
"""


async def test_two_reports_of_one_run_in_a_group_each_see_the_other(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run is read by the group with its lock; a run with two reports is
    read again for the second, so it sees the first's change and the run
    completes."""
    await api.deploy(PAIR)
    pair = await api.start("pair")
    other = await api.start("pair")
    items = await api.poll(n=10)
    batch = [
        _complete(i)
        for i in items
        if i["workflow_id"] == pair or (i["workflow_id"], i["activity_key"]) == (other, "left")
    ]
    assert len(batch) == 3
    writes = _count_writes(api, monkeypatch)
    response = await api.client.post(REPORTS, json={"reports": batch})
    assert [r["status"] for r in response.json()["results"]] == [200, 200, 200]
    assert len(writes) == 1
    assert (await api.run(pair))["status"] == "completed"
    statuses = {a["activity_key"]: a["status"] for a in (await api.run(other))["activities"]}
    assert statuses == {"left": "completed", "right": "running"}


def _count_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the waits for PostgreSQL before a transaction's commit from now on."""
    from kflow.store.postgres import PgTx

    waits: list[int] = []
    original = PgTx._sync

    def counting(self: PgTx) -> None:
        waits.append(1)
        original(self)

    monkeypatch.setattr(PgTx, "_sync", counting)
    return waits


@pytest.mark.parametrize(
    "api", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_group_whose_transitions_decide_their_claims_waits_for_postgresql_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When each report's transition makes exactly the one next step of its queue
    pending, the claims name those attempts and go out with the commit: the group
    waits once (the runs' lock with their activities) whatever its size, then
    commits. (PostgreSQL only: SQLite answers every statement at once.)"""
    _, items = await _start_and_poll(api, 4)
    waits = _count_waits(monkeypatch)
    response = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in items]}
    )
    results = response.json()["results"]
    assert [len(r["body"]["activities"]) for r in results] == [1, 1, 1, 1]
    assert len(waits) == 1


@pytest.mark.parametrize(
    "api", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_groups_claims_the_database_chooses_wait_for_postgresql_once_together(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report whose transition leaves a choice (a fork made two steps pending)
    asks the database for its claim; all such claims of a group are sent with
    their transitions and answered together: two waits (the lock with the
    activities, the claims) whatever the group's size, then the commit."""
    await api.deploy(FORK)
    for _ in range(3):
        await api.start("fork")
    items = await api.poll(n=3)
    waits = _count_waits(monkeypatch)
    response = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in items]}
    )
    results = response.json()["results"]
    assert [len(r["body"]["activities"]) for r in results] == [1, 1, 1]
    assert len(waits) == 2


FORK = """
name: fork
activities:
  - {key: a, activity_name: echo}
  - {key: b, activity_name: echo, depends_on: [a]}
  - {key: c, activity_name: echo, depends_on: [a]}
"""


async def test_a_group_wakes_a_queue_only_for_what_its_claims_left(api: Api) -> None:
    """A report whose claim took the one step it made ready does not wake the
    queue; in the same group, a report that left a step behind still does (the
    chain's run is older, so its report is applied first)."""
    await api.deploy(CHAIN)
    await api.deploy(FORK)
    for _ in range(2):
        await api.start("chain")
    items = await api.poll(n=10)
    woken = api.ctx.dispatcher.sequence("std")
    response = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in items]}
    )
    assert [len(r["body"]["activities"]) for r in response.json()["results"]] == [1, 1]
    assert api.ctx.dispatcher.sequence("std") == woken  # nothing left for a parked poll
    chain = await api.start("chain")
    fork = await api.start("fork")
    firsts = [i for i in await api.poll(n=10) if i["workflow_id"] in (chain, fork)]
    woken = api.ctx.dispatcher.sequence("std")
    both = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in firsts]}
    )
    assert [len(r["body"]["activities"]) for r in both.json()["results"]] == [1, 1]
    assert api.ctx.dispatcher.sequence("std") == woken + 1  # the fork's other step waits
    [left] = await api.poll(worker_id="w2")
    assert (left["workflow_id"], left["activity_key"]) in {(fork, "b"), (fork, "c")}


class _RaceTx:
    """A Tx whose ``activities_of_attempts_runs`` misses the runs in ``lost``: as
    if their activities gave the reported attempt ids up between the lock's
    snapshot and the read's."""

    def __init__(self, tx: Any, lost: set[str], asked: list[str]) -> None:
        self._tx = tx
        self._lost = lost
        self._asked = asked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def all(self, query: str, /, **params: Any) -> Any:
        self._asked.append(query)
        return self._tx.all(query, **params)

    def all_later(self, query: str, /, **params: Any) -> Any:
        self._asked.append(query)
        later = self._tx.all_later(query, **params)
        if query != "activities_of_attempts_runs":
            return later
        return lambda: [r for r in later() if str(r["workflow_id"]) not in self._lost]


async def test_a_run_the_read_after_the_lock_misses_is_read_by_id(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, items = await _start_and_poll(api, 3)
    asked: list[str] = []
    write: Callable[..., Any] = api.ctx.store.write

    async def racing(fn: Any) -> Any:
        return await write(lambda tx: fn(_RaceTx(tx, {ids[1]}, asked)))

    monkeypatch.setattr(api.ctx.store, "write", racing)
    response = await api.client.post(
        REPORTS, json={"reports": [_complete(i, claim_next=True) for i in items]}
    )
    monkeypatch.undo()
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200]
    assert [len(r["body"]["activities"]) for r in results] == [1, 1, 1]
    assert asked.count("activities_of_workflows") == 1  # the missed run, by id
    for workflow_id in ids:
        statuses = {
            a["activity_key"]: a["status"] for a in (await api.run(workflow_id))["activities"]
        }
        assert statuses == {"a": "completed", "b": "running"}
