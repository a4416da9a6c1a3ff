"""kflow's PostgreSQL pipelines send a unit's statements together at each sync
(kflow.store.pg_green.BatchingPipeline), on a real PostgreSQL.

These tests lean on psycopg's private pipeline internals on purpose: if a
psycopg release changes them, they fail here rather than silently sending
every statement on its own again (or, worse, never sending one).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kflow.store.pg_green import BatchingPipeline, GreenConnection

pytestmark = pytest.mark.postgres


@pytest.fixture
def conn(postgres_url: str) -> Iterator[GreenConnection]:
    connection = GreenConnection.connect(postgres_url, autocommit=True)
    connection.execute("CREATE TEMPORARY TABLE batch_probe (n integer)")
    try:
        yield connection
    finally:
        connection.close()


def count(conn: GreenConnection) -> int:
    row = conn.execute("SELECT count(*) FROM batch_probe").fetchone()
    assert row is not None
    return int(row[0])


def test_statements_wait_for_the_sync_and_go_out_in_order(conn: GreenConnection) -> None:
    with conn.pipeline() as pipeline:
        assert isinstance(pipeline, BatchingPipeline)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO batch_probe VALUES (1)")
        conn.execute("INSERT INTO batch_probe VALUES (2)")
        counted = conn.execute("SELECT count(*) FROM batch_probe")
        # Nothing handed to libpq yet: each statement waits in psycopg's queue.
        assert len(pipeline.command_queue) == 4
        pipeline.sync()
        assert not pipeline.command_queue
        assert counted.fetchone() == (2,)
        conn.execute("INSERT INTO batch_probe VALUES (3)")
        conn.execute("COMMIT")
    assert count(conn) == 3


def test_a_fetch_before_any_sync_sends_what_it_answers(conn: GreenConnection) -> None:
    with conn.pipeline():
        conn.execute("INSERT INTO batch_probe VALUES (1)")
        cursor = conn.execute("SELECT n * 10 FROM batch_probe")
        assert cursor.fetchone() == (10,)


def test_a_failing_statement_surfaces_at_the_sync_and_nothing_of_the_transaction_stays(
    conn: GreenConnection,
) -> None:
    def transaction() -> None:
        with conn.pipeline() as pipeline:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO batch_probe VALUES (1)")
            conn.execute("SELECT 1 / 0")
            conn.execute("INSERT INTO batch_probe VALUES (2)")
            pipeline.sync()

    with pytest.raises(psycopg.errors.DivisionByZero):
        transaction()
    if conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")
    assert count(conn) == 0


def test_what_is_left_queued_goes_out_when_the_pipeline_ends(conn: GreenConnection) -> None:
    with conn.pipeline() as pipeline:
        conn.execute("INSERT INTO batch_probe VALUES (1)")
        conn.execute("INSERT INTO batch_probe VALUES (2)")
        assert len(pipeline.command_queue) == 2
    assert count(conn) == 2


def test_a_batch_larger_than_the_socket_takes_at_once_goes_out_whole(
    conn: GreenConnection,
) -> None:
    """Megabytes queued (a large activity output, a file): one flush sends only
    what the socket takes; the rest must follow before the answer is awaited
    (else both sides wait for each other for ever — hence the thread and its
    deadline)."""
    conn.execute("CREATE TEMPORARY TABLE big_probe (body text)")
    chunk = "x" * 100_000
    answers: list[Any] = []

    def batch() -> None:
        with conn.pipeline() as pipeline:
            for _ in range(100):  # 10 MB in one batch
                conn.execute("INSERT INTO big_probe VALUES (%s)", (chunk,))
            one = conn.execute("SELECT %s::text AS body", ("y" * 20_000_000,))  # 20 MB at once
            pipeline.sync()
            answers.append(one.fetchone())

    worker = threading.Thread(target=batch, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the batch never went out whole: the pipeline hangs"
    [row] = answers
    assert len(row[0]) == 20_000_000
    found = conn.execute("SELECT count(*), sum(length(body)) FROM big_probe").fetchone()
    assert found == (100, 10_000_000)
