"""Leave libraries' unused optional modules out of the ``kflow`` command's processes.

Three libraries import heavy optional modules that a kflow process never
uses: httpx imports its command-line client (``httpx._main``: click, rich
and pygments) whenever click is installed; structlog imports rich (for
pretty tracebacks in its console renderer) and greenlet (for its deprecated
thread-local context) whenever they are installed; httpcore imports the
HTTP/2 stack (h2, hpack, hyperframe — installed for the server's hypercorn)
although kflow's HTTP clients speak HTTP/1.1 only. Together they are about
8 MiB of an idle ``kflow worker``'s resident memory (bench/README.md, "Idle
footprint").

:func:`lean_imports` runs when :mod:`kflow.cli` is loaded, before either
library is — so only in the ``kflow`` command, never because a program
imports kflow. It uses Python's documented way to make an import fail (a
``None`` entry in :data:`sys.modules`): httpx then defines its "CLI not
installed" stub, structlog's console renderer prints plain tracebacks and
its thread-local helper uses :class:`threading.local`, httpcore defines its
"h2 not installed" stub for HTTP/2 connections (which no kflow client
asks for). The ``rich``, ``greenlet`` and ``h2`` entries are removed again
once structlog and httpcore are loaded, so the command's own output
(tables, live progress) still imports rich when it prints, the PostgreSQL
store still imports greenlet, and the server's hypercorn still imports h2.
"""

from __future__ import annotations

import importlib
import sys

#: What structlog imports only because it is installed: rich (pretty tracebacks) and
#: greenlet (for its deprecated ``structlog.threadlocal``; kflow binds context with
#: contextvars). Blocked while structlog loads, importable again afterwards.
_STRUCTLOG_OPTIONAL = ("rich", "greenlet")

#: What httpcore imports only because it is installed: the HTTP/2 stack. Blocked
#: while httpcore loads (kflow's httpx clients never set ``http2=True``).
_HTTPCORE_OPTIONAL = ("h2",)


def lean_imports() -> None:
    """Block httpx's CLI module, load structlog without rich and httpcore without
    h2 (see the module doc)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if "httpcore" not in sys.modules and "h2" not in sys.modules:
        _import_without("httpcore", _HTTPCORE_OPTIONAL)
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    _import_without("structlog", _STRUCTLOG_OPTIONAL)


def _import_without(module: str, optional: tuple[str, ...]) -> None:
    """Import ``module`` while ``optional`` modules (not yet loaded) look absent."""
    blocked = [name for name in optional if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        importlib.import_module(module)
    finally:
        for name in blocked:
            del sys.modules[name]
