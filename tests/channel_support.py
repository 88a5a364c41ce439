"""Loopback servers for the channel tests: an SMTP server (aiosmtpd) and a Standard Webhooks receiver.

The receiver verifies symmetric signatures with the reference library (``standardwebhooks``) and
Ed25519 ones with ``cryptography`` as the specification describes, so nothing of the code under test
helps a delivery verify. Both can be told to fail the next N requests; the receiver can be stopped and
started on the same port to simulate an outage.
"""

from __future__ import annotations

import base64
import email
import email.policy
import http.server
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from support import free_port

# -- SMTP -------------------------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class _Handler:
    def __init__(self, box: SmtpServer) -> None:
        self.box = box

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.box.lock:
            if self.box.transient_failures > 0:
                self.box.transient_failures -= 1
                return "451 4.3.0 try again later"
        if address in self.box.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.box.lock:
            self.box.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 (no TLS) collecting what it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.refuse: set[str] = set()
        self.transient_failures = 0
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


# -- Standard Webhooks receiver -------------------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool
    reason: str = ""


@dataclass
class ReceiverState:
    secrets: list[str] = field(default_factory=list)  # whsec_... checked with the standardwebhooks library
    public_keys: list[str] = field(default_factory=list)  # whpk_... checked with cryptography
    fail_next: int = 0
    fail_status: int = 500
    status: int = 200
    deliveries: list[Delivery] = field(default_factory=list)


def verify_ed25519(public_key: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> None:
    """Standard Webhooks v1a: Ed25519 over ``{id}.{timestamp}.{body}``, any of the header's signatures."""
    pk = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    ts = int(headers["webhook-timestamp"])
    if abs(time.time() - ts) > tolerance:
        raise WebhookVerificationError("timestamp out of tolerance")
    content = f"{headers['webhook-id']}.{ts}.".encode() + body
    for item in headers["webhook-signature"].split(" "):
        version, _, sig = item.partition(",")
        if version != "v1a":
            continue
        try:
            pk.verify(base64.b64decode(sig), content)
            return
        except InvalidSignature:
            continue
    raise WebhookVerificationError("no matching v1a signature")


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    state: ReceiverState
    lock: threading.Lock

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified, reason = False, ""
        try:
            for secret in self.state.secrets:
                try:
                    Webhook(secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError as e:
                    reason = str(e)
            for pk in self.state.public_keys:
                try:
                    verify_ed25519(pk, headers, body)
                    verified = True
                except WebhookVerificationError as e:
                    reason = str(e)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
        with self.lock:
            if not verified:
                status = 401
            elif self.state.fail_next > 0:
                self.state.fail_next -= 1
                status = self.state.fail_status
            else:
                status = self.state.status
            self.state.deliveries.append(Delivery(headers, body, status, verified, "" if verified else reason))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


class WebhookReceiver:
    def __init__(self, secrets: list[str] | None = None, public_keys: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.state = ReceiverState(secrets=list(secrets or []), public_keys=list(public_keys or []))
        self.lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookReceiver:
        handler = type("Handler", (_WebhookHandler,), {"state": self.state, "lock": self.lock})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self.state.deliveries)

    def accepted_ids(self) -> list[str]:
        """webhook-id of every verified delivery answered 2xx (a receiver would process each once)."""
        return [d.headers["webhook-id"] for d in self.deliveries if d.verified and 200 <= d.status < 300]
