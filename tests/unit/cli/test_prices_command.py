"""``kflow prices``: the catalog on the command line, through the entry point."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib

import pytest

from kflow.cli import EXIT_OK, EXIT_USAGE, main


def test_prices_lists_a_provider_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "--provider", "anthropic", "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert rows
    assert all(row["model"].startswith("anthropic/") for row in rows)
    sonnet = next(row for row in rows if row["model"] == "anthropic/claude-sonnet-4-5")
    assert sonnet["input"] == "3.00"
    assert sonnet["output"] == "15.00"


def test_prices_as_a_table_with_an_override_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text('models:\n  - {model: acme/house-model, input: "0.5", output: "1.5"}\n')
    assert main(["prices", "--file", str(path), "--model", "house"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "acme/house-model" in out
    assert "USD per million tokens" in out


def test_prices_at_a_moment_shows_one_price_per_model(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "promo.yaml"
    path.write_text(
        "models:\n"
        '  - {model: acme/m, input: "2", output: "4"}\n'
        '  - {model: acme/m, input: "1", output: "2",'
        " effective_from: 2026-06-01, effective_until: 2026-07-01}\n"
    )
    assert main(["prices", "--file", str(path), "--provider", "acme", "--json"]) == EXIT_OK
    assert len(json.loads(capsys.readouterr().out)) == 2
    argv = ["prices", "--file", str(path), "--provider", "acme", "--at", "2026-06-15", "--json"]
    assert main(argv) == EXIT_OK
    [row] = json.loads(capsys.readouterr().out)
    assert row["input"] == "1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prices", "--at", "next tuesday"], "--at: expected a date"),
        (["prices", "--file", "/nonexistent/prices.yaml"], "cannot read the prices file"),
    ],
)
def test_prices_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_prices_without_the_add_on_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    assert main(["prices"]) == EXIT_USAGE
    assert "pip install 'kflow[llm]'" in capsys.readouterr().err
