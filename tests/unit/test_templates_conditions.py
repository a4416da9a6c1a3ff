"""Conditions, SDK normalization, check() and secrets of kflow.templates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kflow.errors import TemplateError
from kflow.templates import (
    SecretNamespace,
    TemplateEngine,
    normalize_sdk_expression,
    reveal_secrets,
)


@pytest.fixture(scope="module")
def engine() -> TemplateEngine:
    return TemplateEngine()


@pytest.fixture
def context() -> dict[str, object]:
    return {
        "INPUT": {"n": 3, "name": "ann", "empty": [], "nothing": None},
        "SECRET": SecretNamespace(["TOKEN", "db_password"]),
        "fetch": {"response": {"status": 200}, "status": "completed", "iteration": 0},
        "check": {"status": "failed", "iteration": 0},
    }


# -- conditions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{{ fetch.response.status == 200 }}", True),
        ("{{ check.status == 'failed' }}", True),
        ("fetch.status == 'completed'", True),
        ("  check.status == 'completed'  ", False),
        ("{{ INPUT.n }}", True),
        ("{{ INPUT.n - 3 }}", False),
        ("{{ INPUT.empty }}", False),
        ("{{ INPUT.nothing }}", False),
        ("true", True),
        ("false", False),
        ("{{ INPUT.x | coalesce(false) }}", False),
    ],
)
def test_condition_native_truthiness(engine, context, condition, expected) -> None:
    assert engine.evaluate_condition(condition, context) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", False),
        ("   ", False),
        ("false", False),
        (" False ", False),
        ("0", False),
        ("None", False),
        ("null", False),
        ("NO", False),
        ("yes", True),
        ("true", True),
        ("00", True),
        ("ann", True),
    ],
)
def test_condition_string_truthiness(engine, context, text, expected) -> None:
    assert engine.evaluate_condition("{{ value }}", {**context, "value": text}) is expected
    embedded = "{% if true %}" + text + "{% endif %}"
    assert engine.evaluate_condition(embedded, context) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{{ fetch.status == 'succeeded' }}", True),
        ('{{ check.status != "succeeded" }}', True),
        ("{{ (fetch.status == 'succeeded') && (INPUT.n > 2) }}", True),
        ("{{ (check.status == 'succeeded') || (INPUT.n > 5) }}", False),
        ("{{ !(INPUT.n > 5) }}", True),
        ("!(INPUT.n != 3) || fetch.response.status == 200", True),
        ("{{ INPUT.nothing == null }}", True),
    ],
)
def test_condition_accepts_sdk_spellings(engine, context, condition, expected) -> None:
    assert engine.evaluate_condition(condition, context) is expected


def test_condition_errors(engine, context) -> None:
    with pytest.raises(TemplateError, match=r"^deps\[0\]: 'missing' is undefined in 'missing'"):
        engine.evaluate_condition("missing", context, path="deps[0]")
    with pytest.raises(TemplateError, match="syntax error"):
        engine.evaluate_condition("{{ fetch.status == }}", context)
    with pytest.raises(TemplateError, match="syntax error"):
        engine.evaluate_condition("", context)
    with pytest.raises(TemplateError, match="not allowed in the sandbox"):
        engine.evaluate_condition("''.__class__", context)


# -- SDK normalization ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a && b", "a  and  b"),
        ("a || b", "a  or  b"),
        ("!a", " not a"),
        ("!(a)&&!b", " not (a) and  not b"),
        ("a != b", "a != b"),
        ("a!=b && !c", "a!=b  and   not c"),
        ("x == 'a && !b || c'", "x == 'a && !b || c'"),
        ('x == "!"', 'x == "!"'),
        ("x.status == 'succeeded'", "x.status == 'completed'"),
        ('x.status != "succeeded"', 'x.status != "completed"'),
        ("x == 'not succeeded'", "x == 'not succeeded'"),
        ("x == 'it\\'s' && y", "x == 'it\\'s'  and  y"),
        ("{{ a and not b or c }}", "{{ a and not b or c }}"),
    ],
)
def test_normalize_sdk_expression(text, expected) -> None:
    assert normalize_sdk_expression(text) == expected


_SDK_ALPHABET = st.sampled_from(
    ["a", " ", "&", "|", "!", "=", "'", '"', "\\", "(", ")", "succeeded", "{{", "}}", "x.y"]
)


@given(st.one_of(st.text(), st.lists(_SDK_ALPHABET).map("".join)))
def test_normalize_is_idempotent(text) -> None:
    once = normalize_sdk_expression(text)
    assert normalize_sdk_expression(once) == once


@given(st.text().filter(lambda t: not set(t) & set("&|!") and "succeeded" not in t))
def test_normalize_leaves_native_text_unchanged(text) -> None:
    assert normalize_sdk_expression(text) == text


# -- check ------------------------------------------------------------------------------


def test_check_reports_paths_of_bad_templates(engine) -> None:
    value = {
        "url": "{{ INPUT.url }}",
        "headers": {"Authorization": "Bearer {{ SECRET.TOKEN }"},
        "items": ["a", "{{ b }}", "{% if %}x{% endif %}", 4],
        "plain": "no { template }",
    }
    errors = engine.check(value, path="parameters")
    assert set(errors) == {"parameters.headers.Authorization", "parameters.items[2]"}
    (message,) = errors["parameters.headers.Authorization"]
    assert message.startswith("syntax error: ")
    assert message.endswith("in 'Bearer {{ SECRET.TOKEN }'")


def test_check_is_empty_when_all_parse(engine) -> None:
    assert engine.check({"a": ["{{ x.y | last }}", "t {{ z }}"]}, path="p") == {}
    assert engine.check("{{ missing_names_are_fine_here }}") == {}


def test_check_accepts_sdk_conditions(engine) -> None:
    assert engine.check(["{{ (a.status == 'succeeded') && !b }}"], path="c") == {}
    errors = engine.check(["ok", "{{ a &&& b }}"], path="c")
    assert list(errors) == ["c[1]"]
    assert "unexpected char '&'" in errors["c[1]"][0]


def test_check_condition(engine) -> None:
    assert engine.check_condition("a.status == 'succeeded' && !b") == {}
    assert engine.check_condition("{{ a }}") == {}
    errors = engine.check_condition("a ==", path="depends_on[0].conditions[0]")
    assert list(errors) == ["depends_on[0].conditions[0]"]


# -- secrets ---------------------------------------------------------------------------

SECRETS = {"TOKEN": "t0ps3cret", "db_password": 'p"w\\x'}


def test_secret_renders_to_sentinel(engine, context) -> None:
    rendered = engine.render({"auth": "Bearer {{ SECRET.TOKEN }}"}, context)
    assert "t0ps3cret" not in str(rendered)
    assert rendered == {"auth": "Bearer \x01kflow-secret:TOKEN\x01"}
    assert engine.render("{{ SECRET['db_password'] }}", context) == (
        "\x01kflow-secret:db_password\x01"
    )


def test_sentinels_of_earlier_builds_are_still_revealed() -> None:
    # NUL-delimited, as stored before PostgreSQL's jsonb (which refuses NUL) was served
    assert reveal_secrets(["Bearer \x00kflow-secret:TOKEN\x00"], SECRETS) == ["Bearer t0ps3cret"]
    assert reveal_secrets('{"pw": "\\u0000kflow-secret:db_password\\u0000"}', SECRETS) == (
        '{"pw": "p\\"w\\\\x"}'
    )


def test_reveal_whole_and_embedded(engine, context) -> None:
    rendered = engine.render(
        {"token": "{{ SECRET.TOKEN }}", "h": ["Bearer {{ SECRET.TOKEN }}!", 3], "n": None},
        context,
    )
    assert reveal_secrets(rendered, SECRETS) == {
        "token": "t0ps3cret",
        "h": ["Bearer t0ps3cret!", 3],
        "n": None,
    }


def test_reveal_inside_tojson_output(engine, context) -> None:
    rendered = engine.render("{{ {'pw': SECRET.db_password} | tojson }}", context)
    assert reveal_secrets(rendered, SECRETS) == '{"pw": "p\\"w\\\\x"}'


def test_reveal_unknown_secret_fails() -> None:
    with pytest.raises(TemplateError, match="undefined secret 'GONE'"):
        reveal_secrets(["\x00kflow-secret:GONE\x00"], SECRETS)


def test_reveal_leaves_other_values_alone() -> None:
    value = {"a": ("x", 1), "b": "plain"}
    assert reveal_secrets(value, SECRETS) == {"a": ["x", 1], "b": "plain"}


@pytest.mark.parametrize("template", ["{{ SECRET.NOPE }}", "x {{ SECRET['NOPE'] }}"])
def test_unknown_secret_is_a_template_error(engine, context, template) -> None:
    with pytest.raises(TemplateError, match=r"^parameters\.k: undefined secret 'NOPE' in "):
        engine.render({"k": template}, context, path="parameters")


def test_secret_namespace_shows_no_values(engine, context) -> None:
    namespace = context["SECRET"]
    for shown in (str(namespace), repr(namespace), engine.render("x{{ SECRET }}", context)):
        assert "t0ps3cret" not in shown
        assert "TOKEN" in shown
    assert "TOKEN" in namespace
    assert "OTHER" not in namespace
    with pytest.raises(AttributeError):
        namespace._hidden  # noqa: B018
