"""The workflow client: deploy, start, wait, status, cancel — async and sync.

::

    async with AsyncClient("http://127.0.0.1:8080") as kf:
        await kf.deploy(pathlib.Path("examples/hello.yaml"))
        run = await kf.start("hello", {"name": "Ada"})
        done = await kf.wait(run["workflow_id"])

    with Client() as kf:                      # KRUXIAFLOW_API_URL, credentials from env
        print(kf.status(workflow_id)["status"])

Credentials: client credentials (``client_id``/``client_secret``, exchanged
for a token at ``/api/v1/oauth/token`` and refreshed once on a 401), a static
``token``, or none for a server in insecure dev mode. Errors of the API
raise :class:`kflow.errors.ApiError` carrying the envelope's code; network
failures raise ``httpx.TransportError``. Event streams (``events``, ``wait``)
survive dropped connections, resuming after the last event received, until
the server has been unreachable for ``reconnect_seconds``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import time
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any, cast

import attrs
import httpx
import httpx_sse
import trio

from kflow._serde import dumps, loads
from kflow.errors import ApiError, ConfigError
from kflow.worker.wire import error_from_response

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
FINAL_EVENTS = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled"})


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Where the server is and how to authenticate."""

    api_url: str = "http://127.0.0.1:8080"
    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    timeout: float = 30.0
    #: How long :meth:`AsyncClient.events` / :meth:`Client.events` keep trying to
    #: reconnect to a server that cannot be reached before they give up (seconds).
    reconnect_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        """``KRUXIAFLOW_API_URL``, ``KRUXIAFLOW_CLIENT_ID``/``_SECRET``, ``KRUXIAFLOW_TOKEN``
        (or ``KFLOW_TOKEN``), ``KFLOW_CLIENT_RECONNECT_SECONDS``; ``overrides``
        that are not None win.

        Raises:
            ConfigError: only one of client id and secret is set, or
                ``KFLOW_CLIENT_RECONNECT_SECONDS`` is not a number >= 0.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "api_url": env.get("KRUXIAFLOW_API_URL") or env.get("KFLOW_API_URL"),
            "client_id": env.get("KRUXIAFLOW_CLIENT_ID") or None,
            "client_secret": env.get("KRUXIAFLOW_CLIENT_SECRET") or None,
            "token": env.get("KRUXIAFLOW_TOKEN") or env.get("KFLOW_TOKEN") or None,
            "reconnect_seconds": _seconds(env, "KFLOW_CLIENT_RECONNECT_SECONDS"),
        }
        values.update(overrides)
        config = cls(**{k: v for k, v in values.items() if v is not None})
        if (config.client_id is None) != (config.client_secret is None):
            raise ConfigError("KRUXIAFLOW_CLIENT_ID and KRUXIAFLOW_CLIENT_SECRET go together")
        return config

    @property
    def base(self) -> str:
        return self.api_url.rstrip("/") + "/api/v1"


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    """A non-negative number of seconds from ``env[name]``, None when unset.

    Raises:
        ConfigError: not a finite number >= 0 (the message names the variable).
    """
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


@attrs.define
class _Reconnect:
    """When an event stream reconnects, and when it gives up.

    ``limit`` seconds after the first failure with no successful connection
    since, the stream gives up; a connection resets that clock, a received
    event resets the backoff.
    """

    limit: float
    failures: int = 0
    down_since: float | None = None

    def connected(self) -> None:
        self.down_since = None

    def received(self) -> None:
        self.failures = 0

    def pause(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None: give up now."""
        if self.down_since is None:
            self.down_since = now
        remaining = self.down_since + self.limit - now
        if remaining <= 0:
            return None
        self.failures += 1
        return min(5.0, 0.2 * 2.0**self.failures, remaining)


def _definition_body(source: str | pathlib.Path | Mapping[str, Any]) -> tuple[bytes, str]:
    if isinstance(source, pathlib.Path):
        return source.read_bytes(), "application/yaml"
    if isinstance(source, Mapping):
        return dumps(dict(source)), "application/json"
    return source.encode(), "application/yaml"


def _parse(response: httpx.Response) -> Any:
    if response.is_error:
        raise error_from_response(response)
    if not response.content:
        return {}
    return loads(response.content)


def _token_request(config: ClientConfig) -> dict[str, Any]:
    return {
        "grant_type": "client_credentials",
        "client_id": config.client_id,
        "client_secret": config.client_secret,
    }


def _token_from(response: httpx.Response) -> str:
    data = _parse(response)
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str):
        raise ApiError("the token answer has no access_token", status=response.status_code)
    return token


class _Routes:
    """Request shapes shared by the async and sync clients: (method, path, options)."""

    @staticmethod
    def deploy(source: str | pathlib.Path | Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        body, ctype = _definition_body(source)
        return (
            "POST",
            "/workflow_definitions",
            {"content": body, "headers": {"Content-Type": ctype}},
        )

    @staticmethod
    def start(
        name: str, input: Mapping[str, Any] | None, version: str | None, unique_key: str | None
    ) -> tuple[str, str, dict[str, Any]]:
        body: dict[str, Any] = {"definition_name": name, "input": dict(input or {})}
        if version:
            body["version"] = version
        if unique_key:
            body["unique_key"] = unique_key
        return "POST", "/workflows", {"json": body}

    @staticmethod
    def signal(
        workflow_id: str, key: str, event: str, data: Mapping[str, Any] | None
    ) -> tuple[str, str, dict[str, Any]]:
        return (
            "POST",
            f"/workflows/{workflow_id}/signal",
            {"json": {"activity_key": key, "event_name": event, "data": dict(data or {})}},
        )

    @staticmethod
    def listing(**filters: Any) -> tuple[str, str, dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return "GET", "/workflows", {"params": params}


class AsyncClient:
    """Async client of a kflow server (Trio). Close it, or use ``async with``."""

    def __init__(
        self,
        api_url: str | None = None,
        *,
        config: ClientConfig | None = None,
        http: httpx.AsyncClient | None = None,
        **credentials: Any,
    ) -> None:
        self.config = config or ClientConfig.from_env(api_url=api_url, **credentials)
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=self.config.timeout)
        self._token = self.config.token
        self._token_lock = trio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _headers(self, *, refresh: bool = False) -> dict[str, str]:
        if self.config.client_id is not None and (self._token is None or refresh):
            async with self._token_lock:
                response = await self._http.post(
                    self.config.base + "/oauth/token", json=_token_request(self.config)
                )
                self._token = _token_from(response)
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _call(self, method: str, path: str, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        extra = options.pop("headers", {})
        response = await self._http.request(
            method, self.config.base + path, headers={**extra, **await self._headers()}, **options
        )
        if response.status_code == 401 and self.config.client_id is not None:
            headers = {**extra, **await self._headers(refresh=True)}
            response = await self._http.request(
                method, self.config.base + path, headers=headers, **options
            )
        return _parse(response)

    async def info(self) -> dict[str, Any]:
        """The server's ``/api/v1/info``."""
        result: dict[str, Any] = await self._call("GET", "/info")
        return result

    async def deploy(self, source: str | pathlib.Path | Mapping[str, Any]) -> dict[str, Any]:
        """Deploy a definition (YAML/JSON text, a file path, or a mapping)."""
        result: dict[str, Any] = await self._call(*_Routes.deploy(source))
        return result

    async def start(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        unique_key: str | None = None,
    ) -> dict[str, Any]:
        """Start a run; the answer holds ``workflow_id``."""
        result: dict[str, Any] = await self._call(*_Routes.start(name, input, version, unique_key))
        return result

    async def status(self, workflow_id: str) -> dict[str, Any]:
        """The run with its activities."""
        result: dict[str, Any] = await self._call("GET", f"/workflows/{workflow_id}")
        return result

    async def list_workflows(self, **filters: Any) -> dict[str, Any]:
        """Runs, newest first (``status``, ``definition_name``, ``limit``, ``offset``...)."""
        result: dict[str, Any] = await self._call(*_Routes.listing(**filters))
        return result

    async def output(self, workflow_id: str) -> dict[str, Any]:
        """Outputs of a completed run."""
        result: dict[str, Any] = await self._call("GET", f"/workflows/{workflow_id}/output")
        return result

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        """Cancel a run (idempotent)."""
        result: dict[str, Any] = await self._call("POST", f"/workflows/{workflow_id}/cancel")
        return result

    async def signal(
        self,
        workflow_id: str,
        activity_key: str,
        event_name: str,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a signal to an activity that waits for one."""
        result: dict[str, Any] = await self._call(
            *_Routes.signal(workflow_id, activity_key, event_name, data)
        )
        return result

    async def events(
        self, workflow_id: str, from_event_id: int = 0
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The run's history events, replayed then live; ends after the final event.

        A dropped connection is resumed from the last event received. If you
        stop early, close the generator (``contextlib.aclosing``).

        Raises:
            httpx.TransportError: the server stayed unreachable for
                ``config.reconnect_seconds`` (the last error is re-raised).
            ApiError: an error answer (unknown run, refused token...).
        """
        after = from_event_id
        retry = _Reconnect(limit=self.config.reconnect_seconds)
        while True:
            try:
                async with httpx_sse.aconnect_sse(
                    self._http,
                    "GET",
                    f"{self.config.base}/workflows/{workflow_id}/events",
                    params={"from_event_id": after},
                    headers=await self._headers(),
                    timeout=httpx.Timeout(self.config.timeout, read=None),
                ) as source:
                    if source.response.is_error:
                        await source.response.aread()
                        raise error_from_response(source.response)
                    retry.connected()
                    finished = False
                    # Read to the end of the stream (the server closes it after the
                    # final event) so no inner httpx iterator is left half-read.
                    async with contextlib.aclosing(source.aiter_sse()) as messages:
                        async for message in messages:
                            if not message.data:
                                continue  # a keep-alive comment
                            event = loads(message.data)
                            after = int(event["event_id"])
                            retry.received()
                            finished = finished or event["type"] in FINAL_EVENTS
                            yield event
                    if finished:
                        return
                if (await self.status(workflow_id))["status"] in FINAL_STATUSES:
                    return
            except (httpx.TransportError, httpx_sse.SSEError):
                pause = retry.pause(trio.current_time())
                if pause is None:
                    raise
                await trio.sleep(pause)

    async def wait(self, workflow_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the run to finish; returns its final state.

        Raises:
            trio.TooSlowError: ``timeout`` seconds passed first.
        """
        scope = trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext()
        with scope:
            async with contextlib.aclosing(self.events(workflow_id)) as events:
                async for _ in events:
                    pass
            return await self.status(workflow_id)


class Client:
    """Blocking client of a kflow server (for scripts and notebooks)."""

    def __init__(
        self,
        api_url: str | None = None,
        *,
        config: ClientConfig | None = None,
        http: httpx.Client | None = None,
        **credentials: Any,
    ) -> None:
        self.config = config or ClientConfig.from_env(api_url=api_url, **credentials)
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=self.config.timeout)
        self._token = self.config.token

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _headers(self, *, refresh: bool = False) -> dict[str, str]:
        if self.config.client_id is not None and (self._token is None or refresh):
            response = self._http.post(
                self.config.base + "/oauth/token", json=_token_request(self.config)
            )
            self._token = _token_from(response)
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _call(self, method: str, path: str, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        extra = options.pop("headers", {})
        response = self._http.request(
            method, self.config.base + path, headers={**extra, **self._headers()}, **options
        )
        if response.status_code == 401 and self.config.client_id is not None:
            response = self._http.request(
                method,
                self.config.base + path,
                headers={**extra, **self._headers(refresh=True)},
                **options,
            )
        return _parse(response)

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/info")
        return result

    def deploy(self, source: str | pathlib.Path | Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*_Routes.deploy(source))
        return result

    def start(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        unique_key: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*_Routes.start(name, input, version, unique_key))
        return result

    def status(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/workflows/{workflow_id}")
        return result

    def list_workflows(self, **filters: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*_Routes.listing(**filters))
        return result

    def output(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/workflows/{workflow_id}/output")
        return result

    def cancel(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/workflows/{workflow_id}/cancel")
        return result

    def signal(
        self,
        workflow_id: str,
        activity_key: str,
        event_name: str,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            *_Routes.signal(workflow_id, activity_key, event_name, data)
        )
        return result

    def events(
        self, workflow_id: str, from_event_id: int = 0
    ) -> Generator[dict[str, Any], None, None]:
        """The run's events, replayed then live; ends after the final event.

        A dropped connection is resumed from the last event received. If you
        stop early, close the generator.

        Raises:
            httpx.TransportError: the server stayed unreachable for
                ``config.reconnect_seconds`` (the last error is re-raised).
            ApiError: an error answer (unknown run, refused token...).
        """
        after = from_event_id
        retry = _Reconnect(limit=self.config.reconnect_seconds)
        while True:
            try:
                finished = False
                with contextlib.closing(self._stream(workflow_id, after, retry)) as stream:
                    for event in stream:
                        after = int(event["event_id"])
                        finished = finished or event["type"] in FINAL_EVENTS
                        yield event
                if finished or self.status(workflow_id)["status"] in FINAL_STATUSES:
                    return
            except (httpx.TransportError, httpx_sse.SSEError):
                pause = retry.pause(time.monotonic())
                if pause is None:
                    raise
                time.sleep(pause)

    def _stream(
        self, workflow_id: str, after: int, retry: _Reconnect
    ) -> Generator[dict[str, Any], None, None]:
        """One connection of :meth:`events`: the events after ``after`` until it closes."""
        with httpx_sse.connect_sse(
            self._http,
            "GET",
            f"{self.config.base}/workflows/{workflow_id}/events",
            params={"from_event_id": after},
            headers=self._headers(),
            timeout=httpx.Timeout(self.config.timeout, read=None),
        ) as source:
            if source.response.is_error:
                source.response.read()
                raise error_from_response(source.response)
            retry.connected()
            # httpx_sse annotates iter_sse() as a plain Iterator, but it is a generator.
            sse = cast(Generator[httpx_sse.ServerSentEvent, None, None], source.iter_sse())
            with contextlib.closing(sse) as messages:
                for message in messages:
                    if message.data:
                        retry.received()
                        yield loads(message.data)

    def wait(self, workflow_id: str) -> dict[str, Any]:
        """Block until the run finishes; returns its final state."""
        for _ in self.events(workflow_id):
            pass
        return self.status(workflow_id)


__all__ = ["FINAL_EVENTS", "FINAL_STATUSES", "AsyncClient", "Client", "ClientConfig"]
