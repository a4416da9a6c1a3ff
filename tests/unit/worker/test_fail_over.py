"""A worker given several server URLs moves to the next one when a server fails."""

from __future__ import annotations

import pathlib

import httpx
import pytest

from kflow.errors import ConfigError
from kflow.worker.api import WorkerApi
from kflow.worker.config import WorkerConfig


def test_several_urls_are_accepted_and_cleaned(tmp_path: pathlib.Path) -> None:
    config = WorkerConfig.from_env(
        {"KRUXIAFLOW_API_URL": " http://a:8080/ , http://b:8080"}, state_dir=tmp_path, insecure=True
    )
    assert config.api_urls == ["http://a:8080", "http://b:8080"]
    with pytest.raises(ConfigError, match="KRUXIAFLOW_API_URL must be an http"):
        WorkerConfig.from_env(
            {"KRUXIAFLOW_API_URL": "http://a:8080,ftp://b"}, state_dir=tmp_path, insecure=True
        )


async def test_network_errors_and_503_move_to_the_next_server(
    tmp_path: pathlib.Path, autojump_clock: object
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "a":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.host == "b":
            return httpx.Response(
                503,
                json={"error": {"code": "SERVICE_UNAVAILABLE", "message": "database restarting"}},
            )
        return httpx.Response(200, json={"activities": [], "count": 0})

    config = WorkerConfig(
        api_url="http://a:8080,http://b:8080,http://c:8080",
        state_dir=tmp_path,
        insecure=True,
        worker="std",
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        api = WorkerApi(http, config)
        assert await api.poll(5) == []
        assert seen == ["a", "b", "c"]
        assert await api.poll(5) == []  # stays on the server that answered
        assert seen == ["a", "b", "c", "c"]
