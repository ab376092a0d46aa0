"""Alert emails: the messages, and sending them (smtplib).

The SMTP settings are ``Settings.smtp`` (``coldcopy.config``): ``SMTP_HOST``, ``SMTP_PORT`` (587),
``SMTP_USER``, ``SMTP_PASSWORD``, ``SMTP_FROM``, ``SMTP_SECURITY`` (``starttls``, the default;
``tls``, the default on port 465; ``none`` for a relay on loopback), ``SMTP_CA_FILE`` (to trust a
private CA), ``SMTP_TIMEOUT_SECONDS`` (20), ``ALERT_EMAIL`` (recipients, comma-separated).  The
password is never logged nor put into an error message.
"""

from __future__ import annotations

import base64
import html
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from coldcopy.config import SmtpConfig
from coldcopy.core.alert_state import START
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, ConfigError


class EmailError(ColdCopyError):
    """The SMTP server could not be reached, refused us, or refused the message."""

    def __init__(self, message: str, hint: str | None = None, *, sent: int = 0) -> None:
        super().__init__(message, hint)
        self.sent = sent  # messages that went out before the failure


# -- the messages ---------------------------------------------------------------------------------
def _subject(event: str, a: Mapping[str, Any], cluster: str) -> str:
    tag = "RESOLVED" if event != START else str(a.get("severity", "alert")).upper()
    return f"[ColdCopy {tag}] {cluster}: {str(a.get('message', ''))[:120]}"


def build_message(event: str, a: Mapping[str, Any], cluster: str, cfg: SmtpConfig, at: str) -> EmailMessage:
    """One alert's email: what is wrong, since when, and what to do (plain text and HTML)."""
    started = event == START
    what = str(a.get("message", ""))
    since = str(a.get("since") or "unknown")
    plan = str(a.get("plan_command") or "")
    if started:
        lines = [
            f"ColdCopy alert ({a.get('severity')}) for {cluster}:",
            "",
            f"  {what}",
            "",
            f"Since:      {since}",
            f"Alert id:   {a.get('id')}",
            "",
            "What to do: follow the plan printed by",
            f"  {plan}",
            "",
            "`coldcopy alerts` lists every active alert.",
            "You will get one more email when this one resolves.",
        ]
    else:
        lines = [
            f"Resolved: the ColdCopy alert for {cluster} no longer holds.",
            "",
            f"  {what}",
            "",
            f"Active from {since} until {at}.",
            f"Alert id:   {a.get('id')}",
        ]
    text = "\n".join(lines) + "\n"
    e = html.escape
    colour = "#b42318" if a.get("severity") == "critical" else "#b54708"
    head = f"{e(str(a.get('severity')).upper())} alert" if started else "Resolved"
    body = (
        f'<html><body style="font-family:system-ui,sans-serif">'
        f'<h2 style="color:{colour if started else "#067647"}">ColdCopy · {e(cluster)} · {head}</h2>'
        f"<p><strong>{e(what)}</strong></p>"
        f"<p>{'Since' if started else 'Active from'} <code>{e(since)}</code>"
        f"{'' if started else f' until <code>{e(at)}</code>'}.</p>"
        + (f"<p>What to do: follow the plan printed by <code>{e(plan)}</code>.</p>" if started else "")
        + f"<p style='color:#555'>Alert id <code>{e(str(a.get('id')))}</code></p></body></html>"
    )
    msg = EmailMessage()
    msg["Subject"] = _subject(event, a, cluster)
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="coldcopy")
    msg["X-ColdCopy-Alert"] = f"{event} {a.get('id')}"
    msg.set_content(text)
    msg.add_alternative(body, subtype="html")
    return msg


# -- sending --------------------------------------------------------------------------------------
def _describe(exc: BaseException, cfg: SmtpConfig) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        detail = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        text = f"the server answered {exc.smtp_code} {detail}"
    elif isinstance(exc, smtplib.SMTPRecipientsRefused):
        text = f"the server refused the recipients {', '.join(exc.recipients)}"
    elif isinstance(exc, (ConnectionRefusedError, TimeoutError)):
        text = f"no SMTP server answers at {cfg.host}:{cfg.port} ({type(exc).__name__})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    secret = cfg.password.reveal()
    if len(secret) >= 3:
        text = text.replace(secret, "***")
    return f"SMTP {cfg.host}:{cfg.port}: {text}"[:400]


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """smtplib's login, except that it cannot send credentials beyond ASCII: AUTH PLAIN in UTF-8 then."""
    if (user + password).isascii():
        smtp.login(user, password)
        return
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    code, resp = smtp.docmd("AUTH", f"PLAIN {token}")
    if code not in (235, 503):
        raise smtplib.SMTPAuthenticationError(code, resp)


def send(cfg: SmtpConfig, messages: Sequence[EmailMessage]) -> int:
    """Send over one connection; the number sent.  Raises EmailError (after ``sent`` were sent)."""
    sent = 0
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file or None)
        smtp: smtplib.SMTP
        if cfg.security == "tls":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        with smtp:
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.user:
                _login(smtp, cfg.user, cfg.password.reveal())
            for msg in messages:
                smtp.send_message(msg)
                sent += 1
    except (smtplib.SMTPException, OSError) as exc:
        hint = "check SMTP_HOST, SMTP_PORT, SMTP_SECURITY and the credentials"
        raise EmailError(_describe(exc, cfg), hint, sent=sent) from None
    return sent


def send_test(cfg: SmtpConfig, cluster: str, now: datetime) -> None:
    if not cfg.configured:
        raise ConfigError(["SMTP_HOST and ALERT_EMAIL must be set to send alert emails"])
    a = {
        "id": "test",
        "severity": "test",
        "since": iso(now),
        "message": "this is a test message from `coldcopy alerts test-email`",
        "plan_command": "coldcopy alerts",
    }
    msg = build_message(START, a, cluster, cfg, iso(now))
    msg.replace_header("Subject", f"[ColdCopy TEST] {cluster}: alert emails work")
    send(cfg, [msg])
