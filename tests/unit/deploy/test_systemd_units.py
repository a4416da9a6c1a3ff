"""The systemd units in deploy/systemd: parsed for the basics, and verified by systemd."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "systemd"
UNITS = ("kflow-server.service", "kflow-worker@.service")
KFLOW = "/opt/kflow/.venv/bin/kflow"
ENV_FILE = "/etc/kflow/kflow.env"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) pairs in order (keys may repeat, as systemd allows)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def parse_env(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def seconds(value: str) -> float:
    value = value.strip()
    for suffix, factor in (("ms", 0.001), ("min", 60), ("s", 1), ("m", 60)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("name", UNITS)
def test_unit_basics(name: str) -> None:
    unit = parse_unit(DEPLOY / name)
    service = dict(unit["Service"])
    assert service["Type"] == "exec"
    if name.startswith("kflow-worker"):  # workers get a user of their own
        assert service["DynamicUser"] == "yes"
        assert "User" not in service
    else:
        assert (service["User"], service["Group"]) == ("kflow", "kflow")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert service["EnvironmentFile"] == ENV_FILE
    assert service["ExecStart"].startswith(f"{KFLOW} ")
    assert "network-online.target" in values(unit, "Unit", "After")[0].split()
    assert "network-online.target" in values(unit, "Unit", "Wants")[0].split()
    assert values(unit, "Unit", "Requires") == []
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_commands() -> None:
    server = dict(parse_unit(DEPLOY / "kflow-server.service")["Service"])
    assert server["ExecStart"] == (
        f"{KFLOW} serve --host ${{KFLOW_HOST}} --port ${{KFLOW_PORT}} --seed-client"
    )
    worker = parse_unit(DEPLOY / "kflow-worker@.service")
    assert dict(worker["Service"])["ExecStart"] == f"{KFLOW} worker --%i"
    assert "kflow-server.service" in values(worker, "Unit", "After")[0].split()


def test_env_example_lists_the_settings_and_marks_secrets() -> None:
    text = (DEPLOY / "kflow.env.example").read_text()
    env = parse_env(DEPLOY / "kflow.env.example")
    assert set(env) >= {
        "KFLOW_DATABASE_URL",
        "KFLOW_HOST",
        "KFLOW_PORT",
        "KRUXIAFLOW_API_URL",
        "KRUXIAFLOW_CLIENT_ID",
        "KRUXIAFLOW_CLIENT_SECRET",
        "KRUXIAFLOW_WORKER_MAX_ACTIVITIES",
        "KRUXIAFLOW_WORKER_SHUTDOWN_TIMEOUT",
    }
    assert "change-me" in env["KRUXIAFLOW_CLIENT_SECRET"].lower()
    assert "CHANGE ME" in text


def test_env_example_gives_the_shared_worker_credential_only_the_worker_scope() -> None:
    from kflow.config import server_config

    env = parse_env(DEPLOY / "kflow.env.example")
    config = server_config(env, seed_client=True)
    assert config.seed_client_scopes == {"worker"}
    assert (config.seed_client_id, config.host) == ("kflow-worker", "127.0.0.1")


@pytest.mark.parametrize("name", UNITS)
def test_stop_timeout_exceeds_the_worker_drain_timeout(name: str) -> None:
    drain = float(parse_env(DEPLOY / "kflow.env.example")["KRUXIAFLOW_WORKER_SHUTDOWN_TIMEOUT"])
    [stop] = values(parse_unit(DEPLOY / name), "Service", "TimeoutStopSec")
    assert seconds(stop) > drain


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip(reason="systemd-analyze is not on PATH")
    executable = "/bin/true" if Path("/bin/true").exists() else sys.executable
    env_file = tmp_path / "kflow.env"
    shutil.copy(DEPLOY / "kflow.env.example", env_file)
    targets = {
        "kflow-server.service": "kflow-server.service",
        "kflow-worker@.service": "kflow-worker@py-std.service",
    }
    for source, target in targets.items():
        text = (DEPLOY / source).read_text()
        text = text.replace(KFLOW, executable).replace(ENV_FILE, str(env_file))
        (tmp_path / target).write_text(text)
    result = subprocess.run(
        [tool, "verify", "--man=no", *(str(tmp_path / t) for t in targets.values())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if "kflow" in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr
