"""Typed field readers for the definition loader: read, check, report by path.

Each reader takes the parsed mapping, a field name and the path of the
mapping, and returns the value or :data:`MISSING` (absent or ``null``) or
:data:`BAD` (wrong; already recorded in :class:`Problems`). Nothing is coerced
silently: a string where a number belongs is reported, booleans are not
numbers. :func:`json_value` turns a YAML/JSON value into plain JSON data
(string keys, finite numbers, 64-bit integers, bounded depth and size).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kflow._serde import format_datetime, to_decimal

MISSING: Final = object()
BAD: Final = object()

#: Upper bound for counts and seconds (fits any database integer column).
MAX_NUMBER = 2**31 - 1
#: Upper bound (exclusive) for money amounts.
MAX_MONEY = decimal.Decimal(10**15)
#: Nesting bound for parameters (orjson refuses beyond 254 levels).
MAX_DEPTH = 100
#: Bound on the number of values in one definition's parameters.
MAX_NODES = 1_000_000


class Problems:
    """Collected ``{path: [message, ...]}`` in the order they were found."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        messages = self.errors.setdefault(path or "definition", [])
        if message not in messages:
            messages.append(message)

    def covers(self, path: str) -> bool:
        """Whether ``path`` or an enclosing path already has a problem."""
        return any(path == p or path.startswith((p + ".", p + "[")) for p in self.errors)


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def describe(value: Any) -> str:
    """The JSON kind of ``value`` for messages ("a string", "an array", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | decimal.Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dt.date):
        return "a date"
    return f"a {type(value).__name__} value"


def shown(value: Any) -> str:
    """A short ``repr`` for messages (huge numbers and long text are cut)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field(data: Mapping[str, Any], name: str) -> Any:
    """``data[name]``, with ``null`` and absence both giving :data:`MISSING`."""
    value = data.get(name, MISSING)
    return MISSING if value is None else value


def require(value: Any, path: str, problems: Problems) -> Any:
    if value is MISSING:
        problems.add(path, "is required")
        return BAD
    return value


def read_str(data: Mapping[str, Any], name: str, path: str, problems: Problems) -> Any:
    value = field(data, name)
    if value is MISSING:
        return MISSING
    if not isinstance(value, str):
        problems.add(join(path, name), f"expected a string, got {describe(value)}")
        return BAD
    text = clean_text(value)
    if text is None:
        problems.add(join(path, name), "contains characters that are not valid Unicode")
        return BAD
    return text


def read_bool(data: Mapping[str, Any], name: str, path: str, problems: Problems) -> Any:
    value = field(data, name)
    if value is MISSING or isinstance(value, bool):
        return value
    problems.add(join(path, name), f"expected true or false, got {describe(value)}")
    return BAD


def read_choice(
    data: Mapping[str, Any],
    name: str,
    path: str,
    problems: Problems,
    choices: Mapping[str, str],
) -> Any:
    """A string from ``choices`` (a mapping of accepted spellings to the canonical one)."""
    value = read_str(data, name, path, problems)
    if value is MISSING or value is BAD:
        return value
    if value not in choices:
        allowed = ", ".join(sorted(set(choices.values())))
        problems.add(join(path, name), f"must be one of {allowed}, got {shown(value)}")
        return BAD
    return choices[value]


def read_int(
    data: Mapping[str, Any], name: str, path: str, problems: Problems, *, minimum: int
) -> Any:
    """An integer ``>= minimum`` (integral floats accepted)."""
    value = field(data, name)
    if value is MISSING:
        return MISSING
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(join(path, name), f"expected {kind}, got {describe(value)}")
        return BAD
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        problems.add(join(path, name), f"expected {kind}, got {shown(value)}")
        return BAD
    number = int(value)
    if number < minimum or number > MAX_NUMBER:
        problems.add(join(path, name), f"expected {kind} up to {MAX_NUMBER}, got {shown(value)}")
        return BAD
    return number


def read_float(
    data: Mapping[str, Any],
    name: str,
    path: str,
    problems: Problems,
    *,
    minimum: float = 0.0,
    inclusive: bool = False,
) -> Any:
    """A finite number ``> minimum`` (``>=`` when ``inclusive``), as a float."""
    value = field(data, name)
    if value is MISSING:
        return MISSING
    if inclusive:
        kind = "a number >= 1" if minimum == 1 else f"a number >= {minimum:g}"
    else:
        kind = "a positive number" if minimum == 0 else f"a number > {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(join(path, name), f"expected {kind}, got {describe(value)}")
        return BAD
    number = float(value) if abs(value) <= MAX_NUMBER else math.inf
    ok = number >= minimum if inclusive else number > minimum
    if not ok or number > MAX_NUMBER:
        problems.add(join(path, name), f"expected {kind} up to {MAX_NUMBER}, got {shown(value)}")
        return BAD
    return number


def read_decimal(data: Mapping[str, Any], name: str, path: str, problems: Problems) -> Any:
    """A decimal ``>= 0`` from a string or a number (money)."""
    value = field(data, name)
    if value is MISSING:
        return MISSING
    try:
        number = to_decimal(value)
    except (ValueError, ArithmeticError):
        problems.add(join(path, name), f"expected a decimal number >= 0, got {describe(value)}")
        return BAD
    if number < 0:
        problems.add(join(path, name), f"expected a decimal number >= 0, got {shown(value)}")
        return BAD
    if number >= MAX_MONEY or int(number.as_tuple().exponent) < -18:
        problems.add(
            join(path, name), f"expected at most {MAX_MONEY} with at most 18 decimal places"
        )
        return BAD
    return number


def read_mapping(data: Mapping[str, Any], name: str, path: str, problems: Problems) -> Any:
    value = field(data, name)
    if value is MISSING or isinstance(value, Mapping):
        return value
    problems.add(join(path, name), f"expected an object, got {describe(value)}")
    return BAD


def as_list(value: Any, path: str, problems: Problems) -> Sequence[Any] | None:
    """``value`` if it is a list (``None`` and a recorded problem otherwise)."""
    if isinstance(value, list | tuple):
        return value
    problems.add(path, f"expected an array, got {describe(value)}")
    return None


def json_value(value: Any, path: str, problems: Problems) -> Any:
    """A copy of ``value`` as plain JSON data; problems are recorded at their path.

    YAML dates and times become ISO 8601 strings and integer keys become
    strings; anything else JSON cannot carry is reported.
    """
    budget = [MAX_NODES]
    return _json(value, path, problems, 0, budget)


def _json(value: Any, path: str, problems: Problems, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        if budget[0] == -1:
            problems.add(path, f"too large: more than {MAX_NODES} values")
        return None
    if depth > MAX_DEPTH:
        problems.add(path, f"nested more than {MAX_DEPTH} levels deep")
        return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return value
        problems.add(path, "integer out of range (must fit in 64 bits)")
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        problems.add(path, f"expected a finite number, got {shown(value)}")
        return None
    if isinstance(value, str):
        text = clean_text(value)
        if text is None:
            problems.add(path, "contains characters that are not valid Unicode")
        return text
    if isinstance(value, dt.datetime):
        return format_datetime(value) if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _json_key(key, path, problems)
            if name is not None:
                out[name] = _json(item, join(path, name), problems, depth + 1, budget)
        return out
    if isinstance(value, list | tuple):
        return [
            _json(item, f"{path}[{i}]", problems, depth + 1, budget) for i, item in enumerate(value)
        ]
    problems.add(path, f"{describe(value)} cannot be carried in JSON")
    return None


def _json_key(key: Any, path: str, problems: Problems) -> str | None:
    if isinstance(key, str) and clean_text(key) is not None:
        return clean_text(key)
    if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() <= 64:
        return str(key)
    problems.add(path, f"object keys must be strings, got {describe(key)} ({shown(key)})")
    return None


def clean_text(text: str) -> str | None:
    """``text`` as a plain str with surrogate pairs joined; ``None`` if it is not valid Unicode.

    PyYAML reads the JSON escape ``"\\ud83d\\ude00"`` as two lone surrogates
    instead of one character; they are joined here.
    """
    text = str.__str__(text)  # a plain str, also from str subclasses and str enums
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeError:
            return None
    return text
