"""Reports that finish together share requests (``POST /activities/reports``)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from kflow.worker.report_batch import ReportBatcher, SendAlone
from kflow.worker.wire import Report
from tests.unit.worker.test_runner import MakeManager, burst, finished, sleepy


@pytest.fixture
def batching(fake: Any) -> Any:
    fake.features.append("report_batch")
    fake.batch_delay = 0.5
    return fake


async def test_reports_finishing_while_one_is_on_its_way_share_the_next_request(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    first = batching.enqueue("sleepy", {"seconds": 1})
    acts = [first] + [batching.enqueue("sleepy", {"seconds": 1.2}) for _ in range(7)]
    logs = await burst(make_manager, sleepy)
    assert {batching.activities[a].status for a in acts} == {"completed"}
    assert not batching.calls("POST", "/complete")
    # the first report leaves alone at once; the rest, made while it travelled, together
    assert batching.batches == [1, 7]
    assert batching.request_times["/api/v1/activities/reports"] == pytest.approx([1.0, 1.5])
    assert {line["reported"] for line in finished(logs)} == {"acknowledged"}


async def test_reports_made_at_the_same_moment_leave_together(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    acts = [batching.enqueue("sleepy", {"seconds": 1}) for _ in range(5)]
    logs = await burst(make_manager, sleepy)
    assert {batching.activities[a].status for a in acts} == {"completed"}
    assert batching.batches == [5]
    assert {line["reported"] for line in finished(logs)} == {"acknowledged"}


async def test_a_report_brings_its_runs_next_step_into_the_slot_it_frees(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    """With ``report_claim_next`` the server claims the run's next step with the
    report: the worker runs it at once, without a poll; the last report of the
    chain brings nothing."""
    batching.features.append("report_claim_next")
    batching.batch_delay = 0
    first = batching.enqueue("sleepy", {"seconds": 1})
    batching.next_steps[first] = ("sleepy", {"seconds": 2})
    logs = await burst(make_manager, sleepy)
    [second] = [a for a in batching.activities if a != first]
    assert batching.activities[second].workflow_id == batching.activities[first].workflow_id
    assert {batching.activities[a].status for a in (first, second)} == {"completed"}
    assert all(p.returned == 0 for p in batching.polls[1:])  # only the first poll brought work
    bodies = [body for _, _, body, _ in batching.calls("POST", "/activities/reports")]
    assert [item["claim_next"] for body in bodies for item in body["reports"]] == [True, True]
    done_at = {line["activity_id"]: line for line in finished(logs)}
    assert set(done_at) == {str(first), str(second)}
    assert batching.request_times["/api/v1/activities/reports"] == pytest.approx([1.0, 3.0])


async def test_reports_ask_for_no_next_step_unless_the_server_offers_it(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    first = batching.enqueue("sleepy", {"seconds": 1})
    batching.next_steps[first] = ("sleepy", {"seconds": 1})
    await burst(make_manager, sleepy)
    assert {a.status for a in batching.activities.values()} == {"completed"}
    bodies = [body for _, _, body, _ in batching.calls("POST", "/activities/reports")]
    assert all("claim_next" not in item for body in bodies for item in body["reports"])
    assert sum(p.returned for p in batching.polls) == 2  # the second step came by poll


async def test_a_worker_switched_to_fifo_asks_for_no_next_step(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    batching.features.append("report_claim_next")
    first = batching.enqueue("sleepy", {"seconds": 1})
    batching.next_steps[first] = ("sleepy", {"seconds": 1})
    await burst(make_manager, sleepy, claim_next=False)
    assert {a.status for a in batching.activities.values()} == {"completed"}
    bodies = [body for _, _, body, _ in batching.calls("POST", "/activities/reports")]
    assert all("claim_next" not in item for body in bodies for item in body["reports"])
    assert sum(p.returned for p in batching.polls) == 2


async def test_a_lone_report_is_not_held_back(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = batching.enqueue("sleepy", {"seconds": 1})
    await burst(make_manager, sleepy)
    assert batching.batches == [1]
    [sent_at] = batching.request_times["/api/v1/activities/reports"]
    assert sent_at == pytest.approx(1.0)
    assert batching.activities[act].status == "completed"


async def test_each_report_of_a_batch_is_classified_on_its_own(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    kept, lost = (batching.enqueue("sleepy", {"seconds": 1}) for _ in range(2))
    batching.batch_delay = 0

    async def steal() -> None:  # another worker takes over one lease meanwhile
        await trio.sleep(0.5)
        batching.activities[lost].leased_by = "someone-else"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(steal)
        logs = await burst(make_manager, sleepy)
    assert batching.activities[kept].status == "completed"
    assert batching.activities[lost].status == "running"
    outcomes = {line["activity_id"]: line["reported"] for line in finished(logs)}
    assert outcomes == {str(kept): "acknowledged", str(lost): "lease_lost"}


async def test_a_failed_batch_request_leaves_its_reports_to_the_outbox(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    acts = [batching.enqueue("sleepy", {"seconds": 1}) for _ in range(3)]
    batching.fault("POST", "/activities/reports", 503, times=5)
    await burst(make_manager, sleepy)
    assert {batching.activities[a].status for a in acts} == {"completed"}
    # resent one by one on their own routes (the outbox path), each applied once
    assert sorted(r[0] for r in batching.reports) == sorted(acts)


async def test_a_server_without_the_route_gets_every_report_on_its_own(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    batching.batch_route = False
    acts = [batching.enqueue("sleepy", {"seconds": 1}) for _ in range(4)]
    logs = await burst(make_manager, sleepy)
    assert {batching.activities[a].status for a in acts} == {"completed"}
    assert len(batching.calls("POST", "/activities/reports")) == 1  # then batching is off
    assert len(batching.calls("POST", "/complete")) == 4
    assert any(e["event"] == "worker.report_batch.unsupported" for e in logs)


async def test_batching_can_be_switched_off(
    make_manager: MakeManager, batching: Any, autojump_clock: trio.abc.Clock
) -> None:
    acts = [batching.enqueue("sleepy", {"seconds": 1}) for _ in range(3)]
    await burst(make_manager, sleepy, report_batch=False)
    assert {batching.activities[a].status for a in acts} == {"completed"}
    assert not batching.calls("POST", "/activities/reports")
    assert len(batching.calls("POST", "/complete")) == 3


def _report(n: int) -> Report:
    return Report.complete(uuid.UUID(int=n), "w", {"n": n})


async def test_a_report_cancelled_before_it_left_is_never_sent(
    autojump_clock: trio.abc.Clock,
) -> None:
    sent: list[bytes] = []
    release = trio.Event()

    async def post(body: bytes) -> httpx.Response:
        sent.append(body)
        await release.wait()
        results = [{"activity_id": "x", "status": 200, "body": {}}] * body.count(b'"kind"')
        return httpx.Response(200, json={"results": results})

    batcher = ReportBatcher(post)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.submit, _report(1))
        await trio.sleep(0.1)
        with trio.move_on_after(0.1):  # waits behind the first request, then gives up
            await batcher.submit(_report(2))
        nursery.start_soon(batcher.submit, _report(3))
        await trio.sleep(0.1)
        release.set()
    assert len(sent) == 2
    assert b"00000000-0000-0000-0000-000000000002" not in b"".join(sent)
    assert b"00000000-0000-0000-0000-000000000003" in sent[1]


async def test_an_unreadable_batch_answer_sends_each_report_alone(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def post(body: bytes) -> httpx.Response:
        return httpx.Response(200, json={"results": []})  # one result short

    with pytest.raises(SendAlone):
        await ReportBatcher(post).submit(_report(1))


async def test_batches_respect_their_size_bounds(autojump_clock: trio.abc.Clock) -> None:
    sizes: list[int] = []
    gate = trio.Event()

    async def post(body: bytes) -> httpx.Response:
        count = body.count(b'"kind"')
        sizes.append(count)
        await gate.wait()
        return httpx.Response(
            200, json={"results": [{"activity_id": "x", "status": 200, "body": {}}] * count}
        )

    batcher = ReportBatcher(post, max_reports=3)
    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(batcher.submit, _report(n))
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        gate.set()
    assert sizes == [1, 3, 3, 1]
