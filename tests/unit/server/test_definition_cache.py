"""The definition cache's newest versions: taken on trust with a check on
PostgreSQL, read when the check failed once (kflow.server.definitions)."""

from __future__ import annotations

import json
from typing import Any

from kflow.server.definitions import READ_LATEST, DefinitionCache

BODY = {"name": "hello", "activities": [{"key": "a", "activity_name": "echo"}]}


class RecordingTx:
    """Answers ``latest_definition`` with a stored row; records every statement."""

    def __init__(self, dialect: str, version: str) -> None:
        self.dialect = dialect
        self.version = version
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def one(self, query: str, /, **params: Any) -> dict[str, Any]:
        self.calls.append((query, params))
        return {
            "name": "hello",
            "version": self.version,
            "content_hash": "h-" + self.version,
            "body": json.dumps(BODY),
            "created_at": None,
        }

    def send(self, query: str, /, **params: Any) -> None:
        self.calls.append((query, params))


def test_a_known_newest_version_is_checked_with_the_writes_instead_of_read() -> None:
    cache = DefinitionCache()
    first = RecordingTx("postgres", "v1")
    assert cache.load(first, "hello", expect_latest=True).version == "v1"
    assert [q for q, _ in first.calls] == ["latest_definition"]  # not known yet: read
    again = RecordingTx("postgres", "v1")
    assert cache.load(again, "hello", expect_latest=True).version == "v1"
    assert again.calls == [("expect_latest_definition", {"name": "hello", "version": "v1"})]
    # Without expect_latest (a read unit, a schedule firing) it is always read.
    plain = RecordingTx("postgres", "v1")
    cache.load(plain, "hello")
    assert [q for q, _ in plain.calls] == ["latest_definition"]


def test_sqlite_always_reads_the_newest_version() -> None:
    cache = DefinitionCache()
    cache.load(RecordingTx("sqlite", "v1"), "hello")
    tx = RecordingTx("sqlite", "v1")
    cache.load(tx, "hello", expect_latest=True)
    assert [q for q, _ in tx.calls] == ["latest_definition"]


def test_a_rerun_after_a_stale_check_reads_even_what_was_noted_again_meanwhile() -> None:
    cache = DefinitionCache()
    cache.load(RecordingTx("postgres", "v1"), "hello")  # noted v1 (another unit, say)
    token = READ_LATEST.set(True)
    try:
        tx = RecordingTx("postgres", "v2")
        assert cache.load(tx, "hello", expect_latest=True).version == "v2"
    finally:
        READ_LATEST.reset(token)
    assert [q for q, _ in tx.calls] == ["latest_definition"]
    later = RecordingTx("postgres", "v2")
    cache.load(later, "hello", expect_latest=True)  # v2 known now: checked, not read
    assert later.calls == [("expect_latest_definition", {"name": "hello", "version": "v2"})]
