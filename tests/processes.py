"""Real processes on loopback: ``kflow serve`` and ``kflow worker`` as subprocesses.

Shared by the acceptance and compat layers (their conftests expose the
``cluster`` fixture).

Each test gets its own SQLite file, port and credentials. Processes are
killed at teardown whatever happened; their output is kept in tmp_path and
printed when a test fails.

A cluster built with ``postgres=URL`` (see :func:`cluster_context`) stores
everything in that PostgreSQL database instead: several ``kflow serve``
processes can then share it, each on a port of its own (``serve(port=...)``),
with workers pointed at any of them (``worker(api_url=...)``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import pytest
import trio

from kflow.client import AsyncClient, ClientConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
CLIENT_ID = "acceptance"
CLIENT_SECRET = "acceptance-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class Proc:
    """A child process with its output in a log file."""

    name: str
    process: trio.Process
    log: pathlib.Path
    #: False once the test stops the process on purpose.
    expected: bool = True

    def alive(self) -> bool:
        return self.process.returncode is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.expected = False
        if self.alive():
            self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@attrs.define
class Cluster:
    """Processes of one test, sharing a database, a port and a ledger file."""

    tmp: pathlib.Path
    port: int
    env: dict[str, str]
    nursery: trio.Nursery
    procs: list[Proc] = attrs.field(factory=list)
    #: A PostgreSQL URL: the servers share this database instead of the SQLite file.
    postgres: str | None = None

    @property
    def url(self) -> str:
        return self.url_of(self.port)

    @staticmethod
    def url_of(port: int) -> str:
        return f"http://127.0.0.1:{port}"

    @property
    def database_url(self) -> str:
        """What servers get as ``--db``."""
        return self.postgres or f"sqlite:///{self.db}"

    @property
    def db(self) -> pathlib.Path:
        return self.tmp / "kflow.db"

    @property
    def ledger(self) -> pathlib.Path:
        return self.tmp / "ledger.txt"

    async def spawn(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Proc:
        """Start ``python -m kflow --log-format json ARGS``."""
        return await self.spawn_raw(
            name, [sys.executable, "-m", "kflow", "--log-format", "json", *args], extra_env
        )

    async def spawn_raw(
        self, name: str, command: list[str], extra_env: dict[str, str] | None = None
    ) -> Proc:
        """Start any command with the cluster's environment; output goes to a log file."""
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        handle = open(log, "wb")  # noqa: SIM115 - closed by the process owner at exit
        process = await trio.lowlevel.open_process(
            command,
            stdout=handle,
            stderr=subprocess_stdout(),
            env={**self.env, **(extra_env or {})},
            cwd=str(REPO),
            start_new_session=True,
        )
        handle.close()
        proc = Proc(name=name, process=process, log=log)
        self.procs.append(proc)
        self.nursery.start_soon(self._watchdog, proc)
        return proc

    async def _watchdog(self, proc: Proc) -> None:
        """Fail the test at once if a process dies that the test did not stop."""
        code = await proc.process.wait()
        if proc.expected:
            raise AssertionError(f"{proc.name} exited with {code}:\n{proc.output()[-4000:]}")

    async def serve(self, *extra: str, port: int | None = None, name: str = "server") -> Proc:
        """Start ``kflow serve`` on ``port`` (default: the cluster's) and wait until it answers."""
        port = self.port if port is None else port
        proc = await self.spawn(
            name,
            "serve",
            "--port",
            str(port),
            "--db",
            self.database_url,
            "--seed-client",
            *extra,
        )
        await self.wait_ready(proc, url=self.url_of(port))
        return proc

    async def worker(
        self,
        *args: str,
        api_url: str | None = None,
        name: str = "worker",
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        """Start ``kflow worker`` talking to ``api_url`` (default: the cluster's server)."""
        return await self.spawn(
            name, "worker", "--api-url", api_url or self.url, *args, extra_env=extra_env
        )

    async def wait_ready(self, proc: Proc, timeout: float = 30, url: str | None = None) -> None:
        url = url or self.url
        async with AsyncClient(config=ClientConfig(api_url=url)) as kf:
            with trio.fail_after(timeout):
                while True:
                    if not proc.alive():
                        raise AssertionError(f"{proc.name} exited:\n{proc.output()}")
                    try:
                        await kf._http.get(url + "/health")
                        return
                    except OSError:
                        await trio.sleep(0.1)
                    except Exception:
                        await trio.sleep(0.1)

    def client(self, url: str | None = None) -> AsyncClient:
        return AsyncClient(
            config=ClientConfig(
                api_url=url or self.url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
            )
        )

    def ledger_lines(self) -> list[tuple[str, str, int]]:
        if not self.ledger.exists():
            return []
        rows = []
        for line in self.ledger.read_text().splitlines():
            workflow_id, key, attempt = line.split()
            rows.append((workflow_id, key, int(attempt)))
        return rows

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (``?`` placeholders) run against the cluster's database.

        On PostgreSQL this opens a short-lived connection (blocking; wrap it in
        ``trio.to_thread.run_sync`` while processes need the event loop).
        """
        if self.postgres is not None:
            import psycopg

            with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        with sqlite3.connect(self.db) as conn:
            return conn.execute(sql, params).fetchall()


def subprocess_stdout() -> int:
    import subprocess

    return subprocess.STDOUT


@contextlib.asynccontextmanager
async def cluster_context(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest, *, postgres: str | None = None
) -> AsyncIterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KFLOW_", "KRUXIAFLOW_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "KRUXIAFLOW_CLIENT_ID": CLIENT_ID,
            "KRUXIAFLOW_CLIENT_SECRET": CLIENT_SECRET,
            "KFLOW_LEASE_GRACE_SECONDS": "1",
            "KFLOW_SCHEDULER_MAX_SLEEP": "0.5",
            "KFLOW_WORKER_STATE_DIR": str(tmp_path / "worker-state"),
            "KFLOW_TEST_LEDGER": str(tmp_path / "ledger.txt"),
            "KRUXIAFLOW_WORKER_SHUTDOWN_TIMEOUT": "5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    """Yield a :class:`Cluster`; kill its processes afterwards (and show their logs on failure)."""
    async with trio.open_nursery() as nursery:
        state = Cluster(tmp=tmp_path, port=free_port(), env=env, nursery=nursery, postgres=postgres)
        try:
            yield state
        finally:
            for proc in state.procs:
                proc.kill(signal.SIGTERM if proc.alive() else signal.SIGKILL)
            with trio.move_on_after(10) as scope:
                scope.shield = True
                for proc in state.procs:
                    await proc.process.wait()
            # Whatever did not stop in time (a worker still retrying reports to a dead
            # server) is killed and reaped, never left to the garbage collector.
            with trio.CancelScope(shield=True):
                for proc in state.procs:
                    if proc.alive():
                        proc.kill(signal.SIGKILL)
                        await proc.process.wait()
            if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
                for proc in state.procs:
                    print(f"==== {proc.name} ({proc.log.name}) ====\n{proc.output()[-6000:]}")
            nursery.cancel_scope.cancel()


def remember_reports(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Body of a ``pytest_runtest_makereport`` hook wrapper: keep each phase's report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
