"""Activities served by worker processes in the acceptance tests.

Every run appends one line to the file named by ``KFLOW_TEST_LEDGER`` so a
test can count executions across processes: ``<workflow_id> <key> <attempt>``.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from kflow.worker import ActivityContext, ActivityRegistry, ActivityResult, activity

registry = ActivityRegistry(default_worker="acceptance")


def _record(ctx: ActivityContext) -> None:
    with open(os.environ["KFLOW_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{ctx.workflow_id} {ctx.activity_key} {ctx.attempt}\n")
        ledger.flush()
        os.fsync(ledger.fileno())


@activity(name="add")
async def add(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
    """Sum ``values``; sleeps ``sleep`` seconds first (to be caught mid-activity).

    ``sleep_attempt`` limits the sleep to that attempt number.
    """
    only = params.get("sleep_attempt")
    if only is None or int(only) == ctx.attempt:
        await trio.sleep(float(params.get("sleep", 0)))
    _record(ctx)
    return ActivityResult.value("sum", sum(params.get("values", [])))


@activity(name="classify")
async def classify(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
    """``big`` when ``n`` is above ``limit``, else ``small``."""
    _record(ctx)
    return ActivityResult.value("kind", "big" if params["n"] > params["limit"] else "small")


registry.register(add)
registry.register(classify)


def make_registry() -> ActivityRegistry:
    """A factory form, as ``kflow worker module:function`` accepts."""
    fresh = ActivityRegistry(default_worker="acceptance")
    fresh.register(add)
    return fresh
