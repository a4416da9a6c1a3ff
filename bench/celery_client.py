"""The Celery client of one scenario, run as its own process (Celery's client is synchronous).

``python -m bench.celery_client SHAPE WORKFLOWS SUBMITTERS [--warmup N] [--timeout S]``
prints one JSON object: per run ``t0``/``t1`` (perf_counter seconds), status
and run id. Submitters are threads; each applies a canvas, waits for its
result (``AsyncResult.get``, Redis pub/sub), then starts the next.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
import uuid
from typing import Any

from bench.celery_app import canvas


def one(shape: str, timeout: float) -> dict[str, Any]:
    run = uuid.uuid4().hex
    t0 = time.perf_counter()
    try:
        result = canvas(shape, run).apply_async()
        result.get(timeout=timeout, propagate=True)
        status = "completed"
    except Exception as exc:  # reported per run
        status = " ".join(f"error: {type(exc).__name__}: {exc}".split())[:200]
    return {"t0": t0, "t1": time.perf_counter(), "status": status, "id": run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("shape")
    parser.add_argument("workflows", type=int)
    parser.add_argument("submitters", type=int)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.submitters) as pool:
        warm = [pool.submit(one, args.shape, 60.0) for _ in range(args.warmup)]
        warm_ok = sum(f.result()["status"] == "completed" for f in warm)
        print(json.dumps({"ready": True, "warmup_ok": warm_ok}), flush=True)
        sys.stdin.readline()  # the orchestrator starts its sampler, then says go
        futures = [pool.submit(one, args.shape, args.timeout) for _ in range(args.workflows)]
        results = [f.result() for f in futures]
    print(json.dumps({"results": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
