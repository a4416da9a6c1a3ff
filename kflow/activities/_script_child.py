"""Entry of a script-pool child interpreter (stdlib only; run as a file).

The parent (:mod:`kflow.activities.script_pool`) starts
``python _script_child.py MEMORY_LIMIT_MB`` with pipes on fds 0 and 1. At
start the child keeps private duplicates of those pipes for the protocol,
points fd 0 at ``/dev/null`` and fd 1 at fd 2 (the worker's stderr), so
nothing a script writes — ``print``, ``os.write(1, ...)``, a subprocess —
can corrupt the protocol. It applies ``RLIMIT_AS``, ignores SIGINT (the
parent owns its lifetime) and asks to be killed when the parent dies.

Protocol: frames of a 4-byte big-endian length and UTF-8 JSON. The child
sends ``{"ready": true, "pid": N}``, then answers each request
``{"script", "inputs", "workflow_id", "activity_key"}`` with
``{"ok", "output" | "error": {"code", "message"}, "logs", "stdout", "stderr",
"recycle"}``. ``recycle`` means "my state may be broken, replace me"; the
child exits after sending it. EOF on the request pipe ends the child. An
unrecoverable ``MemoryError`` ends it with exit status
:data:`MEMORY_EXIT_CODE`.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import io
import json
import linecache
import logging
import os
import signal
import struct
import sys
import threading
import traceback
from typing import Any, BinaryIO

MEMORY_EXIT_CODE = 86
FILENAME = "<script>"
HEADER = struct.Struct(">I")
MAX_CAPTURE_CHARS = 64 * 1024
MAX_LOG_RECORDS = 1000
MAX_LOG_MESSAGE_CHARS = 8 * 1024
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
MAX_TRACEBACK_FRAMES = 5


class _Capture(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters written to it."""

    encoding = "utf-8"

    def __init__(self, limit: int = MAX_CAPTURE_CHARS) -> None:
        self._parts: list[str] = []
        self._room = limit
        self._truncated = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        kept = text[: self._room]
        if kept:
            self._parts.append(kept)
            self._room -= len(kept)
        if len(kept) < len(text):
            self._truncated = True
        return len(text)

    def getvalue(self) -> str:
        text = "".join(self._parts)
        return text + "\n[... truncated]" if self._truncated else text


class _Collector(logging.Handler):
    """Keeps log records as plain dicts for the parent to re-log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) >= MAX_LOG_RECORDS:
            self.dropped += 1
            return
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad %-format in the script's call
            message = f"<unformattable log message {record.msg!r}: {exc}>"
        if record.exc_info and record.exc_info[1] is not None:
            message += "\n" + _format_exception(record.exc_info[1])
        self.records.append(
            {
                "level": record.levelno,
                "logger": record.name,
                "message": message[:MAX_LOG_MESSAGE_CHARS],
                "created": record.created,
            }
        )


def _format_exception(exc: BaseException) -> str:
    """``TypeName: message`` and the last frames that belong to the script."""
    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    if not frames:
        return head
    tail = "".join(traceback.format_list(frames[-MAX_TRACEBACK_FRAMES:])).rstrip()
    return f"{head}\nTraceback (most recent call last, script frames only):\n{tail}"


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}, **extra}


def _execute(request: dict[str, Any], logger: logging.Logger) -> dict[str, Any]:
    script = request["script"]
    linecache.cache[FILENAME] = (len(script), None, script.splitlines(True), FILENAME)
    try:
        code = compile(
            script, FILENAME, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = f": {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        return _error("SYNTAX_ERROR", f"{type(exc).__name__} at {where}: {exc.msg}{text}")
    except ValueError as exc:  # e.g. null bytes in the source
        return _error("SYNTAX_ERROR", f"invalid script: {exc}")
    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "__builtins__": builtins,
        "INPUT": request.get("inputs", {}),
        "OUTPUT": {},
        "workflow_id": request.get("workflow_id"),
        "activity_key": request.get("activity_key"),
        "logger": logger,
    }
    try:
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, namespace))
        else:
            exec(code, namespace)
    except MemoryError as exc:
        return _error("SCRIPT_ERROR", _format_exception(exc), recycle=True, memory=True)
    except BaseException as exc:  # SystemExit too: the script's failure, not the child's
        return _error("SCRIPT_ERROR", _format_exception(exc))
    output = namespace.get("OUTPUT")
    try:
        size = len(json.dumps(output, allow_nan=False).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        return _error("SCRIPT_ERROR", f"OUTPUT is not JSON-serialisable: {exc}")
    if size > MAX_OUTPUT_BYTES:
        return _error(
            "SCRIPT_ERROR", f"OUTPUT is {size} bytes of JSON; the limit is {MAX_OUTPUT_BYTES}"
        )
    return {"ok": True, "output": output}


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    """Run one script with captured stdio and logs; restore process state after."""
    cwd, environ, path = os.getcwd(), dict(os.environ), list(sys.path)
    recursion_limit = sys.getrecursionlimit()
    out, err, collector = _Capture(), _Capture(), _Collector()
    logger = logging.getLogger("kflow.script")
    logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(collector)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        reply = _execute(request, logger)
    finally:
        sys.stdout, sys.stderr = saved
        root.removeHandler(collector)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
        sys.setrecursionlimit(recursion_limit)
        linecache.cache.pop(FILENAME, None)
    if collector.dropped:
        collector.records.append(
            {
                "level": logging.WARNING,
                "logger": "kflow.script",
                "message": f"{collector.dropped} log records dropped",
                "created": 0.0,
            }
        )
    reply.update(logs=collector.records, stdout=out.getvalue(), stderr=err.getvalue())
    if threading.active_count() > 1:
        reply["recycle"] = True  # threads the script started would outlive it
    return reply


def _read_frame(stream: BinaryIO) -> Any:
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    body = _read_exact(stream, HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _write_frame(stream: BinaryIO, message: Any) -> None:
    body = json.dumps(message, allow_nan=False).encode()
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def _prepare_process(memory_limit_mb: int) -> tuple[BinaryIO, BinaryIO]:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with_errno = ctypes.CDLL(None, use_errno=True)
        with_errno.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
    if memory_limit_mb > 0:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        # Soft and hard: the script cannot raise its own limit back.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return proto_in, proto_out


def main(argv: list[str]) -> int:
    """Serve requests until EOF; returns the exit status."""
    proto_in, proto_out = _prepare_process(int(argv[1]) if len(argv) > 1 else 0)
    _write_frame(proto_out, {"ready": True, "pid": os.getpid()})
    while True:
        request = _read_frame(proto_in)
        if request is None:
            return 0
        try:
            reply = run_request(request)
            _write_frame(proto_out, reply)
        except MemoryError:
            os._exit(MEMORY_EXIT_CODE)
        if reply.get("recycle"):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
