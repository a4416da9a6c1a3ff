"""What the async and the sync workflow clients share.

Where the server is and how to authenticate (:class:`ClientConfig`), the
request shapes of the API (:class:`Routes`), how answers and tokens are read,
and when an event stream reconnects or gives up (:class:`Reconnect`).
No I/O happens here.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from kflow._serde import dumps, loads
from kflow.errors import ApiError, ConfigError
from kflow.worker.wire import error_from_response

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
FINAL_EVENTS = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled"})

#: How long one long-poll request of ``wait()`` asks the server to hold it.
WAIT_REQUEST_SECONDS = 20.0
#: Between status reads against a server that answers long-polls at once.
FALLBACK_POLL_SECONDS = 0.1


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
class Reconnect:
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


def is_unavailable(exc: Exception) -> bool:
    """A failure that waiting out is right for: the server unreachable, or answering
    503 (its database restarting, or it is shutting down)."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and exc.status == 503


def wait_pause(asked: float, took: float) -> float:
    """Seconds to pause after a long-poll answered with a run still going.

    kflow holds the request until the run finishes or ``asked`` passes; a
    server that answered much sooner does not support the long-poll (the
    reference server), so the client falls back to polling its status.
    """
    return FALLBACK_POLL_SECONDS if took < asked / 2 else 0.0


def _definition_body(source: str | pathlib.Path | Mapping[str, Any]) -> tuple[bytes, str]:
    if isinstance(source, pathlib.Path):
        return source.read_bytes(), "application/yaml"
    if isinstance(source, Mapping):
        return dumps(dict(source)), "application/json"
    return source.encode(), "application/yaml"


def started_run_id(response: httpx.Response) -> str | None:
    """The run a held start (:meth:`Routes.run`) created, from its ``Location``
    header (sent before the body); None from a server that holds nothing."""
    location = response.headers.get("location", "")
    prefix, _, run_id = location.rpartition("/workflows/")
    return run_id if prefix and run_id else None


def parse_response(response: httpx.Response) -> Any:
    if response.is_error:
        raise error_from_response(response)
    if not response.content:
        return {}
    return loads(response.content)


def token_request(config: ClientConfig) -> dict[str, Any]:
    return {
        "grant_type": "client_credentials",
        "client_id": config.client_id,
        "client_secret": config.client_secret,
    }


def token_from(response: httpx.Response) -> str:
    data = parse_response(response)
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str):
        raise ApiError("the token answer has no access_token", status=response.status_code)
    return token


class Routes:
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
    def run(
        name: str,
        input: Mapping[str, Any] | None,
        version: str | None,
        unique_key: str | None,
        seconds: float,
        timeout: float,
    ) -> tuple[str, str, dict[str, Any]]:
        """A start held until the run finishes (up to ``seconds``; kflow extension)."""
        method, path, options = Routes.start(name, input, version, unique_key)
        options["params"] = {"wait_seconds": f"{seconds:g}"}
        options["timeout"] = httpx.Timeout(timeout, read=seconds + timeout)
        return method, path, options

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
    def wait(workflow_id: str, seconds: float, timeout: float) -> tuple[str, str, dict[str, Any]]:
        """A long-poll for the run's final state (held up to ``seconds``)."""
        return (
            "GET",
            f"/workflows/{workflow_id}",
            {
                "params": {"wait_seconds": f"{seconds:g}"},
                "timeout": httpx.Timeout(timeout, read=seconds + timeout),
            },
        )

    @staticmethod
    def listing(**filters: Any) -> tuple[str, str, dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return "GET", "/workflows", {"params": params}

    @staticmethod
    def cost_analytics(
        start_date: str | None, end_date: str | None, group_by: str | None
    ) -> tuple[str, str, dict[str, Any]]:
        filters = {"start_date": start_date, "end_date": end_date, "group_by": group_by}
        return "GET", "/cost/analytics", {"params": {k: v for k, v in filters.items() if v}}
