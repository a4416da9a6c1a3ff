"""The ``script`` activity on a real ``ScriptPool`` (child interpreters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import structlog

from kflow.activities import py_std_registry
from kflow.activities.script_pool import ScriptPool
from kflow.errors import ActivityError
from kflow.worker.context import ActivityContext


@pytest.fixture
async def pool() -> AsyncIterator[ScriptPool]:
    async with ScriptPool(size=1, memory_limit_mb=256) as p:
        yield p


def ctx(timeout: float | None = 5) -> ActivityContext:
    return ActivityContext(
        workflow_id=uuid4(), activity_id=uuid4(), activity_key="calc", timeout_seconds=timeout
    )


async def test_result_is_output_and_logs_are_relogged(pool) -> None:
    act = py_std_registry(pool).get("py-std", "script")
    with structlog.testing.capture_logs() as logs:
        context = ctx()
        result = await act.execute(
            {
                "script": "logger.warning('seen %d', len(INPUT['xs']))\nprint('p')\n"
                "OUTPUT = {'sum': sum(INPUT['xs']), 'wf': workflow_id}",
                "inputs": {"xs": [1, 2, 3]},
            },
            context,
        )
    assert result.to_output_dict() == {"result": {"sum": 6, "wf": str(context.workflow_id)}}
    relogged = [e for e in logs if e["event"] == "script.log"]
    assert relogged == [
        {
            "event": "script.log",
            "message": "seen 3",
            "script_logger": "kflow.script",
            "log_level": "warning",
            "workflow_id": str(context.workflow_id),
            "activity_key": "calc",
            "attempt": 1,
        }
    ]
    assert any(e["event"] == "script.stdout" and e["text"] == "p\n" for e in logs)


@pytest.mark.parametrize(
    ("params", "code", "retryable"),
    [
        ({}, "MISSING_SCRIPT", False),
        ({"script": ""}, "MISSING_SCRIPT", False),
        ({"script": 3}, "INVALID_PARAMETERS", False),
        ({"script": "def"}, "SYNTAX_ERROR", False),
        ({"script": "1 / 0"}, "SCRIPT_ERROR", False),
        ({"script": "import os\nos._exit(9)"}, "SCRIPT_CRASHED", True),
    ],
)
async def test_errors(pool, params, code, retryable) -> None:
    act = py_std_registry(pool).get("py-std", "script")
    with pytest.raises(ActivityError) as info:
        await act.execute(params, ctx())
    assert (info.value.code, info.value.retryable) == (code, retryable)


async def test_timeout_comes_from_the_context(pool) -> None:
    act = py_std_registry(pool).get("py-std", "script")
    with pytest.raises(ActivityError) as info:
        await act.execute({"script": "import time\ntime.sleep(60)"}, ctx(timeout=0.5))
    assert (info.value.code, info.value.retryable) == ("TIMEOUT", True)
    assert "0.5 s" in info.value.message
