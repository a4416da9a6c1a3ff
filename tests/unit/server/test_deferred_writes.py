"""The statements a DeferredWrites lets run before what it keeps is written
must not touch what it keeps: checked against the SQL of every dialect."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kflow.server.deferred_writes import (
    BLIND_TO_ACTIVITIES,
    BLIND_TO_APPENDS,
    BLIND_TO_WORKFLOWS,
    NEW_RUN_INSERTS,
    DeferredWrites,
)
from kflow.store.queries import POSTGRES_ONLY, load_queries

#: A mention of either table the kept appends go to (as a whole word).
_TOUCHES = re.compile(r"\b(attempts|events)\b", re.IGNORECASE)
#: A mention of the table kept updates and claims go to.
_TOUCHES_ACTIVITIES = re.compile(r"\bactivities\b", re.IGNORECASE)
#: A mention of the table kept run status changes go to.
_TOUCHES_WORKFLOWS = re.compile(r"\bworkflows\b", re.IGNORECASE)


def _without_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_statement_blind_to_appends_exists_and_never_names_their_tables(
    dialect: str,
) -> None:
    queries = load_queries(dialect)
    expected = BLIND_TO_APPENDS - (POSTGRES_ONLY if dialect == "sqlite" else frozenset())
    assert set(queries) >= expected, expected - set(queries)
    touching = {name for name in expected if _TOUCHES.search(_without_comments(queries[name]))}
    assert touching == set()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_guard_recognises_statements_that_read_the_appended_tables(dialect: str) -> None:
    queries = load_queries(dialect)
    for name in ("get_attempt", "workflow_attempts", "workflow_events", "insert_events"):
        assert _TOUCHES.search(_without_comments(queries[name])), name


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_statement_blind_to_activities_exists_and_never_names_the_table(
    dialect: str,
) -> None:
    queries = load_queries(dialect)
    assert set(queries) >= BLIND_TO_ACTIVITIES, BLIND_TO_ACTIVITIES - set(queries)
    touching = {
        name
        for name in BLIND_TO_ACTIVITIES
        if _TOUCHES_ACTIVITIES.search(_without_comments(queries[name]))
    }
    assert touching == set()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_activities_guard_recognises_statements_that_touch_the_table(dialect: str) -> None:
    queries = load_queries(dialect)
    for name in ("lock_workflows_of_attempts", "workflow_activities", "claim_run_activities"):
        assert _TOUCHES_ACTIVITIES.search(_without_comments(queries[name])), name


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_statement_blind_to_workflows_exists_and_never_names_the_table(
    dialect: str,
) -> None:
    queries = load_queries(dialect)
    expected = BLIND_TO_WORKFLOWS - (POSTGRES_ONLY if dialect == "sqlite" else frozenset())
    assert set(queries) >= expected, expected - set(queries)
    touching = {
        name for name in expected if _TOUCHES_WORKFLOWS.search(_without_comments(queries[name]))
    }
    assert touching == set()
    for name in ("get_workflow", "lock_workflows", "set_workflow_cost", "workflow_detail"):
        assert _TOUCHES_WORKFLOWS.search(_without_comments(queries[name])), name


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_new_run_inserts_only_insert_and_read_no_table(dialect: str) -> None:
    # Kept updates and claims name existing rows of other runs: a statement that
    # only inserts a new run's rows cannot see them or be seen by them.
    queries = load_queries(dialect)
    for name in NEW_RUN_INSERTS - (POSTGRES_ONLY if dialect == "sqlite" else frozenset()):
        sql = _without_comments(queries[name])
        # The run itself may come first, in a data-modifying WITH that only inserts it.
        run = re.match(r"\s*WITH \w+ AS \(\s*INSERT INTO workflows\b[^;]*?\)\)", sql, re.DOTALL)
        if run is not None:
            assert not re.search(r"\b(SELECT|FROM)\b", run.group(0), re.IGNORECASE), name
            sql = sql[run.end() :]
        assert re.match(r"\s*INSERT INTO activities\b", sql), name
        assert not re.search(r"\b(UPDATE|DELETE|JOIN|CONFLICT)\b", sql, re.IGNORECASE), name
        tables = re.findall(r"\bFROM\s+(\w+)", sql, re.IGNORECASE)
        assert set(tables) <= {"jsonb_array_elements", "json_each"}, (name, tables)


class _RecordingTx:
    """Records the statements a DeferredWrites lets through (no database: the
    contract test in tests/integration/store checks what they write)."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.params: list[dict[str, Any]] = []  # of each statement sent
        self.claim_rows: list[dict[str, Any]] = []

    def send(self, query: str, /, **params: Any) -> None:
        self.sent.append(query)
        self.params.append(params)

    def all_later(self, query: str, /, **params: Any) -> Any:
        self.sent.append(query)
        rows = [{"workflow_id": c["workflow_id"], "key": "next"} for c in params["claims"]]
        return lambda: rows

    def one(self, query: str, /, **params: Any) -> None:
        self.sent.append(query)

    def json(self, value: Any) -> Any:
        return value

    def time(self, value: Any) -> Any:
        return value


def _claim(tx: DeferredWrites, run: str) -> Any:
    return tx.all_later(
        "claim_run_activities", workflow_id=run, queue="std", worker_id="w", client_id="c",
        now=0, limit=1, lease_grace_micros=0, claimed_with="a",
    )  # fmt: skip


def test_updates_and_claims_of_different_runs_go_out_as_two_statements() -> None:
    inner = _RecordingTx()
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    answers = {}
    for run in ("r1", "r2", "r3"):
        tx.update_activities(run, [{"key": "a"}, {"key": "b"}], 0)
        tx.send("set_workflow_cost", id=run)  # blind: goes through, nothing written first
        answers[run] = _claim(tx, run)
    assert inner.sent == ["set_workflow_cost"] * 3
    assert [r["workflow_id"] for r in answers["r2"]()] == ["r2"]
    assert inner.sent[3:] == ["update_activities_of_runs", "claim_next_of_runs"]
    assert [r["workflow_id"] for r in answers["r1"]()] == ["r1"]  # answered from the same rows
    tx.flush()
    assert len(inner.sent) == 5


def test_a_statement_that_may_see_activities_writes_what_was_kept_first() -> None:
    inner = _RecordingTx()
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    tx.update_activities("r1", [{"key": "a"}], 0)
    answer = _claim(tx, "r1")
    tx.one("workflow_activities", workflow_id="r1")
    assert inner.sent == ["update_activities_of_runs", "claim_next_of_runs", "workflow_activities"]
    assert [r["workflow_id"] for r in answer()] == ["r1"]
    tx.update_activities("r1", [{"key": "a"}], 0)
    tx.update_activities("r1", [{"key": "a"}], 0)  # the same activity again: the first goes out
    _claim(tx, "r2")
    _claim(tx, "r2")  # the same run's second claim: the first goes out
    assert inner.sent[3:] == ["update_activities_of_runs", "update_activities_of_runs",
                              "claim_next_of_runs"]  # fmt: skip


def test_claims_naming_their_attempts_go_out_after_the_updates_without_an_answer() -> None:
    inner = _RecordingTx()
    inner.dialect = "postgres"
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    for run in ("r1", "r2"):
        tx.update_activities(run, [{"key": "a"}, {"key": "b"}], 0)
        tx.claim_known({"workflow_id": run, "key": "b", "attempt_id": f"{run}-b2"})
    answer = _claim(tx, "r3")
    assert inner.sent == []  # all kept
    tx.flush()
    assert inner.sent == [
        "update_activities_of_runs",  # the attempts the claims name exist first
        "claim_known_activities",
        "claim_next_of_runs",
    ]
    assert [r["workflow_id"] for r in answer()] == ["r3"]
    # Anything more for a run with a claim waiting writes what waits first.
    tx.claim_known({"workflow_id": "r1", "key": "c", "attempt_id": "r1-c1"})
    tx.update_activities("r1", [{"key": "c"}], 0)
    assert inner.sent[3:] == ["claim_known_activities"]


def test_a_claim_of_what_a_kept_update_makes_pending_rides_in_that_update() -> None:
    inner = _RecordingTx()
    inner.dialect = "postgres"
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    pending = {"key": "b", "status": "pending", "new_attempt_id": "r1-b2"}
    tx.update_activities("r1", [{"key": "a", "status": "completed"}, pending], 0)
    lease = {"worker_id": "w", "client_id": "c", "now": 5, "lease_expires_at": 65}
    claim = {"workflow_id": "r1", "key": "b", "attempt_id": "r1-b2", **lease, "claimed_with": "a1"}
    tx.claim_known(claim)
    # Another attempt of the same activity, or another run's, keeps its own claim.
    tx.update_activities("r2", [{"key": "b", "status": "pending", "new_attempt_id": "r2-b1"}], 0)
    tx.claim_known({**claim, "workflow_id": "r2", "attempt_id": "r2-other"})
    tx.flush()
    assert inner.sent == ["update_activities_of_runs", "claim_known_activities"]
    [updates, claims] = inner.params
    rows = {(u["workflow_id"], u["key"]): u for u in updates["activities"]}
    assert rows["r1", "b"]["claim"] == {**lease, "claimed_with": "a1"}
    assert "claim" not in rows["r1", "a"]
    assert "claim" not in rows["r2", "b"]
    assert [c["workflow_id"] for c in claims["claims"]] == ["r2"]


def test_claims_ride_in_updates_on_postgresql_only() -> None:
    inner = _RecordingTx()
    inner.dialect = "sqlite"
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    tx.update_activities("r1", [{"key": "b", "status": "pending", "new_attempt_id": "x"}], 0)
    tx.claim_known({"workflow_id": "r1", "key": "b", "attempt_id": "x"})
    tx.flush()
    assert inner.sent == ["update_activities_of_runs", "claim_known_activities"]


def _status(tx: DeferredWrites, run: str, status: str = "completed") -> None:
    tx.send("set_workflow_status", id=run, status=status, error_message=None, finished=True, now=0)


def test_run_status_changes_go_out_together_before_anything_that_names_the_runs() -> None:
    inner = _RecordingTx()
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    _status(tx, "r1")
    tx.update_activities("r1", [{"key": "a"}], 0)
    _status(tx, "r2", "failed")
    tx.send("insert_events_of_runs", events=[])  # blind to runs: nothing written first
    assert inner.sent == ["insert_events_of_runs"]
    tx.one("get_workflow", id="r1")  # sees the runs' statuses (not activities): they go first
    assert inner.sent[1:] == ["set_workflows_status", "get_workflow"]
    _status(tx, "r3")
    _status(tx, "r3", "failed")  # the same run again: the first goes out alone
    tx.flush()
    assert inner.sent[3:] == [
        "set_workflow_status",
        "update_activities_of_runs",
        "set_workflow_status",
    ]


@pytest.mark.parametrize(
    ("dialect", "statements"),
    [
        ("sqlite", ["insert_attempts", "insert_events_of_runs"]),
        ("postgres", ["insert_appends_of_runs"]),  # one statement with two inserts
    ],
)
def test_attempts_and_events_go_out_together_where_the_dialect_can(
    dialect: str, statements: list[str]
) -> None:
    inner = _RecordingTx()
    inner.dialect = dialect
    tx = DeferredWrites(inner)  # type: ignore[arg-type]
    tx.append_attempt({"id": "a1"})
    tx.append_events("r1", [{"type": "t", "activity_key": None, "data": None}], 0)
    tx.flush()
    assert inner.sent == statements
    tx.append_events("r1", [{"type": "t", "activity_key": None, "data": None}], 0)
    tx.flush()  # events alone: their own statement
    assert inner.sent[len(statements) :] == ["insert_events_of_runs"]
