"""The statements a DeferredAppends lets run before its kept appends are written
must not touch what it keeps: checked against the SQL of every dialect."""

from __future__ import annotations

import re

import pytest

from kflow.server.deferred_appends import BLIND_TO_APPENDS
from kflow.store.queries import load_queries

#: A mention of either table the kept appends go to (as a whole word).
_TOUCHES = re.compile(r"\b(attempts|events)\b", re.IGNORECASE)


def _without_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_statement_blind_to_appends_exists_and_never_names_their_tables(
    dialect: str,
) -> None:
    queries = load_queries(dialect)
    assert set(queries) >= BLIND_TO_APPENDS, BLIND_TO_APPENDS - set(queries)
    touching = {
        name for name in BLIND_TO_APPENDS if _TOUCHES.search(_without_comments(queries[name]))
    }
    assert touching == set()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_guard_recognises_statements_that_read_the_appended_tables(dialect: str) -> None:
    queries = load_queries(dialect)
    for name in ("get_attempt", "workflow_attempts", "workflow_events", "insert_events"):
        assert _TOUCHES.search(_without_comments(queries[name])), name
