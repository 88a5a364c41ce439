"""OpenID CIBA end to end, with real parts only: an agent process asks, a person approves on their
phone-like browser, a relying party verifies the result without calling home.

- Tessera (``tessera serve``, issuer ``http://localhost:<port>``: a WebAuthn relying party id cannot be
  an IP address) reaches the approver through a Standard Webhooks channel; the loopback receiver
  verifies every delivery with the reference library (``standardwebhooks``).
- Pat enrols a passkey in Chromium (CDP virtual authenticator) from the enrolment link the webhook
  delivered, and later approves from the approval link it delivered, after reading the binding message
  and the RFC 9396 payment details on the page.
- The agent (``tests/ciba_agent.py``) is a separate process that knows only HTTP: it registers a CIBA
  client (RFC 7591), calls the backchannel authentication endpoint (CIBA §7) and polls the token
  endpoint (§10.1, honouring ``interval`` and ``slow_down``) or, in ping mode, waits for the callback on
  its own loopback endpoint (§10.2) and redeems once.
- The relying party checks the access token with ``tessera.verify.Verifier`` (JWKS and status list are
  its only requests) and the ID token with PyJWT.
- The no-browser path: an authenticator app (TOTP) at AAL1, the page driven over plain HTTP.
"""

from __future__ import annotations

import json
import pathlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, expect
from standardwebhooks.webhooks import Webhook

from approval_support import PageClient, approval_server
from browser_support import TIMEOUT_MS, Device, csp_violations, skip_without_chromium
from channel_support import WebhookReceiver
from support import LiveServer
from tessera.approvals.totp import code_at
from tessera.channels import generate_key
from tessera.verify import Verifier

pytestmark = skip_without_chromium

expect.set_options(timeout=TIMEOUT_MS)

AGENT = pathlib.Path(__file__).resolve().parent / "ciba_agent.py"
RESOURCE = "https://payments.example"  # the agent client's default_resource: the access token's aud
PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"currency": "EUR", "amount": "12.00"},
    "creditorName": "ACME",
}


@dataclass
class World:
    srv: LiveServer
    admin: httpx.Client
    hook: WebhookReceiver
    secret: str
    pat: Device

    def messages(self, kind: str, person: str) -> list[dict[str, Any]]:
        """The webhook payloads of ``kind`` for ``person``, each verified again here with the reference
        library (the receiver already answered 401 to anything that did not verify)."""
        out = []
        for d in self.hook.deliveries:
            if not d.verified:
                continue
            payload = Webhook(self.secret).verify(d.body, d.headers)
            if payload["type"] == kind and payload["data"].get("person_id") == person:
                out.append(payload)
        return out

    def link(self, kind: str, person: str, count: int, timeout: float = 15.0) -> str:
        """The link in the ``count``-th ``kind`` message for ``person`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(kind, person)
            if len(found) >= count:
                return str(found[count - 1]["data"]["link"])
            time.sleep(0.05)
        raise AssertionError(f"no {kind} message #{count} for {person} within {timeout}s")

    def add_person(self, pid: str, name: str) -> str:
        r = self.admin.put(f"/people/{pid}", json={"name": name, "channels": ["webhook:approvers"]})
        assert r.status_code == 201, r.text
        before = len(self.messages("enrolment.link", pid))
        r = self.admin.post(f"/people/{pid}/enrolment")
        assert r.status_code == 202, r.text
        return self.link("enrolment.link", pid, before + 1)


class Agent:
    """``tests/ciba_agent.py`` in a subprocess; its JSON lines are read as they come."""

    def __init__(self, srv: LiveServer, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(AGENT), "--issuer", srv.issuer, "--registration-token", srv.reg_token, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"the agent printed no {event} within {timeout}s: {self.stderr()}") from None
        assert got["event"] == event, f"expected {event}, the agent printed {got}; {self.stderr()}"
        return got

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        result = self.next("result", timeout)
        assert self.proc.wait(10) == (0 if result["ok"] else 1)
        return result


class Recording(httpx.BaseTransport):
    """The relying party's only network access: every URL it fetches is kept."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return self.inner.handle_request(request)


def agent_args(**extra: str) -> list[str]:
    args = {
        "login-hint": "pat",
        "binding-message": "Pay ACME 12.00 EUR",
        "authorization-details": json.dumps([PAYMENT]),
        **extra,
    }
    return [x for k, v in args.items() for x in (f"--{k}", v)]


def relying_party_checks(world: World, client_id: str, tokens: dict[str, Any], person: str, acr: str) -> None:
    """What a payments API and the agent's own login check: nothing but the issuer's published keys and
    status list is fetched."""
    transport = Recording()
    verifier = Verifier(
        world.srv.issuer,
        audiences=[RESOURCE],
        algorithms=["ES256"],
        max_act_depth=1,
        allowed_actors=[client_id],
        require_status=True,
        background_refresh=False,
        transport=transport,
    )
    claims = verifier.verify(tokens["access_token"])
    assert claims["sub"] == person
    assert claims["act"] == {"sub": client_id}
    assert claims["client_id"] == client_id
    assert claims["authorization_details"] == [PAYMENT]
    assert claims["acr"] == acr
    assert claims["scope"].split() == ["openid", "payments"]
    assert tokens["authorization_details"] == [PAYMENT] and tokens["token_type"] == "Bearer"
    assert set(transport.paths) <= {"/.well-known/oauth-authorization-server", "/oauth/jwks", "/oauth/status/1"}
    assert "/oauth/jwks" in transport.paths and any(p.startswith("/oauth/status/") for p in transport.paths)

    metadata = httpx.get(world.srv.issuer + "/.well-known/openid-configuration").json()
    key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(tokens["id_token"])
    id_claims = jwt.decode(
        tokens["id_token"],
        key.key,
        algorithms=["ES256"],
        audience=client_id,
        issuer=world.srv.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    assert id_claims["sub"] == person
    assert id_claims["acr"] == acr
    assert abs(id_claims["auth_time"] - time.time()) < 60


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, chromium: Browser) -> Iterator[World]:
    secret, _ = generate_key()
    hook = WebhookReceiver(secrets=[secret]).start()
    srv = approval_server(
        tmp_path_factory.mktemp("ciba-e2e") / "data",
        TESSERA_WEBHOOKS=json.dumps([{"name": "approvers", "url": hook.url, "keys": [secret]}]),
        TESSERA_DEV_MODE="true",  # http:// on loopback for the webhook and the ping endpoint
        TESSERA_CIBA_INTERVAL="1",
    )
    # WebAuthn: the relying party id is the issuer's host, which must be a name, not 127.0.0.1.
    srv.issuer = f"http://localhost:{srv.port}"
    srv.env["TESSERA_ISSUER"] = srv.issuer
    pat: Device | None = None
    admin: httpx.Client | None = None
    try:
        srv.start()
        admin = srv.admin()
        world = World(srv, admin, hook, secret, None)  # type: ignore[arg-type]
        link = world.add_person("pat", "Pat Example")
        pat = Device(chromium, "pat")
        pat.open(link)
        pat.page.fill("#passkey-label", "Pat's phone")
        pat.page.click("#add-passkey")
        expect(pat.page.locator("#enrolled")).to_be_visible()
        world.pat = pat
        yield world
    finally:
        if pat is not None:
            pat.close()
        if admin is not None:
            admin.close()
        srv.stop()
        hook.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken after the CIBA tests: " + r.stdout + r.stderr


def approve_in_browser(world: World, count: int, client_id: str) -> None:
    """Pat opens the ``count``-th approval link from the webhook, reads what is asked and approves."""
    link = world.link("approval.requested", "pat", count)
    page = world.pat.page
    assert world.pat.open(link).status == 200
    expect(page.locator("#tx-requester")).to_have_text(client_id)
    expect(page.locator("#tx-for")).to_have_text("pat")
    expect(page.locator("#tx-message")).to_have_text("Pay ACME 12.00 EUR")
    details = page.locator("tr:has(th:text-is('Authorization details')) pre")
    expect(details).to_have_count(1)
    assert json.loads(details.inner_text()) == PAYMENT
    page.click("#approve-passkey")
    expect(page.locator("#outcome")).to_have_text("Approval recorded")
    expect(page.locator("#status")).to_contain_text("approved")
    assert csp_violations(world.pat.console) == [], world.pat.console


def test_poll_agent_gets_tokens_after_pat_approves_with_a_passkey(world: World) -> None:
    seen = len(world.messages("approval.requested", "pat"))
    agent = Agent(world.srv, *agent_args())
    client_id = agent.next("registered")["client_id"]
    ack = agent.next("auth_req_id")
    assert ack["interval"] == 1 and len(ack["auth_req_id"]) >= 43  # §7.3: at least 128 bits of entropy

    # The approval reaches Pat only through the webhook; the agent keeps polling meanwhile.
    link = world.link("approval.requested", "pat", seen + 1)
    payload = world.messages("approval.requested", "pat")[seen]
    assert payload["data"]["link"] == link and link.startswith(world.srv.issuer + "/approve/")
    time.sleep(1.5)  # let the agent see authorization_pending at least once
    approve_in_browser(world, seen + 1, client_id)

    result = agent.finish()
    assert result["ok"], result
    assert result["polls"][-1] == "200" and "authorization_pending" in result["polls"]
    assert "slow_down" not in result["polls"]  # it waited the interval every time
    relying_party_checks(world, client_id, result["body"], "pat", "urn:tessera:aal2")


def test_ping_agent_redeems_once_after_the_callback(world: World) -> None:
    seen = len(world.messages("approval.requested", "pat"))
    agent = Agent(world.srv, *agent_args(mode="ping"))
    client_id = agent.next("registered")["client_id"]
    ack = agent.next("auth_req_id")
    approve_in_browser(world, seen + 1, client_id)

    ping = agent.next("pinged", timeout=20)
    # §10.2: the callback carries exactly this request's auth_req_id, with the agent's bearer token.
    assert ping["auth_req_ids"] == [ack["auth_req_id"]] and ping["refused_pings"] == 0
    result = agent.finish()
    assert result["ok"], result
    assert result["polls"] == ["200"]  # one token request: no polling in ping mode
    relying_party_checks(world, client_id, result["body"], "pat", "urn:tessera:aal2")


def test_no_browser_an_authenticator_app_code_at_aal1(world: World) -> None:
    """The scripted path the README shows: TOTP enrolment and approval over plain HTTP."""
    sam = PageClient(world.srv.issuer)
    secret = sam.enrol_totp(world.add_person("sam", "Sam Example"))

    agent = Agent(world.srv, *agent_args(**{"login-hint": "sam", "acr-values": "urn:tessera:aal1"}))
    client_id = agent.next("registered")["client_id"]
    agent.next("auth_req_id")
    link = world.link("approval.requested", "sam", 1)
    # The enrolment used the current 30 s step (RFC 6238 §5.2: a code is accepted once): the next one.
    r = sam.decide_with_code(link, "approve", code_at(secret, time.time() + 30))
    assert r.status_code == 200 and 'id="outcome"' in r.text, r.text

    result = agent.finish()
    assert result["ok"], result
    relying_party_checks(world, client_id, result["body"], "sam", "urn:tessera:aal1")
