"""Rendering, strictness, sandbox and filters of kflow.templates."""

from __future__ import annotations

import jinja2
import pytest
from jinja2.exceptions import SecurityError

from kflow.errors import InvalidInputError, TemplateError
from kflow.templates import TemplateEngine, has_template


@pytest.fixture(scope="module")
def engine() -> TemplateEngine:
    return TemplateEngine()


@pytest.fixture
def context() -> dict[str, object]:
    return {
        "INPUT": {"n": 3, "url": "https://example.org", "tags": ["a", "b"], "nothing": None},
        "WORKFLOW": {"id": "wf-1", "status": "running"},
        "fetch": {
            "response": {"status": 200, "body": "hello", "items": [1, 2]},
            "status": "completed",
            "iteration": 0,
        },
        "search": {"results": [["x"], ["y", "z"]], "status": "completed", "iteration": 1},
    }


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ INPUT.n }}", 3),
        ("{{INPUT.n * 1.5}}", 4.5),
        ("{{ INPUT.n > 2 }}", True),
        ("{{ INPUT.tags }}", ["a", "b"]),
        ("{{ fetch.response }}", {"status": 200, "body": "hello", "items": [1, 2]}),
        ("{{ INPUT.nothing }}", None),
        ("{{ none }}", None),
        ("  {{ [INPUT.n, 'x'] }}\n", [3, "x"]),
        ("{{ {'a': {'b': INPUT.n}} }}", {"a": {"b": 3}}),
        ("{{- INPUT.n -}}", 3),
        ("{{ (1, 2) }}", [1, 2]),
        ("{{ range(3) }}", [0, 1, 2]),
        ("{{ INPUT.tags | map('upper') }}", ["A", "B"]),
    ],
)
def test_whole_expression_keeps_native_type(engine, context, template, expected) -> None:
    result = engine.render(template, context)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("GET {{ INPUT.url }}/x", "GET https://example.org/x"),
        ("{{ INPUT.n }}{{ INPUT.n }}", "33"),
        ("n={{ INPUT.n }}", "n=3"),
        ("{% if INPUT.n > 2 %}big{% else %}small{% endif %}", "big"),
        ("{{ INPUT.n }} {# note #}", "3 "),
        ("line {{ INPUT.n }}\n", "line 3\n"),
    ],
)
def test_embedded_text_renders_to_string(engine, context, template, expected) -> None:
    assert engine.render(template, context) == expected


def test_plain_values_pass_through_untouched(engine, context) -> None:
    for value in ("no template here", "{ not } {single}", 42, 1.5, None, True):
        assert engine.render(value, context) == value


def test_renders_recursively_without_templating_keys(engine, context) -> None:
    value = {
        "{{ INPUT.n }}": "{{ INPUT.n }}",
        "nested": {"list": ["{{ INPUT.url }}", ("a-{{ INPUT.n }}", 7)], "keep": 1},
    }
    assert engine.render(value, context) == {
        "{{ INPUT.n }}": 3,
        "nested": {"list": ["https://example.org", ["a-3", 7]], "keep": 1},
    }


def test_dict_keys_win_over_dict_methods(engine, context) -> None:
    assert engine.render("{{ fetch.response.items }}", context) == [1, 2]
    assert engine.render("{{ INPUT.keys() | list }}", context) == [
        "n",
        "url",
        "tags",
        "nothing",
    ]


def test_activity_outputs_status_and_last(engine, context) -> None:
    assert engine.render("{{ fetch.response.body }}", context) == "hello"
    assert engine.render("{{ fetch.status == 'failed' }}", context) is False
    assert engine.render("{{ search.results | last }}", context) == ["y", "z"]
    assert engine.render("{{ search.results.0 }}", context) == ["x"]
    assert engine.render("{{ WORKFLOW.id }}", context) == "wf-1"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ missing }}", "'missing' is undefined in '{{ missing }}'"),
        ("{{ missing.attr }}", "'missing' is undefined in '{{ missing.attr }}'"),
        ("{{ INPUT.urll }}", "'dict object' has no attribute 'urll' in '{{ INPUT.urll }}'"),
        (
            "{{ fetch.response.foo }}",
            "'dict object' has no attribute 'foo' in '{{ fetch.response.foo }}'",
        ),
        ("{{ INPUT.a.b }}", "'dict object' has no attribute 'a'"),
        ("x {{ missing }}", "'missing' is undefined in 'x {{ missing }}'"),
        ("{{ [1, missing] }}", "'missing' is undefined"),
        ("{{ {'k': missing} }}", "'missing' is undefined"),
        ("{{ missing == 1 }}", "'missing' is undefined"),
        ("{% if missing %}x{% endif %}", "'missing' is undefined"),
        ("{% for x in missing %}{% endfor %}", "'missing' is undefined"),
        ("{{ missing | tojson }}", "'missing' is undefined"),
        ("{{ missing | fromjson }}", "'missing' is undefined"),
    ],
)
def test_undefined_is_strict(engine, context, template, message) -> None:
    with pytest.raises(TemplateError) as info:
        engine.render(template, context)
    assert message in str(info.value)
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_error_names_path_and_template(engine, context) -> None:
    with pytest.raises(TemplateError) as info:
        engine.render({"url": "{{ INPUT.urll }}"}, context, path="parameters")
    assert str(info.value) == (
        "parameters.url: 'dict object' has no attribute 'urll' in '{{ INPUT.urll }}'"
    )
    assert info.value.code == "TEMPLATE_ERROR"
    assert isinstance(info.value, InvalidInputError)


def test_error_path_of_list_items(engine, context) -> None:
    with pytest.raises(TemplateError, match=r"^parameters\.items\[1\]: "):
        engine.render({"items": ["ok", "{{ nope }}"]}, context, path="parameters")


def test_long_template_is_shortened_in_message(engine, context) -> None:
    template = "{{ nope }}" + "x" * 1000
    with pytest.raises(TemplateError) as info:
        engine.render(template, context)
    assert len(str(info.value)) < 300


def test_syntax_error(engine, context) -> None:
    with pytest.raises(TemplateError, match=r"syntax error: .* in '\{\{ INPUT\.n \}'") as info:
        engine.render("{{ INPUT.n }", context)
    assert isinstance(info.value.__cause__, jinja2.TemplateSyntaxError)


def test_unknown_filter_is_an_error(engine, context) -> None:
    with pytest.raises(TemplateError, match="No filter named 'nosuch'"):
        engine.render("{{ INPUT.n | nosuch }}", context)


def test_runtime_errors_become_template_errors(engine, context) -> None:
    with pytest.raises(TemplateError, match="ZeroDivisionError") as info:
        engine.render("{{ INPUT.n / 0 }}", context, path="p")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.mro() }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ INPUT.__class__ }}",
        "{{ INPUT['__class__'] }}",
        "x{{ ''.__class__ }}",
        "{{ ''.__class__ | coalesce('hidden') }}",
        "{{ ''.__class__ is defined }}",
    ],
)
def test_sandbox_violation_is_a_template_error(engine, context, template) -> None:
    with pytest.raises(TemplateError, match="not allowed in the sandbox") as info:
        engine.render(template, context)
    assert isinstance(info.value.__cause__, SecurityError)


def test_coalesce(engine, context) -> None:
    assert engine.render("{{ INPUT.x | coalesce(5) }}", context) == 5
    assert engine.render("{{ INPUT.x.y.z | coalesce('d') }}", context) == "d"
    assert engine.render("{{ INPUT.nothing | coalesce(5) }}", context) == 5
    assert engine.render("{{ INPUT.n | coalesce(5) }}", context) == 3
    assert engine.render("{{ missing | coalesce([]) }}", context) == []
    assert engine.render("n={{ INPUT.x | coalesce(0) }}", context) == "n=0"


def test_tojson_emits_plain_json(engine, context) -> None:
    assert engine.render("{{ INPUT.tags | tojson }}", context) == '["a", "b"]'
    assert engine.render("{{ {'a': '<é>', 'b': none} | tojson }}", context) == (
        '{"a": "<é>", "b": null}'
    )
    assert engine.render("{{ [1] | tojson(indent=2) }}", context) == "[\n  1\n]"
    body = engine.render("body={{ fetch.response | tojson }}", context)
    assert body == 'body={"status": 200, "body": "hello", "items": [1, 2]}'
    assert type(engine.render("{{ 1 | tojson }}", context)) is str
    assert engine.render("{{ INPUT.tags | map('upper') | tojson }}", context) == '["A", "B"]'
    with pytest.raises(TemplateError, match="TypeError: Object of type Cycler"):
        engine.render("{{ cycler(1) | tojson }}", context)


def test_fromjson(engine, context) -> None:
    assert engine.render("""{{ '{"a": [1, 2]}' | fromjson }}""", context) == {"a": [1, 2]}
    assert engine.render("{{ (INPUT.tags | tojson | fromjson) == INPUT.tags }}", context)
    with pytest.raises(TemplateError, match="JSONDecodeError"):
        engine.render("{{ 'nope' | fromjson }}", context)


def test_is_defined_works_on_missing_chains(engine, context) -> None:
    assert engine.render("{{ INPUT.x is defined }}", context) is False
    assert engine.render("{{ INPUT.x.y is defined }}", context) is False
    assert engine.render("{{ INPUT.n is defined }}", context) is True


def test_compiled_templates_are_cached(engine, context) -> None:
    template = "cache {{ INPUT.n }} {{ INPUT.url }}"
    first = engine._template(template)
    assert engine._template(template) is first
    assert engine.render(template, context) == "cache 3 https://example.org"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ x }}", True),
        ("a {% if x %}{% endif %}", True),
        ("plain", False),
        ("{ x }", False),
        ({"k": ["a", ("b", {"c": "{{ x }}"})]}, True),
        ({"{{ key }}": "plain"}, False),
        ([1, None, 2.5], False),
        (7, False),
    ],
)
def test_has_template(value, expected) -> None:
    assert has_template(value) is expected
