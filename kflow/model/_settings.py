"""Reading the ``settings`` blocks of a definition (activity and workflow).

Part of the loader: values are type-checked and defaults filled in; every
problem is recorded in :class:`~kflow.model._readers.Problems` by path.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import attrs

from kflow._serde import format_datetime
from kflow.model import _readers as r
from kflow.model.definition import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT_SECONDS,
    ActivitySettings,
    BudgetSettings,
    CacheSettings,
    RetryPolicy,
    SignalWait,
    WorkflowSettings,
)
from kflow.model.durations import format_seconds

_STRATEGIES = {
    "exponential": "exponential",
    "exponential_backoff": "exponential",
    "fixed": "fixed",
    "constant": "fixed",
}
_BUDGET_ACTIONS = {"abort": "abort", "continue": "continue"}
_SIGNAL_ACTIONS = {"fail": "fail", "continue": "continue", "skip": "skip"}


@attrs.frozen(kw_only=True)
class LoopOptions:
    """``iteration_scoped`` / ``iteration_limit`` as found inside ``settings`` (SDK spelling)."""

    iteration_scoped: Any = r.MISSING
    iteration_limit: Any = r.MISSING


def read_workflow_settings(data: Mapping[str, Any], problems: r.Problems) -> WorkflowSettings:
    """The top-level ``settings`` block (``timeout``, ``budget``; ``max_retries`` is ignored)."""
    block = r.read_mapping(data, "settings", "", problems)
    if not isinstance(block, Mapping):
        return WorkflowSettings()
    timeout = r.read_float(block, "timeout", "settings", problems)
    return WorkflowSettings(
        timeout_seconds=timeout if isinstance(timeout, float) else None,
        budget=_read_budget(block, "settings", problems),
    )


def read_activity_settings(
    data: Mapping[str, Any], path: str, problems: r.Problems
) -> tuple[ActivitySettings, LoopOptions]:
    """An activity's ``settings`` block with defaults, and the loop options found in it."""
    block = r.read_mapping(data, "settings", path, problems)
    if not isinstance(block, Mapping):
        return ActivitySettings(), LoopOptions()
    path = r.join(path, "settings")
    timeout = r.read_int(block, "timeout_seconds", path, problems, minimum=1)
    settings = ActivitySettings(
        timeout_seconds=timeout if isinstance(timeout, int) else DEFAULT_TIMEOUT_SECONDS,
        retry=_read_retry(block, path, problems),
        budget=_read_budget(block, path, problems),
        cache=_read_cache(block, path, problems),
        delay=_read_delay(block, path, problems),
        scheduled_for=_read_scheduled_for(block, path, problems),
        wait_for_signal=_read_signal(block, path, problems),
    )
    scoped = r.read_bool(block, "iteration_scoped", path, problems)
    limit = r.read_int(block, "iteration_limit", path, problems, minimum=1)
    return settings, LoopOptions(iteration_scoped=scoped, iteration_limit=limit)


def _read_retry(block: Mapping[str, Any], path: str, problems: r.Problems) -> RetryPolicy:
    retry = r.read_mapping(block, "retry", path, problems)
    if not isinstance(retry, Mapping):
        return DEFAULT_RETRY
    path = r.join(path, "retry")
    values: dict[str, Any] = {
        "max_attempts": r.read_int(retry, "max_attempts", path, problems, minimum=1),
        "strategy": r.read_choice(retry, "strategy", path, problems, _STRATEGIES),
        "base_seconds": r.read_float(retry, "base_seconds", path, problems),
        "factor": r.read_float(retry, "factor", path, problems, minimum=1, inclusive=True),
        "max_seconds": r.read_float(retry, "max_seconds", path, problems),
    }
    return RetryPolicy(**{k: v for k, v in values.items() if v is not r.MISSING and v is not r.BAD})


def _read_budget(
    block: Mapping[str, Any], path: str, problems: r.Problems
) -> BudgetSettings | None:
    budget = r.read_mapping(block, "budget", path, problems)
    if not isinstance(budget, Mapping):
        return None
    path = r.join(path, "budget")
    limit = r.require(
        r.read_decimal(budget, "limit", path, problems), r.join(path, "limit"), problems
    )
    action = r.read_choice(budget, "action", path, problems, _BUDGET_ACTIONS)
    if limit is r.BAD:
        return None
    return BudgetSettings(limit=limit, action=action if isinstance(action, str) else "abort")  # type: ignore[arg-type]


def _read_cache(block: Mapping[str, Any], path: str, problems: r.Problems) -> CacheSettings:
    ttl = r.read_int(block, "cache_ttl", path, problems, minimum=0)
    cache = r.field(block, "cache")
    enabled, key = False, None
    if isinstance(cache, bool):
        enabled = cache
    elif isinstance(cache, Mapping):
        cpath = r.join(path, "cache")
        flag = r.read_bool(cache, "enabled", cpath, problems)
        enabled = flag if isinstance(flag, bool) else True
        inner_ttl = r.read_int(cache, "ttl", cpath, problems, minimum=0)
        if inner_ttl is not r.MISSING:
            ttl = inner_ttl
        found_key = r.read_str(cache, "key", cpath, problems)
        key = found_key if isinstance(found_key, str) else None
    elif cache is not r.MISSING:
        problems.add(
            r.join(path, "cache"), f"expected true, false or an object, got {r.describe(cache)}"
        )
    return CacheSettings(
        enabled=enabled, ttl_seconds=ttl if isinstance(ttl, int) else None, key=key
    )


def _read_delay(block: Mapping[str, Any], path: str, problems: r.Problems) -> str | None:
    delay = r.field(block, "delay")
    if delay is r.MISSING:
        return None
    if isinstance(delay, int | float) and not isinstance(delay, bool):
        if math.isfinite(delay) and 0 <= delay <= r.MAX_NUMBER:
            return format_seconds(delay)
        problems.add(
            r.join(path, "delay"),
            f"a number of seconds must be between 0 and {r.MAX_NUMBER}, got {r.shown(delay)}",
        )
        return None
    text = r.read_str(block, "delay", path, problems)
    return text if isinstance(text, str) else None


def _read_scheduled_for(block: Mapping[str, Any], path: str, problems: r.Problems) -> str | None:
    when = r.field(block, "scheduled_for")
    if isinstance(when, dt.datetime):  # an unquoted YAML timestamp
        return format_datetime(when)
    if isinstance(when, dt.date):
        return when.isoformat()
    text = r.read_str(block, "scheduled_for", path, problems)
    return text if isinstance(text, str) else None


def _read_signal(block: Mapping[str, Any], path: str, problems: r.Problems) -> SignalWait | None:
    signal = r.read_mapping(block, "wait_for_signal", path, problems)
    if not isinstance(signal, Mapping):
        return None
    path = r.join(path, "wait_for_signal")
    name = r.require(
        r.read_str(signal, "event_name", path, problems), r.join(path, "event_name"), problems
    )
    timeout = r.read_float(signal, "timeout_seconds", path, problems)
    action = r.read_choice(signal, "on_timeout", path, problems, _SIGNAL_ACTIONS)
    return SignalWait(
        event_name=name if isinstance(name, str) else "",
        timeout_seconds=timeout if isinstance(timeout, float) else None,
        on_timeout=action if isinstance(action, str) else "fail",  # type: ignore[arg-type]
    )
