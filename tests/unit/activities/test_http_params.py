"""``http_request``: parameter validation, body decoding and URL masking (no network)."""

from __future__ import annotations

import pytest

from kflow.activities.http_request import decode_body, mask_url, parse_params
from kflow.errors import ActivityError


def test_defaults_and_normalisation() -> None:
    req = parse_params(
        {
            "url": " https://example.com/a?x=1 ",
            "method": "patch",
            "headers": {"X-N": 3, "X-B": True},
            "timeout_seconds": 2,
        }
    )
    assert (req.method, str(req.url), req.timeout_seconds) == (
        "PATCH",
        "https://example.com/a?x=1",
        2.0,
    )
    assert req.headers == {"X-N": "3", "X-B": "true"}
    assert parse_params({"url": "http://h"}).method == "GET"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "url"),
        ({"url": ""}, "url"),
        ({"url": "ftp://example.com"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"url": "http://h", "method": "BREW"}, "method"),
        ({"url": "http://h", "method": 1}, "method"),
        ({"url": "http://h", "headers": ["a"]}, "headers"),
        ({"url": "http://h", "headers": {"a": {"b": 1}}}, "headers.a"),
        ({"url": "http://h", "headers": {"a": "x\r\nInjected: 1"}}, "headers.a"),
        ({"url": "http://h", "query": "a=1"}, "query"),
        ({"url": "http://h", "query": {"a": {"b": 1}}}, "query.a"),
        ({"url": "http://h", "timeout_seconds": 0}, "timeout_seconds"),
        ({"url": "http://h", "timeout_seconds": "5"}, "timeout_seconds"),
        ({"url": "http://h", "timeout_seconds": True}, "timeout_seconds"),
    ],
)
def test_invalid_parameters(params, field) -> None:
    with pytest.raises(ActivityError) as info:
        parse_params(params)
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert repr(field) in info.value.message


@pytest.mark.parametrize(
    ("ctype", "data", "expected"),
    [
        ("application/json", b'{"a": 1}', ({"a": 1}, "json")),
        ("application/vnd.api+json; charset=utf-8", b"[1]", ([1], "json")),
        ("application/json", b"not json", ("not json", "text")),
        ("text/html; charset=latin-1", "é".encode("latin-1"), ("é", "text")),
        ("", b"hello", ("hello", "text")),
        ("", b"\xff\xfe\x00", ("//4A", "base64")),
        ("application/octet-stream", b"abc", ("YWJj", "base64")),
        ("image/png", b"abc", ("YWJj", "base64")),
        ("text/plain", b"", ("", "text")),
    ],
)
def test_decode_body(ctype, data, expected) -> None:
    charset = "latin-1" if "latin-1" in ctype else None
    assert decode_body(ctype, data, charset) == expected


def test_mask_url() -> None:
    assert mask_url("https://u:pw@h/x") == "https://u:***@h/x"
    assert mask_url("https://h/x?q=1") == "https://h/x?q=1"
