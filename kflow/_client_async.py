"""The async workflow client (Trio): :class:`AsyncClient`.

Public through :mod:`kflow.client`, whose docstring describes credentials,
errors and event streams.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any

import httpx
import httpx_sse
import trio

from kflow._client_common import (
    FINAL_EVENTS,
    FINAL_STATUSES,
    WAIT_REQUEST_SECONDS,
    ClientConfig,
    Reconnect,
    Routes,
    is_unavailable,
    parse_response,
    started_run_id,
    token_from,
    token_request,
    wait_pause,
)
from kflow._serde import loads
from kflow.errors import ApiError
from kflow.worker.wire import error_from_response


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
                    self.config.base + "/oauth/token", json=token_request(self.config)
                )
                self._token = token_from(response)
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _call(self, method: str, path: str, options: dict[str, Any] | None = None) -> Any:
        return parse_response(await self._send(method, path, options))

    async def _send(
        self, method: str, path: str, options: dict[str, Any] | None, *, stream: bool = False
    ) -> httpx.Response:
        """One request, repeated once with a fresh token after a 401 (OAuth clients).
        With ``stream`` the body is left unread: the caller reads and closes it."""
        options = dict(options or {})
        extra = options.pop("headers", {})
        timeout = options.pop("timeout", httpx.USE_CLIENT_DEFAULT)
        headers = {**extra, **await self._headers()}
        for refreshed in (False, True):
            request = self._http.build_request(
                method, self.config.base + path, headers=headers, timeout=timeout, **options
            )
            response = await self._http.send(request, stream=stream)
            if response.status_code != 401 or self.config.client_id is None or refreshed:
                break
            await response.aclose()
            headers = {**extra, **await self._headers(refresh=True)}
        return response

    async def info(self) -> dict[str, Any]:
        """The server's ``/api/v1/info``."""
        result: dict[str, Any] = await self._call("GET", "/info")
        return result

    async def deploy(self, source: str | pathlib.Path | Mapping[str, Any]) -> dict[str, Any]:
        """Deploy a definition (YAML/JSON text, a file path, or a mapping)."""
        result: dict[str, Any] = await self._call(*Routes.deploy(source))
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
        result: dict[str, Any] = await self._call(*Routes.start(name, input, version, unique_key))
        return result

    async def run(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        unique_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Start a run and wait for it to finish; returns its final state (as :meth:`wait`).

        One request starts the run and is held until it finishes
        (``POST /workflows?wait_seconds=``). If the run is still going when
        that answers — or the connection breaks after the server named the
        run — :meth:`wait` carries on; a server without the extension answers
        at once and :meth:`wait` does the waiting.

        Raises:
            trio.TooSlowError: ``timeout`` seconds passed first (the message
                names the run once the server has named it).
            httpx.TransportError: the start could not be made (no run was
                named), or the server stayed unreachable while waiting.
            ApiError: an error answer (unknown definition, bad input...).
        """
        run_id = None
        with _timeout_naming(timeout, lambda: run_id):
            method, path, options = Routes.run(
                name, input, version, unique_key, WAIT_REQUEST_SECONDS, self.config.timeout
            )
            try:
                response = await self._send(method, path, options, stream=True)
                try:
                    run_id = started_run_id(response)
                    await response.aread()
                finally:
                    await response.aclose()
                state: dict[str, Any] = parse_response(response)
            except httpx.TransportError:
                if run_id is None:
                    raise
                state = {"workflow_id": run_id}
            if state.get("status") in FINAL_STATUSES:
                return state
            return await self.wait(str(state["workflow_id"]))

    async def status(self, workflow_id: str) -> dict[str, Any]:
        """The run with its activities."""
        result: dict[str, Any] = await self._call("GET", f"/workflows/{workflow_id}")
        return result

    async def list_workflows(self, **filters: Any) -> dict[str, Any]:
        """Runs, newest first (``status``, ``definition_name``, ``limit``, ``offset``...)."""
        result: dict[str, Any] = await self._call(*Routes.listing(**filters))
        return result

    async def output(self, workflow_id: str) -> dict[str, Any]:
        """Outputs of a completed run."""
        result: dict[str, Any] = await self._call("GET", f"/workflows/{workflow_id}/output")
        return result

    async def cost(self, workflow_id: str) -> dict[str, Any]:
        """What a run has cost so far, with its budget and what remains of it."""
        result: dict[str, Any] = await self._call("GET", f"/workflows/{workflow_id}/cost")
        return result

    async def cost_history(self, workflow_id: str) -> list[dict[str, Any]]:
        """A row per call of each attempt of a run (provider, model, tokens, cost)."""
        result: list[dict[str, Any]] = await self._call(
            "GET", f"/workflows/{workflow_id}/cost/history"
        )
        return result

    async def cost_analytics(
        self,
        *,
        start_date: str | None = None,
        end_date: str | None = None,
        group_by: str | None = None,
    ) -> dict[str, Any]:
        """Spend over a period grouped by provider, model, definition or day."""
        result: dict[str, Any] = await self._call(
            *Routes.cost_analytics(start_date, end_date, group_by)
        )
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
            *Routes.signal(workflow_id, activity_key, event_name, data)
        )
        return result

    async def events(
        self, workflow_id: str, from_event_id: int = 0
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The run's history events, replayed then live; ends after the final event.

        A dropped connection is resumed from the last event received. If you
        stop early, close the generator (``contextlib.aclosing``).

        Raises:
            httpx.TransportError: the server stayed unreachable (or answering
                503) for ``config.reconnect_seconds`` (the last error is re-raised).
            ApiError: an error answer (unknown run, refused token...; a 503 that lasted).
        """
        after = from_event_id
        retry = Reconnect(limit=self.config.reconnect_seconds)
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
            except (httpx.TransportError, httpx_sse.SSEError, ApiError) as exc:
                if isinstance(exc, ApiError) and not is_unavailable(exc):
                    raise
                pause = retry.pause(trio.current_time())
                if pause is None:
                    raise
                await trio.sleep(pause)

    async def wait(self, workflow_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the run to finish; returns its final state (as :meth:`status`).

        One long-poll request at a time (``GET /workflows/{id}?wait_seconds=``)
        that the server answers when the run finishes; a server that cannot be
        reached, or answers 503 (its database restarting), is retried for
        ``config.reconnect_seconds``.

        Raises:
            trio.TooSlowError: ``timeout`` seconds passed first (the message names the run).
            httpx.TransportError: the server stayed unreachable (the last error).
            ApiError: an error answer (unknown run, refused token...; a 503 that lasted).
        """
        retry = Reconnect(limit=self.config.reconnect_seconds)
        with _timeout_naming(timeout, lambda: workflow_id):
            while True:
                asked = WAIT_REQUEST_SECONDS
                started = trio.current_time()
                try:
                    state: dict[str, Any] = await self._call(
                        *Routes.wait(workflow_id, asked, self.config.timeout)
                    )
                except (httpx.TransportError, ApiError) as exc:
                    if not is_unavailable(exc):
                        raise
                    pause = retry.pause(trio.current_time())
                    if pause is None:
                        raise
                    await trio.sleep(pause)
                    continue
                retry.connected()
                retry.received()  # an answer: the next outage starts its backoff afresh
                if state.get("status") in FINAL_STATUSES:
                    return state
                await trio.sleep(wait_pause(asked, trio.current_time() - started))


@contextlib.contextmanager
def _timeout_naming(timeout: float | None, run_id: Callable[[], str | None]) -> Iterator[None]:
    """``trio.fail_after(timeout)`` (nothing for None) whose ``TooSlowError`` names
    the run ``run_id()`` returns, if it is known by then."""
    if timeout is None:
        yield
        return
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        named = run_id()
        if named is None:
            raise
        raise trio.TooSlowError(f"run {named} did not finish in {timeout:g} s") from None
