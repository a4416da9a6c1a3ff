"""Parameters of ``postgres_query`` / ``postgres_transaction``: validation and masking.

Pure Python (no psycopg import). The contract is documented in
:mod:`kflow.activities.postgres`; every rejection is an ``ActivityError``
with code ``INVALID_PARAMETERS`` (not retryable) that names the field and
never contains the password of ``db_url``.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import attrs

from kflow.errors import ActivityError

DEFAULT_MAX_ROWS = 10_000
ISOLATION_LEVELS = ("read_committed", "repeatable_read", "serializable")

_SCHEMES = ("postgresql", "postgres")
_PSYCOPG_PLACEHOLDER = re.compile(r"%[sbt(]")
_DOLLAR_PLACEHOLDER = re.compile(r"\$[0-9]")
_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*", re.IGNORECASE)


def _invalid(field: str, why: str) -> ActivityError:
    return ActivityError(
        f"invalid parameter {field!r}: {why}", code="INVALID_PARAMETERS", retryable=False
    )


def mask_db_url(url: str) -> str:
    """``url`` with the password of its user info and any ``password=`` replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        userinfo = f"{user}:***" if colon and password else user
    netloc = f"{userinfo}{at}{hostport}"
    query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(parts: urllib.parse.SplitResult) -> tuple[str, ...]:
    raw = [parts.netloc.rpartition("@")[0].partition(":")[2]]
    raw += [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(parts.query)]
    found = {s for r in raw if r for s in (r, urllib.parse.unquote(r))}
    return tuple(sorted(found, key=len, reverse=True))


@attrs.frozen(kw_only=True)
class DbTarget:
    """A validated ``db_url``; ``masked`` is the form for messages and logs."""

    url: str = attrs.field(repr=False)
    masked: str
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the password replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def parse_db_url(value: Any) -> DbTarget:
    """Validate ``db_url`` (a ``postgresql://`` or ``postgres://`` URL).

    Raises:
        ActivityError: ``INVALID_PARAMETERS``; the message never holds the password.
    """
    if not isinstance(value, str) or not value.strip():
        raise _invalid("db_url", "a non-empty postgresql:// URL is required")
    url = value.strip()
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise _invalid("db_url", "not a valid URL") from None
    if parts.scheme.lower() not in _SCHEMES:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise _invalid("db_url", f"{shown}; a postgresql:// or postgres:// URL is required")
    return DbTarget(url=url, masked=mask_db_url(url), secrets=_secrets(parts))


@attrs.frozen(kw_only=True)
class Statement:
    """One SQL statement and its bound parameters; ``field`` names it in messages."""

    query: str
    params: list[Any] | dict[str, Any] | None = None
    field: str = ""

    @property
    def params_field(self) -> str:
        return f"{self.field}.params" if self.field else "params"

    @property
    def dollar_style(self) -> bool:
        """PostgreSQL's ``$1`` placeholders (sent untouched) rather than psycopg's ``%s``."""
        return (
            isinstance(self.params, list)
            and bool(_DOLLAR_PLACEHOLDER.search(self.query))
            and not _PSYCOPG_PLACEHOLDER.search(self.query)
        )


def parse_statement(query: Any, params: Any, field: str = "") -> Statement:
    """Validate one statement. Raises ActivityError ``INVALID_PARAMETERS`` naming the field."""
    query_field = f"{field}.query" if field else "query"
    params_field = f"{field}.params" if field else "params"
    if not isinstance(query, str) or not query.strip():
        raise _invalid(query_field, "a non-empty SQL string is required")
    if "\0" in query:
        raise _invalid(query_field, "NUL characters are not allowed")
    if isinstance(params, tuple):
        params = list(params)
    if isinstance(params, dict) and not all(isinstance(k, str) for k in params):
        raise _invalid(params_field, "the names of named parameters must be strings")
    if params is not None and not isinstance(params, list | dict):
        raise _invalid(
            params_field,
            "a list (positional %s or $1 placeholders) or an object "
            f"(named %(name)s placeholders) is required, not "
            f"{type(params).__name__}",
        )
    return Statement(query=query, params=params or None, field=field)


def _max_rows(params: dict[str, Any], default: int) -> int:
    value = params.get("max_rows")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid("max_rows", "a positive integer is required")
    return value


@attrs.frozen(kw_only=True)
class PostgresRequest:
    """Validated parameters of one attempt of either activity."""

    target: DbTarget
    statements: tuple[Statement, ...]
    max_rows: int
    isolation_level: str | None = None


def parse_query_params(
    params: dict[str, Any], *, default_max_rows: int = DEFAULT_MAX_ROWS
) -> PostgresRequest:
    """Validate ``postgres_query`` parameters. Raises ActivityError ``INVALID_PARAMETERS``."""
    target = parse_db_url(params.get("db_url"))
    statement = parse_statement(params.get("query"), params.get("params"))
    return PostgresRequest(
        target=target, statements=(statement,), max_rows=_max_rows(params, default_max_rows)
    )


def parse_transaction_params(
    params: dict[str, Any], *, default_max_rows: int = DEFAULT_MAX_ROWS
) -> PostgresRequest:
    """Validate ``postgres_transaction`` parameters. Raises ActivityError ``INVALID_PARAMETERS``."""
    target = parse_db_url(params.get("db_url"))
    raw = params.get("statements")
    if not isinstance(raw, list | tuple) or not raw:
        raise _invalid(
            "statements", "a non-empty list of {query, params?} objects or SQL strings is required"
        )
    statements: list[Statement] = []
    for i, item in enumerate(raw):
        field = f"statements[{i}]"
        if isinstance(item, str):
            statements.append(parse_statement(item, None, field))
        elif isinstance(item, dict):
            statements.append(parse_statement(item.get("query"), item.get("params"), field))
        else:
            raise _invalid(field, "a {query, params?} object or an SQL string is required")
    level = params.get("isolation_level")
    if level is not None:
        if not isinstance(level, str) or level.strip().lower() not in ISOLATION_LEVELS:
            raise _invalid(
                "isolation_level", f"{level!r} is not one of {', '.join(ISOLATION_LEVELS)}"
            )
        level = level.strip().lower()
    return PostgresRequest(
        target=target,
        statements=tuple(statements),
        max_rows=_max_rows(params, default_max_rows),
        isolation_level=level,
    )
