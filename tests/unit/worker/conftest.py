"""A verified fake of the worker protocol (PROTOCOL §2-§3) and worker fixtures.

``FakeServer`` answers the worker routes as a kflow server does: OAuth
tokens, info, poll (with optional long-poll), heartbeat, complete, fail and
files, with the protocol's status codes and error envelope (401 bad/expired
token, 404 unknown activity, 409 lease held elsewhere or run cancelled, 422
bad body, 503 down). It is reached through ``httpx.MockTransport``, so
everything runs inside the test's Trio run. ``test_fake_server.py`` checks
the fake against the protocol; the same checks can later run against the real
server through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio

from kflow.worker import ActivityRegistry, WorkerConfig, WorkerManager
from kflow.worker.outbox import Outbox

API = "http://kflow.test"


@attrs.define
class FakeActivity:
    activity_id: uuid.UUID
    workflow_id: uuid.UUID
    activity_key: str
    worker: str
    activity_name: str
    parameters: dict[str, Any]
    timeout_seconds: float | None = None
    attempt: int = 1
    extra: dict[str, Any] = attrs.Factory(dict)
    status: str = "pending"  # pending | running | completed | failed
    leased_by: str | None = None
    cancelled: bool = False
    result: dict[str, Any] | None = None
    heartbeats: list[Any] = attrs.Factory(list)

    def item(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"cache": False, "retry": {}, "budget": {}}
        data: dict[str, Any] = {
            "activity_id": str(self.activity_id),
            "workflow_id": str(self.workflow_id),
            "activity_key": self.activity_key,
            "worker": self.worker,
            "activity_name": self.activity_name,
            "parameters": self.parameters,
            "settings": settings,
            "attempt": self.attempt,
            "lease_expires_at": "2026-01-01T00:05:00.000000Z",
        }
        if self.timeout_seconds is not None:
            settings["timeout_seconds"] = self.timeout_seconds
            data["timeout_seconds"] = self.timeout_seconds
        data.update(self.extra)
        return data


@attrs.define
class Fault:
    method: str
    path: str  # a substring of the request path
    status: int | None  # answer with this status, or raise ``exc``
    times: int
    exc: type[Exception] = httpx.ConnectError


@attrs.define
class Poll:
    worker_id: str
    max_activities: int
    wait_seconds: float | None
    running_before: int  # activities this worker_id held when it polled
    returned: int = 0
    at: float = 0.0
    stream: bool = False
    lines: int = 0  # lines of a streamed answer


def envelope(status: int, code: str, message: str, **details: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return httpx.Response(
        status, content=orjson.dumps(body), headers={"content-type": "application/json"}
    )


def ok(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(data), headers={"content-type": "application/json"}
    )


_ACTIVITY = re.compile(r"^/api/v1/activities/(?P<id>[^/]+)/(?P<op>heartbeat|complete|fail)$")
_FILE = re.compile(
    r"^/api/v1/workflows/(?P<wf>[^/]+)/activities/(?P<key>[^/]+)/files/(?P<name>[^/]+)$"
)


class FakeServer:
    """In-memory worker-protocol server. Mutate its attributes to stage scenarios."""

    def __init__(self) -> None:
        self.features: list[str] = ["long_poll"]
        self.honour_wait = True  # False: claims long-poll in info but answers at once
        self.has_info = True
        self.clients = {"worker-client": "s3cret"}
        self.insecure = False  # accept requests without a token
        self.static_tokens: set[str] = set()
        self.tokens: set[str] = set()
        self.tokens_issued = 0
        self.token_expires_in = 86400
        self.next_heartbeat_seconds: float | None = None
        self.down = False  # 503 for every request
        self.unreachable = False  # connection refused for every request
        self.faults: list[Fault] = []
        self.activities: dict[uuid.UUID, FakeActivity] = {}
        self.pending: list[uuid.UUID] = []
        self.requests: list[tuple[str, str, Any, str | None]] = []
        self.request_times: dict[str, list[float]] = {}
        self.request_timeouts: dict[str, list[Any]] = {}
        self.polls: list[Poll] = []
        self.reports: list[tuple[uuid.UUID, str, dict[str, Any]]] = []
        self.files: dict[tuple[str, str, str], tuple[bytes, str]] = {}
        self.max_running: dict[str, int] = {}
        self.batch_delay = 0.0  # seconds a report batch request is held
        self.batch_route = True  # False: "report_batch" advertised, route missing
        self.batches: list[int] = []  # reports per batch request
        #: A streamed poll (feature ``poll_stream``) is cut by a network error
        #: after this many lines (None: never).
        self.cut_streams_after: int | None = None
        #: Completing the key's activity makes this activity ready in its run (name,
        #: parameters): what the engine's next step of a sequence is.
        self.next_steps: dict[uuid.UUID, tuple[str, dict[str, Any]]] = {}
        self._work = trio.Event()

    # -- staging --------------------------------------------------------------

    def enqueue(
        self,
        activity_name: str,
        parameters: dict[str, Any] | None = None,
        *,
        worker: str = "py-std",
        key: str | None = None,
        timeout_seconds: float | None = None,
        **extra: Any,
    ) -> uuid.UUID:
        act = FakeActivity(
            activity_id=uuid.uuid4(),
            workflow_id=uuid.uuid4(),
            activity_key=key or f"step{len(self.activities)}",
            worker=worker,
            activity_name=activity_name,
            parameters=parameters or {},
            timeout_seconds=timeout_seconds,
            extra=extra,
        )
        self.activities[act.activity_id] = act
        self.pending.append(act.activity_id)
        self._work.set()
        self._work = trio.Event()
        return act.activity_id

    def fault(
        self,
        method: str,
        path: str,
        status: int | None = 503,
        *,
        times: int = 1,
        exc: type[Exception] = httpx.ConnectError,
    ) -> None:
        self.faults.append(Fault(method, path, status, times, exc))

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def running(self, worker_id: str) -> int:
        return sum(
            1
            for a in self.activities.values()
            if a.status == "running" and a.leased_by == worker_id
        )

    def calls(self, method: str, path_part: str) -> list[tuple[str, str, Any, str | None]]:
        return [r for r in self.requests if r[0] == method and path_part in r[1]]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    # -- the protocol -----------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body: Any = None
        is_json = request.headers.get("content-type", "").startswith("application/json")
        if request.content and is_json:
            try:
                body = orjson.loads(request.content)
            except orjson.JSONDecodeError:
                return envelope(400, "BAD_REQUEST", "invalid JSON")
        self.requests.append((request.method, path, body, request.headers.get("authorization")))
        self.request_times.setdefault(path, []).append(trio.current_time())
        self.request_timeouts.setdefault(path, []).append(request.extensions.get("timeout"))
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.path in path:
                fault.times -= 1
                if fault.status is None:
                    raise fault.exc("injected failure", request=request)
                return envelope(fault.status, _code(fault.status), "injected failure")
        if self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        if self.down:
            return envelope(503, "SERVICE_UNAVAILABLE", "server is restarting")
        if path == "/api/v1/oauth/token" and request.method == "POST":
            return self._token(body)
        if path == "/api/v1/info" and request.method == "GET":
            if not self.has_info:
                return envelope(404, "NOT_FOUND", "no such route")
            return ok({"version": "fake", "api_version": "v1", "features": self.features})
        if not self._authorized(request):
            return envelope(401, "UNAUTHORIZED", "missing or invalid token")
        if path == "/api/v1/workers/poll" and request.method == "POST":
            return await self._poll(body)
        if path == "/api/v1/activities/reports" and request.method == "POST" and self.batch_route:
            return await self._batch(body)
        if m := _ACTIVITY.match(path):
            return self._activity_call(m["id"], m["op"], body)
        if m := _FILE.match(path):
            return self._file(request, m["wf"], m["key"], m["name"])
        return envelope(404, "NOT_FOUND", f"no route {request.method} {path}")

    def _token(self, body: Any) -> httpx.Response:
        if not isinstance(body, dict) or not body.get("client_id") or not body.get("client_secret"):
            return envelope(400, "BAD_REQUEST", "client_id and client_secret are required")
        if self.clients.get(body["client_id"]) != body["client_secret"]:
            return envelope(401, "UNAUTHORIZED", "invalid client credentials")
        self.tokens_issued += 1
        token = f"tok-{self.tokens_issued}"
        self.tokens.add(token)
        return ok(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_expires_in}
        )

    def _authorized(self, request: httpx.Request) -> bool:
        header = request.headers.get("authorization")
        if header is None:
            return self.insecure
        token = header.removeprefix("Bearer ")
        return token in self.tokens or token in self.static_tokens

    async def _poll(self, body: Any) -> httpx.Response:
        errors: dict[str, list[str]] = {}
        if not isinstance(body, dict):
            return envelope(400, "BAD_REQUEST", "body must be an object")
        for name in ("worker", "worker_id"):
            if not isinstance(body.get(name), str) or not body[name]:
                errors[name] = ["is required"]
        count = body.get("max_activities", 1)
        if not isinstance(count, int) or not 1 <= count <= 100:
            errors["max_activities"] = ["must be an integer 1..100"]
        long_poll = "long_poll" in self.features and self.honour_wait
        wait = body.get("wait_seconds") if long_poll else None
        if wait is not None and (not isinstance(wait, int | float) or not 0 <= wait <= 60):
            errors["wait_seconds"] = ["must be a number 0..60"]
        if errors:
            return envelope(422, "VALIDATION_ERROR", "invalid poll", field_errors=errors)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            errors["stream"] = ["must be true or false"]
        elif stream and "poll_stream" in self.features and not wait:
            errors["stream"] = ["a streamed poll needs wait_seconds above 0"]
        if errors:
            return envelope(422, "VALIDATION_ERROR", "invalid poll", field_errors=errors)
        worker_id = body["worker_id"]
        poll = Poll(worker_id, count, wait, self.running(worker_id), at=trio.current_time())
        self.polls.append(poll)
        if stream and "poll_stream" in self.features:
            poll.stream = True
            return httpx.Response(
                200,
                headers={"content-type": "application/x-ndjson"},
                content=self._lines(poll, body["worker"], worker_id, count, float(wait or 0)),
            )
        claimed = self._claim(body["worker"], worker_id, count)
        if not claimed and wait:
            with trio.move_on_after(wait):
                while not claimed:
                    await self._work.wait()
                    claimed = self._claim(body["worker"], worker_id, count)
        poll.returned = len(claimed)
        items = [a.item() for a in claimed]
        return ok({"activities": items, "count": len(items)})

    async def _lines(
        self, poll: Poll, worker: str, worker_id: str, count: int, wait: float
    ) -> AsyncIterator[bytes]:
        """A streamed poll's answer: a line per claim until ``count`` went out or
        ``wait`` passed (as kflow's server answers one)."""
        deadline = trio.current_time() + wait
        while poll.returned < count and trio.current_time() < deadline:
            claimed = self._claim(worker, worker_id, count - poll.returned)
            if not claimed:
                with trio.move_on_at(deadline):
                    await self._work.wait()
                continue
            if self.cut_streams_after is not None and poll.lines >= self.cut_streams_after:
                for act in claimed:  # never delivered: the lease would run out
                    act.status, act.leased_by = "pending", None
                    self.pending.insert(0, act.activity_id)
                raise httpx.ReadError("injected cut")
            poll.returned += len(claimed)
            poll.lines += 1
            items = [a.item() for a in claimed]
            yield orjson.dumps({"activities": items, "count": len(items)}) + b"\n"

    def _claim(self, worker: str, worker_id: str, count: int) -> list[FakeActivity]:
        claimed = []
        for activity_id in list(self.pending):
            act = self.activities[activity_id]
            if act.worker == worker and len(claimed) < count:
                self.pending.remove(activity_id)
                act.status, act.leased_by = "running", worker_id
                claimed.append(act)
        self.max_running[worker_id] = max(
            self.max_running.get(worker_id, 0), self.running(worker_id)
        )
        return claimed

    async def _batch(self, body: Any) -> httpx.Response:
        """``POST /activities/reports``: each item answered as its own route would."""
        items = body.get("reports") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return envelope(422, "VALIDATION_ERROR", "reports must be a non-empty array")
        self.batches.append(len(items))
        await trio.sleep(self.batch_delay)
        results = []
        for item in items:
            answer = self._activity_call(item["activity_id"], item["kind"], item["report"])
            data = orjson.loads(answer.content)
            if answer.status_code == 200 and item["kind"] == "complete":
                step = self._next_step(uuid.UUID(item["activity_id"]))
                if item.get("claim_next"):  # claimed with the report, never pending
                    data["activities"] = [] if step is None else [step.item()]
                    if step is not None:
                        self.pending.remove(step.activity_id)
                        step.status, step.leased_by = "running", item["report"]["worker_id"]
            result: dict[str, Any] = {
                "activity_id": item["activity_id"],
                "status": answer.status_code,
            }
            if answer.status_code < 300:
                result["body"] = data
            else:
                result.update(data)
            results.append(result)
        return ok({"results": results})

    def _next_step(self, done: uuid.UUID) -> FakeActivity | None:
        """The staged next step of ``done``'s run, now ready (once)."""
        staged = self.next_steps.pop(done, None)
        if staged is None:
            return None
        name, parameters = staged
        act = self.activities[self.enqueue(name, parameters)]
        act.workflow_id = self.activities[done].workflow_id
        return act

    def _activity_call(self, raw_id: str, op: str, body: Any) -> httpx.Response:
        try:
            act = self.activities.get(uuid.UUID(raw_id))
        except ValueError:
            return envelope(400, "BAD_REQUEST", f"bad activity id {raw_id!r}")
        if not isinstance(body, dict) or not isinstance(body.get("worker_id"), str):
            return envelope(
                422,
                "VALIDATION_ERROR",
                "worker_id is required",
                field_errors={"worker_id": ["is required"]},
            )
        if op == "complete" and not isinstance(body.get("output"), dict):
            return envelope(
                422,
                "VALIDATION_ERROR",
                "output must be an object",
                field_errors={"output": ["must be an object"]},
            )
        error = body.get("error")
        if op == "fail" and not (
            isinstance(error, dict)
            and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)
        ):
            return envelope(
                422,
                "VALIDATION_ERROR",
                "error.code and error.message are required",
                field_errors={"error": ["code and message are required"]},
            )
        if act is None:
            return envelope(404, "NOT_FOUND", f"activity {raw_id} not found")
        worker_id = body["worker_id"]
        if op == "heartbeat":
            if act.status in ("completed", "failed"):
                return ok({"acknowledged": True})
            if act.leased_by != worker_id or act.cancelled:
                return envelope(409, "CONFLICT", "lease lost or run cancelled")
            act.heartbeats.append((trio.current_time(), body.get("details")))
            answer: dict[str, Any] = {"acknowledged": True}
            if self.next_heartbeat_seconds is not None:
                answer["next_heartbeat_seconds"] = self.next_heartbeat_seconds
            return ok(answer)
        done = "completed" if op == "complete" else "failed"
        if act.status == done and act.leased_by == worker_id:
            return ok({"acknowledged": True})  # idempotent repeat
        if act.status != "running" or act.leased_by != worker_id:
            return envelope(409, "CONFLICT", "activity is leased by another worker")
        act.status, act.result = done, body
        self.reports.append((act.activity_id, op, body))
        if op == "complete":
            return ok({"acknowledged": True, "warnings": []})
        return ok({"acknowledged": True, "will_retry": bool(error.get("retryable", True))})

    def _file(self, request: httpx.Request, wf: str, key: str, name: str) -> httpx.Response:
        if name in ("..", ".") or any(ord(c) < 32 for c in name):
            return envelope(400, "BAD_REQUEST", "bad filename")
        if request.method == "GET":
            if (wf, key, name) not in self.files:
                return envelope(404, "NOT_FOUND", "no such file")
            data, ctype = self.files[(wf, key, name)]
            return httpx.Response(200, content=data, headers={"content-type": ctype})
        ctype = request.headers.get("content-type", "application/octet-stream")
        self.files[(wf, key, name)] = (request.content, ctype)
        return ok(
            {
                "workflow_id": wf,
                "activity_key": key,
                "filename": name,
                "size": len(request.content),
                "content_type": ctype,
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
            },
            status=201,
        )


def _code(status: int) -> str:
    return {
        400: "BAD_REQUEST",
        401: "UNAUTHORIZED",
        404: "NOT_FOUND",
        409: "CONFLICT",
        422: "VALIDATION_ERROR",
        429: "RATE_LIMIT_EXCEEDED",
        500: "INTERNAL_ERROR",
        503: "SERVICE_UNAVAILABLE",
    }.get(status, "ERROR")


async def inline(fn: Callable[[], Any]) -> Any:
    """Run outbox SQL inline (no thread), so autojump_clock tests stay deterministic."""
    return fn()


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def api_url() -> str:
    return API


@pytest.fixture
async def http(fake: FakeServer) -> AsyncIterator[httpx.AsyncClient]:
    async with fake.client() as client:
        yield client


@pytest.fixture
def state_dir(tmp_path: Any) -> Any:
    return tmp_path / "state"


@pytest.fixture
def make_config(state_dir: Any) -> Callable[..., WorkerConfig]:
    def make(**overrides: Any) -> WorkerConfig:
        values: dict[str, Any] = {
            "api_url": API,
            "client_id": "worker-client",
            "client_secret": "s3cret",
            "worker_id": "host-1-42-abcdef",
            "state_dir": state_dir,
        }
        values.update(overrides)
        return WorkerConfig(**values)

    return make


@pytest.fixture
def make_outbox(state_dir: Any) -> Callable[..., Outbox]:
    def make(**kwargs: Any) -> Outbox:
        return Outbox.in_dir(state_dir, run_sync=inline, **kwargs)

    return make


@pytest.fixture
def make_manager(
    http: httpx.AsyncClient,
    make_config: Callable[..., WorkerConfig],
    make_outbox: Callable[..., Outbox],
) -> Callable[..., WorkerManager]:
    def make(
        registry: ActivityRegistry,
        *,
        burst: bool = False,
        client: httpx.AsyncClient | None = None,
        **overrides: Any,
    ) -> WorkerManager:
        config = make_config(**overrides)
        return WorkerManager(
            config,
            registry,
            http=client or http,
            burst=burst,
            outbox=make_outbox(owner=config.worker_id),
        )

    return make
