"""One attempt end to end (through a burst-mode manager and the fake server)."""

from __future__ import annotations

import decimal
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from kflow.errors import ActivityCancelled, ActivityError
from kflow.worker import (
    ActivityContext,
    ActivityRegistry,
    ActivityResult,
    Usage,
    WorkerManager,
    activity,
)

MakeManager = Callable[..., WorkerManager]


def registry_of(*activities: Any) -> ActivityRegistry:
    registry = ActivityRegistry()
    for act in activities:
        registry.register(act)
    return registry


async def burst(make_manager: MakeManager, *activities: Any, **config: Any) -> list[dict[str, Any]]:
    manager = make_manager(registry_of(*activities), burst=True, **config)
    with capture_logs() as logs:
        await manager.run()
    return logs


def finished(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "activity.finished"]


def error_of(fake: Any, activity_id: Any) -> dict[str, Any]:
    act = fake.activities[activity_id]
    assert act.status == "failed", act.result
    return act.result["error"]


@activity("sleepy")
async def sleepy(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
    await trio.sleep(params.get("seconds", 1))
    return ActivityResult.value("slept", params.get("seconds", 1))


async def test_success_reports_outputs_cost_and_usage(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    @activity("llm")
    async def llm(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        await trio.sleep(0.8)
        usage = Usage(
            provider="anthropic",
            model="claude-haiku-4-5",
            input_tokens=10,
            output_tokens=2,
            cost_usd="0.0014",
        )
        return ActivityResult.value("result", {"text": "hi"}).with_cost("0.01").with_usage(usage)

    act = fake.enqueue("llm", {"prompt": "x"}, key="summarize")
    logs = await burst(make_manager, llm)
    record = fake.activities[act]
    assert record.status == "completed"
    assert record.result["output"] == {"result": {"text": "hi"}}
    assert record.result["cost_usd"] == "0.01"
    assert record.result["usage"][0]["cost_usd"] == "0.0014"
    assert record.result["worker_id"] == "host-1-42-abcdef"
    [line] = finished(logs)
    assert line["outcome"] == "ok"
    assert line["log_level"] == "info"
    assert line["duration_ms"] == 800
    assert line["cost_usd"] == "0.0114"
    assert line["activity_name"] == "llm"
    assert line["activity_key"] == "summarize"
    assert line["workflow_id"] == str(record.workflow_id)
    assert line["attempt"] == 1
    assert line["reported"] == "acknowledged"


async def test_a_plain_mapping_means_values(make_manager: MakeManager, fake: Any) -> None:
    @activity("plain")
    async def plain(params: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
        return {"a": 1, "b": [1, 2]}

    act = fake.enqueue("plain")
    await burst(make_manager, plain)
    assert fake.activities[act].result["output"] == {"a": 1, "b": [1, 2]}


async def test_timeout_reports_timeout(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 100}, timeout_seconds=10)
    logs = await burst(make_manager, sleepy)
    error = error_of(fake, act)
    assert error["code"] == "TIMEOUT"
    assert error["retryable"] is True
    assert "10 s" in error["message"]
    [line] = finished(logs)
    assert (line["outcome"], line["code"], line["duration_ms"]) == ("timeout", "TIMEOUT", 10_000)


async def test_the_config_timeout_applies_without_one_from_the_server(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 100})
    logs = await burst(make_manager, sleepy, activity_timeout=42)
    assert error_of(fake, act)["code"] == "TIMEOUT"
    assert finished(logs)[0]["duration_ms"] == 42_000


async def test_an_exception_is_a_retryable_execution_error(
    make_manager: MakeManager, fake: Any
) -> None:
    @activity("broken")
    async def broken(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        raise KeyError("missing")

    act = fake.enqueue("broken")
    logs = await burst(make_manager, broken)
    error = error_of(fake, act)
    assert error == {"code": "EXECUTION_ERROR", "message": "KeyError: 'missing'", "retryable": True}
    [logged] = [e for e in logs if e["event"] == "activity.exception"]
    assert isinstance(logged["exc_info"], KeyError)
    assert finished(logs)[0]["outcome"] == "error"


@pytest.mark.parametrize("grouped", [False, True])
async def test_activity_error_keeps_code_and_retry_flag(
    make_manager: MakeManager, fake: Any, grouped: bool
) -> None:
    @activity("picky")
    async def picky(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        async def child() -> None:
            raise ActivityError("no such city", code="NOT_FOUND", retryable=False)

        if grouped:  # raised in a child task: arrives as an exception group
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)
        await child()
        raise AssertionError("unreachable")

    act = fake.enqueue("picky")
    await burst(make_manager, picky)
    assert error_of(fake, act) == {
        "code": "NOT_FOUND",
        "message": "no such city",
        "retryable": False,
    }


async def test_an_error_result_is_reported_as_failure(make_manager: MakeManager, fake: Any) -> None:
    @activity("soft")
    async def soft(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        return ActivityResult.error("quota", code="QUOTA", retryable=False).with_cost("0.2")

    act = fake.enqueue("soft")
    logs = await burst(make_manager, soft)
    assert error_of(fake, act)["code"] == "QUOTA"
    assert fake.activities[act].result["cost_usd"] == "0.2"
    assert finished(logs)[0]["code"] == "QUOTA"


async def test_unknown_activity_fails_without_retry(make_manager: MakeManager, fake: Any) -> None:
    act = fake.enqueue("mystery")
    await burst(make_manager, sleepy)
    error = error_of(fake, act)
    assert error["code"] == "UNKNOWN_ACTIVITY"
    assert error["retryable"] is False
    assert "'mystery'" in error["message"]
    assert "py-std.sleepy" in error["message"]


async def test_non_serialisable_output_is_invalid_output(
    make_manager: MakeManager, fake: Any
) -> None:
    @activity("weird")
    async def weird(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        return ActivityResult.value("obj", object()).with_cost("0.5")

    @activity("nothing")
    async def nothing(params: dict[str, Any], ctx: ActivityContext) -> None:
        return None

    a, b = fake.enqueue("weird"), fake.enqueue("nothing")
    logs = await burst(make_manager, weird, nothing)
    for act in (a, b):
        error = error_of(fake, act)
        assert error["code"] == "INVALID_OUTPUT"
        assert error["retryable"] is False
    assert fake.activities[a].result["cost_usd"] == "0.5"  # the spend is still recorded
    assert {e["code"] for e in finished(logs)} == {"INVALID_OUTPUT"}


async def test_heartbeats_keep_the_lease_at_the_interval(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 95}, timeout_seconds=300)
    await burst(make_manager, sleepy, heartbeat_interval=30)
    assert [t for t, _ in fake.activities[act].heartbeats] == [30, 60, 90]


async def test_one_service_keeps_every_running_attempt_alive_and_stops_with_each(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    """Heartbeats of concurrent attempts come from one task: each attempt at its own
    pace, none after the attempt has ended."""
    long = fake.enqueue("sleepy", {"seconds": 95}, timeout_seconds=300)
    short = fake.enqueue("sleepy", {"seconds": 45}, timeout_seconds=300)
    quick = fake.enqueue("sleepy", {"seconds": 5}, timeout_seconds=300)
    await burst(make_manager, sleepy, heartbeat_interval=30)
    assert [t for t, _ in fake.activities[long].heartbeats] == [30, 60, 90]
    assert [t for t, _ in fake.activities[short].heartbeats] == [30]
    assert fake.activities[quick].heartbeats == []
    assert {fake.activities[a].status for a in (long, short, quick)} == {"completed"}


async def test_the_server_can_change_the_heartbeat_pace(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.next_heartbeat_seconds = 20
    act = fake.enqueue("sleepy", {"seconds": 95}, timeout_seconds=300)
    await burst(make_manager, sleepy, heartbeat_interval=30)
    assert [t for t, _ in fake.activities[act].heartbeats] == [30, 50, 70, 90]


async def test_heartbeat_409_cancels_the_attempt_and_reports_nothing(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    seen: list[str] = []

    @activity("long")
    async def long(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            seen.append("cancelled")
            raise
        return ActivityResult.value("x", 1)

    act = fake.enqueue("long", timeout_seconds=3600)

    async def cancel_run() -> None:
        await trio.sleep(45)
        fake.activities[act].cancelled = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_run)
        logs = await burst(make_manager, long, heartbeat_interval=30)
    assert seen == ["cancelled"]
    assert fake.activities[act].result is None
    assert not fake.calls("POST", "/complete")
    assert not fake.calls("POST", "/fail")
    [line] = finished(logs)
    assert line["outcome"] == "cancelled"
    assert line["duration_ms"] == 60_000


async def test_other_heartbeat_errors_are_ignored(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 70}, timeout_seconds=300)
    fake.fault("POST", "/heartbeat", 500)
    logs = await burst(make_manager, sleepy, heartbeat_interval=30)
    assert fake.activities[act].status == "completed"
    assert [e["event"] for e in logs].count("activity.heartbeat_failed") == 1


async def test_context_heartbeat_sends_details_and_409_cancels(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    raised: list[type[BaseException]] = []

    @activity("steps")
    async def steps(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        for page in range(5):
            await trio.sleep(1)
            try:
                await ctx.heartbeat({"page": page})
            except ActivityCancelled as exc:
                raised.append(type(exc))
                return ActivityResult.value("partial", page)  # ignored: the run moved on
        return ActivityResult.value("pages", 5)

    act = fake.enqueue("steps")

    async def cancel_after_two() -> None:
        await trio.sleep(2.5)
        fake.activities[act].cancelled = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_after_two)
        logs = await burst(make_manager, steps)
    assert [d for _, d in fake.activities[act].heartbeats] == [{"page": 0}, {"page": 1}]
    assert raised == [ActivityCancelled]
    assert fake.activities[act].result is None
    assert finished(logs)[0]["outcome"] == "cancelled"


async def test_lost_lease_at_report_time(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 5})

    async def steal() -> None:
        await trio.sleep(2)
        fake.activities[act].leased_by = "another-worker"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(steal)
        logs = await burst(make_manager, sleepy)
    line = finished(logs)[0]
    assert (line["outcome"], line["reported"]) == ("lease_lost", "lease_lost")


async def test_context_carries_the_claim(make_manager: MakeManager, fake: Any) -> None:
    seen: dict[str, Any] = {}

    @activity("inspect")
    async def inspect(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        seen.update(
            wf=ctx.workflow_id,
            key=ctx.activity_key,
            attempt=ctx.attempt,
            timeout=ctx.timeout_seconds,
            details=ctx.heartbeat_details,
            budget=ctx.budget_remaining_usd,
            signal=ctx.signal,
            worker_id=ctx.worker_id,
        )
        seen["workdir"] = ctx.workdir
        (ctx.workdir / "scratch.txt").write_text("x")
        return ActivityResult.value("ok", True)

    act = fake.enqueue(
        "inspect",
        key="look",
        timeout_seconds=12,
        attempt=2,
        heartbeat_details={"page": 7},
        budget_remaining_usd="0.25",
        signal_data={"approved": True},
    )
    await burst(make_manager, inspect)
    assert seen["wf"] == fake.activities[act].workflow_id
    assert (seen["key"], seen["attempt"], seen["timeout"]) == ("look", 2, 12)
    assert seen["details"] == {"page": 7}
    assert seen["budget"] == decimal.Decimal("0.25")
    assert seen["signal"] == {"approved": True}
    assert seen["worker_id"] == "host-1-42-abcdef"
    assert isinstance(seen["workdir"], pathlib.Path)
    assert not seen["workdir"].exists()  # removed after the attempt


async def test_context_moves_files_through_the_server(
    make_manager: MakeManager, fake: Any, tmp_path: pathlib.Path
) -> None:
    @activity("files")
    async def files(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        source = tmp_path / "report.txt"
        source.write_text("quarterly numbers")
        reference = await ctx.upload_file(source)
        copy = await ctx.download_file(reference)
        return ActivityResult.file("report", reference).with_metadata({"copy": copy.read_text()})

    act = fake.enqueue("files", key="write")
    await burst(make_manager, files)
    record = fake.activities[act]
    reference = f"postgres://{record.workflow_id}/write/report.txt"
    assert record.result["output"] == {"report": reference}
    assert fake.files[(str(record.workflow_id), "write", "report.txt")] == (
        b"quarterly numbers",
        "text/plain",
    )


async def test_context_heartbeat_survives_a_flaky_server(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    @activity("chatty")
    async def chatty(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        await ctx.heartbeat({"step": 1})  # answered 503: logged, not raised
        return ActivityResult.value("ok", True)

    act = fake.enqueue("chatty")
    fake.fault("POST", "/heartbeat", 503)
    logs = await burst(make_manager, chatty)
    assert fake.activities[act].status == "completed"
    assert [e["event"] for e in logs].count("activity.heartbeat_failed") == 1


async def test_usage_recorded_on_the_context_is_reported_even_when_the_attempt_fails(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    @activity("paid")
    async def paid(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        ctx.record_usage(
            Usage(
                provider="openai",
                model="gpt-6-luna",
                input_tokens=100,
                output_tokens=40,
                reasoning_tokens=8,
                cost_usd="0.00003",
            )
        )
        ctx.record_cost("0.002")
        if params.get("fail"):
            raise RuntimeError("the answer was unusable")
        return ActivityResult.value("ok", True).with_cost("0.001")

    good = fake.enqueue("paid", {}, key="good")
    bad = fake.enqueue("paid", {"fail": True}, key="bad")
    await burst(make_manager, paid)
    done = fake.activities[good].result
    assert done["cost_usd"] == "0.003"  # the result's 0.001 plus the recorded 0.002
    [entry] = done["usage"]
    assert (entry["model"], entry["reasoning_tokens"], entry["cost_usd"]) == (
        "gpt-6-luna",
        8,
        "0.00003",
    )
    failed = fake.activities[bad]
    assert failed.status == "failed"
    assert failed.result["cost_usd"] == "0.002"
    assert failed.result["usage"][0]["input_tokens"] == 100


def test_a_negative_recorded_cost_is_refused() -> None:
    import uuid

    ctx = ActivityContext(workflow_id=uuid.uuid4(), activity_id=uuid.uuid4(), activity_key="k")
    with pytest.raises(ValueError, match="must not be negative"):
        ctx.record_cost("-1")
