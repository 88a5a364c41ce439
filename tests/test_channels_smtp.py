"""The e-mail channel against a real SMTP server on loopback (aiosmtpd): RFC 5322 headers, a stable
Message-ID across retries, text and HTML parts, header injection refused, RFC 5321 reply classes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from channel_support import SmtpServer
from support import free_port
from tessera.channels import DeliveryError, Message, SmtpChannel, new_message_id

LINK = "https://tessera.example/approve/tok_" + "S3cr3t" * 6


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    srv = SmtpServer().start()
    yield srv
    srv.stop()


def channel(port: int, **kw: object) -> SmtpChannel:
    return SmtpChannel("127.0.0.1", port, "tessera@example.org", tls="none", now=lambda: 1_800_000_000.0, **kw)  # type: ignore[arg-type]


def message(**kw: object) -> Message:
    fields: dict[str, object] = {
        "id": new_message_id(),
        "channel": "email",
        "kind": "approval.requested",
        "recipient": "alice@example.org",
        "subject": "Approve deploy to prod?",
        "text": f"Open {LINK} within 10 minutes.",
        "ref": "apr_123",
    }
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def test_message_is_delivered_with_headers_text_and_html(smtp: SmtpServer) -> None:
    msg = message(html=f'<p><a href="{LINK}">Review the request</a></p>')
    asyncio.run(channel(smtp.port).send(msg))

    assert len(smtp.received) == 1
    got = smtp.received[0]
    assert got.mail_from == "tessera@example.org"
    assert got.rcpt_tos == ["alice@example.org"]
    mail = got.message
    assert mail["From"] == "tessera@example.org"
    assert mail["To"] == "alice@example.org"
    assert mail["Subject"] == "Approve deploy to prod?"
    assert mail["Message-ID"] == f"<{msg.id}@tessera>"
    assert mail["Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and LINK in text.get_content()
    assert html is not None and LINK in html.get_content()


def test_message_id_is_stable_across_a_retry(smtp: SmtpServer) -> None:
    msg = message()
    ch = channel(smtp.port)
    smtp.transient_failures = 1
    with pytest.raises(DeliveryError) as err:
        asyncio.run(ch.send(msg))
    assert not err.value.permanent and "451" in str(err.value)
    asyncio.run(ch.send(msg))
    assert [r.message["Message-ID"] for r in smtp.received] == [f"<{msg.id}@tessera>"]
    assert msg.text not in repr(msg)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "hello\r\nBcc: mallory@example.org"),
        ("subject", "hello\nBcc: mallory@example.org"),
        ("recipient", "alice@example.org\r\nBcc: mallory@example.org"),
    ],
)
def test_header_injection_is_refused(smtp: SmtpServer, field: str, value: str) -> None:
    with pytest.raises(DeliveryError) as err:
        asyncio.run(channel(smtp.port).send(message(**{field: value})))
    assert err.value.permanent
    assert "mallory" not in str(err.value)
    assert smtp.received == []


def test_server_down_is_a_transient_failure() -> None:
    with pytest.raises(DeliveryError) as err:
        asyncio.run(channel(free_port(), timeout=2).send(message()))
    assert not err.value.permanent
    assert LINK not in str(err.value)


def test_recipient_refused_with_5xx_is_permanent(smtp: SmtpServer) -> None:
    smtp.refuse.add("nobody@example.org")
    with pytest.raises(DeliveryError) as err:
        asyncio.run(channel(smtp.port).send(message(recipient="nobody@example.org")))
    assert err.value.permanent and "550" in str(err.value)
    assert smtp.received == []


def test_starttls_is_required_unless_disabled(smtp: SmtpServer) -> None:
    # aiosmtpd here offers no STARTTLS: the channel must not fall back to sending in the clear.
    ch = SmtpChannel("127.0.0.1", smtp.port, "tessera@example.org", tls="starttls", password="hunter2-secret")
    with pytest.raises(DeliveryError) as err:
        asyncio.run(ch.send(message()))
    assert "STARTTLS" in str(err.value) and not err.value.permanent
    assert smtp.received == []
    assert "hunter2" not in repr(ch)


def test_plain_smtp_only_to_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SmtpChannel("smtp.example.org", 25, "tessera@example.org", tls="none")
    with pytest.raises(ValueError, match="single line"):
        SmtpChannel("127.0.0.1", 25, "a@example.org\r\nBcc: x@example.org", tls="none")
