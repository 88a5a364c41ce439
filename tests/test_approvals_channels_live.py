"""Approval messages through real channels: a live server sends e-mail to a loopback SMTP server
(aiosmtpd) and Standard Webhooks deliveries to a loopback receiver that verifies them with the
reference library (``standardwebhooks``). The durable outbox retries through an outage and a failing
receiver, and every message arrives exactly once under one webhook id."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from approval_support import PageClient, approval_server
from channel_support import Received, SmtpServer, WebhookReceiver
from support import LiveServer
from tessera.channels import generate_key
from webauthn_support import SoftAuthenticator

T = TypeVar("T")


def eventually(what: str, fn: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class Env:
    srv: LiveServer
    smtp: SmtpServer
    hook: WebhookReceiver
    secret: str
    admin: httpx.Client

    def request(self, approvers: list[str], **body: Any) -> dict[str, Any]:
        r = self.admin.post(
            "/approvals",
            json={"requester": "ci-bot", "action": "deploy", "resource": "prod", "approvers": approvers, **body},
        )
        assert r.status_code == 201, r.text
        return r.json()

    def outbox(self, rid: str) -> list[dict[str, Any]]:
        r = self.admin.get("/outbox", params={"ref": rid})
        assert r.status_code == 200, r.text
        return list(r.json()["messages"])

    def mails(self, to: str, subject: str) -> list[Received]:
        with self.smtp.lock:
            return [m for m in self.smtp.received if to in m.rcpt_tos and subject in str(m.message["Subject"])]

    def deliveries(self, rid: str) -> list[Any]:
        return [d for d in self.hook.deliveries if json.loads(d.body)["data"].get("request_id") == rid]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    secret, _ = generate_key()
    smtp = SmtpServer().start()
    hook = WebhookReceiver(secrets=[secret]).start()
    srv = approval_server(
        tmp_path_factory.mktemp("channels") / "data",
        TESSERA_SMTP_HOST="127.0.0.1",
        TESSERA_SMTP_PORT=str(smtp.port),
        TESSERA_SMTP_TLS="none",
        TESSERA_SMTP_FROM="tessera@example.org",
        TESSERA_WEBHOOKS=json.dumps([{"name": "ops", "url": hook.url, "keys": [secret]}]),
        TESSERA_DEV_MODE="true",  # an http:// webhook URL on loopback
    )
    try:
        srv.start()
        with srv.admin() as admin:
            people: dict[str, dict[str, Any]] = {
                "erin": {"email": "erin@example.org", "channels": ["email"]},
                "wendy": {"channels": ["webhook:ops"]},
            }
            for pid, body in people.items():
                put = admin.put(f"/people/{pid}", json={"name": pid.title(), **body})
                assert put.status_code == 201, put.text
            yield Env(srv, smtp, hook, secret, admin)
    finally:
        srv.stop()
        hook.stop()
        smtp.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def plain_text(mail: Received) -> str:
    body = mail.message.get_body(("plain",))
    assert body is not None, mail.message
    return str(body.get_content())


def link_in(text: str, kind: str) -> str:
    m = re.search(rf"http://127\.0\.0\.1:\d+/{kind}/[A-Za-z0-9_-]{{43}}", text)
    assert m, text
    return m.group(0)


def test_approval_email_arrives_with_a_link_that_works(env: Env) -> None:
    r = env.admin.post("/people/erin/enrolment")
    assert r.status_code == 202, r.text
    [enrol] = eventually("the enrolment e-mail", lambda: env.mails("erin@example.org", "Set up"))
    auth = SoftAuthenticator()
    page = PageClient(env.srv.issuer)
    page.enrol_passkey(link_in(plain_text(enrol), "enrol"), auth)
    eventually("the authenticator notice", lambda: env.mails("erin@example.org", "Authenticator added"))

    req = env.request(["erin"], action="deploy", resource="prod/api")
    [mail] = eventually("the approval e-mail", lambda: env.mails("erin@example.org", "Approval needed"))
    assert mail.mail_from == "tessera@example.org" and mail.rcpt_tos == ["erin@example.org"]
    assert mail.message["Subject"] == "Approval needed: deploy on prod/api"
    [row] = env.outbox(req["request_id"])
    assert mail.message["Message-ID"] == f"<{row['message_id']}@tessera>"
    text = plain_text(mail)
    assert req["check_code"] in text and "prod/api" in text
    link = link_in(text, "approve")

    r = page.decide_with_passkey(link, "approve", auth)
    assert r.status_code == 200 and "<strong>approved</strong>" in r.text, r.text
    assert env.admin.get(f"/approvals/{req['request_id']}").json()["status"] == "approved"


def test_email_outage_is_retried_and_delivered_once(env: Env) -> None:
    with env.smtp.lock:
        env.smtp.transient_failures = 2  # 451 twice, then accepted
    rid = env.request(["erin"], action="restart", resource="prod/db")["request_id"]
    mails = eventually("the e-mail after two 451s", lambda: env.mails("erin@example.org", "restart on prod/db"))
    [row] = eventually("delivered", lambda: [m for m in env.outbox(rid) if m["status"] == "delivered"])
    assert row["attempts"] == 3
    time.sleep(0.5)  # a duplicate would come right after
    assert len(env.mails("erin@example.org", "restart on prod/db")) == len(mails) == 1


def test_webhook_delivery_is_signed_and_verifies(env: Env) -> None:
    req = env.request(["wendy"], action="scale", resource="prod/web")
    rid = req["request_id"]
    [d] = eventually("the webhook", lambda: env.deliveries(rid))
    assert d.verified and d.status == 200, d.reason
    [row] = env.outbox(rid)
    assert d.headers["webhook-id"] == row["message_id"]
    assert abs(int(d.headers["webhook-timestamp"]) - time.time()) < 60

    payload = Webhook(env.secret).verify(d.body, d.headers)
    assert payload["type"] == "approval.requested"
    data = payload["data"]
    assert data["request_id"] == rid and data["person_id"] == "wendy"
    assert data["check_code"] == req["check_code"]
    assert httpx.get(data["link"]).status_code == 200  # the link opens the page

    other, _ = generate_key()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(d.body, d.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(env.secret).verify(d.body.replace(b"scale", b"purge"), d.headers)


def test_stale_webhook_timestamp_is_rejected_by_the_receiver_library(env: Env) -> None:
    rid = env.request(["wendy"], action="stale-check")["request_id"]
    [d] = eventually("the webhook", lambda: env.deliveries(rid))
    assert d.verified
    wh = Webhook(env.secret)
    stale = datetime.now(UTC) - timedelta(minutes=10)
    headers = {
        **d.headers,
        "webhook-timestamp": str(int(stale.timestamp())),
        "webhook-signature": wh.sign(d.headers["webhook-id"], stale, d.body.decode()),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        wh.verify(d.body, headers)
    # The receiver refuses the same late delivery.
    r = httpx.post(env.hook.url, content=d.body, headers=headers)
    assert r.status_code == 401
    assert "too old" in env.hook.deliveries[-1].reason


def test_receiver_outage_is_retried_and_the_message_arrives_once(env: Env) -> None:
    env.hook.stop()
    try:
        rid = env.request(["wendy"], action="migrate", resource="prod/db")["request_id"]
        failing = eventually(
            "a failed attempt in /admin/outbox",
            lambda: [m for m in env.outbox(rid) if m["status"] == "pending" and m["last_error"]],
        )
        assert failing[0]["attempts"] >= 1 and env.hook.url not in failing[0]["last_error"]
        counts = env.admin.get("/outbox").json()["counts"]
        assert counts["pending"] >= 1
        failed = [e for e in env.admin.get("/audit", params={"limit": 1000}).json() if e["event"] == "outbox.failed"]
        assert rid in [e["data"]["ref"] for e in failed]
    finally:
        env.hook.start()
    [row] = eventually("delivery after the outage", lambda: [m for m in env.outbox(rid) if m["status"] == "delivered"])
    time.sleep(0.5)
    accepted = [i for i in env.hook.accepted_ids() if i == row["message_id"]]
    assert accepted == [row["message_id"]]
    assert [d.headers["webhook-id"] for d in env.deliveries(rid)] == [row["message_id"]]


def test_failing_receiver_is_retried_under_the_same_webhook_id(env: Env) -> None:
    with env.hook.lock:
        env.hook.state.fail_next = 2
        env.hook.state.fail_status = 503
    rid = env.request(["wendy"], action="failover", resource="prod/db")["request_id"]
    [row] = eventually("delivery after two 503s", lambda: [m for m in env.outbox(rid) if m["status"] == "delivered"])
    time.sleep(0.5)
    got = env.deliveries(rid)
    assert [d.status for d in got] == [503, 503, 200]
    assert {d.headers["webhook-id"] for d in got} == {row["message_id"]}
    assert all(d.verified for d in got)
    assert row["attempts"] == 3
    assert env.hook.accepted_ids().count(row["message_id"]) == 1
    events = [e for e in env.admin.get("/audit", params={"limit": 1000}).json() if e["subject"] == row["message_id"]]
    assert "outbox.delivered" in [e["event"] for e in events]


def test_nothing_is_lost(env: Env) -> None:
    def drained() -> dict[str, int] | None:
        counts: dict[str, int] = env.admin.get("/outbox").json()["counts"]
        return counts if counts["pending"] == 0 else None

    counts = eventually("an empty outbox", drained)
    assert counts["dead"] == 0
    # Every message reached its recipient once: each e-mail once, each webhook id accepted once.
    accepted = env.hook.accepted_ids()
    assert len(accepted) == len(set(accepted))
    assert counts["delivered"] == len(env.smtp.received) + len(accepted) >= 8
