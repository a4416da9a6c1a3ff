"""Child processes of the bench and what they cost.

:class:`ProcSet` starts commands in their own session (so a kill reaches
their children too) with output in a log file, waits for readiness with a
bound, and kills everything it started when closed — whatever happened.
:class:`Sampler` watches groups of processes (each with its children) and
reports CPU seconds and peak RSS over a window.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import psutil
import trio

from bench.util import MIB


class BenchError(Exception):
    """A configuration could not be run (the message says why)."""


class Unavailable(BenchError):
    """A prerequisite is missing (PostgreSQL, Redis, pgbench): not kflow's fault."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A started command, its log file and its psutil handle."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: pathlib.Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.pid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:]

    def died(self) -> BenchError:
        return BenchError(
            f"{self.name} exited with status {self.popen.returncode}: {self.output(1500)}"
        )


class ProcSet:
    """Processes of one configuration; :meth:`close` kills them all (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: pathlib.Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        extra_env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**self.env, **(extra_env or {})},
                cwd=str(cwd or self.workdir),
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    async def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``timeout``, then SIGKILL it."""
        _signal_group(proc, signal.SIGTERM)
        with trio.move_on_after(timeout):
            while proc.alive():
                await trio.sleep(0.05)
        _signal_group(proc, signal.SIGKILL)
        with trio.move_on_after(5):
            while proc.alive():
                await trio.sleep(0.05)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for proc in self.procs:
                _signal_group(proc, signal.SIGTERM)
            with trio.move_on_after(10):
                while any(p.alive() for p in self.procs):
                    await trio.sleep(0.05)
            for proc in self.procs:
                _signal_group(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)


def _signal_group(proc: Proc, sig: int) -> None:
    # The group exists as long as one of its members does (the script pool's
    # children of a dead server included), so signal it even if the leader is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def wait_http(proc: Proc, url: str, timeout: float = 60.0) -> float:
    """Wait until ``url`` answers 200; returns the seconds it took.

    Raises:
        BenchError: the process died, or ``timeout`` passed.
    """
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=2.0) as http:
        with trio.move_on_after(timeout):
            while True:
                if not proc.alive():
                    raise proc.died()
                try:
                    if (await http.get(url)).status_code == 200:
                        return time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)
    raise BenchError(f"{proc.name} did not answer {url} within {timeout:g} s: {proc.output(1500)}")


async def wait_log(proc: Proc, needle: str, timeout: float = 60.0) -> float:
    """Wait until ``needle`` appears in the process's log; returns the seconds it took.

    Raises:
        BenchError: the process died, or ``timeout`` passed.
    """
    started = time.perf_counter()
    with trio.move_on_after(timeout):
        while True:
            if needle in proc.output(200_000):
                return time.perf_counter() - started
            if not proc.alive():
                raise proc.died()
            await trio.sleep(0.05)
    raise BenchError(
        f"{proc.name} did not log {needle!r} within {timeout:g} s: {proc.output(1500)}"
    )


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def rss_mib(pid: int) -> float | None:
    """RSS of a process and its children, MiB."""
    total = 0
    procs = tree(pid)
    if not procs:
        return None
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / MIB


PidSource = Callable[[], Iterable[int]]


def _descendants(roots: Iterable[int], children_of: dict[int, list[int]]) -> list[int]:
    """``roots`` and all their descendants in ``children_of`` (each pid once)."""
    found: list[int] = []
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        todo.extend(children_of.get(pid, ()))
    return found


class Sampler:
    """CPU seconds and peak RSS of process groups over a window.

    Each group is a callable returning root pids; the roots' descendants are
    included (except for the groups in ``without_children``). RSS is summed
    over a group at each tick (every ``interval``); CPU is the growth of each
    process's user+system time between the window start (or its birth) and
    the last tick at which it was seen. Descendants are looked up in the
    process table every ``rescan_every`` ticks (and at the window's start and
    end): a process started in between counts from the next scan on.
    """

    def __init__(
        self,
        groups: dict[str, PidSource],
        interval: float = 0.1,
        *,
        without_children: frozenset[str] = frozenset({"client"}),
        rescan_every: int = 10,
    ) -> None:
        self.groups = groups
        self.interval = interval
        self.rescan_every = rescan_every
        self._children_of: dict[int, list[int]] = {}
        self._since_scan = 0
        #: Groups whose processes count alone (the bench itself is the parent of everything).
        self.without_children = without_children
        self._cpu_first: dict[str, dict[tuple[int, float], float]] = {}
        self._cpu_last: dict[str, dict[tuple[int, float], float]] = {}
        self._peak: dict[str, float] = {}
        self._window_start = time.time()
        self._active = False
        self.samples = 0
        self._procs: dict[int, psutil.Process] = {}

    def _tick(self, *, first: bool = False, last: bool = False) -> None:
        # The bench runs on the machine it measures: the process table is read
        # once per scan, shared by every group (asking psutil for each root's
        # children read every /proc/*/stat once per root), and scanned once a
        # second rather than every tick (a scan every 0.1 s was ~40 % of the
        # load generator's CPU, ~4 % of the machine's).
        if set(self.groups) - self.without_children:
            self._since_scan += 1
            if first or last or self._since_scan >= self.rescan_every:
                self._children_of = self._children_map()
                self._since_scan = 0
        children_of = self._children_of
        live: dict[int, psutil.Process] = {}
        for name, source in self.groups.items():
            try:
                roots = list(source())
            except Exception:  # a dynamic source (database query) failed: skip this tick
                continue
            pids = roots if name in self.without_children else _descendants(roots, children_of)
            rss = 0
            firsts = self._cpu_first.setdefault(name, {})
            lasts = self._cpu_last.setdefault(name, {})
            for pid in pids:
                p = self._process(pid)
                if p is None:
                    continue
                try:
                    with p.oneshot():
                        key = (p.pid, p.create_time())
                        times = p.cpu_times()
                        cpu = times.user + times.system
                        rss += p.memory_info().rss
                except psutil.Error:
                    continue
                live[pid] = p
                if key not in firsts:
                    born_inside = not first and key[1] >= self._window_start
                    firsts[key] = 0.0 if born_inside else cpu
                lasts[key] = cpu
            self._peak[name] = max(self._peak.get(name, 0.0), rss / MIB)
        self._procs = live
        self.samples += 1

    def _process(self, pid: int) -> psutil.Process | None:
        """The process ``pid`` (kept from the last tick while it is the same process)."""
        p = self._procs.get(pid)
        if p is not None and p.is_running():
            return p
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    @staticmethod
    def _children_map() -> dict[int, list[int]]:
        """Parent pid → child pids, from one pass over the process table."""
        children: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):
            ppid = p.info["ppid"]
            if ppid is not None:
                children.setdefault(ppid, []).append(p.pid)
        return children

    def begin(self) -> None:
        """Start a window: reset peaks and CPU baselines."""
        self._cpu_first.clear()
        self._cpu_last.clear()
        self._peak.clear()
        self._window_start = time.time()
        self.samples = 0
        self._tick(first=True)
        self._active = True

    def end(self) -> dict[str, dict[str, Any]]:
        """Close the window: ``{group: {cpu_s, peak_rss_mib}}``."""
        self._tick(last=True)
        self._active = False
        result: dict[str, dict[str, Any]] = {}
        for name in self.groups:
            firsts = self._cpu_first.get(name, {})
            lasts = self._cpu_last.get(name, {})
            if not lasts:  # no process in this group (the embedded server's workers)
                result[name] = {"cpu_s": None, "peak_rss_mib": None}
                continue
            cpu = sum(lasts[k] - firsts[k] for k in lasts)
            result[name] = {
                "cpu_s": round(cpu, 2),
                "peak_rss_mib": round(self._peak.get(name, 0.0), 1),
            }
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            if self._active:
                self._tick()
