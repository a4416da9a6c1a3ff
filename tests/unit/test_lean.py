"""The ``kflow`` command leaves libraries' unused optional modules out (kflow._lean)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import kflow.cli
import kflow.worker.manager
from kflow.activities import load_plugins, std_registry

load_plugins(std_registry(), "std")
import httpx
httpx.AsyncClient()  # loads httpcore's connection classes
optional = ("rich", "greenlet", "click", "kflow_llm.activities", "h2", "hpack", "hyperframe")
print("loaded:", sorted(name for name in optional if name in sys.modules))
print(sys.modules.get("httpx._main", "absent"))
import structlog.threadlocal, threading
print(structlog.threadlocal.ThreadLocal is threading.local)
import greenlet, rich, h2.connection  # still importable once structlog and httpcore loaded
print("importable")
"""


def test_the_command_loads_no_optional_module_it_does_not_use() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", CHECK],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    out = out[out.index(next(line for line in out if line.startswith("loaded:"))) :]
    assert out[0] == "loaded: []"  # no rich, greenlet, click, HTTP/2; no LLM activity yet
    assert out[1] in ("None", "absent")
    assert out[2] == "True"  # structlog's deprecated thread-local never needs greenlet here
    assert out[3] == "importable"
