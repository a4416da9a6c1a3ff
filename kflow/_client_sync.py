"""The blocking workflow client (for scripts and notebooks): :class:`Client`.

Public through :mod:`kflow.client`, whose docstring describes credentials,
errors and event streams.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Generator, Mapping
from typing import Any, cast

import httpx
import httpx_sse

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
                self.config.base + "/oauth/token", json=token_request(self.config)
            )
            self._token = token_from(response)
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _call(self, method: str, path: str, options: dict[str, Any] | None = None) -> Any:
        return parse_response(self._send(method, path, options))

    def _send(
        self, method: str, path: str, options: dict[str, Any] | None, *, stream: bool = False
    ) -> httpx.Response:
        """One request, repeated once with a fresh token after a 401 (OAuth clients).
        With ``stream`` the body is left unread: the caller reads and closes it."""
        options = dict(options or {})
        extra = options.pop("headers", {})
        timeout = options.pop("timeout", httpx.USE_CLIENT_DEFAULT)
        headers = {**extra, **self._headers()}
        for refreshed in (False, True):
            request = self._http.build_request(
                method, self.config.base + path, headers=headers, timeout=timeout, **options
            )
            response = self._http.send(request, stream=stream)
            if response.status_code != 401 or self.config.client_id is None or refreshed:
                break
            response.close()
            headers = {**extra, **self._headers(refresh=True)}
        return response

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/info")
        return result

    def deploy(self, source: str | pathlib.Path | Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*Routes.deploy(source))
        return result

    def start(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        unique_key: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*Routes.start(name, input, version, unique_key))
        return result

    def run(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        unique_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Start a run and block until it finishes; returns its final state (as :meth:`wait`).

        One request starts the run and is held until it finishes; if the run
        is still going when that answers, or the connection breaks after the
        server named the run, :meth:`wait` carries on.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            httpx.TransportError: the start could not be made (no run was
                named), or the server stayed unreachable while waiting.
            ApiError: an error answer (unknown definition, bad input...).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seconds = WAIT_REQUEST_SECONDS if timeout is None else min(WAIT_REQUEST_SECONDS, timeout)
        method, path, options = Routes.run(
            name, input, version, unique_key, seconds, self.config.timeout
        )
        run_id = None
        try:
            response = self._send(method, path, options, stream=True)
            try:
                run_id = started_run_id(response)
                response.read()
            finally:
                response.close()
            state: dict[str, Any] = parse_response(response)
        except httpx.TransportError:
            if run_id is None:
                raise
            state = {"workflow_id": run_id}
        if state.get("status") in FINAL_STATUSES:
            return state
        left = None if deadline is None else deadline - time.monotonic()
        return self.wait(str(state["workflow_id"]), timeout=left)

    def status(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/workflows/{workflow_id}")
        return result

    def list_workflows(self, **filters: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*Routes.listing(**filters))
        return result

    def output(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/workflows/{workflow_id}/output")
        return result

    def cost(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/workflows/{workflow_id}/cost")
        return result

    def cost_history(self, workflow_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/workflows/{workflow_id}/cost/history")
        return result

    def cost_analytics(
        self,
        *,
        start_date: str | None = None,
        end_date: str | None = None,
        group_by: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(*Routes.cost_analytics(start_date, end_date, group_by))
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
            *Routes.signal(workflow_id, activity_key, event_name, data)
        )
        return result

    def events(
        self, workflow_id: str, from_event_id: int = 0
    ) -> Generator[dict[str, Any], None, None]:
        """The run's events, replayed then live; ends after the final event.

        A dropped connection is resumed from the last event received. If you
        stop early, close the generator.

        Raises:
            httpx.TransportError: the server stayed unreachable (or answering
                503) for ``config.reconnect_seconds`` (the last error is re-raised).
            ApiError: an error answer (unknown run, refused token...; a 503 that lasted).
        """
        after = from_event_id
        retry = Reconnect(limit=self.config.reconnect_seconds)
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
            except (httpx.TransportError, httpx_sse.SSEError, ApiError) as exc:
                if isinstance(exc, ApiError) and not is_unavailable(exc):
                    raise
                pause = retry.pause(time.monotonic())
                if pause is None:
                    raise
                time.sleep(pause)

    def _stream(
        self, workflow_id: str, after: int, retry: Reconnect
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

    def wait(self, workflow_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run finishes; returns its final state (as :meth:`status`).

        One long-poll request at a time (``GET /workflows/{id}?wait_seconds=``);
        a server that cannot be reached, or answers 503 (its database
        restarting), is retried for ``config.reconnect_seconds``.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            httpx.TransportError: the server stayed unreachable (the last error).
            ApiError: an error answer (unknown run, refused token...; a 503 that lasted).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = Reconnect(limit=self.config.reconnect_seconds)
        while True:
            asked = WAIT_REQUEST_SECONDS
            if deadline is not None:
                asked = min(asked, deadline - time.monotonic())
                if asked <= 0:
                    raise TimeoutError(f"run {workflow_id} did not finish in {timeout:g} s")
            started = time.monotonic()
            try:
                state: dict[str, Any] = self._call(
                    *Routes.wait(workflow_id, asked, self.config.timeout)
                )
            except (httpx.TransportError, ApiError) as exc:
                if not is_unavailable(exc):
                    raise
                pause = retry.pause(time.monotonic())
                if pause is None:
                    raise
                time.sleep(pause)
                continue
            retry.connected()
            retry.received()  # an answer: the next outage starts its backoff afresh
            if state.get("status") in FINAL_STATUSES:
                return state
            time.sleep(wait_pause(asked, time.monotonic() - started))
