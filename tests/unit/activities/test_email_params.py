"""``email_send``: URL parsing, message building and error translation (no network)."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from kflow.activities.email_send import build_message, parse_smtp_url, translate_error
from kflow.errors import ActivityError


@pytest.mark.parametrize(
    ("url", "host", "port", "security"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, "auto"),
        ("smtp://mail.example.com:2525?starttls=required", "mail.example.com", 2525, "starttls"),
        ("smtp://mail.example.com?starttls=never", "mail.example.com", 25, "never"),
        ("smtps://mail.example.com", "mail.example.com", 465, "tls"),
        ("smtp+starttls://mail.example.com", "mail.example.com", 587, "starttls"),
    ],
)
def test_parse_smtp_url(url, host, port, security) -> None:
    target = parse_smtp_url(url)
    assert (target.host, target.port, target.security) == (host, port, security)
    assert target.username is None


def test_credentials_are_unquoted_and_masked() -> None:
    target = parse_smtp_url("smtps://me%40x.org:p%2Fw@mail.example.com")
    assert (target.username, target.password) == ("me@x.org", "p/w")
    assert target.masked == "smtps://me@x.org:***@mail.example.com:465"
    assert "p/w" not in repr(target)


@pytest.mark.parametrize(
    "url", [None, "", "http://x", "smtp://", "smtp://h:99999", "smtp://u:secret@h?starttls=maybe"]
)
def test_bad_smtp_url(url) -> None:
    with pytest.raises(ActivityError) as info:
        parse_smtp_url(url)
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert "smtp_url" in info.value.message
    assert "secret" not in info.value.message


BASE = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text_body": "t"}


def test_build_plain_message() -> None:
    msg, sender, rcpts = build_message(
        {**BASE, "to": "b@example.com, C <c@example.com>", "bcc": "b@example.com"}
    )
    assert (sender, rcpts) == ("a@example.com", ["b@example.com", "c@example.com"])
    assert msg.get_content_type() == "text/plain"
    assert msg["Bcc"] is None


def test_html_only() -> None:
    msg, _, _ = build_message({**BASE, "text_body": None, "html_body": "<b>x</b>"})
    assert msg.get_content_type() == "text/html"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": None}, "from"),
        ({"from": ["a@example.com", "b@example.com"]}, "from"),
        ({"to": []}, "to"),
        ({"to": "not-an-address"}, "to"),
        ({"cc": [1]}, "cc"),
        ({"bcc": "x@example.com\r\nBcc: evil@example.com"}, "bcc"),
        ({"subject": None}, "subject"),
        ({"subject": "a\nb"}, "subject"),
        ({"text_body": None}, "text_body"),
        ({"html_body": 3}, "html_body"),
    ],
)
def test_invalid_fields(change, field) -> None:
    with pytest.raises(ActivityError) as info:
        build_message({**BASE, **change})
    assert (info.value.code, info.value.retryable) == ("INVALID_PARAMETERS", False)
    assert repr(field) in info.value.message


@pytest.mark.parametrize(
    ("exc", "code", "retryable"),
    [
        (ConnectionRefusedError(111, "refused"), "SMTP_ERROR", True),
        (TimeoutError("timed out"), "TIMEOUT", True),
        (smtplib.SMTPServerDisconnected("gone"), "SMTP_ERROR", True),
        (smtplib.SMTPSenderRefused(451, b"later", "a@x"), "SMTP_ERROR", True),
        (smtplib.SMTPDataError(554, b"spam"), "SMTP_ERROR", False),
        (smtplib.SMTPAuthenticationError(535, b"bad"), "SMTP_ERROR", False),
        (smtplib.SMTPNotSupportedError("STARTTLS"), "SMTP_ERROR", False),
        (ssl.SSLError("handshake"), "SMTP_ERROR", False),
    ],
)
def test_translate_error(exc, code, retryable) -> None:
    error = translate_error(exc, "SMTP smtp://h:25")
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message.startswith("SMTP smtp://h:25: ")
