"""``kflow prices``: list the pricing catalog (shipped prices plus overrides).

Registered with kflow's CLI through the ``kflow.commands`` entry-point group.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from kflow.errors import ConfigError
from kflow_llm.pricing import EARLIEST, ModelPrice, load_catalog


def _text(amount: decimal.Decimal | None, fallback: decimal.Decimal) -> str:
    return f"{amount:f}" if amount is not None else f"{fallback:f}*"


def _window(entry: ModelPrice) -> str:
    start = entry.effective_from.date().isoformat() if entry.effective_from else "…"
    end = entry.effective_until.date().isoformat() if entry.effective_until else "…"
    return "" if not entry.windowed else f"{start} → {end}"


def _row(entry: ModelPrice) -> dict[str, Any]:
    return {
        "model": entry.model,
        "aliases": list(entry.aliases),
        "input": f"{entry.input:f}",
        "output": f"{entry.output:f}",
        "cache_read": None if entry.cache_read is None else f"{entry.cache_read:f}",
        "cache_write": None if entry.cache_write is None else f"{entry.cache_write:f}",
        "effective_from": entry.effective_from.isoformat() if entry.effective_from else None,
        "effective_until": entry.effective_until.isoformat() if entry.effective_until else None,
        "note": entry.note,
        "source": entry.source,
    }


def _moment(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--at: expected a date or ISO 8601 timestamp, got {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def prices_command(args: argparse.Namespace, console: Console) -> int:
    """Print the catalog, filtered by ``--provider``/``--model``; ``--at`` shows the
    prices in force at that moment (every window otherwise).

    Raises:
        ConfigError: a bad prices file or ``--at`` value.
    """
    catalog = load_catalog(args.file)
    at = _moment(args.at)
    entries = list(catalog.entries)
    if args.provider:
        entries = [e for e in entries if e.provider == args.provider]
    if args.model:
        entries = [
            e for e in entries if args.model in e.model or any(args.model in a for a in e.aliases)
        ]
    if at is not None:
        entries = [e for e in entries if catalog.lookup(e.model, at) is e]
    entries.sort(key=lambda e: (e.model, e.effective_from or EARLIEST))
    if args.json:
        console.print_json(json.dumps([_row(e) for e in entries]))
        return 0
    title = "USD per million tokens" + (f" at {at.isoformat()}" if at else "")
    table = Table(title=title, caption="* no cache price listed: charged at the input price")
    widest = max((len(e.model) for e in entries), default=5)
    table.add_column("model", no_wrap=True, min_width=widest)  # ids are never cut
    for column in ("input", "output", "cache read", "cache write"):
        table.add_column(column, justify="right")
    table.add_column("window")
    table.add_column("aliases", overflow="fold")
    for e in entries:
        table.add_row(
            e.model,
            f"{e.input:f}",
            f"{e.output:f}",
            _text(e.cache_read, e.input),
            _text(e.cache_write, e.input),
            _window(e),
            ", ".join(e.aliases),
        )
    console.print(table)
    if not entries:
        console.print("no prices match")
    return 0
