"""``script`` activity wiring with a fake pool, and the child's runner in-process."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import pytest
import structlog

from kflow.activities import _script_child as child
from kflow.activities.script import ScriptActivity
from kflow.activities.script_pool import ScriptLogRecord, ScriptOutcome, child_environment
from kflow.errors import ActivityError
from kflow.worker.context import ActivityContext


class FakePool:
    """Records calls; answers with a fixed outcome (a stand-in for ScriptPool.run)."""

    def __init__(self, outcome: ScriptOutcome) -> None:
        self.outcome = outcome
        self.calls: list[dict[str, Any]] = []

    async def run(self, script: str, inputs: Any = None, **kwargs: Any) -> ScriptOutcome:
        self.calls.append({"script": script, "inputs": inputs, **kwargs})
        return self.outcome


def ctx(timeout: float | None) -> ActivityContext:
    return ActivityContext(
        workflow_id=uuid4(), activity_id=uuid4(), activity_key="k", timeout_seconds=timeout
    )


async def test_timeout_falls_back_to_300_seconds() -> None:
    pool = FakePool(ScriptOutcome(ok=True, output=[1]))
    result = await ScriptActivity(pool).execute({"script": "x", "inputs": {"a": 1}}, ctx(None))
    assert result.to_output_dict() == {"result": [1]}
    context = ctx(7)
    await ScriptActivity(pool).execute({"script": "x"}, context)
    assert [c["timeout"] for c in pool.calls] == [300.0, 7]
    assert pool.calls[1]["workflow_id"] == context.workflow_id
    assert pool.calls[1]["activity_key"] == "k"


async def test_failure_becomes_activity_error_after_relogging() -> None:
    outcome = ScriptOutcome(
        ok=False,
        error_code="SCRIPT_CRASHED",
        error_message="died",
        retryable=True,
        stderr="bye\n",
        logs=(ScriptLogRecord(level=logging.ERROR, logger="x", message="m"),),
    )
    with structlog.testing.capture_logs() as logs:
        context = ctx(1)
        with pytest.raises(ActivityError) as info:
            await ScriptActivity(FakePool(outcome)).execute({"script": "x"}, context)
    assert (info.value.code, info.value.message, info.value.retryable) == (
        "SCRIPT_CRASHED",
        "died",
        True,
    )
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("script.log", "error"),
        ("script.stderr", "info"),
    ]


def test_child_environment_allow_list() -> None:
    base = {
        "PATH": "/bin",
        "HOME": "/h",
        "LC_TIME": "C",
        "LANG": "C",
        "TZ": "UTC",
        "KRUXIAFLOW_CLIENT_SECRET": "s",
        "ANTHROPIC_API_KEY": "k",
        "KFLOW_X": "1",
        "AWS_SESSION_TOKEN": "t",
        "PYTHONPATH": "/p",
    }
    assert child_environment(base, {"X": "1", "PATH": "/usr/bin"}) == {
        "PATH": "/usr/bin",
        "HOME": "/h",
        "LC_TIME": "C",
        "LANG": "C",
        "TZ": "UTC",
        "PYTHONPATH": "/p",
        "X": "1",
    }


def test_capture_truncates() -> None:
    capture = child._Capture(limit=5)
    assert capture.write("abc") == 3
    assert capture.write("defg") == 4
    assert capture.getvalue() == "abcde\n[... truncated]"


def run_in_process(script: str, inputs: Any = None) -> dict[str, Any]:
    return child.run_request(
        {"script": script, "inputs": inputs or {}, "workflow_id": "w", "activity_key": "k"}
    )


def test_child_runner_success_and_capture() -> None:
    reply = run_in_process(
        "print('hi')\nlogger.debug('d')\nOUTPUT = [INPUT, workflow_id]", {"a": 1}
    )
    assert (reply["ok"], reply["output"], reply["stdout"]) == (True, [{"a": 1}, "w"], "hi\n")
    assert [r["message"] for r in reply["logs"]] == ["d"]


def test_child_runner_errors() -> None:
    syntax = run_in_process("x = = 1")
    assert syntax["error"]["code"] == "SYNTAX_ERROR"
    assert "line 1" in syntax["error"]["message"]
    nul = run_in_process("x = 1\0")
    assert nul["error"]["code"] == "SYNTAX_ERROR"
    exc = run_in_process("raise KeyError('k')")
    assert exc["error"] == {
        "code": "SCRIPT_ERROR",
        "message": (
            "KeyError: 'k'\nTraceback (most recent call last, script frames only):\n"
            "  File \"<script>\", line 1, in <module>\n    raise KeyError('k')"
        ),
    }
    nan = run_in_process("OUTPUT = float('nan')")
    assert "not JSON-serialisable" in nan["error"]["message"]
