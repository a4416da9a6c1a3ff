"""Process hardening for workers that run user scripts.

Script children run as the same user as their worker, so without care a
script could read the worker's environment — credentials included — from
``/proc/<parent pid>/environ``, or attach to it with ptrace. Marking the
worker process non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``) makes the kernel
refuse both to other processes of that user. Core dumps of the worker are
disabled as a side effect, which is also what one wants for a process that
holds secrets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import structlog

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3

log = structlog.get_logger("kflow.hardening")


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def protect_process_memory() -> bool:
    """Make this process non-dumpable (Linux); returns whether it now is.

    Never raises: on other systems, or if the call fails, it logs a warning
    and returns False.
    """
    libc = _libc()
    if libc is None:
        log.warning("hardening.unavailable", reason="prctl needs Linux")
        return False
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("hardening.failed", errno=ctypes.get_errno())
        return False
    return is_protected()


def is_protected() -> bool:
    """Whether this process is non-dumpable."""
    libc = _libc()
    return libc is not None and libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
