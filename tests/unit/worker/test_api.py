"""WorkerApi against the fake server: auth, retries, errors, poll parsing, reports."""

from __future__ import annotations

import decimal
import itertools
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from kflow.errors import ActivityCancelled, ApiError, NotFoundError, UnauthorizedError
from kflow.worker import ClaimedActivity, ReportOutcome, Usage, WorkerApi, WorkerConfig
from kflow.worker.activity import Failure
from kflow.worker.wire import Report

MakeConfig = Callable[..., WorkerConfig]


@pytest.fixture
def api(http: httpx.AsyncClient, make_config: MakeConfig) -> WorkerApi:
    return WorkerApi(http, make_config())


def _auth_headers(fake: Any, path_part: str) -> list[str | None]:
    return [r[3] for r in fake.requests if path_part in r[1]]


async def test_token_is_fetched_once_and_cached(api: WorkerApi, fake: Any) -> None:
    await api.poll(1)
    await api.poll(1)
    assert len(fake.calls("POST", "/oauth/token")) == 1
    token_body = fake.calls("POST", "/oauth/token")[0][2]
    assert token_body == {
        "grant_type": "client_credentials",
        "client_id": "worker-client",
        "client_secret": "s3cret",
    }
    assert _auth_headers(fake, "/workers/poll") == ["Bearer tok-1", "Bearer tok-1"]


async def test_expired_token_is_refreshed_once_and_the_request_repeated(
    api: WorkerApi, fake: Any
) -> None:
    await api.poll(1)
    fake.expire_tokens()
    assert await api.poll(1) == []
    assert _auth_headers(fake, "/workers/poll") == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_a_second_401_is_an_error_not_a_loop(api: WorkerApi, fake: Any) -> None:
    fake.fault("POST", "/workers/poll", 401, times=5)
    with pytest.raises(ApiError) as info:
        await api.poll(1)
    assert info.value.status == 401
    assert info.value.code == "UNAUTHORIZED"
    assert len(fake.calls("POST", "/workers/poll")) == 2
    assert len(fake.calls("POST", "/oauth/token")) == 2


async def test_concurrent_401s_share_one_refresh(api: WorkerApi, fake: Any) -> None:
    await api.poll(1)
    fake.expire_tokens()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(api.poll, 1)
    assert fake.tokens_issued == 2


async def test_token_is_renewed_before_it_expires(
    api: WorkerApi, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.token_expires_in = 600
    await api.poll(1)
    await trio.sleep(601)
    await api.poll(1)
    assert fake.tokens_issued == 2
    assert len(fake.calls("POST", "/workers/poll")) == 2  # no 401 round trip


async def test_refused_credentials_raise_unauthorized(
    http: httpx.AsyncClient, make_config: MakeConfig, fake: Any
) -> None:
    api = WorkerApi(http, make_config(client_secret="wrong"))
    with pytest.raises(UnauthorizedError, match="refused the worker's client credentials"):
        await api.poll(1)


async def test_static_token_is_sent_and_never_refreshed(
    http: httpx.AsyncClient, make_config: MakeConfig, fake: Any
) -> None:
    fake.static_tokens.add("static")
    api = WorkerApi(http, make_config(client_id=None, client_secret=None, access_token="static"))
    await api.poll(1)
    assert _auth_headers(fake, "/workers/poll") == ["Bearer static"]
    fake.static_tokens.clear()
    with pytest.raises(ApiError) as info:
        await api.poll(1)
    assert info.value.status == 401
    assert not fake.calls("POST", "/oauth/token")


async def test_insecure_sends_no_authorization(
    http: httpx.AsyncClient, make_config: MakeConfig, fake: Any
) -> None:
    fake.insecure = True
    api = WorkerApi(http, make_config(client_id=None, client_secret=None))
    await api.poll(1)
    assert _auth_headers(fake, "/workers/poll") == [None]


async def test_503_and_connection_errors_are_retried_with_growing_backoff(
    api: WorkerApi, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.fault("POST", "/workers/poll", 503, times=3)
    fake.fault("POST", "/workers/poll", None, times=2)  # connection refused
    fake.enqueue("echo")
    with capture_logs() as logs:
        items = await api.poll(1)
    assert len(items) == 1
    times = _poll_times(fake)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 5
    for gap, base in zip(gaps, [0.5, 1, 2, 4, 8], strict=True):
        assert base <= gap <= base + 0.5  # exponential plus jitter
    assert [e["event"] for e in logs].count("worker.api.retry") == 5


def _poll_times(fake: Any) -> list[float]:
    return fake.request_times["/api/v1/workers/poll"]


async def test_backoff_is_capped(api: WorkerApi, fake: Any, autojump_clock: trio.abc.Clock) -> None:
    fake.fault("POST", "/workers/poll", 503, times=12)
    await api.poll(1)
    times = _poll_times(fake)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 8.5
    assert len(gaps) == 12


@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_other_4xx_are_not_retried(api: WorkerApi, fake: Any, status: int) -> None:
    fake.fault("POST", "/workers/poll", status, times=1)
    with pytest.raises(ApiError) as info:
        await api.poll(1)
    assert info.value.status == status
    assert len(fake.calls("POST", "/workers/poll")) == 1


async def test_error_envelope_becomes_api_error(api: WorkerApi, fake: Any) -> None:
    with pytest.raises(ApiError) as info:
        await api.poll(0)  # the server validates max_activities
    err = info.value
    assert (err.status, err.code) == (422, "VALIDATION_ERROR")
    assert err.message == "invalid poll"
    assert "max_activities" in err.details["field_errors"]


async def test_plain_text_error_keeps_the_text(make_config: MakeConfig) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text="Json deserialize error: missing field `worker`")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        api = WorkerApi(client, make_config(client_id=None, client_secret=None))
        with pytest.raises(ApiError) as info:
            await api.poll(1)
    assert info.value.message == "Json deserialize error: missing field `worker`"
    assert info.value.code == "HTTP_400"


async def test_info_and_servers_without_it(api: WorkerApi, fake: Any) -> None:
    assert (await api.info())["features"] == ["long_poll"]
    assert fake.calls("GET", "/info")[0][3] is None  # public: no token needed
    fake.has_info = False
    assert await api.info() == {}


async def test_poll_body_and_long_poll_timeout(
    api: WorkerApi, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    await api.poll(3, wait_seconds=25)
    body = fake.calls("POST", "/workers/poll")[0][2]
    assert body == {
        "worker": "py-std",
        "worker_id": "host-1-42-abcdef",
        "max_activities": 3,
        "wait_seconds": 25,
    }
    timeout = fake.request_timeouts["/api/v1/workers/poll"][0]
    assert timeout["read"] == 25 + 30  # the wait plus http_timeout: never cut short
    assert timeout["connect"] == 30


async def test_poll_parses_items_and_skips_bad_ones(api: WorkerApi, fake: Any) -> None:
    good = fake.enqueue(
        "echo",
        {"a": 1},
        timeout_seconds=12,
        key="fetch",
        budget_remaining_usd="0.50",
        heartbeat_details={"page": 3},
        output_definitions=[{"name": "result", "type": "value"}],
        signal_data={"ok": True},
        something_new="ignored",
    )
    fake.enqueue("bad name!")
    with capture_logs() as logs:
        items = await api.poll(5)
    assert [i.activity_id for i in items] == [good]
    item = items[0]
    assert isinstance(item, ClaimedActivity)
    assert item.activity_key == "fetch"
    assert item.worker == "py-std"
    assert item.parameters == {"a": 1}
    assert item.timeout_seconds == 12
    assert item.attempt == 1
    assert item.lease_expires_at is not None
    assert item.budget_remaining_usd == decimal.Decimal("0.50")
    assert item.heartbeat_details == {"page": 3}
    assert item.output_definitions == ({"name": "result", "type": "value"},)
    assert item.signal_data == {"ok": True}
    assert [e["event"] for e in logs] == ["worker.poll.bad_item"]


async def test_poll_stream_body_timeout_and_items(
    api: WorkerApi, fake: Any, autojump_clock: trio.abc.Clock
) -> None:
    fake.features = ["long_poll", "poll_stream"]
    good = fake.enqueue("echo", {"a": 1}, key="fetch")
    fake.enqueue("bad name!")
    taken: list[list[ClaimedActivity]] = []
    with capture_logs() as logs:
        brought = await api.poll_stream(2, 5, taken.append)
    assert brought == 1
    assert [[i.activity_id for i in line] for line in taken] == [[good]]
    assert [e["event"] for e in logs] == ["worker.poll.bad_item"]
    assert fake.calls("POST", "/workers/poll")[0][2] == {
        "worker": "py-std",
        "worker_id": "host-1-42-abcdef",
        "max_activities": 2,
        "wait_seconds": 5,
        "stream": True,
    }
    timeout = fake.request_timeouts["/api/v1/workers/poll"][0]
    assert timeout["read"] == 5 + 30  # a line may come at the end of the wait


# Leaving aiter_lines() early (aclosing) leaves the generators httpx nests inside
# it to trio's finalizer, which closes them with a ResourceWarning; the answer
# itself is closed by poll_stream.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "line", [b"not json\n", b'{"count": 1}\n', b"[1, 2]\n"], ids=["json", "no-array", "list"]
)
async def test_a_stream_line_that_is_no_poll_answer_is_an_error(
    make_config: MakeConfig, line: bytes
) -> None:
    async def lines() -> Any:
        yield line

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=lines(), headers={"content-type": "application/x-ndjson"}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        api = WorkerApi(http, make_config(access_token="t"))
        with pytest.raises(ApiError) as caught:
            await api.poll_stream(1, 5, lambda items: None)
    assert caught.value.code == "INVALID_RESPONSE"
    assert "poll" in caught.value.message


async def test_heartbeat_answers(api: WorkerApi, fake: Any) -> None:
    act = fake.enqueue("echo")
    await api.poll(1)
    assert await api.heartbeat(act, "host-1-42-abcdef", {"p": 1}) is None
    fake.next_heartbeat_seconds = 12
    assert await api.heartbeat(act, "host-1-42-abcdef") == 12
    assert fake.calls("POST", "/heartbeat")[1][2] == {"worker_id": "host-1-42-abcdef"}
    fake.activities[act].cancelled = True
    with pytest.raises(ActivityCancelled):
        await api.heartbeat(act, "host-1-42-abcdef")
    with pytest.raises(ApiError) as info:
        await api.heartbeat(uuid.uuid4(), "host-1-42-abcdef")
    assert info.value.status == 404


async def test_complete_sends_money_as_strings(api: WorkerApi, fake: Any) -> None:
    act = fake.enqueue("echo")
    await api.poll(1)
    usage = Usage(
        provider="anthropic",
        model="claude-haiku-4-5",
        input_tokens=812,
        output_tokens=120,
        cost_usd="0.0014",
    )
    outcome = await api.complete(
        act, "host-1-42-abcdef", {"result": {"n": 1}}, decimal.Decimal("0.0123"), [usage]
    )
    assert outcome is ReportOutcome.ACKNOWLEDGED
    body = fake.activities[act].result
    assert body["cost_usd"] == "0.0123"
    assert body["usage"] == [
        {
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
            "input_tokens": 812,
            "output_tokens": 120,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
            "cost_usd": "0.0014",
        }
    ]


async def test_report_outcomes(api: WorkerApi, fake: Any, autojump_clock: trio.abc.Clock) -> None:
    a, b = fake.enqueue("echo"), fake.enqueue("echo")
    await api.poll(2)
    fake.fault("POST", f"/activities/{a}/complete", 503, times=2)
    assert await api.complete(a, "host-1-42-abcdef", {}) is ReportOutcome.ACKNOWLEDGED
    failure = Failure(code="TIMEOUT", message="slow", retryable=True)
    with capture_logs() as logs:
        assert await api.fail(b, "someone-else", failure) is ReportOutcome.LEASE_LOST
        assert await api.fail(uuid.uuid4(), "w", failure) is ReportOutcome.UNKNOWN_ACTIVITY
        fake.fault("POST", f"/activities/{b}/fail", 422)
        assert await api.fail(b, "host-1-42-abcdef", failure) is ReportOutcome.REJECTED
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("worker.report.lease_lost", "warning"),
        ("worker.report.unknown_activity", "error"),
        ("worker.report.rejected", "error"),
    ]
    assert logs[2]["message"] == "injected failure"


async def test_report_without_retry_raises_transient_errors(api: WorkerApi, fake: Any) -> None:
    act = fake.enqueue("echo")
    await api.poll(1)
    fake.unreachable = True
    report = Report.complete(act, "host-1-42-abcdef", {})
    with pytest.raises(httpx.ConnectError):
        await api.report(report, retry=False)


def test_non_serialisable_output_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Report.complete(uuid.uuid4(), "w", {"x": object()})


async def test_files(api: WorkerApi, fake: Any) -> None:
    wf = uuid.uuid4()
    meta = await api.upload_file(wf, "k", "report 1.txt", b"hello", "text/plain")
    assert meta["size"] == 5
    assert await api.download_file(wf, "k", "report 1.txt") == b"hello"
    with pytest.raises(NotFoundError):
        await api.download_file(wf, "k", "missing.txt")
