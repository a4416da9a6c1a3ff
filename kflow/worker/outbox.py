"""The durable outbox: results the server has not acknowledged yet survive restarts.

A finished result must never turn into a failure because the server was
briefly unreachable. :class:`Reporter` sends each final report once; if that
attempt fails with a network error or a 5xx/429 answer, the report is written
to the :class:`Outbox` (a SQLite file in ``state_dir``: WAL,
``synchronous=FULL``) and retried — first by the runner within
``report_timeout``, then by the reporter's background drain — until the server
gives a definitive answer (2xx, 404, 409, another 4xx), which deletes it.

Several worker processes may share one ``state_dir``: an entry is *claimed*
(owner + expiry, in one ``UPDATE … RETURNING`` statement, which SQLite runs
under its write lock) before anyone sends it, and claims of a crashed process
expire after ``claim_seconds``.
"""

from __future__ import annotations

import contextlib
import pathlib
import secrets
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs
import httpx
import structlog
import trio

from kflow._serde import format_datetime, parse_datetime
from kflow.errors import ApiError
from kflow.worker.api import WorkerApi
from kflow.worker.wire import REPORT_BACKOFF_CAP, Report, ReportOutcome, is_transient, retrying

T = TypeVar("T")
RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]

log = structlog.get_logger("kflow.worker.outbox")

#: How often the background drain looks for entries left by other processes.
RESCAN_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    activity_id   TEXT NOT NULL,
    worker_id     TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('complete', 'fail')),
    body          BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    claimed_by    TEXT,
    claimed_until REAL
);
CREATE INDEX IF NOT EXISTS outbox_claimed_until ON outbox (claimed_until);
"""
_COLUMNS = "id, activity_id, worker_id, kind, body, created_at"


class Outbox:
    """Reports waiting for an answer, in a SQLite file shared by worker processes.

    Use as ``async with Outbox(path) as outbox:`` (or :meth:`open` / :meth:`close`).
    Every method runs its SQL through ``run_sync`` (default: a worker thread,
    one at a time); such calls finish even when cancelled, so a write is never
    half done. Methods raise :class:`sqlite3.Error` when the file cannot be used
    and :class:`RuntimeError` when the outbox is not open.
    """

    def __init__(
        self,
        path: str | pathlib.Path,
        *,
        owner: str | None = None,
        claim_seconds: float = 120.0,
        run_sync: RunSync | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = pathlib.Path(path)
        #: Who claims entries: unique per Outbox instance.
        self.owner = f"{owner or 'worker'}:{secrets.token_hex(4)}"
        self._claim_seconds = claim_seconds
        self._clock = clock
        self._limiter = trio.CapacityLimiter(1)
        self._run_sync = run_sync or self._in_thread
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def in_dir(cls, state_dir: str | pathlib.Path, **kwargs: Any) -> Outbox:
        """The outbox file ``outbox.sqlite3`` of a worker state directory."""
        return cls(pathlib.Path(state_dir) / "outbox.sqlite3", **kwargs)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def open(self) -> None:
        """Create the directory, file and table if needed. Idempotent.

        Raises:
            sqlite3.Error, OSError: the file cannot be created or opened.
        """
        if self._conn is None:
            self._conn = await self._run_sync(self._connect)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the file (claims held by this instance are kept until released or expired)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await self._run_sync(conn.close)

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _sql(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the outbox is not open")
        result: T = await self._run_sync(lambda: fn(conn))
        return result

    async def put(self, report: Report) -> Report:
        """Store ``report``, claimed by this instance; returns it with ``outbox_id`` set."""
        until = self._clock() + self._claim_seconds
        row = (
            str(report.activity_id),
            report.worker_id,
            report.kind,
            report.body,
            format_datetime(report.created_at),
            self.owner,
            until,
        )
        cursor = await self._sql(
            lambda c: c.execute(
                "INSERT INTO outbox (activity_id, worker_id, kind, body, created_at, claimed_by,"
                " claimed_until) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )
        return attrs.evolve(report, outbox_id=cursor.lastrowid)

    async def claim(self, limit: int = 100) -> list[Report]:
        """Claim up to ``limit`` entries nobody holds (or whose claim expired), oldest first."""
        now = self._clock()
        rows = await self._sql(
            lambda c: c.execute(
                f"UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN ("
                f" SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < ?"
                f" ORDER BY id LIMIT ?) RETURNING {_COLUMNS}",
                (self.owner, now + self._claim_seconds, now, limit),
            ).fetchall()
        )
        return sorted((_report(row) for row in rows), key=lambda r: r.outbox_id or 0)

    async def release(self, *reports: Report) -> None:
        """Give up this instance's claim on ``reports`` so anyone may send them."""
        ids = [(r.outbox_id, self.owner) for r in reports if r.outbox_id is not None]
        if ids:
            await self._sql(
                lambda c: c.executemany(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL"
                    " WHERE id = ? AND claimed_by = ?",
                    ids,
                )
            )

    async def delete(self, report: Report) -> None:
        """Forget ``report`` (the server answered it definitively)."""
        if report.outbox_id is not None:
            await self._sql(
                lambda c: c.execute("DELETE FROM outbox WHERE id = ?", (report.outbox_id,))
            )

    async def entries(self) -> list[Report]:
        """Every stored report, claimed or not, oldest first (for inspection)."""
        rows = await self._sql(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY id").fetchall()
        )
        return [_report(row) for row in rows]


def _report(row: tuple[Any, ...]) -> Report:
    outbox_id, activity_id, worker_id, kind, body, created_at = row
    return Report(
        activity_id=uuid.UUID(activity_id),
        worker_id=worker_id,
        kind=kind,
        body=bytes(body),
        created_at=parse_datetime(created_at),
        outbox_id=outbox_id,
    )


class Reporter:
    """Delivers final reports: once directly, then through the outbox until answered."""

    def __init__(self, api: WorkerApi, outbox: Outbox, *, report_timeout: float) -> None:
        self._api = api
        self._outbox = outbox
        self._report_timeout = report_timeout
        self._shields: set[trio.CancelScope] = set()
        self._hard_stopped = False
        self._wake = trio.Event()

    def hard_stop(self) -> None:
        """Cancel every report in flight now (they stay in the outbox). Never blocks."""
        self._hard_stopped = True
        for scope in list(self._shields):
            scope.cancel()

    @contextlib.contextmanager
    def _shield(self) -> Iterator[trio.CancelScope]:
        deadline = trio.current_time() + self._report_timeout
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            if self._hard_stopped:
                scope.cancel()
            self._shields.add(scope)
            try:
                yield scope
            finally:
                self._shields.discard(scope)

    async def deliver(self, report: Report) -> ReportOutcome:
        """Send ``report`` and return the server's verdict, or PENDING.

        Shielded from outside cancellation and bounded by ``report_timeout``
        (only :meth:`hard_stop` cuts it short). A report that is not answered
        within the bound is left in the outbox for the background drain.

        Raises:
            sqlite3.Error, OSError: the outbox cannot store the report.
        """
        outcome = ReportOutcome.PENDING
        stored: Report | None = None
        with self._shield():
            if not self._hard_stopped:  # after a hard stop, straight to the outbox
                try:
                    outcome = await self._api.report(report, retry=False, batched=True)
                except (httpx.TransportError, ApiError) as exc:
                    if not is_transient(exc):
                        raise
                    log.warning(
                        "worker.report.deferred",
                        activity_id=str(report.activity_id),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    stored = await self._outbox.put(report)
                    outcome = await self._api.report(stored, retry=True)
        with trio.CancelScope(shield=True):  # cleanup: keep the outbox consistent
            if outcome is ReportOutcome.PENDING:
                if stored is None:
                    stored = await self._outbox.put(report)
                await self._outbox.release(stored)
                self._wake.set()
                log.warning(
                    "worker.report.pending",
                    activity_id=str(report.activity_id),
                    outbox_id=stored.outbox_id,
                )
            elif stored is not None:
                await self._outbox.delete(stored)
        return outcome

    async def drain(self) -> int:
        """Send every claimable outbox entry once; returns how many were answered.

        Each entry speaks for the ``worker_id`` stored with it. Entries not yet
        sent are released when this returns or raises.

        Raises:
            httpx.TransportError, ApiError: a transient failure (the server is
                still unreachable); the rest stays in the outbox.
        """
        answered = 0
        while batch := await self._outbox.claim():
            try:
                while batch:
                    outcome = await self._api.report(batch[0], retry=False)
                    entry = batch.pop(0)
                    with trio.CancelScope(shield=True):
                        await self._outbox.delete(entry)
                    answered += 1
                    log.info(
                        "worker.outbox.reported",
                        activity_id=str(entry.activity_id),
                        worker_id=entry.worker_id,
                        kind=entry.kind,
                        outcome=outcome.value,
                    )
            finally:
                with trio.CancelScope(shield=True):
                    await self._outbox.release(*batch)
        return answered

    async def drain_until_empty(self) -> int:
        """:meth:`drain`, retried with backoff until nothing claimable is left. Cancellable."""
        answered: int = await retrying(cap=REPORT_BACKOFF_CAP, what="outbox")(self.drain)
        return answered

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background drain: after each deferred report, and every ``RESCAN_SECONDS``.

        Runs until cancelled.
        """
        task_status.started()
        while True:
            self._wake = trio.Event()
            await self.drain_until_empty()
            with trio.move_on_after(RESCAN_SECONDS):
                await self._wake.wait()
