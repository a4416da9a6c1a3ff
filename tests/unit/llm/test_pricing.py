"""The pricing catalog of kflow_llm: lookup, windows, overrides, exact costs, errors."""

from __future__ import annotations

import datetime as dt
import decimal
import pathlib
import textwrap

import pytest
import structlog

from kflow.errors import ConfigError
from kflow.worker.wire import usage_to_wire
from kflow_llm import PRICES_ENV, PriceCatalog, Usage, cost_of, load_catalog
from kflow_llm.activities import to_entry
from kflow_llm.pricing import merge, parse_catalog

D = decimal.Decimal

CATALOG = """
models:
  - model: acme/big
    aliases: [acme/big-2026-01-01]
    input: "3.00"
    output: "15.00"
    cache_write: "3.75"
    cache_read: "0.30"
  - model: acme/big
    input: "1.50"
    output: "7.50"
    effective_from: 2026-06-01
    effective_until: 2026-07-01
    note: half price in June
  - model: acme/small
    input: "0.25"
    output: "1.25"
  - model: local/*
    input: "0"
    output: "0"
  - model: local/special-*
    input: "0.01"
    output: "0.02"
"""


@pytest.fixture
def catalog() -> PriceCatalog:
    return PriceCatalog(entries=tuple(parse_catalog(CATALOG, "test")))


def at(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)


def test_a_call_is_priced_exactly_per_million_tokens(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    priced = catalog.price("acme/big", usage, at("2026-03-01"))
    assert priced.cost_usd == D("0.0105")  # 1000 * 3 / 1e6 + 500 * 15 / 1e6
    assert priced.known
    cached = Usage(input_tokens=10, cache_read_tokens=100_000, cache_creation_tokens=2000)
    assert cost_of(priced.price, cached) == D("0.03753")  # type: ignore[arg-type]


def test_a_missing_cache_price_is_charged_at_the_input_price(catalog: PriceCatalog) -> None:
    usage = Usage(cache_read_tokens=1_000_000, cache_creation_tokens=1_000_000)
    assert catalog.price("acme/small", usage, at("2026-03-01")).cost_usd == D("0.5")


def test_reasoning_tokens_are_part_of_output_and_not_charged_twice(
    catalog: PriceCatalog,
) -> None:
    plain = catalog.price("acme/small", Usage(output_tokens=1000), at("2026-03-01"))
    thinking = catalog.price(
        "acme/small", Usage(output_tokens=1000, reasoning_tokens=800), at("2026-03-01")
    )
    assert plain.cost_usd == thinking.cost_usd == D("0.00125")


def test_aliases_name_the_same_price(catalog: PriceCatalog) -> None:
    assert catalog.lookup("acme/big-2026-01-01", at("2026-03-01")) is catalog.lookup(
        "acme/big", at("2026-03-01")
    )


def test_a_promotional_window_applies_only_inside_it(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=1_000_000)
    assert catalog.price("acme/big", usage, at("2026-05-31T23:59:59")).cost_usd == D("3")
    assert catalog.price("acme/big", usage, at("2026-06-01")).cost_usd == D("1.5")
    assert catalog.price("acme/big", usage, at("2026-06-30T23:59:59")).cost_usd == D("1.5")
    assert catalog.price("acme/big", usage, at("2026-07-01")).cost_usd == D("3")  # end exclusive


def test_patterns_match_and_the_most_specific_wins(catalog: PriceCatalog) -> None:
    assert catalog.lookup("local/llama3", at("2026-01-01")).input == 0  # type: ignore[union-attr]
    special = catalog.lookup("local/special-7b", at("2026-01-01"))
    assert special is not None
    assert special.input == D("0.01")


def test_an_unknown_model_costs_zero_and_says_so(catalog: PriceCatalog) -> None:
    with structlog.testing.capture_logs() as logs:
        priced = catalog.price("acme/unheard-of", Usage(input_tokens=99), at("2026-01-01"))
    assert priced.cost_usd == 0
    assert not priced.known
    [entry] = [e for e in logs if e["event"] == "llm.price_unknown"]
    assert entry["model"] == "acme/unheard-of"
    assert entry["log_level"] == "warning"


def test_the_usage_entry_matches_the_worker_protocol(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=7, output_tokens=3, cache_read_tokens=2, reasoning_tokens=1)
    priced = catalog.price("acme/small", usage, at("2026-01-01"))
    entry = usage_to_wire(to_entry(priced, "acme", "small"))
    assert entry == {
        "provider": "acme",
        "model": "small",
        "input_tokens": 7,
        "output_tokens": 3,
        "cache_read_tokens": 2,
        "cache_creation_tokens": 0,
        "reasoning_tokens": 1,
        "cost_usd": "0.000006",
    }


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "reasoning_tokens"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_usage_counts_are_non_negative_integers(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Usage(**{field: value})  # type: ignore[arg-type]


def test_an_override_replaces_the_same_model_and_window_and_adds_new_ones(
    tmp_path: pathlib.Path,
) -> None:
    base = parse_catalog(CATALOG, "base")
    overrides = parse_catalog(
        """
models:
  - {model: acme/big, input: "2.00", output: "10.00"}
  - {model: acme/new, input: "9", output: "9"}
""",
        "overrides",
    )
    merged = PriceCatalog(entries=tuple(merge(base, overrides)))
    assert merged.lookup("acme/big", at("2026-03-01")).input == D("2")  # type: ignore[union-attr]
    # the June window was not overridden
    assert merged.lookup("acme/big", at("2026-06-15")).input == D("1.5")  # type: ignore[union-attr]
    assert merged.lookup("acme/new", at("2026-03-01")) is not None
    assert len(merged.entries) == len(base) + 1


def test_the_overrides_file_is_taken_from_the_environment(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text('models:\n  - {model: anthropic/my-finetune, input: "4", output: "20"}\n')
    catalog = load_catalog(environ={PRICES_ENV: str(path)})
    assert catalog.lookup("anthropic/my-finetune") is not None
    assert load_catalog(environ={}).lookup("anthropic/my-finetune") is None


def test_the_shipped_catalog_covers_the_providers_and_names_its_sources() -> None:
    catalog = load_catalog(environ={})
    assert {"anthropic", "openai", "google", "ollama"} <= set(catalog.providers())
    assert all(entry.source.startswith("https://") for entry in catalog.entries)
    assert catalog.lookup("ollama/llama3.2").output == 0  # type: ignore[union-attr]
    for model in ("anthropic/claude-sonnet-4-5", "openai/gpt-4.1-mini", "google/gemini-2.5-flash"):
        entry = catalog.lookup(model)
        assert entry is not None, model
        assert 0 < entry.input < entry.output, model


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [{model: a/b, output: '1'}]", r"models\[0\]\.input: is required"),
        ("models: [{model: a/b, input: '-1', output: '1'}]", r"models\[0\]\.input: must be"),
        ("models: [{model: a/b, input: 'x', output: '1'}]", r"models\[0\]\.input: not a number"),
        ("models: [{model: a/b, input: .nan, output: '1'}]", r"models\[0\]\.input: must be"),
        ("models: [{model: nope, input: '1', output: '1'}]", r"models\[0\]\.model: expected"),
        ("models: [{model: a/b, input: 1, output: 1, colour: red}]", r"unknown field\(s\) colour"),
        (
            "models: [{model: a/b, input: 1, output: 1, effective_from: soon}]",
            r"models\[0\]\.effective_from: expected a date",
        ),
        (
            "models: [{model: a/b, input: 1, output: 1, effective_from: 2026-02-01, "
            "effective_until: 2026-01-01}]",
            r"effective_until: must be after effective_from",
        ),
        (
            "models: [{model: a/b, input: 1, output: 1}, {model: a/b, input: 2, output: 2}]",
            r"models\[1\]: a/b with the same window as models\[0\]",
        ),
        ("models: {model: a/b}", "expected a mapping with a 'models' list"),
        ("models: [", "not valid YAML"),
        ("models: [{model: a/b, input: 1, output: 1, aliases: a/c}]", r"aliases: expected a list"),
    ],
)
def test_a_bad_catalog_names_the_file_entry_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_catalog(textwrap.dedent(text), "my-prices.yaml")
    assert str(caught.value).startswith("my-prices.yaml: ")


def test_a_missing_overrides_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the prices file .*missing\.yaml"):
        load_catalog(tmp_path / "missing.yaml")


def test_tiny_costs_are_written_without_an_exponent(catalog: PriceCatalog) -> None:
    priced = catalog.price("acme/small", Usage(input_tokens=1), at("2026-01-01"))
    entry = usage_to_wire(to_entry(priced, "acme", "small"))
    assert entry["cost_usd"] == "0.00000025"


def test_the_shipped_launch_price_of_gemini_3_8_flash_ends_with_2026() -> None:
    catalog = load_catalog(environ={})
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert catalog.price("google/gemini-3.8-flash", usage, at("2026-12-31T23:59")).cost_usd == 4.5
    assert catalog.price("google/gemini-3.8-flash", usage, at("2027-01-01")).cost_usd == 9
