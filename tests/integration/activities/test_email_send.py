"""``email_send`` against a real SMTP server (aiosmtpd's Controller) on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from kflow.activities.email_send import EmailSendActivity
from kflow.errors import ActivityError
from kflow.worker.context import ActivityContext


class Handler:
    """Accepts everyone except ``reject*`` (550) and ``later*`` (451) recipients."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.tls: list[bool] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope)
        self.tls.append(session.ssl is not None)
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"mailer",
        b"p@ss:w/rd",
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[tuple[Handler, int]]:
    handler = Handler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=_free_port(),
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def ctx() -> ActivityContext:
    return ActivityContext(
        workflow_id=uuid4(), activity_id=uuid4(), activity_key="k", timeout_seconds=5
    )


def params(port: int, **extra: Any) -> dict[str, Any]:
    base = {
        "smtp_url": f"smtp://127.0.0.1:{port}",
        "from": "Flow <flow@example.com>",
        "to": "alice@example.com",
        "subject": "Hello",
        "text_body": "Hi Alice",
    }
    return {**base, **extra}


async def send(p: dict[str, Any]) -> dict[str, Any]:
    result = await EmailSendActivity().execute(p, ctx())
    return result.to_output_dict()["result"]


async def test_text_and_html_with_cc_bcc_reply_to(smtp) -> None:
    handler, port = smtp
    out = await send(
        params(
            port,
            to=["alice@example.com", "Bob <bob@example.com>"],
            cc="carol@example.com",
            bcc=["dave@example.com"],
            reply_to="help@example.com",
            html_body="<p>Hi</p>",
        )
    )
    assert out["accepted"] == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    assert out["rejected"] == {}
    [envelope] = handler.messages
    assert envelope.mail_from == "flow@example.com"
    assert envelope.rcpt_tos == out["accepted"]
    msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert msg["Subject"] == "Hello"
    assert msg["To"] == "alice@example.com, Bob <bob@example.com>"
    assert msg["Cc"] == "carol@example.com"
    assert msg["Reply-To"] == "help@example.com"
    assert msg["Bcc"] is None
    assert msg["Message-ID"] == out["message_id"]
    assert out["message_id"].endswith("@example.com>")
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "Hi Alice"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hi</p>"


async def test_some_recipients_rejected(smtp) -> None:
    handler, port = smtp
    out = await send(params(port, to=["alice@example.com", "reject@example.com"]))
    assert out["accepted"] == ["alice@example.com"]
    assert out["rejected"]["reject@example.com"]["code"] == 550
    assert "no such user" in out["rejected"]["reject@example.com"]["message"]
    assert len(handler.messages) == 1


@pytest.mark.parametrize(
    ("rcpt", "retryable"), [("reject@example.com", False), ("later@example.com", True)]
)
async def test_all_recipients_refused(smtp, rcpt, retryable) -> None:
    _, port = smtp
    with pytest.raises(ActivityError) as info:
        await send(params(port, to=rcpt))
    assert (info.value.code, info.value.retryable) == ("SMTP_ERROR", retryable)
    assert rcpt in info.value.message


async def test_login_with_url_encoded_credentials(smtp) -> None:
    handler, port = smtp
    await send(params(port, smtp_url=f"smtp://mailer:p%40ss%3Aw%2Frd@127.0.0.1:{port}"))
    assert len(handler.messages) == 1


async def test_bad_credentials_are_permanent_and_masked(smtp) -> None:
    _, port = smtp
    with pytest.raises(ActivityError) as info:
        await send(params(port, smtp_url=f"smtp://mailer:sekrit-pw@127.0.0.1:{port}"))
    assert (info.value.code, info.value.retryable) == ("SMTP_ERROR", False)
    assert "sekrit-pw" not in str(info.value)
    assert f"smtp://mailer:***@127.0.0.1:{port}" in info.value.message


async def test_required_starttls_not_offered(smtp) -> None:
    _, port = smtp
    with pytest.raises(ActivityError) as info:
        await send(params(port, smtp_url=f"smtp://127.0.0.1:{port}?starttls=required"))
    assert (info.value.code, info.value.retryable) == ("SMTP_ERROR", False)
    assert "STARTTLS" in info.value.message.upper()


async def test_connection_refused_is_retryable() -> None:
    port = _free_port()
    with pytest.raises(ActivityError) as info:
        await send(params(port, smtp_url=f"smtp://u:hunter2@127.0.0.1:{port}"))
    assert (info.value.code, info.value.retryable) == ("SMTP_ERROR", True)
    assert "hunter2" not in info.value.message


@pytest.fixture
def starttls_smtp(tmp_path: Path) -> Iterator[tuple[Handler, int]]:
    """A server offering STARTTLS with a self-signed certificate (needs openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip(reason="openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(), tls_context=context)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


@pytest.mark.parametrize(("query", "tls"), [("", True), ("?starttls=never", False)])
async def test_opportunistic_starttls(starttls_smtp, query, tls) -> None:
    handler, port = starttls_smtp
    await send(params(port, smtp_url=f"smtp://127.0.0.1:{port}{query}"))
    assert handler.tls == [tls]


async def test_required_starttls_verifies_the_certificate(starttls_smtp) -> None:
    handler, port = starttls_smtp
    with pytest.raises(ActivityError) as info:
        await send(params(port, smtp_url=f"smtp+starttls://127.0.0.1:{port}"))
    assert (info.value.code, info.value.retryable) == ("SMTP_ERROR", False)
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message
    assert handler.messages == []
