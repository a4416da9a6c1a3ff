"""Sandboxed Jinja2 rendering of workflow parameters and dependency conditions.

The dialect is the reference engine's (MiniJinja), run by one shared
:class:`jinja2.sandbox.SandboxedEnvironment`:

- A string that is exactly one ``{{ expr }}`` is evaluated as an expression and
  keeps its native type (int, bool, list, dict, None, ...). Any other string
  with ``{{`` or ``{%`` renders to a string; strings without template syntax are
  returned untouched without any Jinja work.
- Undefined is strict: a missing name, key or attribute is a
  :class:`~kflow.errors.TemplateError` that names the template and the path,
  never an empty string. Chains such as ``INPUT.a.b`` stay inspectable by
  ``coalesce``, ``default`` and ``is defined``, and fail on any other use.
- On dicts, ``.name`` looks up the key before the dict's methods (MiniJinja
  semantics), so an output called ``items`` or ``values`` is reachable.
- Filters: Jinja's standard set plus ``coalesce(default)``, ``tojson`` (plain
  JSON, not HTML-escaped) and ``fromjson``. ``null`` is ``none`` (the SDK writes it).
- Conditions written by the ``kruxiaflow`` SDK (``&&``, ``||``, ``!``,
  ``'succeeded'``) are translated by :func:`normalize_sdk_expression`.
- ``SECRET.NAME`` renders to an opaque sentinel (see :class:`SecretNamespace`);
  :func:`reveal_secrets` swaps in the values when parameters leave the server,
  so resolved parameters at rest hold no secret. Secrets are opaque inside
  templates: filters that change the sentinel (``upper``, slicing) break it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, NoReturn

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from kflow._templates_secrets import SecretNamespace, reveal_secrets
from kflow.errors import TemplateError

_CACHE_SIZE = 2048
_SHOWN_SOURCE_CHARS = 200
_FALSE_STRINGS = frozenset({"", "false", "0", "none", "null", "no"})
_SYNTAX = re.compile(r"\{[{%#]")
_WHOLE_EXPRESSION = re.compile(r"\s*\{\{(?P<expr>.*)\}\}\s*", re.DOTALL)
_SDK_TOKEN = re.compile(
    r"""(?P<literal>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|&&|\|\||!(?!=)""", re.DOTALL
)
_SDK_OPERATORS = {"&&": " and ", "||": " or ", "!": " not "}

Renderer = Callable[[Mapping[str, Any]], Any]


def has_template(value: Any) -> bool:
    """True if any string inside ``value`` (dict values, list items) has ``{{`` or ``{%``."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_template(v) for v in value)
    return False


def normalize_sdk_expression(text: str) -> str:
    """Translate the SDK's condition spellings to Jinja, outside string literals.

    ``&&`` → `` and ``, ``||`` → `` or ``, ``!`` (not ``!=``) → `` not ``, and the
    whole literal ``'succeeded'`` / ``"succeeded"`` → ``'completed'``. Jinja-native
    text is returned unchanged, so normalizing twice equals normalizing once.
    """
    if "succeeded" not in text and "&" not in text and "|" not in text and "!" not in text:
        return text
    return _SDK_TOKEN.sub(_translate_sdk_token, text)


def _translate_sdk_token(match: re.Match[str]) -> str:
    token = match.group()
    if match.group("literal") is None:
        return _SDK_OPERATORS[token]
    if token[1:-1] == "succeeded":
        return f"{token[0]}completed{token[0]}"
    return token


class _Undefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """Strict on use (print, compare, iterate, test, return); chainable on access,
    so ``INPUT.a.b | coalesce(1)`` works and the error names the first missing part."""

    __slots__ = ()


#: Largest string or list a template may build with ``*`` (items or characters).
MAX_REPEAT = 1_000_000
#: Largest integer exponent a template may use with ``**`` (on integers above 1).
MAX_EXPONENT = 1024


class _Environment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse ``*`` and ``**`` whose result would exhaust memory or time."""
        if (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right > MAX_EXPONENT
        ):
            raise SecurityError(f"the exponent {right} is above the limit of {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_REPEAT
                ):
                    raise SecurityError(
                        f"repeating a sequence would build more than {MAX_REPEAT} items"
                    )
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):  # keys before methods: ``{{ search.items }}`` is the output
            return self.getitem(obj, attribute)
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # Raise at once, so ``coalesce``/``default`` cannot hide a sandbox violation.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _fail_undefined(value: jinja2.Undefined) -> NoReturn:
    value._fail_with_undefined_error()
    raise AssertionError("unreachable")  # pragma: no cover


def _coalesce(value: Any, default: Any = None) -> Any:
    return default if value is None or isinstance(value, jinja2.Undefined) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        _fail_undefined(value)
    if isinstance(value, Iterator | range | KeysView | ValuesView | set | frozenset):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, default=_json_default)


def _fromjson(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        _fail_undefined(value)
    return json.loads(value)


def _native(result: Any) -> Any:
    """Plain data from an expression's result; an undefined (one level deep) fails."""
    if isinstance(result, jinja2.Undefined):
        _fail_undefined(result)
    if isinstance(result, str):
        return result if type(result) is str else str(result)  # Markup → str
    if isinstance(result, tuple | Iterator | range | KeysView | ValuesView | ItemsView):
        result = list(result)
    if isinstance(result, dict | list):
        for item in result.values() if isinstance(result, dict) else result:
            if isinstance(item, jinja2.Undefined):
                _fail_undefined(item)
    return result


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TemplateError):
        return exc.message
    if isinstance(exc, jinja2.TemplateSyntaxError):
        line = f" (line {exc.lineno})" if exc.lineno > 1 else ""
        return f"syntax error: {exc.message}{line}"
    if isinstance(exc, SecurityError):
        return f"not allowed in the sandbox: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _located(path: str, source: str, message: str) -> str:
    shown = source if len(source) <= _SHOWN_SOURCE_CHARS else source[:_SHOWN_SOURCE_CHARS] + "…"
    return f"{path + ': ' if path else ''}{message} in '{shown}'"


class TemplateEngine:
    """Renders templates in one shared sandbox, caching compiled sources (LRU)."""

    def __init__(self) -> None:
        env = _Environment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
        env.filters.update(coalesce=_coalesce, tojson=_tojson, fromjson=_fromjson)
        env.globals["null"] = None
        self._env = env
        self._expression: Callable[[str], Renderer] = functools.lru_cache(_CACHE_SIZE)(
            self._build_expression
        )
        self._template: Callable[[str], Renderer] = functools.lru_cache(_CACHE_SIZE)(
            self._build_template
        )

    def _build_expression(self, expr: str) -> Renderer:
        return self._env.compile_expression(expr, undefined_to_none=False)

    def _build_template(self, text: str) -> Renderer:
        match = _WHOLE_EXPRESSION.fullmatch(text)
        if match and not _SYNTAX.search(match["expr"]):
            expr = match["expr"].removeprefix("-").removesuffix("-")  # {{- x -}}
            return self._expression(expr)
        return self._env.from_string(text).render

    def render(self, value: Any, context: Mapping[str, Any], *, path: str = "") -> Any:
        """Resolve every template in ``value`` (dict values and list items, recursively).

        Dict keys are not templated; tuples become lists; other values pass
        through. ``path`` (e.g. ``parameters``) qualifies error messages.
        Raises :class:`TemplateError` on a syntax error, an undefined name, a
        sandbox violation or any error raised while evaluating.
        """
        if isinstance(value, str):
            if "{{" not in value and "{%" not in value:
                return value
            try:
                return _native(self._template(value)(context))
            except Exception as exc:
                raise TemplateError(_located(path, value, _describe(exc))) from exc
        if isinstance(value, Mapping):
            return {k: self.render(v, context, path=_join(path, k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.render(v, context, path=f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def evaluate_condition(self, text: str, context: Mapping[str, Any], *, path: str = "") -> bool:
        """Evaluate a dependency condition: ``"{{ expr }}"`` or a bare ``"expr"``.

        SDK spellings are normalized first. A string result is false when it is
        ``""``, ``false``, ``0``, ``none``, ``null`` or ``no`` (any case); any other
        result uses Python truthiness. Raises :class:`TemplateError` as :meth:`render`.
        """
        try:
            result = _native(self._compile_condition(text)(context))
        except Exception as exc:
            raise TemplateError(_located(path, text, _describe(exc))) from exc
        if isinstance(result, str):
            return result.strip().lower() not in _FALSE_STRINGS
        return bool(result)

    def _compile_condition(self, text: str) -> Renderer:
        text = normalize_sdk_expression(text)
        return self._template(text) if _SYNTAX.search(text) else self._expression(text)

    def check(self, value: Any, *, path: str = "") -> dict[str, list[str]]:
        """Syntax-check every template in ``value``; never raises for bad templates.

        Returns ``{path: [messages]}`` (``parameters.items[2]``), empty when all
        parse. A string that parses only after :func:`normalize_sdk_expression`
        (an SDK condition) is accepted.
        """
        errors: dict[str, list[str]] = {}
        self._check_into(value, path, errors)
        return errors

    def check_condition(self, text: str, *, path: str = "") -> dict[str, list[str]]:
        """Syntax-check one condition as :meth:`evaluate_condition` reads it (bare or braced)."""
        try:
            self._compile_condition(text)
        except (jinja2.TemplateError, RecursionError, ValueError) as exc:
            return {path: [_located("", text, _describe(exc))]}
        return {}

    def _check_into(self, value: Any, path: str, errors: dict[str, list[str]]) -> None:
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                try:
                    self._template(value)
                except (jinja2.TemplateError, RecursionError, ValueError) as exc:
                    if self.check_condition(value):  # not an SDK spelling either
                        errors.setdefault(path, []).append(_located("", value, _describe(exc)))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                self._check_into(v, _join(path, k), errors)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                self._check_into(v, f"{path}[{i}]", errors)


__all__ = [
    "SecretNamespace",
    "TemplateEngine",
    "has_template",
    "normalize_sdk_expression",
    "reveal_secrets",
]
