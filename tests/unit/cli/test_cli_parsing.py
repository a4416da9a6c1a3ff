"""The command line contract: flags, input parsing, registry loading, exit codes."""

from __future__ import annotations

import pathlib

import httpx
import pytest
import trio

from kflow import _commands
from kflow import log as kflog
from kflow.cli import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_parser,
    main,
    parse_input,
    unreachable_message,
)
from kflow.errors import ConfigError
from kflow.worker import ActivityRegistry

HELLO = pathlib.Path(__file__).resolve().parents[3] / "examples" / "hello.yaml"


def test_input_is_a_json_object_or_a_file(tmp_path: pathlib.Path) -> None:
    assert parse_input(None) == {}
    assert parse_input('{"a": 1}') == {"a": 1}
    data = tmp_path / "in.json"
    data.write_text('{"b": [1, 2]}')
    assert parse_input(f"@{data}") == {"b": [1, 2]}


@pytest.mark.parametrize("text", ["[1, 2]", "42", "{not json", "@/no/such/file.json"])
def test_bad_input_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--input must be a JSON object"):
        parse_input(text)


@pytest.mark.parametrize(
    "argv",
    [
        [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "8080",
            "--db",
            "sqlite:///x.db",
            "--no-worker",
            "--insecure-dev",
            "--seed-client",
            "--deploy",
            "examples",
            "--run",
            "examples/hello.yaml",
            "--input",
            "{}",
        ],
        ["worker", "--api-url", "http://h:1", "--worker", "q", "--concurrency", "4", "m:r"],
        ["worker", "--std"],
        ["worker", "--py-std"],
        ["run", "f.yaml", "--input", "{}", "--api-url", "http://h:1"],
        ["deploy", "a.yaml", "b.yaml"],
        ["start", "name", "--input", "{}", "--version", "v", "--unique-key", "k", "--wait"],
        ["status", "0190"],
        ["status"],
        ["cancel", "0190"],
        ["migrate", "--db", "sqlite:///x.db"],
        ["clients", "create", "ci", "--scopes", "workflows:write"],
        ["clients", "list"],
        ["clients", "disable", "ci"],
    ],
)
def test_documented_command_lines_parse(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_std_and_py_std_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--std", "--py-std"])


def test_load_registry_accepts_a_registry_or_a_factory() -> None:
    registry = _commands.load_registry("tests.acceptance.activities_for_tests:registry")
    assert isinstance(registry, ActivityRegistry)
    assert registry.names("acceptance") == ["add", "classify"]
    factory = _commands.load_registry("tests.acceptance.activities_for_tests:make_registry")
    assert factory.names("acceptance") == ["add"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like package.module:registry"),
        ("kflow_no_such_module:registry", "cannot import"),
        ("kflow.errors:KflowError", "is not an ActivityRegistry"),
        ("kflow.errors:__doc__", "is not an ActivityRegistry"),
        ("kflow.ids:parse_id", r"parse_id\(\) failed: TypeError"),
    ],
)
def test_load_registry_errors_are_clear(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _commands.load_registry(spec)


def test_insecure_dev_on_a_public_bind_exits_with_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    code = main(
        ["serve", "--host", "0.0.0.0", "--insecure-dev", "--db", f"sqlite:///{tmp_path / 'k.db'}"]
    )
    assert code == EXIT_USAGE
    assert "--insecure-dev is refused" in capsys.readouterr().err


def test_worker_without_a_registry_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == EXIT_USAGE
    assert "exactly one of MODULE:REGISTRY, --std or --py-std" in capsys.readouterr().err


def test_migrate_and_clients_work_on_a_fresh_database(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert main(["migrate", "--db", db]) == 0
    assert "applied: 0001_initial" in capsys.readouterr().out
    assert main(["migrate", "--db", db]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (
        main(
            [
                "clients",
                "--db",
                db,
                "create",
                "ci",
                "--scopes",
                "workflows:write",
                "--secret",
                "a-long-secret",
            ]
        )
        == 0
    )
    assert "client_secret: a-long-secret" in capsys.readouterr().out
    assert main(["clients", "--db", db, "create", "ci"]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err
    assert main(["clients", "--db", db, "create", "x", "--scopes", "root"]) == EXIT_USAGE
    assert "unknown scope" in capsys.readouterr().err
    assert main(["clients", "--db", db, "list"]) == 0
    assert "workflows:write" in capsys.readouterr().out
    assert main(["clients", "--db", db, "disable", "ci"]) == 0
    assert main(["clients", "--db", db, "disable", "ci"]) == EXIT_USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "01900000-0000-7000-8000-000000000000"],
        ["cancel", "01900000-0000-7000-8000-000000000000"],
        ["start", "hello"],
        ["deploy", str(HELLO)],
        ["run", str(HELLO)],
    ],
)
def test_an_unreachable_server_exits_3_with_one_line(
    argv: list[str],
    dead_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KRUXIAFLOW_CLIENT_ID", "KRUXIAFLOW_CLIENT_SECRET", "KRUXIAFLOW_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    code = main([*argv, "--api-url", dead_url])
    out, err = capsys.readouterr()
    assert code == EXIT_UNREACHABLE
    assert err.startswith(f"error: cannot reach {dead_url}: ")
    assert err.rstrip().endswith(". Is 'kflow serve' running?")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_status_against_port_9_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--api-url", "http://127.0.0.1:9"]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "error: cannot reach http://127.0.0.1:9: " in err
    assert "Is 'kflow serve' running?" in err


def test_the_message_names_the_request_origin_without_a_url() -> None:
    request = httpx.Request("GET", "http://kflow.example:8080/api/v1/workflows")
    exc = httpx.ConnectTimeout("", request=request)
    assert unreachable_message(exc) == (
        "cannot reach http://kflow.example:8080: ConnectTimeout. Is 'kflow serve' running?"
    )
    assert unreachable_message(httpx.ConnectError("refused")).startswith(
        "cannot reach the server: refused."
    )


def test_a_network_error_inside_an_exception_group_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fails(args: object, console: object) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_refused)
        return 0

    monkeypatch.setattr(_commands, "cmd_status", fails)
    assert main(["status", "--api-url", "http://h:1"]) == EXIT_UNREACHABLE
    assert "error: cannot reach http://h:1: refused." in capsys.readouterr().err


async def _refused() -> None:
    raise httpx.ConnectError("refused")


@pytest.mark.parametrize(("value", "expected"), [("json", "json"), (" Console ", "console")])
def test_log_format_comes_from_the_environment(
    value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(kflog, "configure", lambda **kw: seen.append(kw["fmt"]))
    monkeypatch.setenv("KFLOW_LOG_FORMAT", value)
    assert main(["worker"]) == EXIT_USAGE  # any command: logging is configured first
    assert main(["--log-format", "auto", "worker"]) == EXIT_USAGE  # the flag wins
    assert seen == [expected, "auto"]


def test_a_bad_log_format_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KFLOW_LOG_FORMAT", "fancy")
    with pytest.raises(SystemExit) as exit_info:
        main(["status"])
    assert exit_info.value.code == EXIT_USAGE
    assert "KFLOW_LOG_FORMAT must be one of" in capsys.readouterr().err
