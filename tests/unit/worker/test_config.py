"""WorkerConfig: defaults, environment names of PROTOCOL §3, overrides and errors."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

from kflow.errors import ConfigError
from kflow.worker import WorkerConfig
from kflow.worker.config import ENV_VARS


def test_defaults_follow_the_protocol_table() -> None:
    config = WorkerConfig.from_env({})
    assert config.api_url == "http://localhost:8080"
    assert config.worker == "py-std"
    assert config.max_activities == 16
    assert config.poll_max_activities == 10
    assert config.poll_interval == 0.1
    assert config.activity_timeout == 300
    assert config.heartbeat_interval == 30
    assert config.shutdown_timeout == 30
    assert config.long_poll_seconds == 20
    assert config.insecure is True  # no credentials at all
    assert config.state_dir.parts[-2:] == ("kflow", "worker")
    assert re.fullmatch(r".+-\d+-[0-9a-f]{6}", config.worker_id)
    assert config.worker_id.split("-")[-2] == str(os.getpid())


def test_worker_ids_differ_per_config() -> None:
    assert WorkerConfig().worker_id != WorkerConfig().worker_id


def test_reads_every_kruxiaflow_name() -> None:
    env = {
        "KRUXIAFLOW_API_URL": "https://flow.example.com/",
        "KRUXIAFLOW_CLIENT_ID": "w1",
        "KRUXIAFLOW_CLIENT_SECRET": "pw",
        "KRUXIAFLOW_WORKER": "gpu",
        "KRUXIAFLOW_WORKER_ID": "gpu-box-1",
        "KRUXIAFLOW_WORKER_MAX_ACTIVITIES": "4",
        "KRUXIAFLOW_WORKER_POLL_MAX_ACTIVITIES": "2",
        "KRUXIAFLOW_WORKER_POLL_INTERVAL": "0.5",
        "KRUXIAFLOW_WORKER_ACTIVITY_TIMEOUT": "60",
        "KRUXIAFLOW_WORKER_HEARTBEAT_INTERVAL": "10",
        "KRUXIAFLOW_WORKER_SHUTDOWN_TIMEOUT": "5",
    }
    config = WorkerConfig.from_env(env)
    assert config.api_url == "https://flow.example.com"  # trailing slash dropped
    assert (config.client_id, config.client_secret) == ("w1", "pw")
    assert config.uses_oauth
    assert not config.insecure
    assert (config.worker, config.worker_id) == ("gpu", "gpu-box-1")
    assert (config.max_activities, config.poll_max_activities) == (4, 2)
    assert (config.poll_interval, config.activity_timeout) == (0.5, 60)
    assert (config.heartbeat_interval, config.shutdown_timeout) == (10, 5)


def test_kflow_names_win_and_extend(tmp_path: pathlib.Path) -> None:
    env = {
        "KRUXIAFLOW_TOKEN": "from-kruxia",
        "KFLOW_ACCESS_TOKEN": "from-kflow",
        "KRUXIAFLOW_WORKER_MAX_ACTIVITIES": "4",
        "KFLOW_WORKER_MAX_ACTIVITIES": "8",
        "KFLOW_WORKER_LONG_POLL_SECONDS": "45",
        "KFLOW_WORKER_STATE_DIR": str(tmp_path),
        "KFLOW_WORKER_HTTP_TIMEOUT": "12",
        "KFLOW_WORKER_REPORT_TIMEOUT": "7",
    }
    config = WorkerConfig.from_env(env)
    assert config.access_token == "from-kflow"
    assert not config.uses_oauth
    assert not config.insecure
    assert config.max_activities == 8
    assert config.long_poll_seconds == 45
    assert config.state_dir == tmp_path
    assert (config.http_timeout, config.report_timeout) == (12, 7)


def test_static_token_from_kruxiaflow_token() -> None:
    assert WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t"}).access_token == "t"


def test_empty_values_count_as_unset() -> None:
    config = WorkerConfig.from_env({"KRUXIAFLOW_CLIENT_ID": "", "KRUXIAFLOW_WORKER": "  "})
    assert config.client_id is None
    assert config.worker == "py-std"


def test_overrides_apply_on_top_and_none_is_ignored() -> None:
    env = {"KRUXIAFLOW_WORKER": "a", "KRUXIAFLOW_WORKER_MAX_ACTIVITIES": "4"}
    config = WorkerConfig.from_env(env, worker="b", max_activities=None)
    assert config.worker == "b"
    assert config.max_activities == 4


def test_reads_os_environ_without_a_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KRUXIAFLOW_WORKER", "from-os")
    assert WorkerConfig.from_env().worker == "from-os"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KRUXIAFLOW_WORKER_MAX_ACTIVITIES": "abc"},
            "KRUXIAFLOW_WORKER_MAX_ACTIVITIES must be a positive integer, got 'abc'",
        ),
        (
            {"KRUXIAFLOW_WORKER_MAX_ACTIVITIES": "0"},
            "KRUXIAFLOW_WORKER_MAX_ACTIVITIES must be a positive integer, got '0'",
        ),
        (
            {"KFLOW_WORKER_MAX_ACTIVITIES": "-3"},
            "KFLOW_WORKER_MAX_ACTIVITIES must be a positive integer, got '-3'",
        ),
        (
            {"KRUXIAFLOW_WORKER_POLL_MAX_ACTIVITIES": "101"},
            "KRUXIAFLOW_WORKER_POLL_MAX_ACTIVITIES must be an integer 1..100, got '101'",
        ),
        (
            {"KRUXIAFLOW_WORKER_POLL_INTERVAL": "soon"},
            "KRUXIAFLOW_WORKER_POLL_INTERVAL must be a positive number of seconds, got 'soon'",
        ),
        (
            {"KRUXIAFLOW_WORKER_HEARTBEAT_INTERVAL": "0"},
            "KRUXIAFLOW_WORKER_HEARTBEAT_INTERVAL must be a positive number of seconds, got '0'",
        ),
        (
            {"KRUXIAFLOW_WORKER_SHUTDOWN_TIMEOUT": "-1"},
            "KRUXIAFLOW_WORKER_SHUTDOWN_TIMEOUT must be a number of seconds >= 0, got '-1'",
        ),
        (
            {"KFLOW_WORKER_LONG_POLL_SECONDS": "61"},
            "KFLOW_WORKER_LONG_POLL_SECONDS must be a number of seconds >= 0 (at most 60), "
            "got '61'",
        ),
        (
            {"KRUXIAFLOW_WORKER_ACTIVITY_TIMEOUT": "nan"},
            "KRUXIAFLOW_WORKER_ACTIVITY_TIMEOUT must be a positive number of seconds, got 'nan'",
        ),
        (
            {"KRUXIAFLOW_API_URL": "flow.example.com"},
            "KRUXIAFLOW_API_URL must be an http:// or https:// URL (or several, "
            "comma-separated), got 'flow.example.com'",
        ),
        (
            {"KRUXIAFLOW_WORKER": "py std"},
            "KRUXIAFLOW_WORKER must match ^[A-Za-z0-9_-]+$, got 'py std'",
        ),
        (
            {"KFLOW_WORKER_INSECURE": "maybe"},
            "KFLOW_WORKER_INSECURE must be a boolean (1/0, true/false, yes/no, on/off), "
            "got 'maybe'",
        ),
        (
            {"KRUXIAFLOW_TOKEN": "t", "KFLOW_WORKER_REPORT_BATCH": "sometimes"},
            "KFLOW_WORKER_REPORT_BATCH must be a boolean (1/0, true/false, yes/no, on/off), "
            "got 'sometimes'",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkerConfig.from_env(env)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_client_id_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="client_id and client_secret must be given together"):
        WorkerConfig.from_env({"KRUXIAFLOW_CLIENT_ID": "w1"})


def test_insecure_cannot_carry_credentials() -> None:
    with pytest.raises(ConfigError, match="insecure cannot be combined"):
        WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t", "KFLOW_WORKER_INSECURE": "1"})


def test_insecure_off_requires_credentials() -> None:
    with pytest.raises(ConfigError, match="no credentials: set KRUXIAFLOW_CLIENT_ID"):
        WorkerConfig.from_env({"KFLOW_WORKER_INSECURE": "0"})


def test_unknown_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown worker setting 'max_slots'"):
        WorkerConfig.from_env({}, max_slots=3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_activities", 0),
        ("max_activities", 2.5),
        ("poll_max_activities", 101),
        ("poll_interval", 0),
        ("shutdown_timeout", -1),
        ("worker", "a/b"),
        ("worker_id", ""),
        ("api_url", "ftp://x"),
        ("long_poll_seconds", 90),
    ],
)
def test_direct_construction_validates_fields(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        WorkerConfig(**{field: value})  # type: ignore[arg-type]


def test_repr_hides_secrets() -> None:
    config = WorkerConfig(client_id="w1", client_secret="hunter2")
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(WorkerConfig(access_token="hunter2"))


def test_report_batching_is_on_unless_switched_off() -> None:
    assert WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t"}).report_batch is True
    off = WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t", "KFLOW_WORKER_REPORT_BATCH": "0"})
    assert off.report_batch is False


def test_claiming_the_next_step_with_a_report_is_on_unless_switched_off() -> None:
    assert WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t"}).claim_next is True
    off = WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t", "KFLOW_WORKER_CLAIM_NEXT": "no"})
    assert off.claim_next is False


def test_streamed_polls_are_on_unless_switched_off() -> None:
    assert WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t"}).poll_stream is True
    off = WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t", "KFLOW_WORKER_POLL_STREAM": "off"})
    assert off.poll_stream is False
    with pytest.raises(ConfigError, match="KFLOW_WORKER_POLL_STREAM"):
        WorkerConfig.from_env({"KRUXIAFLOW_TOKEN": "t", "KFLOW_WORKER_POLL_STREAM": "sometimes"})
