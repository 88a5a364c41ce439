"""The approval and enrolment pages in a real browser: Chromium with a WebAuthn virtual authenticator
(DevTools protocol), against a live server whose issuer is ``http://localhost:<port>`` (W3C WebAuthn
§5.1.4.1 needs a host name as relying party id; ``localhost`` is a secure context over http).

Each person has a browser context of their own (their device, their session, their passkey). The
pages run under the server's Content Security Policy, so a ceremony that works here also proves the
policy lets ``approve.js`` run and that nothing inline is needed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from approval_support import Mailbox, approval_server
from browser_support import TIMEOUT_MS, Device, csp_violations, skip_without_chromium
from support import LiveServer
from tessera.approvals.totp import code_at

pytestmark = skip_without_chromium

expect.set_options(timeout=TIMEOUT_MS)

ALICE_OWNS = "client:alice-laptop"


@dataclass
class World:
    srv: LiveServer
    admin: httpx.Client
    box: Mailbox
    alice: Device
    bob: Device
    enrolled_text: dict[str, str]
    enrolment_links: dict[str, str]
    #: created when the module starts (ttl 30 s, the shortest allowed) so it expires while the others run
    expiring: dict[str, Any]


def approval_link(box: Mailbox, request_id: str, person: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in box.all():
            data = m["data"]
            if m["kind"] == "approval.requested" and data["request_id"] == request_id and data["person_id"] == person:
                return str(data["link"])
        time.sleep(0.1)
    raise AssertionError(f"no approval link for {person} on {request_id} within {timeout}s")


def press(device: Device, button: str, expected: str) -> str:
    """Click ``button`` and wait for the page that follows; fail with that page's text unless it has
    ``expected`` (the refusal pages say why: ``#reason`` on a gone page, ``#error`` on the same page)."""
    device.page.click(button)
    expect(device.page.locator(f"{expected}, #reason, #error").first).to_be_visible()
    text = device.page.locator("main").inner_text()
    assert device.page.locator(expected).count() == 1, f"{device.name} pressed {button}; the page says: {text}"
    return text


def enrol_with_passkey(device: Device, link: str, label: str) -> str:
    """The person opens their enrolment link, names the passkey and adds it; returns the result page's text."""
    device.open(link)
    device.page.fill("#passkey-label", label)
    return press(device, "#add-passkey", "#enrolled")


def create(world: World, **body: Any) -> dict[str, Any]:
    full = {
        "requester": "client:ci-deployer",
        "action": "deploy",
        "resource": "https://deploy.example/services/payments",
        "approvers": ["alice"],
        "quorum": 1,
        "assurance": "aal2",
        "ttl": 600,
    }
    full.update(body)
    r = world.admin.post("/approvals", json=full)
    assert r.status_code == 201, r.text
    return r.json()


def read(world: World, request_id: str) -> dict[str, Any]:
    r = world.admin.get(f"/approvals/{request_id}")
    assert r.status_code == 200, r.text
    return r.json()


def votes(view: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((v["person_id"], v["decision"], v["aal"]) for v in view["votes"])


def assert_gone(device: Device, link: str, reasons: tuple[str, ...], screenshot: str) -> str:
    response = device.open(link)
    assert response.status == 410, response.status
    reason = device.page.locator("#reason")
    expect(reason).to_be_visible()
    got = reason.get_attribute("data-reason")
    assert got in reasons, f"data-reason {got!r}, expected one of {reasons}: {reason.inner_text()}"
    device.screenshot(screenshot)
    assert device.page.locator("#decide").count() == 0
    return str(got)


def assert_no_csp_violation(*devices: Device) -> None:
    for d in devices:
        assert csp_violations(d.console) == [], f"{d.name}'s browser reported: {d.console}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, chromium: Browser) -> Iterator[World]:
    srv = approval_server(tmp_path_factory.mktemp("browser") / "data")
    # WebAuthn: the relying party id is the issuer's host, which must be a name, not 127.0.0.1.
    srv.issuer = f"http://localhost:{srv.port}"
    srv.env["TESSERA_ISSUER"] = srv.issuer
    srv.start()
    admin = srv.admin()
    devices: list[Device] = []
    try:
        box = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        for pid, name, owns in (("alice", "Alice Example", [ALICE_OWNS]), ("bob", "Bob Example", [])):
            r = admin.put(f"/people/{pid}", json={"name": name, "groups": ["ops"], "channels": ["file"], "owns": owns})
            assert r.status_code == 201, r.text
            r = admin.post(f"/people/{pid}/enrolment")
            assert r.status_code == 202, r.text
        links = {pid: box.link("enrolment.link", pid) for pid in ("alice", "bob")}
        alice, bob = Device(chromium, "alice"), Device(chromium, "bob")
        devices += [alice, bob]
        alice.open(links["alice"])
        alice.screenshot("enrol-page")
        texts = {
            "alice": enrol_with_passkey(alice, links["alice"], "Alice's laptop"),
            "bob": enrol_with_passkey(bob, links["bob"], "Bob's laptop"),
        }
        alice.screenshot("enrolled")
        world = World(srv, admin, box, alice, bob, texts, links, {})
        world.expiring = create(world, ttl=30, action="rotate-keys", resource="kms:prod/signing")
        world.expiring["link"] = approval_link(box, world.expiring["request_id"], "alice")
        yield world
    finally:
        for d in devices:
            d.close()
        admin.close()
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken after the browser tests: " + r.stdout + r.stderr


def test_enrolment_registers_a_passkey_from_the_browser(world: World) -> None:
    assert "Alice's laptop (passkey)" in world.enrolled_text["alice"]
    for device, pid, label in ((world.alice, "alice", "Alice's laptop"), (world.bob, "bob", "Bob's laptop")):
        person = world.admin.get(f"/people/{pid}").json()
        [auth] = person["authenticators"]
        assert (auth["kind"], auth["label"], auth["user_verified"]) == ("passkey", label, True)
        assert auth["device_bound"] is False  # the virtual authenticator is a synced (backup-eligible) provider
        [cred] = device.credentials()
        assert cred["rpId"] == "localhost"
        assert cred["isResidentCredential"] is True
        user_handle = base64.b64decode(cred["userHandle"])
        assert user_handle == hashlib.sha256(b"tessera-person:" + pid.encode()).digest()[:16]
        # The person is told on their channels that an authenticator was added.
        world.box.wait("authenticator.changed", pid)
        # The enrolment link worked once.
        assert_gone(device, world.enrolment_links[pid], ("used",), f"enrolment-link-reused-{pid}")
    assert_no_csp_violation(world.alice, world.bob)


def test_approve_with_passkey_shows_the_transaction_and_records_an_aal2_vote(world: World) -> None:
    req = create(
        world,
        requester="client:ci-deployer",
        action="deploy",
        resource="https://deploy.example/services/payments",
        binding_message="release 2024.06.1",
    )
    link = approval_link(world.box, req["request_id"], "alice")
    page = world.alice.page
    response = world.alice.open(link)
    assert response.status == 200

    # The page's security headers: strict CSP (no inline code), not framable, no referrer, no caching.
    headers = response.all_headers()
    csp = headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"

    # Exactly what was requested is shown, with the check code the requester sees.
    expect(page.locator("#tx-requester")).to_have_text("client:ci-deployer")
    expect(page.locator("#tx-action")).to_have_text("deploy")
    expect(page.locator("#tx-resource")).to_have_text("https://deploy.example/services/payments")
    expect(page.locator("#tx-message")).to_have_text("release 2024.06.1")
    code = page.locator("#tx-code .code")
    expect(code).to_have_text(req["check_code"])
    assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}", req["check_code"])
    expect(page.locator("#approve-passkey")).to_be_visible()
    world.alice.screenshot("approval-page")

    press(world.alice, "#approve-passkey", "#outcome")
    expect(page.locator("#outcome")).to_have_text("Approval recorded")
    expect(page.locator("#status")).to_contain_text("approved")
    world.alice.screenshot("decided")

    view = read(world, req["request_id"])
    assert view["status"] == "approved"
    assert votes(view) == [("alice", "approve", "aal2")]
    assert_no_csp_violation(world.alice)


def test_deny_with_passkey(world: World) -> None:
    req = create(world, action="drop-table", resource="postgres://prod/payments/ledger")
    world.alice.open(approval_link(world.box, req["request_id"], "alice"))
    press(world.alice, "#deny-passkey", "#outcome")
    expect(world.alice.page.locator("#outcome")).to_have_text("Denial recorded")
    expect(world.alice.page.locator("#status")).to_contain_text("denied")
    world.alice.screenshot("denied")
    view = read(world, req["request_id"])
    assert view["status"] == "denied"
    assert votes(view) == [("alice", "deny", "aal2")]
    assert_no_csp_violation(world.alice)


def test_quorum_of_two_people_each_on_their_own_device(world: World) -> None:
    req = create(world, approvers=["alice", "bob"], quorum=2, action="grant-admin", resource="iam:prod/role/admin")
    links = {pid: approval_link(world.box, req["request_id"], pid) for pid in ("alice", "bob")}

    world.alice.open(links["alice"])
    expect(world.alice.page.locator("#tx-quorum")).to_contain_text("2 of 2 approvers")
    press(world.alice, "#approve-passkey", "#outcome")
    expect(world.alice.page.locator("#outcome")).to_have_text("Approval recorded")
    expect(world.alice.page.locator("#status")).to_contain_text("pending")
    expect(world.alice.page.locator("#status")).to_contain_text("1 more approval")
    view = read(world, req["request_id"])
    assert view["status"] == "pending"
    assert votes(view) == [("alice", "approve", "aal2")]
    # Alice's link is spent even though the request is still open.
    assert_gone(world.alice, links["alice"], ("used",), "reused-link-pending")

    world.bob.open(links["bob"])
    press(world.bob, "#approve-passkey", "#outcome")
    expect(world.bob.page.locator("#outcome")).to_have_text("Approval recorded")
    expect(world.bob.page.locator("#status")).to_contain_text("approved")
    view = read(world, req["request_id"])
    assert view["status"] == "approved"
    assert votes(view) == [("alice", "approve", "aal2"), ("bob", "approve", "aal2")]
    assert_no_csp_violation(world.alice, world.bob)


def test_a_used_link_cannot_be_used_again(world: World) -> None:
    req = create(world, action="restart", resource="k8s:prod/deployment/api")
    link = approval_link(world.box, req["request_id"], "alice")
    world.alice.open(link)
    press(world.alice, "#approve-passkey", "#outcome")
    expect(world.alice.page.locator("#outcome")).to_have_text("Approval recorded")
    # Back to the form: the page is no-store, so the browser asks again and the link is spent.
    world.alice.page.go_back()
    expect(world.alice.page.locator("#reason")).to_have_attribute("data-reason", "approved")
    assert world.alice.page.locator("#approve-passkey").count() == 0
    assert_gone(world.alice, link, ("used", "approved"), "reused-link")
    assert votes(read(world, req["request_id"])) == [("alice", "approve", "aal2")]


def test_a_link_opened_in_another_persons_session_decides_nothing(world: World) -> None:
    req = create(world, approvers=["alice", "bob"], action="transfer", resource="bank:acct/4711")
    link = approval_link(world.box, req["request_id"], "alice")
    page = world.bob.page

    # Bob's browser, Bob's authenticator, Alice's link: the passkey ceremony finds no usable credential.
    world.bob.open(link)
    page.click("#approve-passkey")
    expect(page.locator("#error")).to_contain_text("Passkey:")
    world.bob.screenshot("wrong-person")
    view = read(world, req["request_id"])
    assert (view["status"], view["votes"]) == ("pending", [])

    # Bob's page asks his authenticator for any passkey it holds for this site (discoverable
    # credential, no allow-list) and posts that assertion: the server refuses it for Alice's link.
    page.evaluate(
        """async () => {
          const form = document.getElementById("decide");
          const r = await fetch(form.dataset.options, {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf},
            body: JSON.stringify({decision: "approve"})});
          const o = await r.json();
          const b64 = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), c => c.charCodeAt(0));
          const u = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
            .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
          const cred = await navigator.credentials.get({publicKey: {
            challenge: b64(o.challenge), rpId: o.rpId, userVerification: "required", allowCredentials: []}});
          const a = cred.response;
          form.querySelector("#credential").value = JSON.stringify({id: cred.id, rawId: u(cred.rawId),
            type: cred.type, response: {authenticatorData: u(a.authenticatorData),
            clientDataJSON: u(a.clientDataJSON), signature: u(a.signature),
            userHandle: a.userHandle ? u(a.userHandle) : null}, clientExtensionResults: {}});
          const d = form.querySelector("#decision");
          d.value = "approve"; d.disabled = false;
          form.submit();
        }"""
    )
    expect(page.locator("#error")).to_contain_text("not accepted")
    world.bob.screenshot("wrong-person-refused")
    view = read(world, req["request_id"])
    assert (view["status"], view["votes"]) == ("pending", [])

    # The link still belongs to Alice: in her browser it works.
    world.alice.open(link)
    press(world.alice, "#approve-passkey", "#outcome")
    expect(world.alice.page.locator("#outcome")).to_have_text("Approval recorded")
    assert votes(read(world, req["request_id"])) == [("alice", "approve", "aal2")]
    assert_no_csp_violation(world.alice, world.bob)


def test_a_synced_passkey_does_not_reach_aal3(world: World) -> None:
    """AAL3 needs a device-bound key (NIST SP 800-63B §2.3); the virtual authenticator's is backup-eligible."""
    req = create(world, assurance="aal3", action="export-keys", resource="kms:prod/root")
    link = approval_link(world.box, req["request_id"], "alice")
    world.alice.open(link)
    expect(world.alice.page.locator("#tx-quorum")).to_contain_text("AAL3")
    press(world.alice, "#approve-passkey", "#error")
    expect(world.alice.page.locator("#error")).to_contain_text("AAL3")
    expect(world.alice.page.locator("#error")).to_contain_text("AAL2")
    view = read(world, req["request_id"])
    assert (view["status"], view["votes"]) == ("pending", [])
    assert_no_csp_violation(world.alice)


def test_code_path_works_without_passkeys(world: World, chromium: Browser) -> None:
    """The form-only path (no WebAuthn): a person enrols an authenticator app and approves with its code."""
    r = world.admin.put("/people/carol", json={"name": "Carol Example", "channels": ["file"]})
    assert r.status_code == 201, r.text
    assert world.admin.post("/people/carol/enrolment").status_code == 202
    carol = Device(chromium, "carol")
    try:
        carol.open(world.box.link("enrolment.link", "carol"))
        press(carol, "#start-totp", "#totp-secret")
        secret_b32 = carol.page.locator("#totp-secret").inner_text().strip()
        secret = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
        carol.page.fill("#code", code_at(secret, time.time()))
        press(carol, "#totp-confirm", "#enrolled")

        req = create(world, approvers=["carol"], assurance="aal1", action="read-logs", resource="logs:prod/api")
        carol.open(approval_link(world.box, req["request_id"], "carol"))
        expect(carol.page.locator("#approve-passkey")).to_have_count(0)
        # The enrolment used the current 30 s step (RFC 6238 §5.2: a code is accepted once): the next one.
        carol.page.fill("#code", code_at(secret, time.time() + 30))
        press(carol, "#approve-code", "#outcome")
        expect(carol.page.locator("#outcome")).to_have_text("Approval recorded")
        assert votes(read(world, req["request_id"])) == [("carol", "approve", "aal1")]
        assert_no_csp_violation(carol)
    finally:
        carol.close()


def test_self_approval_is_refused(world: World) -> None:
    # The requester is Alice herself: she is excluded and gets no link; Bob decides.
    own = create(world, requester="person:alice", approvers=["alice", "bob"], quorum=1, action="raise-limit")
    assert "alice" in own["excluded"] and own["eligible"] == ["bob"]
    # A principal Alice owns is in the delegation chain: the same.
    owned = create(
        world, requester="client:ci-deployer", delegation=[ALICE_OWNS], approvers=["alice", "bob"], action="merge"
    )
    assert "owns" in owned["excluded"]["alice"] and owned["eligible"] == ["bob"]

    world.bob.open(approval_link(world.box, own["request_id"], "bob"))
    expect(world.bob.page.locator("#tx-requester")).to_have_text("person:alice")
    press(world.bob, "#approve-passkey", "#outcome")
    expect(world.bob.page.locator("#outcome")).to_have_text("Approval recorded")
    assert votes(read(world, own["request_id"])) == [("bob", "approve", "aal2")]

    approval_link(world.box, owned["request_id"], "bob")  # Bob's links have been written by now
    sent_to_alice = [
        m["data"]["request_id"]
        for m in world.box.all()
        if m["kind"] == "approval.requested" and m["data"]["person_id"] == "alice"
    ]
    assert own["request_id"] not in sent_to_alice and owned["request_id"] not in sent_to_alice

    # Naming only Alice for her own request leaves nobody eligible: refused outright.
    r = world.admin.post(
        "/approvals",
        json={"requester": "person:alice", "action": "raise-limit", "resource": "x", "approvers": ["alice"]},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert_no_csp_violation(world.bob)


def test_an_expired_request_link_shows_why(world: World) -> None:
    """Runs last: the request was created at module start with the shortest ttl (30 s)."""
    req = world.expiring
    remaining = req["expires_at"] - time.time()
    if remaining > -1:
        time.sleep(remaining + 1.2)  # the server compares whole seconds
    # The request's expiry decides (a timeout is a denial); its links expire with it.
    assert_gone(world.alice, req["link"], ("request_expired",), "expired-link")
    view = read(world, req["request_id"])
    assert (view["status"], view["votes"]) == ("expired", [])
