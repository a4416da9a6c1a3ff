"""What an activity is and what it returns: ``Activity``, ``@activity``, ``ActivityResult``.

An activity is an object with a ``name`` and an ``async execute(params, ctx)``
that returns an :class:`ActivityResult` (a plain mapping is accepted too and
taken as ``{output_name: value}``). Stateful activities subclass
:class:`Activity` and receive their configuration in ``__init__``; simple ones
are async functions wrapped by :func:`activity`.

Raising :class:`kflow.errors.ActivityError` fails the attempt with its code and
retry flag; any other exception fails it as ``EXECUTION_ERROR`` (retryable).
"""

from __future__ import annotations

import abc
import decimal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from kflow._serde import to_decimal
from kflow._types import OutputType

if TYPE_CHECKING:
    from kflow.worker.context import ActivityContext


@attrs.frozen(kw_only=True)
class ActivityOutput:
    """One named output. ``value`` is JSON-ready data, or a file reference for files."""

    name: str
    value: Any
    output_type: OutputType = OutputType.VALUE


def _opt_decimal(value: Any) -> decimal.Decimal | None:
    return None if value is None else to_decimal(value)


@attrs.frozen(kw_only=True)
class Usage:
    """Tokens one model call used and, when known, what it cost (USD)."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: decimal.Decimal | None = attrs.field(default=None, converter=_opt_decimal)
    #: How many of ``output_tokens`` were reasoning (already counted there).
    reasoning_tokens: int = 0
    #: Why this model was used when a budget decided it (``downgrade``, ``budget_exceeded``).
    budget_event: str | None = None


@attrs.frozen(kw_only=True)
class Failure:
    """Why an attempt failed: a stable code, a message and whether to retry."""

    code: str = "EXECUTION_ERROR"
    message: str = ""
    retryable: bool = True


@attrs.frozen(kw_only=True)
class ActivityResult:
    """The outcome of one attempt: outputs and cost, or a failure.

    Build it with :meth:`value`, :meth:`values` or :meth:`error`; add cost with
    :meth:`with_cost`. Instances are immutable; the ``with_*`` methods return
    a changed copy, so chaining reads the same as with the reference SDK.
    """

    outputs: tuple[ActivityOutput, ...] = ()
    cost_usd: decimal.Decimal | None = attrs.field(default=None, converter=_opt_decimal)
    usage: tuple[Usage, ...] = ()
    metadata: Mapping[str, Any] | None = None
    failure: Failure | None = None

    @classmethod
    def value(cls, name: str, value: Any) -> ActivityResult:
        """A result with a single value output."""
        return cls(outputs=(ActivityOutput(name=name, value=value),))

    @classmethod
    def values(cls, outputs: Sequence[ActivityOutput] | Mapping[str, Any]) -> ActivityResult:
        """A result with several outputs (a list of outputs or a name→value mapping)."""
        if isinstance(outputs, Mapping):
            items = tuple(ActivityOutput(name=k, value=v) for k, v in outputs.items())
        else:
            items = tuple(outputs)
        return cls(outputs=items)

    @classmethod
    def file(cls, name: str, reference: str) -> ActivityResult:
        """A result whose output is a stored file (see ``ctx.upload_file``)."""
        output = ActivityOutput(name=name, value=reference, output_type=OutputType.FILE)
        return cls(outputs=(output,))

    @classmethod
    def error(
        cls, message: str, code: str = "EXECUTION_ERROR", retryable: bool = True
    ) -> ActivityResult:
        """A failed attempt with a code; ``retryable=False`` stops further attempts."""
        return cls(failure=Failure(code=code, message=message, retryable=retryable))

    def with_cost(self, cost_usd: decimal.Decimal | str | float | int) -> ActivityResult:
        """A copy with the attempt's cost in USD (the part ``usage`` does not cover)."""
        return attrs.evolve(self, cost_usd=to_decimal(cost_usd))

    def with_usage(self, *usage: Usage) -> ActivityResult:
        """A copy with model usage entries added."""
        return attrs.evolve(self, usage=self.usage + tuple(usage))

    def with_metadata(self, metadata: Mapping[str, Any]) -> ActivityResult:
        """A copy with free-form metadata (kept in worker logs)."""
        return attrs.evolve(self, metadata=dict(metadata))

    @property
    def is_error(self) -> bool:
        return self.failure is not None

    @property
    def error_message(self) -> str | None:
        return None if self.failure is None else self.failure.message

    @property
    def error_code(self) -> str | None:
        return None if self.failure is None else self.failure.code

    @property
    def retryable(self) -> bool:
        return True if self.failure is None else self.failure.retryable

    def to_output_dict(self) -> dict[str, Any]:
        """Outputs as the ``output`` object of the complete call (name → value)."""
        return {out.name: out.value for out in self.outputs}


class Activity(abc.ABC):
    """Base class for activities.

    Subclasses set ``name`` (class attribute or property) and implement
    :meth:`execute`. Configuration (clients, models, paths) goes into
    ``__init__``; one instance serves every attempt, concurrently, so keep
    per-attempt state in local variables.
    """

    name: str

    @abc.abstractmethod
    async def execute(
        self, params: dict[str, Any], ctx: ActivityContext
    ) -> ActivityResult | Mapping[str, Any]:
        """Run one attempt.

        Raises:
            kflow.errors.ActivityError: fail with a code and retry flag.
            Exception: anything else fails the attempt as ``EXECUTION_ERROR``.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')!r}>"


ActivityHandler = Callable[[dict[str, Any], "ActivityContext"], Awaitable[Any]]


class FunctionActivity(Activity):
    """An :class:`Activity` made from an async function by :func:`activity`."""

    def __init__(self, name: str, func: ActivityHandler) -> None:
        self.name = name
        self.func = func
        self.__doc__ = func.__doc__

    async def execute(
        self, params: dict[str, Any], ctx: ActivityContext
    ) -> ActivityResult | Mapping[str, Any]:
        result: ActivityResult | Mapping[str, Any] = await self.func(params, ctx)
        return result


def activity(name: str | None = None) -> Callable[[ActivityHandler], Activity]:
    """Decorator: turn ``async def fn(params, ctx)`` into an :class:`Activity`.

    The name defaults to the function's name.

    Raises:
        ValueError: the name is not an identifier (``^[A-Za-z0-9_-]+$``).
    """
    from kflow.worker.registry import check_identifier

    def decorator(func: ActivityHandler) -> Activity:
        activity_name: str = name or str(getattr(func, "__name__", ""))
        check_identifier(activity_name, what="activity name")
        return FunctionActivity(activity_name, func)

    return decorator
