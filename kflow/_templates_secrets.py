"""Secrets in templates: names at render time, values only on the way out.

``SECRET.NAME`` renders to an opaque sentinel, so resolved parameters stored
in the database never hold a secret; :func:`reveal_secrets` swaps the values
in when the parameters are handed to a worker. Public names are re-exported
by :mod:`kflow.templates`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kflow.errors import TemplateError

#: Delimited by U+0001, a control character: JSON writes it escaped (``\u0001``),
#: so a sentinel inside ``tojson`` output is told from a plain one, and
#: PostgreSQL's ``jsonb`` stores it (it refuses NUL, which delimited the
#: sentinels of earlier builds — still revealed: parameters a SQLite database
#: stored then may wait for dispatch).
_SENTINEL = "\x01kflow-secret:{}\x01"
_SENTINEL_PATTERN = re.compile(
    r"\x01kflow-secret:(?P<raw>[^\x01]+)\x01"
    r"|\\u0001kflow-secret:(?P<json>[^\\]+)\\u0001"
    # as earlier builds wrote them
    r"|\x00kflow-secret:(?P<raw_nul>[^\x00]+)\x00"
    r"|\\u0000kflow-secret:(?P<json_nul>[^\\]+)\\u0000"
)


class SecretNamespace:
    """The ``SECRET`` entry of a template context: knows secret names, never values.

    ``SECRET.NAME`` and ``SECRET['NAME']`` give the sentinel
    ``"\\x01kflow-secret:NAME\\x01"``, which :func:`reveal_secrets` replaces by the
    value later. An unknown name raises :class:`TemplateError` (``undefined
    secret 'NAME'``), which fails the render.
    """

    __slots__ = ("_names",)

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> str:
        if name not in self._names:
            raise TemplateError(f"undefined secret {name!r}")
        return _SENTINEL.format(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __repr__(self) -> str:
        return f"SecretNamespace({sorted(self._names)!r})"


def reveal_secrets(value: Any, secrets: Mapping[str, str]) -> Any:
    """Replace every secret sentinel in the strings of ``value`` by the secret.

    Walks dicts and lists (tuples become lists) and returns a new value; both
    whole and embedded sentinels are replaced, also in their JSON-escaped form
    (as written by ``tojson``). Raises :class:`TemplateError` if a sentinel
    names a secret missing from ``secrets``.
    """
    if isinstance(value, str):
        if "kflow-secret:" not in value:
            return value
        return _SENTINEL_PATTERN.sub(lambda m: _secret_for(m, secrets), value)
    if isinstance(value, Mapping):
        return {k: reveal_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [reveal_secrets(v, secrets) for v in value]
    return value


def _secret_for(match: re.Match[str], secrets: Mapping[str, str]) -> str:
    raw = match.group("raw") or match.group("raw_nul")
    name = raw if raw is not None else (match.group("json") or match.group("json_nul"))
    try:
        secret = secrets[name]
    except KeyError as exc:
        raise TemplateError(f"undefined secret {name!r}") from exc
    return secret if raw is not None else json.dumps(secret, ensure_ascii=False)[1:-1]
