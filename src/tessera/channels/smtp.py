"""The e-mail channel: a plain SMTP client (RFC 5321) with STARTTLS (RFC 3207) or implicit TLS (RFC 8314).

The Message-ID (RFC 5322 §3.6.4) is derived from the outbox message id, so a retried message is the
same message to the recipient's mail system. Replies in the 4yz range are transient (RFC 5321 §4.2.1,
"the action may be requested again"); 5yz replies are permanent, except authentication failures,
which an operator fixes in the configuration while the message waits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

from tessera.channels.message import DeliveryError, Message

__all__ = ["SmtpChannel", "build_email"]

log = logging.getLogger("tessera.channels.smtp")

_AUTH_CODES = {530, 534, 535, 538}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _no_newlines(value: str, what: str) -> None:
    # RFC 5322 §2.2: a header field body ends at CRLF; a CR or LF inside one would start a new header.
    if "\r" in value or "\n" in value or "\x00" in value:
        raise DeliveryError(f"the {what} contains a line break; refusing a header injection", permanent=True)


def build_email(message: Message, sender: str, date: float, domain: str = "tessera") -> EmailMessage:
    """The RFC 5322 message for ``message``: plain text, and an HTML alternative if there is one."""
    _no_newlines(message.subject, "subject")
    _no_newlines(message.recipient, "recipient")
    if "@" not in message.recipient:
        raise DeliveryError("the recipient is not an e-mail address", permanent=True)
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.recipient
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(datetime.fromtimestamp(date, UTC))
    mail["Message-ID"] = f"<{message.id}@{domain}>"
    # RFC 3834 §5: automatic responders must not answer an auto-generated message.
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.text)
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html")
    return mail


class SmtpChannel:
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        tls: Literal["none", "starttls", "tls"] = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        name: str = "email",
        message_id_domain: str = "tessera",
        now: Callable[[], float] = time.time,
    ) -> None:
        if tls not in ("none", "starttls", "tls"):
            raise ValueError("tls must be one of none, starttls, tls")
        if tls == "none" and not _is_loopback(host):
            # Off until enabled: mail (and its links) in the clear is for a relay on the same host only.
            raise ValueError("SMTP without TLS is allowed only to a loopback host")
        for value, what in ((sender, "sender"), (message_id_domain, "Message-ID domain")):
            if not value or "\r" in value or "\n" in value:
                raise ValueError(f"the SMTP {what} must be a non-empty single line")
        self.name = name
        self.host, self.port, self.sender, self.tls = host, port, sender, tls
        self.username = username
        self._password = password
        self.timeout = timeout
        self.domain = message_id_domain
        self._now = now

    def __repr__(self) -> str:
        return f"SmtpChannel({self.host!r}, {self.port}, tls={self.tls!r})"

    async def send(self, message: Message) -> None:
        mail = build_email(message, self.sender, self._now(), self.domain)
        await asyncio.to_thread(self._send_sync, mail, message.recipient)
        log.info("message %s (%s) sent by e-mail", message.id, message.kind)

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.tls == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.tls == "starttls":
            try:
                smtp.ehlo()
                # Never fall back to plain text when the server does not offer STARTTLS.
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(f"the SMTP server {self.host}:{self.port} does not offer STARTTLS")
                smtp.starttls(context=context)
                smtp.ehlo()
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _send_sync(self, mail: EmailMessage, recipient: str) -> None:
        where = f"{self.host}:{self.port}"
        try:
            with self._connect() as smtp:
                if self.username is not None:
                    smtp.login(self.username, self._password or "")
                smtp.send_message(mail, from_addr=self.sender, to_addrs=[recipient])
        except DeliveryError:
            raise
        except smtplib.SMTPRecipientsRefused as e:
            code = next(iter(e.recipients.values()))[0] if e.recipients else 550
            raise DeliveryError(f"SMTP server {where} refused the recipient ({code})", permanent=code >= 500) from None
        except smtplib.SMTPResponseException as e:
            # The server's text is not kept: it may quote what it was sent.
            code = int(e.smtp_code)
            if code in _AUTH_CODES:
                raise DeliveryError(f"SMTP server {where} refused the credentials ({code})") from None
            what = type(e).__name__
            raise DeliveryError(f"SMTP server {where} answered {code} ({what})", permanent=code >= 500) from None
        except (smtplib.SMTPException, OSError) as e:
            raise DeliveryError(f"could not reach the SMTP server {where} ({type(e).__name__})") from None
