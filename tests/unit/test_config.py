"""Server settings from the environment: the seed client's scopes, the log format."""

from __future__ import annotations

import pytest

from kflow.config import ALL_SCOPES, env_log_format, server_config
from kflow.errors import ConfigError
from kflow.server import auth

SEED = {"KRUXIAFLOW_CLIENT_ID": "shared", "KRUXIAFLOW_CLIENT_SECRET": "a-long-secret"}


def test_the_seed_client_gets_every_scope_by_default() -> None:
    config = server_config(SEED, seed_client=True)
    assert config.seed_client_scopes == ALL_SCOPES == frozenset(auth.ALL_SCOPES)
    assert server_config({**SEED, "KFLOW_SEED_CLIENT_SCOPES": ""}).seed_client_scopes == ALL_SCOPES


@pytest.mark.parametrize(
    ("raw", "scopes"),
    [
        ("worker", {"worker"}),
        ("worker,workflows:read", {"worker", "workflows:read"}),
        ("  workflows:write  worker ", {"worker", "workflows:write"}),
        ("worker, worker", {"worker"}),
    ],
)
def test_seed_client_scopes_from_the_environment(raw: str, scopes: set[str]) -> None:
    env = {**SEED, "KFLOW_SEED_CLIENT_SCOPES": raw}
    config = server_config(env, seed_client=True)
    assert config.seed_client_scopes == frozenset(scopes)
    assert config.seed_client_id == "shared"


@pytest.mark.parametrize(("raw", "message"), [("root", "unknown scope"), (" , ", "names no scope")])
def test_bad_seed_client_scopes_name_the_variable(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"KFLOW_SEED_CLIENT_SCOPES.*{message}"):
        server_config({**SEED, "KFLOW_SEED_CLIENT_SCOPES": raw}, seed_client=True)


def test_env_log_format() -> None:
    assert env_log_format({}) == "auto"
    assert env_log_format({"KFLOW_LOG_FORMAT": ""}) == "auto"
    assert env_log_format({"KFLOW_LOG_FORMAT": " JSON "}) == "json"
    assert env_log_format({"KFLOW_LOG_FORMAT": "console"}) == "console"
    with pytest.raises(ConfigError, match="KFLOW_LOG_FORMAT must be one of auto, json, console"):
        env_log_format({"KFLOW_LOG_FORMAT": "yaml"})


def test_inprocess_workers_are_a_subset_of_the_built_in_ones() -> None:
    from kflow.config import server_config

    assert server_config({}).builtin_workers == ("std", "py-std")
    only_std = server_config({"KFLOW_INPROCESS_WORKERS": "std"})
    assert only_std.builtin_workers == ("std",)
    assert server_config({"KFLOW_INPROCESS_WORKERS": ""}).builtin_workers == ()
    assert server_config({}, run_workers=False).builtin_workers == ()
    with pytest.raises(ConfigError, match="KFLOW_INPROCESS_WORKERS: unknown worker"):
        server_config({"KFLOW_INPROCESS_WORKERS": "std,gpu"})


def test_built_in_workers_claim_the_next_step_unless_switched_off() -> None:
    assert server_config({}).worker_claim_next is True
    assert server_config({"KFLOW_WORKER_CLAIM_NEXT": "0"}).worker_claim_next is False
    with pytest.raises(ConfigError, match="KFLOW_WORKER_CLAIM_NEXT"):
        server_config({"KFLOW_WORKER_CLAIM_NEXT": "maybe"})


def test_table_upkeep_runs_every_five_seconds_unless_set_otherwise() -> None:
    assert server_config({}).table_upkeep_seconds == 5.0
    assert server_config({"KFLOW_TABLE_UPKEEP_SECONDS": "0"}).table_upkeep_seconds == 0
    assert server_config({"KFLOW_TABLE_UPKEEP_SECONDS": "30"}).table_upkeep_seconds == 30
    with pytest.raises(ConfigError, match="KFLOW_TABLE_UPKEEP_SECONDS must be at least 0"):
        server_config({"KFLOW_TABLE_UPKEEP_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="KFLOW_TABLE_UPKEEP_SECONDS must be a number"):
        server_config({"KFLOW_TABLE_UPKEEP_SECONDS": "often"})
