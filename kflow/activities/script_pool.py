"""``ScriptPool``: run Python scripts in separate, reusable interpreter processes.

Each child is ``python kflow/activities/_script_child.py`` (stdlib only),
started lazily on first need and reused for later scripts (fresh globals
per script; cwd, ``os.environ``, ``sys.path`` restored after each). A child
that timed out, crashed, was cancelled, hit ``MemoryError`` or left threads
running is killed and replaced by a new one on the next run. At most
``size`` scripts run at once (a ``trio.CapacityLimiter``).

Isolation (not a sandbox: the child runs as the worker's user):

- environment: an allow-list (``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ``,
  ``TMPDIR``, ``PYTHONPATH``) of the worker's environment plus ``env``, so
  worker credentials (``KRUXIAFLOW_CLIENT_SECRET``, ``*_API_KEY``,
  ``KFLOW_*``) are not visible to scripts;
- memory: ``RLIMIT_AS`` of ``memory_limit_mb`` (None/0 disables);
- time: the parent kills the child at the deadline, whatever it is doing;
- stdio: ``print`` and stderr are captured (64 KiB each) and returned.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from kflow.activities import _script_child as child_protocol

CHILD_PATH = pathlib.Path(child_protocol.__file__).resolve()
MAX_FRAME_BYTES = child_protocol.MAX_OUTPUT_BYTES * 4
ALLOWED_ENV = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH"})
_REAP_SECONDS = 5.0
_CRASH_GRACE_SECONDS = 1.0  # a child that closed its pipe gets this long to exit


@attrs.frozen(kw_only=True)
class ScriptLogRecord:
    """One stdlib log record the script emitted."""

    level: int
    logger: str
    message: str
    created: float = 0.0


@attrs.frozen(kw_only=True)
class ScriptOutcome:
    """What one script run produced: ``output`` when ``ok``, else an error code."""

    ok: bool
    output: Any = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False
    logs: tuple[ScriptLogRecord, ...] = ()
    stdout: str = ""
    stderr: str = ""
    pid: int | None = None


def child_environment(
    base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allow-listed part of ``base`` plus ``extra`` (which wins)."""
    env = {k: v for k, v in base.items() if k in ALLOWED_ENV or k.startswith("LC_")}
    env.update(extra or {})
    return env


def _failure(code: str, message: str, *, retryable: bool, pid: int | None = None) -> ScriptOutcome:
    return ScriptOutcome(
        ok=False, error_code=code, error_message=message, retryable=retryable, pid=pid
    )


class _ProtocolError(Exception):
    """The child sent something that is not a frame of the protocol."""


class _SpawnFailed(Exception):
    """A child could not be started."""


class _Child:
    """One interpreter process and its framed pipes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid: int = process.pid
        self.killed = False  # by the pool, not by a fault
        self._buffer = bytearray()

    async def send(self, message: Any) -> None:
        body = json.dumps(message).encode()
        assert self.process.stdin is not None
        await self.process.stdin.send_all(child_protocol.HEADER.pack(len(body)) + body)

    async def receive(self) -> Any:
        """The next frame, or None at EOF. Raises _ProtocolError on garbage."""
        header = await self._read_exact(child_protocol.HEADER.size)
        if header is None:
            return None
        size = child_protocol.HEADER.unpack(header)[0]
        if size > MAX_FRAME_BYTES:
            raise _ProtocolError(f"frame of {size} bytes")
        body = await self._read_exact(size)
        if body is None:
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _ProtocolError(f"bad frame: {exc}") from exc

    async def _read_exact(self, size: int) -> bytes | None:
        assert self.process.stdout is not None
        while len(self._buffer) < size:
            chunk = await self.process.stdout.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def close(self, *, grace: float = 0.0) -> int | None:
        """Reap the process, killing it unless it exits within ``grace`` seconds;
        returns its exit status (negative: the signal). Shielded from cancellation."""
        with trio.CancelScope(shield=True):
            if grace > 0:
                with trio.move_on_after(grace):
                    await self.process.wait()
            if self.process.returncode is None:
                self.killed = True
                self.process.kill()
            with trio.move_on_after(_REAP_SECONDS):
                await self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    await stream.aclose()
        return self.process.returncode


class ScriptPool:
    """A bounded pool of reusable script interpreters (see the module docstring).

    Use ``async with pool:`` or call :meth:`aclose`; both kill every child.
    """

    def __init__(
        self,
        size: int = 2,
        memory_limit_mb: int | None = 1024,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, not {size}")
        self.size = size
        self.memory_limit_mb = memory_limit_mb or 0
        self.python = python
        self._env = child_environment(os.environ, env)
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._closed = False

    async def __aenter__(self) -> ScriptPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Kill every child; later :meth:`run` calls raise ``trio.ClosedResourceError``."""
        self._closed = True
        self._idle.clear()
        for child in list(self._children):
            self._children.discard(child)
            await child.close()

    async def run(
        self,
        script: str,
        inputs: Any = None,
        *,
        timeout: float,  # an outcome (TIMEOUT), not a cancellation
        workflow_id: uuid.UUID | str | None = None,
        activity_key: str | None = None,
    ) -> ScriptOutcome:
        """Run ``script`` with ``INPUT = inputs`` in a child; never raises for script faults.

        Error codes in the outcome: ``MISSING_SCRIPT``, ``INVALID_PARAMETERS``,
        ``SYNTAX_ERROR``, ``SCRIPT_ERROR`` (not retryable), ``TIMEOUT``
        (retryable), ``SCRIPT_CRASHED`` (retryable unless the memory limit
        killed it). On cancellation the child is killed and replaced.

        Raises:
            trio.ClosedResourceError: the pool is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the script pool is closed")
        if not isinstance(script, str) or not script.strip():
            return _failure(
                "MISSING_SCRIPT", "the 'script' parameter is missing or empty", retryable=False
            )
        request = {
            "script": script,
            "inputs": {} if inputs is None else inputs,
            "workflow_id": None if workflow_id is None else str(workflow_id),
            "activity_key": activity_key,
        }
        try:
            json.dumps(request, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return _failure(
                "INVALID_PARAMETERS", f"inputs are not JSON-serialisable: {exc}", retryable=False
            )
        async with self._limiter:
            return await self._run_in_child(request, seconds=timeout)

    async def _run_in_child(self, request: dict[str, Any], *, seconds: float) -> ScriptOutcome:
        child: _Child | None = None
        keep = False
        try:
            with trio.move_on_after(seconds):
                child = self._idle.pop() if self._idle else await self._spawn()
                try:
                    await child.send(request)
                    reply = await child.receive()
                except trio.BrokenResourceError:
                    reply = None
                if reply is None:
                    dead, child = child, None
                    return await self._crashed(dead)
                keep = not reply.get("recycle")
                return self._outcome(reply, child.pid)
            return _failure(
                "TIMEOUT",
                f"the script did not finish within {seconds:g} s",
                retryable=True,
                pid=None if child is None else child.pid,
            )
        except _SpawnFailed as exc:
            return _failure("SCRIPT_CRASHED", str(exc), retryable=True)
        except _ProtocolError as exc:
            return _failure(
                "SCRIPT_CRASHED",
                f"the script interpreter broke the protocol: {exc}",
                retryable=True,
            )
        finally:
            if child is not None:
                if keep and not self._closed:
                    self._idle.append(child)
                else:
                    self._children.discard(child)
                    await child.close()

    async def _spawn(self) -> _Child:
        """Start a child and wait for its ready frame.

        Raises:
            _SpawnFailed: the interpreter could not start or died at start.
            _ProtocolError: its first frame was garbage.
        """
        command = [self.python, str(CHILD_PATH), str(self.memory_limit_mb)]
        try:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env
            )
        except OSError as exc:
            raise _SpawnFailed(f"cannot start the script interpreter {self.python}: {exc}") from exc
        child = _Child(process)
        self._children.add(child)
        try:
            hello = await child.receive()
        except BaseException:
            self._children.discard(child)
            await child.close()
            raise
        if not isinstance(hello, dict) or not hello.get("ready"):
            self._children.discard(child)
            status = await child.close()
            raise _SpawnFailed(
                f"the script interpreter exited at start ({_describe_status(status)})"
            )
        return child

    async def _crashed(self, child: _Child) -> ScriptOutcome:
        self._children.discard(child)
        status = await child.close(grace=_CRASH_GRACE_SECONDS)
        memory = status == child_protocol.MEMORY_EXIT_CODE
        if child.killed:
            return _failure(
                "SCRIPT_CRASHED",
                "the script closed the interpreter's protocol pipe (the interpreter was killed)",
                retryable=True,
                pid=child.pid,
            )
        message = f"the script interpreter died ({_describe_status(status)})"
        if self.memory_limit_mb and (memory or (status or 0) < 0):
            message += f"; its memory limit is {self.memory_limit_mb} MB"
        return _failure("SCRIPT_CRASHED", message, retryable=not memory, pid=child.pid)

    def _outcome(self, reply: dict[str, Any], pid: int) -> ScriptOutcome:
        logs = tuple(
            ScriptLogRecord(
                level=int(r.get("level", 20)),
                logger=str(r.get("logger", "")),
                message=str(r.get("message", "")),
                created=float(r.get("created", 0.0)),
            )
            for r in reply.get("logs", ())
        )
        outcome = ScriptOutcome(
            ok=bool(reply.get("ok")),
            output=reply.get("output"),
            logs=logs,
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            pid=pid,
        )
        if outcome.ok:
            return outcome
        error = reply.get("error") or {}
        message = str(error.get("message", ""))
        if reply.get("memory") and self.memory_limit_mb:
            message += f"\n(the script's memory limit is {self.memory_limit_mb} MB)"
        return attrs.evolve(
            outcome,
            error_code=str(error.get("code", "SCRIPT_ERROR")),
            error_message=message,
            retryable=False,
        )


def _describe_status(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if status < 0:
        try:
            return f"killed by signal {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    if status == child_protocol.MEMORY_EXIT_CODE:
        return f"exit status {status}: out of memory"
    return f"exit status {status}"
