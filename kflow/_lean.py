"""Leave libraries' unused optional modules out of the ``kflow`` command's processes.

Two libraries import heavy optional modules that a kflow process never uses:
httpx imports its command-line client (``httpx._main``: click, rich and
pygments) whenever click is installed, and structlog imports rich (for
pretty tracebacks in its console renderer) and greenlet (for its deprecated
thread-local context) whenever they are installed. Together they are about
7 MiB of an idle ``kflow worker``'s resident memory (bench/README.md, "Idle
footprint").

:func:`lean_imports` runs when :mod:`kflow.cli` is loaded, before either
library is — so only in the ``kflow`` command, never because a program
imports kflow. It uses Python's documented way to make an import fail (a
``None`` entry in :data:`sys.modules`): httpx then defines its "CLI not
installed" stub, structlog's console renderer prints plain tracebacks and
its thread-local helper uses :class:`threading.local`. The ``rich`` and
``greenlet`` entries are removed again once structlog is loaded, so the
command's own output (tables, live progress) still imports rich when it
prints, and the PostgreSQL store still imports greenlet.
"""

from __future__ import annotations

import importlib
import sys

#: What structlog imports only because it is installed: rich (pretty tracebacks) and
#: greenlet (for its deprecated ``structlog.threadlocal``; kflow binds context with
#: contextvars). Blocked while structlog loads, importable again afterwards.
_STRUCTLOG_OPTIONAL = ("rich", "greenlet")


def lean_imports() -> None:
    """Block httpx's CLI module and load structlog without rich (see the module doc)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    blocked = [name for name in _STRUCTLOG_OPTIONAL if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        importlib.import_module("structlog")
    finally:
        for name in blocked:
            del sys.modules[name]
