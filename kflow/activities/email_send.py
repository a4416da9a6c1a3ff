"""The ``email_send`` activity of the ``std`` worker (PROTOCOL §9).

Parameters ``{smtp_url, from, to, subject, text_body?, html_body?, cc?, bcc?,
reply_to?}``; output ``result`` = ``{message_id, accepted, rejected}``.

``smtp_url`` forms (user and password are URL-encoded):

- ``smtp://[user[:pass]@]host[:port]`` — port 25; STARTTLS when the server
  offers it (opportunistic: the certificate is not verified, as an active
  attacker could strip STARTTLS anyway); ``?starttls=required`` demands it
  with a verified certificate, ``?starttls=never`` disables it.
- ``smtp+starttls://`` — port 587, STARTTLS required, certificate verified.
- ``smtps://`` — port 465, implicit TLS, certificate verified.

Sending uses the stdlib ``smtplib`` in a worker thread (``ctx.run_sync``);
when the attempt is cancelled the thread is abandoned and may still finish
sending. ``to``/``cc``/``bcc``/``reply_to`` accept a string (comma-separated
addresses allowed) or a list. At least one of ``text_body``/``html_body`` is
required; with both, the message is ``multipart/alternative``. Credentials
never appear in logs or error messages (the URL is masked).
"""

from __future__ import annotations

import smtplib
import ssl
import urllib.parse
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any, Literal

import attrs

from kflow.errors import ActivityError
from kflow.worker.activity import Activity, ActivityResult
from kflow.worker.context import ActivityContext

Security = Literal["auto", "never", "starttls", "tls"]
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}


def _invalid(field: str, why: str) -> ActivityError:
    return ActivityError(
        f"invalid parameter {field!r}: {why}", code="INVALID_PARAMETERS", retryable=False
    )


@attrs.frozen(kw_only=True)
class SmtpTarget:
    """Where and how to connect, parsed from ``smtp_url``."""

    scheme: str
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def masked(self) -> str:
        """The URL without the password (safe for logs and messages)."""
        user = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def parse_smtp_url(url: Any) -> SmtpTarget:
    """Parse ``smtp_url``.

    Raises:
        ActivityError: ``INVALID_PARAMETERS`` (not retryable); the message never
            contains the password.
    """
    if not isinstance(url, str) or not url.strip():
        raise _invalid("smtp_url", "a non-empty string is required")
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _invalid("smtp_url", f"scheme {scheme!r} is not smtp, smtps or smtp+starttls")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise _invalid("smtp_url", "the port is not a number in 0..65535") from None
    if not parts.hostname:
        raise _invalid("smtp_url", "a host is required")
    query = urllib.parse.parse_qs(parts.query)
    starttls = (query.get("starttls") or ["auto"])[-1].lower()
    security: Security
    if scheme == "smtps":
        security = "tls"
    elif scheme == "smtp+starttls" or starttls == "required":
        security = "starttls"
    elif starttls in ("auto", "never"):
        security = "auto" if starttls == "auto" else "never"
    else:
        raise _invalid("smtp_url", f"starttls={starttls!r}; use required, auto or never")
    unquote = urllib.parse.unquote
    return SmtpTarget(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _addresses(params: dict[str, Any], field: str, *, required: bool) -> list[str]:
    value = params.get(field)
    if value is None or value == [] or value == "":
        if required:
            raise _invalid(field, "at least one address is required")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise _invalid(field, "a string or a list of strings is required")
    out: list[str] = []
    for raw in items:
        if any(c in raw for c in "\r\n\0"):
            raise _invalid(field, "control characters in an address")
        for name, addr in getaddresses([raw]):
            if "@" not in addr or any(c.isspace() for c in addr):
                raise _invalid(field, f"{raw!r} is not an email address")
            out.append(formataddr((name, addr)) if name else addr)
    return out


def _bare(address: str) -> str:
    return getaddresses([address])[0][1]


def build_message(params: dict[str, Any]) -> tuple[EmailMessage, str, list[str]]:
    """Build the message → ``(message, envelope sender, envelope recipients)``.

    Raises:
        ActivityError: ``INVALID_PARAMETERS`` naming the field (not retryable).
    """
    senders = _addresses(params, "from", required=True)
    if len(senders) != 1:
        raise _invalid("from", "exactly one address is required")
    to = _addresses(params, "to", required=True)
    cc = _addresses(params, "cc", required=False)
    bcc = _addresses(params, "bcc", required=False)
    reply_to = _addresses(params, "reply_to", required=False)
    subject = params.get("subject")
    if not isinstance(subject, str) or any(c in subject for c in "\r\n\0"):
        raise _invalid("subject", "a single-line string is required")
    text, html = params.get("text_body"), params.get("html_body")
    for field, body in (("text_body", text), ("html_body", html)):
        if body is not None and not isinstance(body, str):
            raise _invalid(field, "a string is required")
    if text is None and html is None:
        raise _invalid("text_body", "text_body or html_body is required")
    sender = _bare(senders[0])
    msg = EmailMessage()
    msg["From"] = senders[0]
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if reply_to:
        msg["Reply-To"] = ", ".join(reply_to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html, subtype="html")
    recipients = list(dict.fromkeys(_bare(a) for a in [*to, *cc, *bcc]))
    return msg, sender, recipients


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def send_message(
    target: SmtpTarget, msg: EmailMessage, sender: str, recipients: list[str], timeout: float
) -> dict[str, tuple[int, bytes]]:
    """Blocking: deliver ``msg``; returns the refused recipients (smtplib's dict).

    Raises:
        smtplib.SMTPException, OSError: as smtplib raises them.
    """
    smtp: smtplib.SMTP
    if target.security == "tls":
        smtp = smtplib.SMTP_SSL(
            target.host, target.port, timeout=timeout, context=_tls_context(verify=True)
        )
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=timeout)
    with smtp:
        smtp.ehlo()
        wants_tls = target.security == "starttls" or (
            target.security == "auto" and smtp.has_extn("starttls")
        )
        if wants_tls:
            smtp.starttls(context=_tls_context(verify=target.security == "starttls"))
            smtp.ehlo()
        if target.username:
            smtp.login(target.username, target.password or "")
        return smtp.send_message(msg, from_addr=sender, to_addrs=recipients)


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {message}".strip()


def translate_error(exc: BaseException, where: str) -> ActivityError:
    """Map an smtplib/socket exception to an ``ActivityError`` (codes in the module doc)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        summary = "; ".join(f"{a}: {_reply(c, m)}" for a, (c, m) in exc.recipients.items())
        return ActivityError(
            f"{where}: all recipients refused ({summary})",
            code="SMTP_ERROR",
            retryable=bool(codes) and all(400 <= c < 500 for c in codes),
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return ActivityError(
            f"{where}: server does not support it: {exc}", code="SMTP_ERROR", retryable=False
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code
        return ActivityError(
            f"{where}: {_reply(code, exc.smtp_error)}",
            code="SMTP_ERROR",
            retryable=400 <= code < 500 or code < 0,
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return ActivityError(
            f"{where}: server disconnected: {exc}", code="SMTP_ERROR", retryable=True
        )
    if isinstance(exc, smtplib.SMTPException | ssl.SSLError):
        return ActivityError(
            f"{where}: {type(exc).__name__}: {exc}", code="SMTP_ERROR", retryable=False
        )
    if isinstance(exc, TimeoutError):
        return ActivityError(f"{where}: timed out", code="TIMEOUT", retryable=True)
    return ActivityError(f"{where}: {type(exc).__name__}: {exc}", code="SMTP_ERROR", retryable=True)


class EmailSendActivity(Activity):
    """``email_send``: one message over SMTP. ``timeout_seconds`` bounds each socket op
    (the attempt's timeout is used when the context has one)."""

    name = "email_send"

    def __init__(self, *, timeout_seconds: float = 60.0) -> None:
        self.timeout_seconds = timeout_seconds

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Send the message.

        Raises:
            ActivityError: ``INVALID_PARAMETERS`` (not retryable); ``SMTP_ERROR``
                (retryable for connection failures and 4xx replies, not for 5xx,
                TLS or unsupported-feature failures); ``TIMEOUT`` (retryable).
        """
        target = parse_smtp_url(params.get("smtp_url"))
        msg, sender, recipients = build_message(params)
        timeout = min(self.timeout_seconds, ctx.timeout_seconds or self.timeout_seconds)
        where = f"SMTP {target.masked}"
        try:
            refused = await ctx.run_sync(send_message, target, msg, sender, recipients, timeout)
        except (smtplib.SMTPException, OSError) as exc:
            raise translate_error(exc, where) from exc
        accepted = [r for r in recipients if r not in refused]
        ctx.logger.info(
            "email_send.sent",
            server=target.masked,
            message_id=msg["Message-ID"],
            accepted=len(accepted),
            rejected=len(refused),
        )
        return ActivityResult.value(
            "result",
            {
                "message_id": msg["Message-ID"],
                "accepted": accepted,
                "rejected": {
                    a: {"code": c, "message": _reply(c, m)} for a, (c, m) in refused.items()
                },
            },
        )
