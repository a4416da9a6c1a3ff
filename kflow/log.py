"""structlog setup: JSON lines under systemd or a pipe, colored console on a TTY.

Log events are stable dotted names with key-value data
(``log.info("activity.finished", outcome="ok", duration_ms=812)``). Context
such as ``workflow_id`` or ``request_id`` is bound per task with
:func:`structlog.contextvars.bound_contextvars`; Trio copies context
variables into child tasks, so binding in a task covers what it spawns.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def level_from_name(name: str) -> int:
    """Map ``debug|info|warning|error|critical`` to a logging level.

    Raises:
        ValueError: unknown level name.
    """
    try:
        return _LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(_LEVELS)}") from None


def configure(
    *, level: int = logging.INFO, fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog (and stdlib logging of libraries) once per process.

    ``fmt="auto"`` picks JSON unless ``stream`` is a TTY; under systemd
    (``JOURNAL_STREAM`` set) JSON is always used so journald keeps one
    record per event.
    """
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        on_tty = hasattr(out, "isatty") and out.isatty() and "JOURNAL_STREAM" not in os.environ
        fmt = "console" if on_tty else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty() if hasattr(out, "isatty") else False
        )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging; keep them quiet unless they warn.
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger with optional initial key-value context."""
    logger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger.bind(**initial) if initial else logger
