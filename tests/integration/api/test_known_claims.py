"""A report's next-step claim that its own transition decides (kflow.server.worker_claims).

When a report's transition makes exactly one step of the worker's queue
pending, the claim names that attempt instead of asking the database which
one to take (PostgreSQL only: it saves a wait for the answer, which SQLite
gives at once). Each test runs the same run twice — once that way, once with
the database choosing (``_known_claim`` answering None) — and checks that the
worker receives the same item, the activity row ends the same, and the
history is the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import trio

from kflow.server.worker_claims import WorkerClaims
from tests.integration.conftest import Api

REPORTS = "/api/v1/activities/reports"

pytestmark = pytest.mark.parametrize(
    "api", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

RICH = """
name: rich
activities:
  - {key: a, activity_name: echo}
  - key: b
    activity_name: echo
    parameters:
      from_a: "{{ a.value }}"
      nested: {list: [1, "{{ INPUT.who }}", "{{ WORKFLOW.id }}"]}
    depends_on: [a]
    outputs: [{name: result, type: value}]
    settings: {timeout_seconds: 45}
"""

#: Fields that name this run's own ids and times.
_OWN = {"activity_id", "workflow_id", "lease_expires_at"}


def _stored(api: Api) -> Any:
    """The row of one activity as the database holds it (the claim's columns)."""

    async def read(workflow_id: str, key: str) -> dict[str, Any]:
        def tx_fn(tx: Any) -> dict[str, Any]:
            rows = tx.all("workflow_activities", workflow_id=workflow_id)
            return dict(next(r for r in rows if r["key"] == key))

        return await api.ctx.store.read(tx_fn)

    return read


async def _history(api: Api, workflow_id: str) -> list[tuple[str, Any, Any]]:
    response = await api.client.get(
        f"/api/v1/workflows/{workflow_id}/events", headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text

    def timeless(data: Any) -> Any:  # the runs' times differ, their shape must not
        if not isinstance(data, dict):
            return data
        return {k: "<time>" if k.endswith("_at") and v else v for k, v in data.items()}

    return [(e["type"], e.get("activity_key"), timeless(e.get("data"))) for e in response.json()]


def _claim_columns(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "worker_id", "lease_client", "attempt", "iteration", "heartbeat_details")
    return {k: row[k] for k in keep} | {"reserved_usd": str(row["reserved_usd"])}


def _same_times(api: Api, row: dict[str, Any], item: dict[str, Any]) -> None:
    """started = claimed; the lease ends timeout + grace later, as the item says."""
    from kflow.store.codec import load_time

    claimed = load_time(row["claimed_at"])
    assert claimed is not None
    assert load_time(row["started_at"]) == claimed
    lease = load_time(row["lease_expires_at"])
    grace = dt.timedelta(seconds=api.ctx.engine.settings.lease_grace_seconds)
    assert lease == claimed + dt.timedelta(seconds=int(row["timeout_seconds"])) + grace
    assert dt.datetime.fromisoformat(item["lease_expires_at"].replace("Z", "+00:00")) == lease


async def _report(api: Api, item: dict[str, Any], *, batched: bool, **body: Any) -> Any:
    """Complete (or, with ``error``, fail) ``item`` asking for the next step; the
    answer's items."""
    kind = "fail" if "error" in body else "complete"
    report = {"worker_id": "w1", **body}
    if batched:
        other = {"activity_id": item["activity_id"], "kind": kind, "report": report}
        response = await api.client.post(REPORTS, json={"reports": [{**other, "claim_next": True}]})
        assert response.status_code == 200, response.text
        [result] = response.json()["results"]
        assert result["status"] == 200, result
        return result["body"]["activities"]
    response = await api.client.post(
        f"/api/v1/activities/{item['activity_id']}/{kind}?claim_next=true", json=report
    )
    assert response.status_code == 200, response.text
    return response.json()["activities"]


async def _next_of_rich(api: Api, *, batched: bool) -> tuple[str, dict[str, Any]]:
    run = await api.start("rich", {"who": "ada"})
    [a] = [i for i in await api.poll() if i["workflow_id"] == run]
    [b] = await _report(api, a, batched=batched, output={"value": "from-a"})
    return run, b


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "in-a-group"])
async def test_a_claim_the_transition_decides_hands_out_what_the_database_would(
    api: Api, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    await api.deploy(RICH)
    read = _stored(api)
    known_run, known = await _next_of_rich(api, batched=batched)
    with monkeypatch.context() as patched:
        patched.setattr(WorkerClaims, "_known_claim", lambda *args, **kwargs: None)
        asked_run, asked = await _next_of_rich(api, batched=batched)

    assert known["activity_key"] == "b"
    assert known["parameters"] == {"from_a": "from-a", "nested": {"list": [1, "ada", known_run]}}
    assert asked["parameters"]["nested"]["list"][2] == asked_run
    asked["parameters"]["nested"]["list"][2] = known_run
    assert {k: v for k, v in known.items() if k not in _OWN} == {
        k: v for k, v in asked.items() if k not in _OWN
    }
    rows = [await read(run, "b") for run in (known_run, asked_run)]
    assert _claim_columns(rows[0]) == _claim_columns(rows[1])
    assert rows[0]["status"] == "running"
    for row, item in zip(rows, (known, asked), strict=True):
        assert str(row["attempt_id"]) == item["activity_id"]
        _same_times(api, row, item)
    # The claim remembers the report that made it (for a repeated report).
    for row, run in zip(rows, (known_run, asked_run), strict=True):
        a_row = await read(run, "a")
        assert str(row["claimed_with"]) == str(a_row["attempt_id"])
    assert await _history(api, known_run) == await _history(api, asked_run)


async def test_a_transition_that_leaves_a_choice_lets_the_database_claim(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two steps made pending in the queue: the claim is not decided in Python
    (the database picks one, the other waits for a poll)."""
    await api.deploy(
        "name: fork\nactivities:\n  - {key: a, activity_name: echo}\n"
        "  - {key: b, activity_name: echo, depends_on: [a]}\n"
        "  - {key: c, activity_name: echo, depends_on: [a]}\n"
    )
    decided: list[Any] = []
    original = WorkerClaims._known_claim

    def watching(self: WorkerClaims, *args: Any, **kwargs: Any) -> Any:
        decided.append(original(self, *args, **kwargs))
        return decided[-1]

    monkeypatch.setattr(WorkerClaims, "_known_claim", watching)
    run = await api.start("fork")
    [a] = await api.poll()
    [taken] = await _report(api, a, batched=True, output={"value": 1})
    assert decided == [None]
    [left] = await api.poll(worker_id="w2")
    assert {taken["activity_key"], left["activity_key"]} == {"b", "c"}
    assert left["workflow_id"] == run


ROOTS = """
name: roots
activities:
  - key: first
    activity_name: echo
    parameters: {who: "{{ INPUT.who }}", run: "{{ WORKFLOW.id }}"}
    settings: {timeout_seconds: 45}
  - {key: second, activity_name: echo, parameters: {n: 2}}
  - {key: elsewhere, worker: other-q, activity_name: echo}
  - {key: last, activity_name: echo, depends_on: [first, second]}
"""


async def _handed_start(api: Api) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Start a run while a poll taking one item is parked: what it got, then what
    a second poll finds left in the queue."""
    got: dict[str, Any] = {}

    async def parked(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        got["items"] = await api.poll(worker_id="w1", n=1, wait=20)

    async with trio.open_nursery() as nursery:
        await nursery.start(parked)
        with trio.fail_after(5):
            while not any(api.ctx.dispatcher._parked.values()):
                await trio.sleep(0.01)
        run = await api.start("roots", {"who": "ada"})
        with trio.fail_after(5):
            while "items" not in got:
                await trio.sleep(0.01)
    left = await api.poll(worker_id="w2", n=5)
    return run, got["items"], left


async def test_a_start_hands_its_parked_poll_what_the_databases_claim_would(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start's own new run: the hand-over to a parked poll takes the same rows in
    the same order (one item for a poll asking one; the other root stays for the
    next poll), writes the same rows and the same history as the database's claim."""
    from kflow.server.handoff import ParkedHandOff

    await api.deploy(ROOTS)
    read = _stored(api)
    await api.poll(worker_id="w0")  # the queue found empty: the parked poll claims nothing
    known_run, known, known_left = await _handed_start(api)
    with monkeypatch.context() as patched:
        patched.setattr(ParkedHandOff, "_claim_new", lambda *args, **kwargs: False)
        asked_run, asked, asked_left = await _handed_start(api)

    assert [i["activity_key"] for i in known] == ["first"]
    assert [i["activity_key"] for i in known_left] == ["second"]
    assert known[0]["parameters"] == {"who": "ada", "run": known_run}
    asked[0]["parameters"]["run"] = known_run
    for mine, theirs in ((known, asked), (known_left, asked_left)):
        assert [{k: v for k, v in i.items() if k not in _OWN} for i in mine] == [
            {k: v for k, v in i.items() if k not in _OWN} for i in theirs
        ]
    for key in ("first", "second"):
        rows = [await read(run, key) for run in (known_run, asked_run)]
        assert _claim_columns(rows[0]) == _claim_columns(rows[1])
        assert [row["claimed_with"] for row in rows] == [None, None]
    _same_times(api, await read(known_run, "first"), known[0])
    assert (await api.run(known_run))["status"] == (await api.run(asked_run))["status"]
    assert (await api.run(known_run))["status"] == "running"
    assert await _history(api, known_run) == await _history(api, asked_run)


SECRET_NEXT = """
name: secret_next
activities:
  - {key: a, activity_name: echo}
  - key: b
    activity_name: echo
    parameters: {header: "Bearer {{ SECRET.TOK }}"}
    depends_on: [a]
"""


async def test_a_named_claim_whose_secret_is_gone_fails_its_activity_as_the_databases_would(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim is named before the item is built; an item whose secret cannot be
    revealed (here: the server's secrets emptied after the run started) fails its
    activity with ``TEMPLATE_ERROR`` in the same transaction — the same rows and
    history as when the database chose the claim, and the report hands out nothing."""
    secrets = api.ctx.engine.settings.secrets
    assert isinstance(secrets, dict)
    secrets["TOK"] = "s3cr3t"
    monkeypatch.setattr(api.ctx.engine, "_secret_names", frozenset({"TOK"}))
    await api.deploy(SECRET_NEXT)

    async def reported() -> tuple[str, list[dict[str, Any]]]:
        secrets["TOK"] = "s3cr3t"
        run = await api.start("secret_next")
        [a] = [i for i in await api.poll() if i["workflow_id"] == run]
        secrets.clear()  # gone by the time b is handed out
        return run, await _report(api, a, batched=True, output={"value": 1})

    known_run, known = await reported()
    with monkeypatch.context() as patched:
        patched.setattr(WorkerClaims, "_known_claim", lambda *args, **kwargs: None)
        asked_run, asked = await reported()
    assert known == asked == []
    for run in (known_run, asked_run):
        detail = await api.run(run)
        b = next(a for a in detail["activities"] if a["activity_key"] == "b")
        assert (b["status"], b["error"]["code"]) == ("failed", "TEMPLATE_ERROR")
        assert detail["status"] == "failed"
    assert await _history(api, known_run) == await _history(api, asked_run)


async def _next_of_two_rich(api: Api) -> list[tuple[str, dict[str, Any]]]:
    """Two runs of ``rich`` whose first steps are reported in one batch (one group,
    one transaction); each run with the item its report claimed."""
    runs = [await api.start("rich", {"who": "ada"}) for _ in range(2)]
    firsts = {i["workflow_id"]: i for i in await api.poll() if i["workflow_id"] in runs}
    reports = [
        {
            "activity_id": firsts[run]["activity_id"],
            "kind": "complete",
            "report": {"worker_id": "w1", "output": {"value": "from-a"}},
            "claim_next": True,
        }
        for run in runs
    ]
    response = await api.client.post(REPORTS, json={"reports": reports})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200], results
    return [(run, r["body"]["activities"][0]) for run, r in zip(runs, results, strict=True)]


async def test_claims_a_group_decides_ride_in_its_activity_updates(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a group, a claim the transition decides is written with the update that
    makes its activity pending (one row version, no claim statement): the rows
    end as the database's claim leaves them."""
    await api.deploy(RICH)
    read = _stored(api)
    sent: list[str] = []
    from kflow.store.postgres import PgTx

    original = PgTx.send

    def recording(self: PgTx, query: str, /, **params: Any) -> None:
        sent.append(query)
        original(self, query, **params)

    with monkeypatch.context() as patched:
        patched.setattr(PgTx, "send", recording)
        known = await _next_of_two_rich(api)
    assert "claim_known_activities" not in sent
    assert "update_activities_of_runs" in sent
    with monkeypatch.context() as patched:
        patched.setattr(WorkerClaims, "_known_claim", lambda *args, **kwargs: None)
        asked = await _next_of_two_rich(api)

    for (known_run, known_item), (asked_run, asked_item) in zip(known, asked, strict=True):
        assert known_item["activity_key"] == asked_item["activity_key"] == "b"
        known_row, asked_row = await read(known_run, "b"), await read(asked_run, "b")
        assert _claim_columns(known_row) == _claim_columns(asked_row)
        assert known_row["status"] == "running"
        assert str(known_row["attempt_id"]) == known_item["activity_id"]
        _same_times(api, known_row, known_item)
        a_row = await read(known_run, "a")
        assert str(known_row["claimed_with"]) == str(a_row["attempt_id"])
        assert await _history(api, known_run) == await _history(api, asked_run)
