"""The admin console in a real browser: Debian's Chromium (Playwright) against a live ``tessera serve``.

An operator signs in with the admin token, walks every page (a screenshot of each is kept in
``test-artifacts/console/``), quarantines a client and asks for the lift, retries a dead-lettered
message, and signs out. An administrator signs in with a passkey (CDP virtual authenticator, enrolled
through the person's own enrolment link); a person outside the admin group cannot. Every page runs
under the server's Content Security Policy: a violation reported by Chromium fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from approval_support import Mailbox, approval_server
from browser_support import ARTIFACTS, TIMEOUT_MS, Device, csp_violations, skip_without_chromium
from channel_support import WebhookReceiver
from federation_support import FakeIssuer, kubernetes_sa_claims
from support import LiveServer

pytestmark = skip_without_chromium

expect.set_options(timeout=TIMEOUT_MS)

PAGES = ["overview", "clients", "issuers", "people", "approvals", "flows", "revocations", "audit", "outbox"]
SHOTS = ARTIFACTS / "console"
CIBA = "urn:openid:params:grant-type:ciba"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flows"


@dataclass
class World:
    srv: LiveServer
    admin: httpx.Client
    box: Mailbox
    hook: WebhookReceiver
    operator: Device
    ada: Device
    bob: Device
    client: dict[str, str]
    dead_message: str


def token(srv: LiveServer, client: dict[str, str], secret: str | None = None) -> httpx.Response:
    return httpx.post(
        srv.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=(client["client_id"], secret or client["client_secret"]),
        timeout=10,
    )


def enrol(device: Device, link: str, label: str) -> None:
    device.open(link)
    device.page.fill("#passkey-label", label)
    device.page.click("#add-passkey")
    expect(device.page.locator("#enrolled")).to_be_visible()


def shot(device: Device, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    device.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_csp_violation(*devices: Device) -> None:
    for d in devices:
        assert csp_violations(d.console) == [], f"{d.name}'s browser reported: {d.console}"


def wait_for(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def approval_link(box: Mailbox, request_id: str, person: str) -> str:
    found: list[str] = []

    def sent() -> bool:
        found[:] = [
            str(m["data"]["link"])
            for m in box.all()
            if m["kind"] == "approval.requested"
            and m["data"]["request_id"] == request_id
            and m["data"]["person_id"] == person
        ]
        return bool(found)

    wait_for(f"the approval link of {request_id} for {person}", sent)
    return found[-1]


def audit(world: World, event: str) -> list[dict[str, object]]:
    records = world.admin.get("/audit", params={"limit": 1000}).json()
    return [r for r in records if r["event"] == event]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, chromium: Browser) -> Iterator[World]:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook = WebhookReceiver(secrets=[secret]).start()
    idp = FakeIssuer(algs=("ES256",)).start()
    hook.state.fail_next, hook.state.fail_status = 1, 410  # the first delivery is refused for good: a dead letter
    srv = approval_server(
        tmp_path_factory.mktemp("console") / "data",
        TESSERA_CONSOLE_ADMIN_GROUP="console-admins",
        TESSERA_WEBHOOKS=json.dumps([{"name": "ops", "url": hook.url, "keys": [secret]}]),
        TESSERA_DEV_MODE="true",  # the webhook receiver is on loopback
        TESSERA_KEY_REFRESH_INTERVAL="1",  # published flows are in force within a second
    )
    # WebAuthn: the relying party id is the issuer's host, which must be a name, not 127.0.0.1.
    srv.issuer = f"http://localhost:{srv.port}"
    srv.env["TESSERA_ISSUER"] = srv.issuer
    srv.start()
    admin = srv.admin()
    devices: list[Device] = []
    try:
        box = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        people = {
            "ada": {"name": "Ada Admin", "groups": ["console-admins", "ops"], "channels": ["file"]},
            "bob": {"name": "Bob Builder", "groups": ["ops"], "channels": ["file"]},
            "wendy": {"name": "Wendy Webhook", "groups": ["ops"], "channels": ["webhook:ops"]},
        }
        for pid, body in people.items():
            r = admin.put(f"/people/{pid}", json=body)
            assert r.status_code == 201, r.text
        for pid in ("ada", "bob", "wendy"):
            r = admin.post(f"/people/{pid}/enrolment")
            assert r.status_code == 202, r.text
        operator, ada, bob = Device(chromium, "operator"), Device(chromium, "ada"), Device(chromium, "bob")
        devices += [operator, ada, bob]
        enrol(ada, box.link("enrolment.link", "ada"), "Ada's laptop")
        enrol(bob, box.link("enrolment.link", "bob"), "Bob's laptop")

        # Wendy's enrolment message went to a webhook that answered 410 Gone: a dead letter.
        def dead() -> list[dict[str, object]]:
            return list(admin.get("/outbox", params={"status": "dead"}).json()["messages"])

        wait_for("a dead letter", lambda: dead())
        dead_id = str(dead()[0]["message_id"])

        # Clients, tokens issued and refused, a revocation: something for every page and chart.
        client = srv.register(client_name="Payments agent", scope="read write")
        srv.register(client_name="Nightly report", scope="read")
        payments = srv.register(client_name="Payments batch", scope="read payments.read")  # no owner on record
        ciba_client = srv.register(
            client_name="Phone agent",
            grant_types=[CIBA],
            backchannel_token_delivery_mode="poll",
            scope="read",
        )
        for _ in range(3):
            assert token(srv, client).status_code == 200
        assert token(srv, client, "not-the-secret").status_code == 401
        issued = token(srv, client).json()["access_token"]
        assert admin.post("/tokens/revoke", json={"token": issued}).status_code == 200
        r = admin.put(
            "/issuers/ci",
            json={
                "issuer": "https://ci.example",
                "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "ci-1", "x": _X, "y": _Y}]},
                "audiences": ["tessera"],
                "bindings": [{"audiences": ["https://ledger.example"], "scopes": ["read"], "max_lifetime": 120}],
            },
        )
        assert r.status_code in (200, 201), r.text
        # An issuer whose keys are fetched from it: the dry-run check makes this process fetch them.
        r = admin.put(
            "/issuers/k8s",
            json={
                "issuer": idp.issuer,
                "audiences": ["tessera"],
                "bindings": [{"audiences": ["https://ledger.example"], "scopes": ["read"], "max_lifetime": 120}],
            },
        )
        assert r.status_code == 201, r.text
        r = admin.post("/issuers/k8s/check", json={"token": idp.mint(kubernetes_sa_claims("tessera"))})
        assert r.status_code == 200 and r.json()["accepted"] is True, r.text

        # Two published versions of a flow: the older one can be diffed and replayed.
        flows = tmp_path_factory.mktemp("flows")
        shutil.copytree(EXAMPLES, flows, dirs_exist_ok=True)
        for _ in range(2):
            done = srv.cli("flows", "publish", str(flows), "--yes")
            assert done.returncode == 0, done.stdout + done.stderr
            path = flows / "payments-production.yaml"
            path.write_text(path.read_text().replace("timeout: 600", "timeout: 900"))

        # A flow decision: the payments flow denies a payments client without an owner on record (once
        # the server has loaded the published flows: within one refresh interval).
        def payments_denied() -> bool:
            r = httpx.post(
                srv.token_endpoint,
                data={"grant_type": "client_credentials", "scope": "payments.read"},
                auth=(payments["client_id"], payments["client_secret"]),
                timeout=10,
            )
            assert r.status_code in (200, 400, 403), r.text
            return r.status_code in (400, 403)

        wait_for("the payments flow in force", payments_denied)

        # An approval decided by Ada on the approval page (approval latency), one left pending.
        r = admin.post(
            "/approvals",
            json={"requester": "client:ci", "action": "deploy", "resource": "svc:payments", "approvers": ["ada"]},
        )
        assert r.status_code == 201, r.text
        rid = r.json()["request_id"]
        ada.open(approval_link(box, rid, "ada"))
        ada.page.click("#approve-passkey")
        expect(ada.page.locator("#outcome")).to_be_visible()
        r = admin.post(
            "/approvals",
            json={"requester": "client:ci", "action": "rotate", "resource": "kms:prod", "approvers": ["bob"]},
        )
        assert r.status_code == 201, r.text
        # A CIBA request for Bob, waiting for his decision.
        r = httpx.post(
            srv.issuer + "/oauth/bc-authorize",
            data={"scope": "openid read", "login_hint": "bob", "binding_message": "pay invoice 42"},
            auth=(ciba_client["client_id"], ciba_client["client_secret"]),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        yield World(srv, admin, box, hook, operator, ada, bob, client, dead_id)
    finally:
        for d in devices:
            d.close()
        admin.close()
        srv.stop()
        hook.stop()
        idp.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken after the console tests: " + r.stdout + r.stderr


# A P-256 public key (any valid point will do: the issuer is never asked for a token here).
_X = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
_Y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"


def test_operator_signs_in_with_the_admin_token_and_walks_every_page(world: World) -> None:
    op = world.operator
    response = op.open(world.srv.issuer + "/console")
    assert op.page.url.endswith("/console/login")
    headers = response.all_headers()
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    shot(op, "login")

    op.page.fill("#token", "wrong-" + world.srv.admin_token)
    op.page.click("#token-login")
    expect(op.page.locator("#error")).to_contain_text("not the admin token")
    assert world.srv.admin_token not in op.page.content()
    shot(op, "login-refused")

    op.page.fill("#token", world.srv.admin_token)
    op.page.click("#token-login")
    expect(op.page.locator("#page-overview")).to_be_visible()
    expect(op.page.locator("#who")).to_have_text("console:admin-token")
    assert world.srv.admin_token not in op.page.content()
    [cookie] = [c for c in op.context.cookies() if c["name"] == "tessera_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    for key in PAGES:
        op.page.click(f"#nav-{key}")
        expect(op.page.locator(f"#page-{key}")).to_be_visible()
        expect(op.page.locator(f"#nav-{key}")).to_have_attribute("aria-current", "page")
        shot(op, key)

    # What each page shows, from the world the fixture built.
    op.open(world.srv.issuer + "/console?window=1h")
    expect(op.page.locator("#chart-issuance svg")).to_be_visible()
    expect(op.page.locator("#chart-issuance")).to_contain_text("4 issued, 2 refused")
    expect(op.page.locator("#chart-latency")).to_contain_text("1 request(s) decided")
    expect(op.page.locator("#chart-pending polyline")).to_have_count(1)
    expect(op.page.locator("#stat-pending")).to_have_text("2")
    expect(op.page.locator("#chart-pending circle").last).to_have_attribute("data-value", "2")
    shot(op, "overview-1h")
    op.open(world.srv.issuer + "/console/clients")
    expect(op.page.locator(f"#client-{world.client['client_id']}")).to_contain_text("client_secret_basic")
    assert world.client["client_secret"] not in op.page.content()
    op.open(world.srv.issuer + "/console/issuers")
    expect(op.page.locator("#issuer-ci")).to_contain_text("https://ci.example")
    expect(op.page.locator("#issuer-ci")).to_contain_text("pinned in the configuration")
    expect(op.page.locator("#issuer-k8s")).to_contain_text(re.compile(r"UTC \(\d+ (s|min) ago\), 1 key\(s\), network"))
    op.open(world.srv.issuer + "/console/people")
    expect(op.page.locator("#person-ada")).to_contain_text("Ada's laptop (passkey")
    expect(op.page.locator("#person-wendy")).to_contain_text("none enrolled")
    op.open(world.srv.issuer + "/console/approvals")
    expect(op.page.locator("#approvals tbody tr")).to_have_count(3)
    expect(op.page.locator("#approvals")).to_contain_text("approved")
    expect(op.page.locator("#approvals")).to_contain_text("pay invoice 42")
    expect(op.page.locator("#ciba tbody tr")).to_have_count(1)
    expect(op.page.locator("#ciba")).to_contain_text("bob")
    shot(op, "approvals-and-ciba")
    op.open(world.srv.issuer + "/console/revocations")
    expect(op.page.locator("#revoked-tokens tbody tr")).to_have_count(1)
    expect(op.page.locator("#revocation-events")).to_contain_text("token.revoked")
    op.open(world.srv.issuer + "/console/audit")
    expect(op.page.locator("#chain")).to_have_attribute("data-ok", "true")
    expect(op.page.locator("#audit")).to_contain_text("console.login")

    # Flows: the older stored version, diffed against the one in force and replayed.
    op.open(world.srv.issuer + "/console/flows")
    expect(op.page.locator("#flow-versions")).to_contain_text("payments-production")
    op.page.click(".replay-link")
    expect(op.page.locator("#diff")).to_contain_text("timeout: 900")
    expect(op.page.locator("#diff .add")).to_contain_text(["timeout: 600"])
    expect(op.page.locator("#replay-summary")).to_contain_text("1 decision(s) replayed: 1 unchanged")
    shot(op, "flows-replay")
    no_csp_violation(op)


def test_quarantine_and_lift_through_the_console(world: World) -> None:
    op = world.operator
    cid = world.client["client_id"]
    op.open(world.srv.issuer + "/console/clients")
    row = op.page.locator(f"#client-{cid}")
    row.locator("input[name=reason]").fill("key seen in a public repository")
    row.locator(".quarantine-button").click()
    expect(op.page.locator("#done")).to_contain_text("quarantined")
    expect(op.page.locator(f"#client-{cid}")).to_contain_text("key seen in a public repository")
    shot(op, "clients-quarantined")
    refused = token(world.srv, world.client)
    assert refused.status_code in (400, 401), refused.text

    row = op.page.locator(f"#client-{cid}")
    row.locator("input[name=approvers]").fill("ada")
    row.locator(".lift-button").click()
    expect(op.page.locator("#done")).to_contain_text("lift the quarantine")
    [marked] = audit(world, "client.quarantined")
    assert marked["actor"] == "console:admin-token" and marked["subject"] == cid
    [asked] = audit(world, "client.quarantine_lift_requested")
    assert asked["actor"] == "console:admin-token"

    # Ada approves the lift on her approval page; the client gets tokens again.
    lift = world.admin.get(f"/clients/{cid}").json()["quarantined"]["lift"]
    world.ada.open(approval_link(world.box, lift, "ada"))
    world.ada.page.click("#approve-passkey")
    expect(world.ada.page.locator("#outcome")).to_have_text("Approval recorded")
    wait_for("the quarantine lifted", lambda: token(world.srv, world.client).status_code == 200)
    op.open(world.srv.issuer + "/console/clients")
    expect(op.page.locator(f"#client-{cid}")).to_contain_text("active")
    no_csp_violation(op, world.ada)


def test_dead_letter_retried_through_the_console(world: World) -> None:
    op = world.operator
    op.open(world.srv.issuer + "/console/outbox?status=dead")
    row = op.page.locator(f"#message-{world.dead_message}")
    expect(row).to_have_attribute("data-status", "dead")
    expect(row).to_contain_text("410")
    shot(op, "outbox-dead")
    row.locator(".retry-button").click()
    expect(op.page.locator("#done")).to_contain_text("queued for delivery again")

    def delivered() -> bool:
        return any(
            json.loads(d.body)["data"].get("person_id") == "wendy" and d.status == 200
            for d in world.hook.deliveries
            if d.verified
        )

    wait_for("the retried message delivered", delivered)
    op.open(world.srv.issuer + "/console/outbox")
    expect(op.page.locator(f"#message-{world.dead_message}")).to_have_attribute("data-status", "delivered")
    [requeued] = audit(world, "outbox.requeued")
    assert requeued["actor"] == "console:admin-token"
    no_csp_violation(op)


def test_sign_out_ends_the_session_everywhere(world: World) -> None:
    op = world.operator
    op.open(world.srv.issuer + "/console")
    [cookie] = [c for c in op.context.cookies() if c["name"] == "tessera_console"]
    op.page.click("#logout-button")
    expect(op.page.locator("#token-form")).to_be_visible()
    shot(op, "signed-out")
    op.open(world.srv.issuer + "/console/audit")
    assert op.page.url.endswith("/console/login")
    # A copy of the old cookie no longer opens anything either.
    r = httpx.get(
        world.srv.issuer + "/console/audit", cookies={"tessera_console": cookie["value"]}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"].endswith("/console/login")
    assert [e["actor"] for e in audit(world, "console.logout")] == ["console:admin-token"]


def test_admin_signs_in_with_a_passkey(world: World) -> None:
    ada = world.ada
    ada.open(world.srv.issuer + "/console/login")
    ada.page.click("#passkey-button")
    expect(ada.page.locator("#page-overview")).to_be_visible()
    expect(ada.page.locator("#who")).to_have_text("console:ada")
    shot(ada, "passkey-signed-in")
    for key in PAGES:
        ada.page.click(f"#nav-{key}")
        expect(ada.page.locator(f"#page-{key}")).to_be_visible()
    logins = audit(world, "console.login")
    assert any(e["actor"] == "console:ada" and e["data"]["method"] == "passkey" for e in logins)  # type: ignore[index]
    ada.page.click("#logout-button")
    expect(ada.page.locator("#passkey-button")).to_be_visible()
    no_csp_violation(ada)


def test_a_person_outside_the_admin_group_cannot_sign_in_with_their_passkey(world: World) -> None:
    bob = world.bob
    bob.open(world.srv.issuer + "/console/login")
    bob.page.click("#passkey-button")
    expect(bob.page.locator("#error")).to_contain_text("does not belong to a console administrator")
    shot(bob, "passkey-refused")
    bob.open(world.srv.issuer + "/console")
    assert bob.page.url.endswith("/console/login")
    failed = audit(world, "console.login_failed")
    assert any(e["data"]["reason"] == "not_an_admin" for e in failed)  # type: ignore[index]
    no_csp_violation(bob)


def test_screenshots_of_every_page_are_kept() -> None:
    missing = [k for k in PAGES if not (SHOTS / f"{k}.png").is_file()]
    assert missing == [], missing
