"""The Celery peer: the three shapes as canvas primitives, Redis broker and backend.

Worker (started by :mod:`bench.celery_side`)::

    celery -A bench.celery_app worker --pool threads --concurrency 16 --prefetch-multiplier 1

``task_acks_late`` and a prefetch of 1 are the settings BENCHMARKS.md names.
Each ``echo`` returns its input and counts its execution in a Redis hash
(``HINCRBY bench:exec <run>:<step> 1``): Celery keeps no history of its own
to count executions from, so the task does it (one extra round trip to a
local Redis per task).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from celery import Celery, chain, chord, group

REDIS_URL = os.environ.get("KFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
EXEC_KEY = "bench:exec"

app = Celery("kflow_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue="kflow_bench",
)

_local = threading.local()


def _redis() -> redis.Redis:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = redis.Redis.from_url(REDIS_URL)
    return conn


@app.task(name="bench.echo")
def echo(previous: Any, run: str, step: str) -> dict[str, Any]:
    """Return the step's input; count this execution."""
    _redis().hincrby(EXEC_KEY, f"{run}:{step}", 1)
    return {"step": step, "previous": previous is not None}


def canvas(shape: str, run: str) -> Any:
    """The shape as a canvas: chain of 5; start → chord(group of 10, end); chain of 3."""
    if shape in ("seq5", "hc3"):
        steps = ["a", "b", "c", "d", "e"][: 5 if shape == "seq5" else 3]
        return chain(echo.s(None, run, steps[0]), *(echo.s(run, s) for s in steps[1:]))
    if shape == "par10":
        return chain(
            echo.s(None, run, "start"),
            chord(group(echo.s(run, f"p{i}") for i in range(10)), echo.s(run, "end")),
        )
    if shape == "one":
        return echo.s(None, run, "a")
    raise ValueError(shape)


def steps(shape: str) -> list[str]:
    if shape == "par10":
        return ["start", *(f"p{i}" for i in range(10)), "end"]
    return ["a", "b", "c", "d", "e"][: {"seq5": 5, "hc3": 3, "one": 1}[shape]]
