"""The workflow clients' event streams and ``wait()``: resume after a drop,
give up on a dead server, long-poll for the final state."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import trio

from kflow import _client_sync as client_module
from kflow.client import AsyncClient, Client, ClientConfig
from kflow.errors import ApiError, ConfigError

WORKFLOW = "01900000-0000-7000-8000-000000000001"
API = "http://kflow.test"


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL whose port refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_reconnect_seconds_from_the_environment() -> None:
    assert ClientConfig.from_env({}).reconnect_seconds == 60
    env = {"KFLOW_CLIENT_RECONNECT_SECONDS": "2.5"}
    assert ClientConfig.from_env(env).reconnect_seconds == 2.5
    assert ClientConfig.from_env(env, reconnect_seconds=7).reconnect_seconds == 7
    assert ClientConfig.from_env({"KFLOW_CLIENT_RECONNECT_SECONDS": "0"}).reconnect_seconds == 0


@pytest.mark.parametrize("raw", ["soon", "-1", "inf", "nan"])
def test_a_bad_reconnect_seconds_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="KFLOW_CLIENT_RECONNECT_SECONDS"):
        ClientConfig.from_env({"KFLOW_CLIENT_RECONNECT_SECONDS": raw})


# ---- a dead server: real sockets on loopback -----------------------------------------


async def test_async_events_give_up_after_reconnect_seconds(dead_url: str) -> None:
    attempts: list[float] = []

    async def count(request: httpx.Request) -> None:
        attempts.append(trio.current_time())

    http = httpx.AsyncClient(event_hooks={"request": [count]})
    config = ClientConfig(api_url=dead_url, reconnect_seconds=0.5)
    async with http, AsyncClient(config=config, http=http) as kf:
        began = trio.current_time()
        with trio.fail_after(10), pytest.raises(httpx.ConnectError):
            async for _ in kf.events(WORKFLOW):
                pass
    elapsed = trio.current_time() - began
    assert 0.5 <= elapsed < 5
    assert len(attempts) >= 2  # it did try to reconnect


def test_sync_events_give_up_after_reconnect_seconds(dead_url: str) -> None:
    config = ClientConfig(api_url=dead_url, reconnect_seconds=0.3)
    began = time.monotonic()
    with Client(config=config) as kf, pytest.raises(httpx.ConnectError):
        kf.wait(WORKFLOW)
    assert 0.3 <= time.monotonic() - began < 5


async def test_reconnect_seconds_0_gives_up_at_once(dead_url: str) -> None:
    async with AsyncClient(config=ClientConfig(api_url=dead_url, reconnect_seconds=0)) as kf:
        began = trio.current_time()
        with pytest.raises(httpx.ConnectError):
            await kf.wait(WORKFLOW)
    assert trio.current_time() - began < 1


# ---- drops and reconnects: a scripted server through a mock transport -----------------


def sse(*events: tuple[int, str]) -> bytes:
    """SSE frames of history events ``(event_id, type)``."""
    frames = [
        b"data: " + orjson.dumps({"event_id": n, "type": kind, "workflow_id": WORKFLOW}) + b"\n\n"
        for n, kind in events
    ]
    return b": keep-alive\n\n" + b"".join(frames)


class Dropped(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A response body that breaks off after ``body`` (a reset connection)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
        raise httpx.ReadError("connection reset by peer")

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.ReadError("connection reset by peer")


class Script:
    """Answers the event-stream requests in order: a body, a dropped body, or refused."""

    def __init__(self, *steps: Any, now: Any) -> None:
        self.steps = list(steps)
        self.now = now
        self.requests: list[tuple[float, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/v1/workflows/{WORKFLOW}/events"
        self.requests.append((self.now(), int(request.url.params["from_event_id"])))
        step = self.steps.pop(0)
        if step == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if step == "unavailable":  # the server's database is restarting
            body = {"error": {"code": "SERVICE_UNAVAILABLE", "message": "PostgreSQL is down"}}
            return httpx.Response(503, json=body)
        headers = {"content-type": "text/event-stream"}
        if isinstance(step, Dropped):
            return httpx.Response(200, headers=headers, stream=step)
        return httpx.Response(200, headers=headers, content=step)


def async_http(script: Script) -> httpx.AsyncClient:
    async def handle(request: httpx.Request) -> httpx.Response:
        return script(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_async_events_resume_after_the_last_event(autojump_clock: trio.abc.Clock) -> None:
    script = Script(
        Dropped(sse((1, "workflow.started"), (2, "activity.completed"))),
        "refused",
        "refused",
        sse((3, "workflow.completed")),
        now=trio.current_time,
    )
    config = ClientConfig(api_url=API, reconnect_seconds=60)
    async with async_http(script) as http, AsyncClient(config=config, http=http) as kf:
        events = [e["event_id"] async for e in kf.events(WORKFLOW)]
    assert events == [1, 2, 3]
    assert [after for _, after in script.requests] == [0, 2, 2, 2]
    times = [at for at, _ in script.requests]
    assert times == pytest.approx([0, 0.4, 1.2, 2.8])  # backoff 0.4 (the drop), 0.8, 1.6


async def test_async_events_ride_out_a_database_restart(autojump_clock: trio.abc.Clock) -> None:
    script = Script(
        Dropped(sse((1, "workflow.started"))),
        "unavailable",
        "unavailable",
        sse((2, "workflow.completed")),
        now=trio.current_time,
    )
    config = ClientConfig(api_url=API, reconnect_seconds=60)
    async with async_http(script) as http, AsyncClient(config=config, http=http) as kf:
        events = [e["event_id"] async for e in kf.events(WORKFLOW)]
    assert events == [1, 2]
    assert [after for _, after in script.requests] == [0, 1, 1, 1]


async def test_async_events_raise_other_error_answers_at_once() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "NOT_FOUND", "message": f"workflow {WORKFLOW} not found"}}
        return httpx.Response(404, json=body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(ApiError, match="not found"):
            async for _ in kf.events(WORKFLOW):
                pass


async def test_async_events_deadline_restarts_after_a_successful_reconnect(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Down for 1 s twice (2 s in all) with one good connection between: no give-up.
    script = Script(
        "refused",
        "refused",
        Dropped(sse((1, "workflow.started"))),
        "refused",
        sse((2, "workflow.completed")),
        now=trio.current_time,
    )
    config = ClientConfig(api_url=API, reconnect_seconds=1.0)
    async with async_http(script) as http, AsyncClient(config=config, http=http) as kf:
        events = [e["event_id"] async for e in kf.events(WORKFLOW)]
    assert events == [1, 2]
    assert [at for at, _ in script.requests] == pytest.approx([0, 0.4, 1.0, 1.4, 2.0])


async def test_async_events_give_up_when_no_reconnect_succeeds(
    autojump_clock: trio.abc.Clock,
) -> None:
    script = Script(*["refused"] * 10, now=trio.current_time)
    config = ClientConfig(api_url=API, reconnect_seconds=1.0)
    async with async_http(script) as http, AsyncClient(config=config, http=http) as kf:
        with pytest.raises(httpx.ConnectError):
            async for _ in kf.events(WORKFLOW):
                pass
    assert [at for at, _ in script.requests] == pytest.approx([0, 0.4, 1.0])


class FakeTime:
    """``time.monotonic`` and ``time.sleep`` of a clock that only moves when slept."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_sync_events_resume_after_the_last_event(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(client_module, "time", clock)
    script = Script(
        Dropped(sse((1, "workflow.started"), (2, "activity.completed"))),
        "refused",
        "unavailable",
        sse((3, "workflow.completed")),
        now=clock.monotonic,
    )
    config = ClientConfig(api_url=API, reconnect_seconds=60)
    with httpx.Client(transport=httpx.MockTransport(script)) as http:
        kf = Client(config=config, http=http)
        assert [e["event_id"] for e in kf.events(WORKFLOW)] == [1, 2, 3]
    assert [after for _, after in script.requests] == [0, 2, 2, 2]
    assert [at for at, _ in script.requests] == pytest.approx([0, 0.4, 1.2, 2.8])


def test_sync_events_give_up_when_no_reconnect_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(client_module, "time", clock)
    script = Script(*["refused"] * 10, now=clock.monotonic)
    config = ClientConfig(api_url=API, reconnect_seconds=1.0)
    with httpx.Client(transport=httpx.MockTransport(script)) as http:
        kf = Client(config=config, http=http)
        with pytest.raises(httpx.ConnectError):
            list(kf.events(WORKFLOW))
    assert [at for at, _ in script.requests] == pytest.approx([0, 0.4, 1.0])


# ---- wait(): long-polls for the final state --------------------------------------------


class LongPolls:
    """Answers ``GET /workflows/{id}`` like a server: each step is (held seconds, status).

    ``"refused"`` refuses the connection instead.
    """

    def __init__(self, *steps: Any, now: Any) -> None:
        self.steps = list(steps)
        self.now = now
        self.requests: list[tuple[float, str | None]] = []

    def next(self, request: httpx.Request) -> tuple[float, str]:
        assert request.url.path == f"/api/v1/workflows/{WORKFLOW}"
        self.requests.append((self.now(), request.url.params.get("wait_seconds")))
        step = self.steps.pop(0)
        if step == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if step == "unavailable":
            return 0, "unavailable"
        held, status = step
        return held, status

    @staticmethod
    def answer(status: str) -> httpx.Response:
        if status == "unavailable":  # what a server says while its database restarts
            body = {"error": {"code": "SERVICE_UNAVAILABLE", "message": "PostgreSQL is down"}}
            return httpx.Response(503, json=body)
        return httpx.Response(200, json={"id": WORKFLOW, "status": status, "activities": []})


def long_poll_http(script: LongPolls) -> httpx.AsyncClient:
    async def handle(request: httpx.Request) -> httpx.Response:
        held, status = script.next(request)
        await trio.sleep(held)
        return script.answer(status)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_async_wait_holds_one_request_until_the_run_finishes(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The server holds each request up to 20 s: the run finishes during the second.
    script = LongPolls((20, "running"), (7, "completed"), now=trio.current_time)
    async with long_poll_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        done = await kf.wait(WORKFLOW)
    assert done["status"] == "completed"
    assert script.requests == [(0, "20"), (20, "20")]


async def test_async_wait_polls_a_server_without_long_poll(autojump_clock: trio.abc.Clock) -> None:
    # The reference server ignores wait_seconds and answers at once: poll every 0.1 s.
    script = LongPolls((0, "running"), (0, "running"), (0, "failed"), now=trio.current_time)
    async with long_poll_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        done = await kf.wait(WORKFLOW)
    assert done["status"] == "failed"
    assert [at for at, _ in script.requests] == pytest.approx([0, 0.1, 0.2])


@pytest.mark.parametrize(
    ("outage", "final", "times"),
    [
        # The first answer came early (3 s of 20): a 0.1 s pause, then backoff 0.4 and 0.8.
        ("refused", (3, "cancelled"), [0, 3.1, 3.5, 4.3]),  # the server restarting
        ("unavailable", (2, "completed"), [0, 2.1, 2.5, 3.3]),  # its database restarting
    ],
)
async def test_async_wait_rides_out_a_restart(
    autojump_clock: trio.abc.Clock, outage: str, final: tuple[float, str], times: list[float]
) -> None:
    held, status = final
    script = LongPolls((held, "running"), outage, outage, (1, status), now=trio.current_time)
    config = ClientConfig(api_url=API, reconnect_seconds=60)
    async with long_poll_http(script) as http, AsyncClient(config=config, http=http) as kf:
        done = await kf.wait(WORKFLOW)
    assert done["status"] == status
    assert [at for at, _ in script.requests] == pytest.approx(times)


async def test_async_wait_gives_up_on_a_503_that_lasts(autojump_clock: trio.abc.Clock) -> None:
    script = LongPolls(*["unavailable"] * 50, now=trio.current_time)
    config = ClientConfig(api_url=API, reconnect_seconds=3)
    async with long_poll_http(script) as http, AsyncClient(config=config, http=http) as kf:
        with pytest.raises(ApiError) as raised:
            await kf.wait(WORKFLOW)
    assert raised.value.status == 503
    assert trio.current_time() == pytest.approx(3)


async def test_async_wait_timeout_cancels_the_held_request(autojump_clock: trio.abc.Clock) -> None:
    script = LongPolls((20, "running"), now=trio.current_time)
    async with long_poll_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(trio.TooSlowError, match=f"run {WORKFLOW} did not finish in 5 s"):
            await kf.wait(WORKFLOW, timeout=5)
    assert trio.current_time() == pytest.approx(5)


async def test_async_wait_reports_an_unknown_run() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "NOT_FOUND", "message": f"workflow {WORKFLOW} not found"}}
        return httpx.Response(404, json=body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(ApiError, match="not found"):
            await kf.wait(WORKFLOW)


def test_sync_wait_long_polls_until_final(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(client_module, "time", clock)
    script = LongPolls(
        (20, "running"), "refused", "unavailable", (2, "completed"), now=clock.monotonic
    )

    def handle(request: httpx.Request) -> httpx.Response:
        held, status = script.next(request)
        clock.sleep(held)
        return script.answer(status)

    with httpx.Client(transport=httpx.MockTransport(handle)) as http:
        done = Client(api_url=API, http=http).wait(WORKFLOW)
    assert done["status"] == "completed"
    # refused, then a 503 (the database restarting): backoff 0.4 s, then 0.8 s
    assert [at for at, _ in script.requests] == pytest.approx([0, 20, 20.4, 21.2])


def test_sync_wait_timeout_names_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(client_module, "time", clock)
    script = LongPolls((3, "running"), (2, "running"), now=clock.monotonic)

    def handle(request: httpx.Request) -> httpx.Response:
        held, status = script.next(request)
        clock.sleep(min(held, float(request.url.params["wait_seconds"])))
        return script.answer(status)

    with (
        httpx.Client(transport=httpx.MockTransport(handle)) as http,
        pytest.raises(TimeoutError, match=WORKFLOW),
    ):
        Client(api_url=API, http=http).wait(WORKFLOW, timeout=5)
    # The second request asks only for what is left of the 5 s.
    assert script.requests == [(0, "5"), (3, "2")]


# ---- run(): a start held until the run finishes -----------------------------------------

LOCATION = f"/api/v1/workflows/{WORKFLOW}"


class BrokenBody(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A body that breaks off: the connection dropped after the headers."""

    def __iter__(self) -> Iterator[bytes]:
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")
        yield b""  # pragma: no cover (makes this an async generator)


def started(status: str, *, held: bool = True) -> httpx.Response:
    """A start's answer: a kflow server holding it (Location + the run) or one that
    does not (the plain start body)."""
    if not held:
        return httpx.Response(201, json={"workflow_id": WORKFLOW, "status": status})
    body = {"id": WORKFLOW, "workflow_id": WORKFLOW, "status": status, "activities": []}
    return httpx.Response(201, json=body, headers={"location": LOCATION})


class Starts:
    """Answers a held start with ``first`` and later GETs of the run with ``statuses``."""

    def __init__(self, first: Any, *statuses: str) -> None:
        self.first = first
        self.statuses = list(statuses)
        self.requests: list[tuple[str, str, str | None]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        wait = request.url.params.get("wait_seconds")
        self.requests.append((request.method, request.url.path, wait))
        if request.method == "POST":
            assert request.url.path == "/api/v1/workflows"
            assert orjson.loads(request.content)["definition_name"] == "flow"
            if isinstance(self.first, Exception):
                raise self.first
            return self.first  # type: ignore[no-any-return]
        return LongPolls.answer(self.statuses.pop(0))


def starts_http(script: Starts) -> httpx.AsyncClient:
    async def handle(request: httpx.Request) -> httpx.Response:
        return script.handle(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_async_run_is_one_held_request_when_the_run_finishes_in_it() -> None:
    script = Starts(started("completed"))
    async with starts_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        done = await kf.run("flow", {"x": 1})
    assert done["status"] == "completed"
    assert script.requests == [("POST", "/api/v1/workflows", "20")]


async def test_async_run_waits_on_when_the_held_start_ends_first() -> None:
    script = Starts(started("running"), "completed")
    async with starts_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        done = await kf.run("flow")
    assert done["status"] == "completed"
    assert script.requests[1] == ("GET", LOCATION, "20")


async def test_async_run_waits_against_a_server_that_holds_nothing() -> None:
    script = Starts(started("created", held=False), "completed")
    async with starts_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        assert (await kf.run("flow"))["status"] == "completed"
    assert [r[0] for r in script.requests] == ["POST", "GET"]


async def test_async_run_follows_the_named_run_when_the_answer_breaks_off() -> None:
    broken = httpx.Response(201, headers={"location": LOCATION}, stream=BrokenBody())
    script = Starts(broken, "completed")
    async with starts_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        assert (await kf.run("flow"))["status"] == "completed"
    assert script.requests[1] == ("GET", LOCATION, "20")


async def test_async_run_raises_when_no_run_was_named() -> None:
    refused = httpx.ConnectError("connection refused")
    script = Starts(refused)
    async with starts_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(httpx.ConnectError):
            await kf.run("flow")
    assert len(script.requests) == 1  # a start is never sent twice


async def test_async_run_reports_an_error_answer() -> None:
    body = {"error": {"code": "NOT_FOUND", "message": "no definition 'flow'"}}
    script = Starts(httpx.Response(404, json=body))
    async with starts_http(script) as http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(ApiError, match="no definition"):
            await kf.run("flow")


def test_sync_run_follows_the_named_run_when_the_answer_breaks_off() -> None:
    broken = httpx.Response(201, headers={"location": LOCATION}, stream=BrokenBody())
    script = Starts(broken, "running", "completed")
    with httpx.Client(transport=httpx.MockTransport(script.handle)) as http:
        client = Client(api_url=API, http=http)
        assert client.run("flow")["status"] == "completed"
    assert [r[0] for r in script.requests] == ["POST", "GET", "GET"]


def test_sync_run_is_one_held_request_when_the_run_finishes_in_it() -> None:
    script = Starts(started("failed"))
    with httpx.Client(transport=httpx.MockTransport(script.handle)) as http:
        assert Client(api_url=API, http=http).run("flow", timeout=5)["status"] == "failed"
    assert script.requests == [("POST", "/api/v1/workflows", "5")]


async def test_async_run_timeout_names_the_run_it_started(autojump_clock: trio.abc.Clock) -> None:
    script = Starts(started("running"), "running")

    async def handle(request: httpx.Request) -> httpx.Response:
        answer = script.handle(request)
        if request.method == "GET":
            await trio.sleep(20)  # the long-poll is held: the run goes on
        return answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(trio.TooSlowError, match=f"run {WORKFLOW} did not finish in 5 s"):
            await kf.run("flow", timeout=5)
    assert trio.current_time() == pytest.approx(5)


async def test_async_run_timeout_before_the_run_is_named(autojump_clock: trio.abc.Clock) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep(30)  # the start itself never answers in time
        return started("completed")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with http, AsyncClient(api_url=API, http=http) as kf:
        with pytest.raises(trio.TooSlowError) as raised:
            await kf.run("flow", timeout=5)
    assert WORKFLOW not in str(raised.value)
