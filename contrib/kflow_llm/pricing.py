"""Token prices: the catalog shipped with kflow_llm, user overrides, and pricing a call.

Prices are USD per million tokens, held as :class:`~decimal.Decimal` from
the catalog's text to the cost of a call, so nothing is lost to floats.

A catalog entry names a model id (``provider/model``, or a pattern such as
``ollama/*``) with its aliases, the input, output, cache-read and
cache-write prices, and optionally an effective-date window
(``effective_from`` inclusive, ``effective_until`` exclusive) for a
promotional or changed price. Looking a model up at a moment:

1. entries naming the model (id or alias) beat patterns; of several
   patterns the longest (most specific) wins;
2. among those entries, one whose window covers the moment beats the
   entry without a window; of several windows the latest start wins;
3. a missing cache price is charged at the input price (a cost is never
   under-estimated because the catalog is silent).

User overrides (:func:`load_catalog` ``overrides=``, or the file named by
``KFLOW_LLM_PRICES``) use the same format. An override entry replaces the
shipped entry for the same model and window and adds anything new.

Usage follows the worker protocol's usage entries: ``input_tokens`` are the
uncached prompt tokens billed at the input price, ``cache_read_tokens`` and
``cache_creation_tokens`` the cached ones, ``output_tokens`` everything
billed at the output price (reasoning included); ``reasoning_tokens`` says
how many of those were reasoning and is not charged again.
"""

from __future__ import annotations

import datetime as dt
import decimal
import fnmatch
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import attrs
import structlog

from kflow.errors import ConfigError

log = structlog.get_logger("kflow_llm.pricing")

PER_TOKENS = decimal.Decimal(1_000_000)
EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
PRICES_ENV = "KFLOW_LLM_PRICES"
_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write")
_ENTRY_FIELDS = {
    "model",
    "aliases",
    *_PRICE_FIELDS,
    "effective_from",
    "effective_until",
    "note",
    "source",
}
_COUNTERS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)


@attrs.frozen
class ModelPrice:
    """One catalog entry (prices in USD per million tokens)."""

    model: str
    input: decimal.Decimal
    output: decimal.Decimal
    cache_read: decimal.Decimal | None = None
    cache_write: decimal.Decimal | None = None
    aliases: tuple[str, ...] = ()
    effective_from: dt.datetime | None = None
    effective_until: dt.datetime | None = None
    note: str = ""
    source: str = ""

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.model for ch in "*?[")

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    def names(self, model: str) -> bool:
        """Whether this entry is for ``model`` by id or alias (not by pattern)."""
        return not self.is_pattern and (model == self.model or model in self.aliases)

    def covers(self, at: dt.datetime) -> bool:
        """Whether ``at`` lies in this entry's window (always, without one)."""
        if self.effective_from is not None and at < self.effective_from:
            return False
        return self.effective_until is None or at < self.effective_until

    @property
    def windowed(self) -> bool:
        return self.effective_from is not None or self.effective_until is not None

    @property
    def key(self) -> tuple[str, dt.datetime | None, dt.datetime | None]:
        return (self.model, self.effective_from, self.effective_until)


@attrs.frozen
class Usage:
    """Token counts of one call (see the module docstring for what each counts).

    Raises (on construction):
        ValueError: a count is not a non-negative integer.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0

    def __attrs_post_init__(self) -> None:
        for name in _COUNTERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")

    @property
    def prompt_tokens(self) -> int:
        """Every prompt token, cached or not."""
        return self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens


@attrs.frozen
class Priced:
    """The cost of one call; ``price`` is None when the model is not in the catalog."""

    model: str
    usage: Usage
    cost_usd: decimal.Decimal
    price: ModelPrice | None

    @property
    def known(self) -> bool:
        return self.price is not None


@attrs.frozen
class PriceCatalog:
    """Model prices, looked up by model id at a moment."""

    entries: tuple[ModelPrice, ...]

    def lookup(self, model: str, at: dt.datetime | None = None) -> ModelPrice | None:
        """The price of ``model`` at ``at`` (now when None), or None when unknown."""
        moment = _utc(at or dt.datetime.now(dt.UTC))
        named = [e for e in self.entries if e.names(model)]
        if not named:
            matching = [
                e for e in self.entries if e.is_pattern and fnmatch.fnmatchcase(model, e.model)
            ]
            if not matching:
                return None
            longest = max(len(e.model) for e in matching)
            named = [e for e in matching if len(e.model) == longest]
        current = [e for e in named if e.covers(moment)]
        windows = [e for e in current if e.windowed]
        if windows:
            return max(windows, key=lambda e: e.effective_from or EARLIEST)
        plain = [e for e in current if not e.windowed]
        return plain[0] if plain else None

    def price(self, model: str, usage: Usage, at: dt.datetime | None = None) -> Priced:
        """The cost of ``usage`` on ``model``; an unknown model costs 0 and is logged."""
        entry = self.lookup(model, at)
        if entry is None:
            log.warning(
                "llm.price_unknown",
                model=model,
                hint=f"add it to a prices file named by {PRICES_ENV}; recorded at cost 0",
            )
            return Priced(model=model, usage=usage, cost_usd=decimal.Decimal(0), price=None)
        return Priced(model=model, usage=usage, cost_usd=cost_of(entry, usage), price=entry)

    def providers(self) -> list[str]:
        return sorted({e.provider for e in self.entries})


def cost_of(entry: ModelPrice, usage: Usage) -> decimal.Decimal:
    """USD for ``usage`` at ``entry``'s prices (exact; cache prices default to input)."""
    cache_read = entry.cache_read if entry.cache_read is not None else entry.input
    cache_write = entry.cache_write if entry.cache_write is not None else entry.input
    total = (
        usage.input_tokens * entry.input
        + usage.output_tokens * entry.output
        + usage.cache_read_tokens * cache_read
        + usage.cache_creation_tokens * cache_write
    )
    return (total / PER_TOKENS).normalize() if total else decimal.Decimal(0)


# ---- loading ------------------------------------------------------------------------------


def load_catalog(
    overrides: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> PriceCatalog:
    """The shipped catalog with the overrides file applied.

    ``overrides`` defaults to the file named by ``KFLOW_LLM_PRICES`` (if set).

    Raises:
        ConfigError: a catalog file is missing, not YAML/JSON, or has a bad
            entry (the message names the file, the entry and the field).
    """
    shipped = resources.files("kflow_llm").joinpath("prices.yaml").read_text(encoding="utf-8")
    entries = parse_catalog(shipped, "kflow_llm/prices.yaml")
    env = os.environ if environ is None else environ
    path = overrides if overrides is not None else env.get(PRICES_ENV) or None
    if path is not None:
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the prices file {path}: {exc.strerror}") from exc
        entries = merge(entries, parse_catalog(text, str(path)))
    return PriceCatalog(entries=tuple(entries))


def merge(base: Sequence[ModelPrice], overrides: Iterable[ModelPrice]) -> list[ModelPrice]:
    """``base`` with each override replacing the entry of the same model and window."""
    merged = {entry.key: entry for entry in base}
    for entry in overrides:
        merged[entry.key] = entry
    return list(merged.values())


def parse_catalog(text: str, where: str) -> list[ModelPrice]:
    """Entries of a catalog document (``{models: [...]}``).

    Raises:
        ConfigError: as for :func:`load_catalog`.
    """
    import yaml  # only when a catalog is read: a worker that makes no LLM call never loads it

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML or JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ConfigError(f"{where}: expected a mapping with a 'models' list")
    entries = [_entry(raw, f"{where}: models[{i}]") for i, raw in enumerate(document["models"])]
    seen: dict[tuple[Any, ...], str] = {}
    for i, entry in enumerate(entries):
        if entry.key in seen:
            raise ConfigError(
                f"{where}: models[{i}]: {entry.model} with the same window as {seen[entry.key]}"
            )
        seen[entry.key] = f"models[{i}]"
    return entries


def _entry(raw: Any, where: str) -> ModelPrice:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - _ENTRY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    model = raw.get("model")
    if not isinstance(model, str) or "/" not in model or model.startswith("/"):
        raise ConfigError(f"{where}.model: expected 'provider/model', got {model!r}")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where}.aliases: expected a list of model ids")
    prices = {}
    for name in _PRICE_FIELDS:
        required = name in ("input", "output")
        prices[name] = _money(raw.get(name), f"{where}.{name}", required=required)
    start = _moment(raw.get("effective_from"), f"{where}.effective_from")
    end = _moment(raw.get("effective_until"), f"{where}.effective_until")
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"{where}.effective_until: must be after effective_from")
    return ModelPrice(
        model=model,
        aliases=tuple(aliases),
        effective_from=start,
        effective_until=end,
        note=str(raw.get("note") or ""),
        source=str(raw.get("source") or ""),
        **prices,
    )


def _money(value: Any, where: str, *, required: bool) -> Any:
    if value is None:
        if required:
            raise ConfigError(f"{where}: is required (USD per million tokens)")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: expected a price in USD per million tokens, got {value!r}")
    try:
        amount = decimal.Decimal(str(value))
    except decimal.InvalidOperation as exc:
        raise ConfigError(f"{where}: not a number: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}: must be a finite, non-negative number, got {value!r}")
    return amount


def _moment(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return _utc(value)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            return _utc(dt.datetime.fromisoformat(value))
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a date or an ISO 8601 timestamp, got {value!r}")


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
