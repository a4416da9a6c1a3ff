"""The one cattrs converter: kflow's wire format for attrs value objects.

Datetimes travel as RFC 3339 UTC strings with ``Z`` and microseconds, money
as decimal strings (never binary floats), UUIDs as lowercase strings. JSON
bytes are produced and parsed by orjson.

:func:`structure` turns a parsed request body into an attrs object and, when
it does not fit, raises :class:`~kflow.errors.ValidationFailed` whose
``field_errors`` name each offending field (``max_activities``,
``error.code``, ``usage[1].cost_usd``). The converter is built on first use:
processes that only move JSON (a worker) never load cattrs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from kflow.errors import InvalidInputError, ValidationFailed

if TYPE_CHECKING:
    import cattrs

T = TypeVar("T")


def format_datetime(value: dt.datetime) -> str:
    """RFC 3339 in UTC with ``Z`` and microseconds (``2026-01-02T03:04:05.000006Z``)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    elif value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    # isoformat is C and about twice as fast as strftime; it ends in "+00:00" here.
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_datetime(value: str) -> dt.datetime:
    """Parse an RFC 3339 / ISO 8601 timestamp; naive times are taken as UTC.

    Raises:
        ValueError: the text is not a timestamp.
    """
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def to_decimal(value: Any) -> decimal.Decimal:
    """Money from a decimal string (``"0.015"``, ``"1E-7"``) or a JSON number.

    Floats go through their shortest repr so ``0.1`` becomes ``Decimal("0.1")``.

    Raises:
        ValueError: not a finite number.
    """
    if isinstance(value, bool):
        raise ValueError("expected a decimal number, got a boolean")
    if isinstance(value, decimal.Decimal):
        result = value
    elif isinstance(value, int):
        result = decimal.Decimal(value)
    elif isinstance(value, float):
        result = decimal.Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise ValueError(f"expected a decimal number, got {value!r}") from None
    else:
        raise ValueError(f"expected a decimal number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"expected a finite decimal number, got {value!r}")
    return result


def format_decimal(value: decimal.Decimal) -> str:
    """Plain (non-exponent) decimal string, trailing zeros kept as stored."""
    return format(value, "f")


def _structure_datetime(value: Any, _: type) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string")
    return parse_datetime(value)


def _structure_uuid(value: Any, _: type) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a UUID string")
    return uuid.UUID(value)


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_json_type(value)}")
    return value


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected an integer, got {_json_type(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    return value


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_json_type(value)}")
    return float(value)


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@functools.cache
def converter() -> cattrs.Converter:
    """The converter (made once, on first use)."""
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_unstructure_hook(dt.datetime, format_datetime)
    conv.register_structure_hook(dt.datetime, _structure_datetime)
    conv.register_unstructure_hook(decimal.Decimal, format_decimal)
    conv.register_structure_hook(decimal.Decimal, lambda v, _: to_decimal(v))
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_structure_hook(uuid.UUID, _structure_uuid)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    return conv


def _flatten(exc: BaseException, path: str, out: dict[str, list[str]]) -> None:
    import cattrs
    from cattrs.errors import (
        ClassValidationError,
        ForbiddenExtraKeysError,
        IterableValidationError,
    )

    if isinstance(exc, ClassValidationError):
        with_attr_notes, others = exc.group_exceptions()
        for attr_exc, attr_note in with_attr_notes:
            _flatten(attr_exc, _join(path, attr_note.name), out)
        for other in others:
            _flatten(other, path, out)
    elif isinstance(exc, IterableValidationError):
        with_item_notes, others = exc.group_exceptions()
        for item_exc, item_note in with_item_notes:
            _flatten(item_exc, f"{path}[{item_note.index}]", out)
        for other in others:
            _flatten(other, path, out)
    elif isinstance(exc, cattrs.BaseValidationError):
        for sub in exc.exceptions:
            _flatten(sub, path, out)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            out.setdefault(_join(path, key), []).append("unknown field")
    elif isinstance(exc, KeyError):
        out.setdefault(path or "body", []).append("is required")
    else:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, TypeError) and "missing" in message:
            message = "is required"
        out.setdefault(path or "body", []).append(message)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def field_errors_of(exc: BaseException) -> dict[str, list[str]]:
    """Flatten a cattrs validation error into ``{"a.b[0]": ["message"]}``."""
    out: dict[str, list[str]] = {}
    _flatten(exc, "", out)
    return out


def structure(data: Any, cls: type[T], *, what: str = "request body") -> T:
    """Build ``cls`` from parsed JSON; raise a field-naming error if it does not fit.

    Raises:
        ValidationFailed: ``data`` is not an object, or a field is missing or
            of the wrong type; ``field_errors`` names each field.
    """
    if not isinstance(data, Mapping):
        raise ValidationFailed(
            f"{what} must be a JSON object",
            {"body": [f"expected an object, got {_json_type(data)}"]},
        )
    import cattrs

    try:
        return converter().structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        errors = field_errors_of(exc)
        summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items())
        raise ValidationFailed(f"invalid {what}: {summary}", errors) from exc


def unstructure(value: Any) -> Any:
    """attrs objects (and containers of them) to JSON-ready builtins."""
    return converter().unstructure(value)


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return format_decimal(value)
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_DUMP_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """JSON bytes (orjson); Decimals become strings, datetimes RFC 3339 with Z.

    Raises:
        TypeError: a value has no JSON form.
    """
    return orjson.dumps(value, default=_default, option=_DUMP_OPTS)


def dumps_str(value: Any) -> str:
    """Like :func:`dumps` but returns text (for TEXT columns)."""
    return dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text or bytes.

    Raises:
        InvalidInputError: the text is not JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"invalid JSON: {exc}") from exc
