"""The workflow definition as frozen attrs value objects (PROTOCOL §4).

These classes are the *validated, normalized* form: defaults are filled in,
``dependency_of`` has been folded into ``depends_on``, SDK spellings have been
translated, and back-edges of loops are marked. Build them with
:func:`kflow.model.loader.load_definition`, never by hand from user input.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from kflow._types import OutputType

#: Identifier rule for names and keys (the reference SDK rejects anything else).
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]+$"

#: Template root names; an activity key may not shadow them.
RESERVED_NAMES = frozenset({"INPUT", "SECRET", "WORKFLOW", "ACTIVITY", "SIGNAL"})

DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_ITERATION_LIMIT = 100

RetryStrategy = Literal["exponential", "fixed"]
BudgetAction = Literal["abort", "continue"]
SignalTimeoutAction = Literal["fail", "continue", "skip"]


@attrs.frozen(kw_only=True)
class OutputDefinition:
    """A declared output of an activity."""

    name: str
    type: OutputType = OutputType.VALUE


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how soon a failed (retryable) attempt is tried again.

    ``max_attempts`` counts every attempt including the first. The delay
    before attempt ``n + 1`` is ``min(base * factor ** (n - 1), max_seconds)``
    for ``exponential``, ``min(base, max_seconds)`` for ``fixed``.
    """

    max_attempts: int = 1
    strategy: RetryStrategy = "exponential"
    base_seconds: float = 2.0
    factor: float = 2.0
    max_seconds: float = 300.0

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if self.strategy == "fixed":
            return min(self.base_seconds, self.max_seconds)
        try:
            delay = self.base_seconds * self.factor ** (attempt - 1)
        except OverflowError:  # a huge factor or many attempts: the cap applies
            return self.max_seconds
        return min(delay, self.max_seconds)

    def allows_another(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` (1-based, just failed) may be followed by one more."""
        return attempt < self.max_attempts


#: No ``retry`` block: 3 retries (4 attempts) with backoff 2, 4, 8 s.
DEFAULT_RETRY = RetryPolicy(max_attempts=4)


@attrs.frozen(kw_only=True)
class BudgetSettings:
    """A spending limit in USD and what happens when an estimate does not fit."""

    limit: decimal.Decimal
    action: BudgetAction = "abort"


@attrs.frozen(kw_only=True)
class CacheSettings:
    """Result cache of an activity (``settings.cache`` / ``cache_ttl``)."""

    enabled: bool = False
    ttl_seconds: int | None = None
    key: str | None = None


@attrs.frozen(kw_only=True)
class SignalWait:
    """``wait_for_signal``: hold the activity until a named signal arrives."""

    event_name: str
    timeout_seconds: float | None = None
    on_timeout: SignalTimeoutAction = "fail"


@attrs.frozen(kw_only=True)
class ActivitySettings:
    """Per-activity settings with defaults applied.

    ``delay`` and ``scheduled_for`` are kept as text because they may contain
    templates; they are resolved when the activity becomes ready.
    """

    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    retry: RetryPolicy = DEFAULT_RETRY
    budget: BudgetSettings | None = None
    cache: CacheSettings = CacheSettings()
    delay: str | None = None
    scheduled_for: str | None = None
    wait_for_signal: SignalWait | None = None


@attrs.frozen(kw_only=True)
class Dependency:
    """An edge ``activity_key -> (the activity that declares it)``.

    ``conditions`` are template expressions that must all be truthy for the
    edge to apply. ``is_back_edge`` marks the edge that closes a loop; it is
    computed by validation and never taken from user input.
    """

    activity_key: str
    conditions: tuple[str, ...] = ()
    is_back_edge: bool = False

    @property
    def is_conditional(self) -> bool:
        return bool(self.conditions)


@attrs.frozen(kw_only=True)
class ActivityDefinition:
    """One activity of a workflow definition."""

    key: str
    activity_name: str
    worker: str = "std"
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    depends_on: tuple[Dependency, ...] = ()
    outputs: tuple[OutputDefinition, ...] = ()
    settings: ActivitySettings = ActivitySettings()
    iteration_scoped: bool = False
    #: Bound on the number of runs when the activity is the target of a loop
    #: (None: not given; :attr:`max_iterations` applies the default).
    iteration_limit: int | None = None
    #: True when the activity lies on a cycle (computed by validation).
    is_loop_activity: bool = False

    @property
    def max_iterations(self) -> int:
        """The effective bound on runs of this activity as a loop target."""
        return DEFAULT_ITERATION_LIMIT if self.iteration_limit is None else self.iteration_limit


@attrs.frozen(kw_only=True)
class WorkflowSettings:
    """Workflow-wide settings."""

    timeout_seconds: float | None = None
    budget: BudgetSettings | None = None


@attrs.frozen(kw_only=True)
class WorkflowDefinition:
    """A validated workflow definition. Activities keep their declared order."""

    name: str
    activities: tuple[ActivityDefinition, ...]
    settings: WorkflowSettings = WorkflowSettings()
    description: str | None = None

    def activity(self, key: str) -> ActivityDefinition:
        """The activity with ``key``.

        Raises:
            KeyError: no activity has that key.
        """
        for act in self.activities:
            if act.key == key:
                return act
        raise KeyError(key)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(a.key for a in self.activities)
