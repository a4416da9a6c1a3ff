"""WorkerManager: polling modes, slots, readiness, burst mode and shutdown."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from kflow.errors import ApiError, UnauthorizedError
from kflow.worker import (
    ActivityContext,
    ActivityRegistry,
    ActivityResult,
    WorkerConfig,
    WorkerManager,
    activity,
)

MakeManager = Callable[..., WorkerManager]

started_at: dict[str, float] = {}


@activity("sleepy")
async def sleepy(params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
    started_at[params.get("name", "")] = trio.current_time()
    await trio.sleep(params.get("seconds", 1))
    return ActivityResult.value("slept", params.get("seconds", 1))


def _claim_two_more(fake: Any) -> None:
    """Make ``fake`` hand out two activities more than each poll asks for."""
    original = fake._claim

    def greedy(worker: str, worker_id: str, count: int) -> list[Any]:
        return original(worker, worker_id, count + 2)

    fake._claim = greedy


def registry() -> ActivityRegistry:
    reg = ActivityRegistry()
    reg.register(sleepy)
    return reg


async def test_long_poll_dispatches_without_delay(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    manager = make_manager(registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(7.3)
        fake.enqueue("sleepy", {"name": "a", "seconds": 1})
        await trio.sleep(50.1)
        fake.enqueue("sleepy", {"name": "b", "seconds": 1})
        await trio.sleep(5)
        manager.request_shutdown()
    assert started_at["a"] == pytest.approx(7.3)
    assert started_at["b"] == pytest.approx(57.4)
    assert all(p.wait_seconds == 20 for p in fake.polls)
    # between answers the worker polls again at once: no gaps besides the waits
    times = [p.at for p in fake.polls]
    assert times[:4] == pytest.approx([0, 7.3, 27.3, 47.3])


async def test_interval_polling_against_servers_without_long_poll(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = []
    manager = make_manager(registry(), poll_interval=0.25)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(1.1)
        manager.request_shutdown()
    assert [p.at for p in fake.polls] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert all("wait_seconds" not in r[2] for r in fake.calls("POST", "/workers/poll"))


async def test_a_server_that_ignores_wait_seconds_causes_no_tight_loop(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.honour_wait = False  # claims long-poll, answers at once
    manager = make_manager(registry(), poll_interval=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(2.1)
        manager.request_shutdown()
    assert [p.at for p in fake.polls] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])
    assert all(p.wait_seconds is None for p in fake.polls)  # the fake dropped it


async def test_slots_bound_concurrency_and_polls_ask_for_free_slots(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    durations = [5, 1, 3, 2, 8, 1, 1, 4, 2, 6, 3, 1]
    ids = [fake.enqueue("sleepy", {"seconds": s}) for s in durations]
    manager = make_manager(registry(), burst=True, max_activities=3, poll_max_activities=2)
    await manager.run()
    assert all(fake.activities[i].status == "completed" for i in ids)
    assert fake.max_running["host-1-42-abcdef"] == 3
    for poll in fake.polls:
        free = 3 - poll.running_before
        assert poll.max_activities == min(free, 2), poll
    assert fake.polls[0].max_activities == 2


async def test_all_slots_busy_means_no_poll(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    for _ in range(2):
        fake.enqueue("sleepy", {"seconds": 100})
    manager = make_manager(registry(), max_activities=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(90)
        assert len(fake.polls) == 1  # both slots taken by the first answer: no further poll
        await trio.sleep(15)
        manager.request_shutdown()
    assert len(fake.polls) >= 2


async def test_burst_returns_when_idle(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    manager = make_manager(registry(), burst=True)
    await manager.run()
    assert len(fake.polls) == 1
    assert fake.polls[0].wait_seconds is None
    fake.enqueue("sleepy", {"seconds": 3})
    await make_manager(registry()).run(burst=True)
    assert trio.current_time() == pytest.approx(3)


async def test_readiness_waits_for_the_server(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.unreachable = True
    manager = make_manager(registry())

    async def restart() -> None:
        await trio.sleep(12)
        fake.unreachable = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart)
        await nursery.start(manager.run)
        assert trio.current_time() >= 12
        assert manager.server_info is not None
        manager.request_shutdown()


@pytest.mark.parametrize("status", [None, 408, 429, 500, 503])
async def test_transient_poll_errors_back_off(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock, status: int | None
) -> None:
    fake.fault("POST", "/workers/poll", status, times=4)  # None: connection refused
    manager = make_manager(registry(), burst=True)
    with capture_logs() as logs:
        await manager.run()
    times = fake.request_times["/api/v1/workers/poll"]
    assert len(times) == 5
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(times))
    assert [e["event"] for e in logs].count("worker.api.retry") == 4


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 413, 422])
async def test_other_4xx_poll_answers_stop_the_worker(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock, status: int
) -> None:
    fake.fault("POST", "/workers/poll", status, times=100)
    with capture_logs() as logs, pytest.raises(ApiError) as info:
        await make_manager(registry()).run()  # not burst: it would otherwise poll forever
    assert info.value.status == status
    assert len(fake.calls("POST", "/workers/poll")) == 1  # no retry, no spinning
    assert "worker.api.retry" not in [e["event"] for e in logs]


async def test_an_answer_that_is_no_poll_answer_stops_the_worker(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/workers/poll"):
            return httpx.Response(200, json={"items": []})  # some other protocol
        return await fake.handle(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(ApiError) as info:
            await make_manager(registry(), client=client).run()
    assert info.value.code == "INVALID_RESPONSE"
    assert len(fake.calls("POST", "/workers/poll")) == 0  # the fake never saw the polls


async def test_refused_credentials_stop_the_worker(make_manager: MakeManager, fake: Any) -> None:
    fake.fault("POST", "/workers/poll", 401, times=2)
    with pytest.raises(ApiError) as info:
        await make_manager(registry(), burst=True).run()
    assert info.value.status == 401
    assert fake.tokens_issued == 2  # the one refresh after the first 401, then it stops


async def test_one_401_refreshes_the_token_and_goes_on(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.fault("POST", "/workers/poll", 401, times=1)
    await make_manager(registry(), burst=True).run()
    assert fake.tokens_issued == 2
    assert len(fake.calls("POST", "/workers/poll")) == 2


async def test_graceful_shutdown_waits_for_in_flight_work(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 10})
    manager = make_manager(registry(), shutdown_timeout=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(1)
        polls_before = len(fake.polls)
        manager.request_shutdown()
        manager.request_shutdown()  # idempotent
    assert trio.current_time() == pytest.approx(10)  # the long-poll was cancelled at once
    assert fake.activities[act].status == "completed"
    assert len(fake.polls) == polls_before


async def test_shutdown_timeout_reports_worker_shutdown(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    ids = [fake.enqueue("sleepy", {"seconds": s}) for s in (2, 100, 200)]
    manager = make_manager(registry(), shutdown_timeout=5)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            await trio.sleep(1)
            manager.request_shutdown()
    assert trio.current_time() == pytest.approx(6)
    assert fake.activities[ids[0]].status == "completed"
    for act in ids[1:]:
        error = fake.activities[act].result["error"]
        assert error["code"] == "WORKER_SHUTDOWN"
        assert error["retryable"] is True
    outcomes = sorted(e["outcome"] for e in logs if e["event"] == "activity.finished")
    assert outcomes == ["cancelled", "cancelled", "ok"]


async def test_shutdown_before_run_returns_at_once(make_manager: MakeManager, fake: Any) -> None:
    manager = make_manager(registry())
    manager.request_shutdown()
    await manager.run()
    assert not fake.polls


async def test_immediate_shutdown_keeps_results_in_the_outbox(
    make_manager: MakeManager, make_outbox: Any, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 100})
    manager = make_manager(registry(), shutdown_timeout=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(1)
        manager.request_shutdown()
        await trio.sleep(1)
        manager.request_shutdown(immediate=True)
    assert trio.current_time() == pytest.approx(2)
    assert fake.activities[act].result is None  # nothing reached the server
    async with make_outbox() as outbox:
        [entry] = await outbox.entries()
    assert (entry.activity_id, entry.kind, entry.worker_id) == (act, "fail", "host-1-42-abcdef")
    assert b"WORKER_SHUTDOWN" in entry.body


async def test_signals_first_graceful_then_immediate(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    act = fake.enqueue("sleepy", {"seconds": 100})
    manager = make_manager(registry(), shutdown_timeout=30)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run_until_shutdown)
            await trio.sleep(1)
            signal.raise_signal(signal.SIGTERM)
            await trio.sleep(3)
            assert fake.activities[act].status == "running"  # still finishing
            signal.raise_signal(signal.SIGINT)
    assert trio.current_time() == pytest.approx(4)
    signals = [(e["signal"], e["immediate"]) for e in logs if e["event"] == "worker.signal"]
    assert signals == [("SIGTERM", False), ("SIGINT", True)]


async def test_owns_only_the_client_it_created(
    make_manager: MakeManager,
    fake: Any,
    http: httpx.AsyncClient,
    make_config: Callable[..., WorkerConfig],
    make_outbox: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await make_manager(registry(), burst=True).run()
    assert not http.is_closed

    own = fake.client()
    made: list[dict[str, Any]] = []

    def factory(**kwargs: Any) -> httpx.AsyncClient:
        made.append(kwargs)
        return own

    monkeypatch.setattr(httpx, "AsyncClient", factory)
    manager = WorkerManager(make_config(), registry(), burst=True, outbox=make_outbox())
    await manager.run()
    assert own.is_closed
    assert made[0]["timeout"] == 30


async def test_refused_client_credentials_stop_the_worker(make_manager: MakeManager) -> None:
    with pytest.raises(UnauthorizedError):
        await make_manager(registry(), burst=True, client_secret="wrong").run()


async def test_extra_items_beyond_the_free_slots_are_not_run(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    ids = [fake.enqueue("sleepy", {"seconds": 1}) for _ in range(3)]
    _claim_two_more(fake)  # a misbehaving server
    manager = make_manager(registry(), burst=True, max_activities=1)
    with capture_logs() as logs:
        await manager.run()
    assert fake.max_running["host-1-42-abcdef"] == 3
    assert [fake.activities[i].status for i in ids] == ["completed", "running", "running"]
    assert [e["event"] for e in logs].count("worker.poll.too_many") == 2


def test_the_client_of_a_plain_http_server_loads_no_ca_bundle() -> None:
    import ssl

    from kflow.worker.manager import server_tls

    plain = server_tls(["http://a:8080", "http://b:8080"])
    assert isinstance(plain, ssl.SSLContext)
    assert plain.verify_mode is ssl.CERT_REQUIRED  # a TLS peer is verified, never trusted
    assert plain.check_hostname is True
    assert plain.cert_store_stats()["x509_ca"] == 0
    assert server_tls(["http://a:8080", "https://b"]) is True  # httpx's default verification


# -- streamed polls (server feature poll_stream) ------------------------------------

#: The features of a server that streams long-polls.
STREAMING = ["long_poll", "poll_stream"]


async def test_a_streamed_poll_starts_each_activity_as_its_line_arrives(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    manager = make_manager(registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        for name, at in (("a", 2.5), ("b", 4.0), ("c", 9.25)):
            await trio.sleep(at - trio.current_time())
            fake.enqueue("sleepy", {"name": name, "seconds": 1})
        await trio.sleep(5)
        manager.request_shutdown()
    assert [started_at[n] for n in "abc"] == pytest.approx([2.5, 4.0, 9.25])
    # One answer brought all three, a line each: no request in between.
    first = fake.polls[0]
    assert (first.stream, first.lines, first.returned, first.max_activities) == (True, 3, 3, 10)
    assert [p.at for p in fake.polls] == [0]
    assert all(fake.activities[i].status == "completed" for i in fake.activities)


async def test_polls_stream_while_work_trickles_in_and_not_while_it_waits(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    ids = [fake.enqueue("sleepy", {"seconds": 2}) for _ in range(7)]
    manager = make_manager(registry(), max_activities=3, poll_max_activities=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(30)
        manager.request_shutdown()
    assert all(fake.activities[i].status == "completed" for i in ids)
    assert fake.max_running["host-1-42-abcdef"] == 3
    for poll in fake.polls:
        assert poll.max_activities == min(3 - poll.running_before, 2), poll
        assert poll.returned <= poll.max_activities
    # A poll that filled every slot it asked for found a backlog: the next one is
    # plain (answered at once, in one piece); after a short one, a stream again.
    assert fake.polls[0].stream
    for before, after in itertools.pairwise(fake.polls):
        assert after.stream == (before.returned < before.max_activities), (before, after)
    assert any(not p.stream for p in fake.polls)
    assert fake.polls[-1].stream  # the queue is empty again


async def test_a_cut_stream_is_asked_again_and_nothing_is_lost(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    fake.cut_streams_after = 1  # every stream breaks after its first line
    manager = make_manager(registry(), poll_interval=0.5)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            ids = [fake.enqueue("sleepy", {"seconds": 1}) for _ in range(3)]
            await trio.sleep(0.1)
            for _ in range(2):
                ids.append(fake.enqueue("sleepy", {"seconds": 1}))
            await trio.sleep(10)
            manager.request_shutdown()
    assert all(fake.activities[i].status == "completed" for i in ids)
    cuts = [e for e in logs if e["event"] == "worker.poll.stream_cut"]
    assert cuts, logs
    assert all(e["log_level"] == "warning" and e["error"] for e in cuts)


async def test_a_stream_cut_before_it_brought_anything_waits_before_asking_again(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    fake.cut_streams_after = 0  # every stream breaks before its first line
    fake.enqueue("sleepy", {"seconds": 1})
    manager = make_manager(registry(), poll_interval=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(2.2)
        manager.request_shutdown()
    assert [p.at for p in fake.polls] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])


async def test_opening_a_stream_backs_off_on_transient_errors(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    fake.fault("POST", "/workers/poll", 503, times=2)
    fake.enqueue("sleepy", {"name": "late", "seconds": 1})
    manager = make_manager(registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(10)
        manager.request_shutdown()
    opened = fake.request_times["/api/v1/workers/poll"]
    assert opened[1] - opened[0] >= 0.5
    assert opened[2] - opened[1] >= 1.0
    assert started_at["late"] == pytest.approx(opened[2])


async def test_a_stream_refused_with_a_4xx_stops_the_worker(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    fake.fault("POST", "/workers/poll", 422)
    with pytest.raises(ApiError) as caught:
        await make_manager(registry()).run()
    assert caught.value.status == 422


async def test_streamed_polls_refresh_an_expired_token_once(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    manager = make_manager(registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(1)
        fake.expire_tokens()
        await trio.sleep(20)  # the stream ends; the next is refused, then sent again
        fake.enqueue("sleepy", {"name": "after-refresh", "seconds": 1})
        await trio.sleep(2)
        manager.request_shutdown()
    assert fake.tokens_issued == 2
    assert started_at["after-refresh"] == pytest.approx(21)


async def test_without_poll_stream_the_worker_long_polls_plainly(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    manager = make_manager(registry(), poll_stream=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        fake.enqueue("sleepy", {"seconds": 1})
        await trio.sleep(3)
        manager.request_shutdown()
    assert fake.polls
    assert not any(p.stream for p in fake.polls)
    assert all("stream" not in r[2] for r in fake.calls("POST", "/workers/poll"))


async def test_items_beyond_what_a_stream_asked_for_are_not_run(
    make_manager: MakeManager, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = STREAMING
    ids = [fake.enqueue("sleepy", {"seconds": 1}) for _ in range(3)]
    _claim_two_more(fake)  # a misbehaving server
    manager = make_manager(registry(), max_activities=1)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            await trio.sleep(3)
            manager.request_shutdown()
    assert [fake.activities[i].status for i in ids] == ["completed", "running", "running"]
    assert [e["event"] for e in logs].count("worker.poll.too_many") == 2
