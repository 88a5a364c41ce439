"""The admin console's security properties over plain HTTP, against a live ``tessera serve``.

No session → sign-in page; a wrong admin token refused, audited and, after ten failures a minute,
refused even when right; CSRF token required on every form (and a foreign ``Origin`` refused) with
nothing changed; the strict Content Security Policy and its companions on every page; cookie flags;
a session that ends at logout everywhere; passkey sign-in for members of the admin group only, user
verification required, each challenge used once (a software authenticator plays the browser).
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from approval_support import Mailbox, PageClient, approval_server
from support import LiveServer
from webauthn_support import SoftAuthenticator

PAGES = ["", "/clients", "/issuers", "/people", "/approvals", "/flows", "/revocations", "/audit", "/outbox"]


@dataclass
class World:
    srv: LiveServer
    admin: httpx.Client
    ada: SoftAuthenticator
    bob: SoftAuthenticator
    client_id: str

    @property
    def console(self) -> str:
        return self.srv.issuer + "/console"


def browser(world: World) -> httpx.Client:
    """A browser-like client: keeps cookies, sends its origin on posts, does not follow redirects."""
    return httpx.Client(timeout=10, follow_redirects=False, headers={"Origin": world.srv.issuer})


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page
    return html.unescape(m.group(1))


def sign_in(world: World, c: httpx.Client) -> httpx.Response:
    page = c.get(world.console + "/login")
    r = c.post(world.console + "/login", data={"csrf": csrf_of(page.text), "token": world.srv.admin_token})
    assert r.status_code == 303 and r.headers["location"] == "/console", r.text
    return r


def passkey_sign_in(world: World, c: httpx.Client, auth: SoftAuthenticator, **flags: Any) -> httpx.Response:
    page = c.get(world.console + "/login")
    csrf = csrf_of(page.text)
    options = c.post(world.console + "/login/passkey/options", json={}, headers={"X-CSRF-Token": csrf})
    assert options.status_code == 200, options.text
    assertion = auth.get(options.json(), world.srv.issuer, **flags)
    return c.post(world.console + "/login/passkey", data={"csrf": csrf, "credential": json.dumps(assertion)})


def audit(world: World, event: str) -> list[dict[str, Any]]:
    return [r for r in world.admin.get("/audit", params={"limit": 1000}).json() if r["event"] == event]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    srv = approval_server(tmp_path_factory.mktemp("console-http") / "data", TESSERA_CONSOLE_ADMIN_GROUP="admins")
    srv.start()
    admin = srv.admin()
    try:
        box = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        auths = {}
        for pid, groups in (("ada", ["admins"]), ("bob", ["ops"])):
            r = admin.put(f"/people/{pid}", json={"name": pid.title(), "groups": groups, "channels": ["file"]})
            assert r.status_code == 201, r.text
            assert admin.post(f"/people/{pid}/enrolment").status_code == 202
            auths[pid] = SoftAuthenticator()
            PageClient(srv.issuer).enrol_passkey(box.link("enrolment.link", pid), auths[pid])
        client = srv.register(client_name="console test")
        yield World(srv, admin, auths["ada"], auths["bob"], client["client_id"])
    finally:
        admin.close()
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_page_without_a_session_sends_to_sign_in(world: World) -> None:
    with browser(world) as c:
        for path in PAGES:
            r = c.get(world.console + path)
            assert r.status_code == 303 and r.headers["location"] == "/console/login", (path, r.status_code)
        # An action without a session changes nothing.
        r = c.post(world.console + f"/clients/{world.client_id}/quarantine", data={"csrf": "x", "reason": "r"})
        assert r.status_code == 403
        # A forged or tampered session cookie is no session.
        c.cookies.set("tessera_console", "eyJhIjoiYWRtaW4ifQ.00", path="/console")
        assert c.get(world.console + "/audit").status_code == 303
    assert "quarantined" not in world.admin.get(f"/clients/{world.client_id}").json()


def test_security_headers_on_every_page(world: World) -> None:
    with browser(world) as c:
        responses = [c.get(world.console + "/login")]
        sign_in(world, c)
        responses += [c.get(world.console + path) for path in PAGES]
    for r in responses:
        assert r.status_code == 200, r.url
        csp = r.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'"
        assert "unsafe" not in csp
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
        # Nothing inline for the policy to block: no style attribute, no inline script or handler.
        assert " style=" not in r.text and "<style" not in r.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text) and not re.search(r"\son[a-z]+=", r.text)


def test_session_cookie_flags(world: World) -> None:
    with browser(world) as c:
        login = c.get(world.console + "/login")
        pre = login.headers["set-cookie"].lower()
        assert "httponly" in pre and "samesite=strict" in pre and "path=/console" in pre
        r = sign_in(world, c)
        [cookie] = [h for h in r.headers.get_list("set-cookie") if h.startswith("tessera_console=")]
        flags = [f.strip().lower() for f in cookie.split(";")[1:]]
        assert {"httponly", "samesite=strict", "path=/console", "max-age=1800"} <= set(flags)
        assert "secure" not in flags  # an http:// issuer (loopback); an https:// issuer sets Secure
        assert world.srv.admin_token not in cookie


def test_csrf_required_on_every_form(world: World) -> None:
    with browser(world) as c:
        c.get(world.console + "/login")
        # Sign-in without or with a wrong CSRF token: refused before the token is even looked at.
        for fields in ({"token": world.srv.admin_token}, {"token": world.srv.admin_token, "csrf": "0" * 64}):
            r = c.post(world.console + "/login", data=fields)
            assert r.status_code == 403 and "tessera_console=" not in r.headers.get("set-cookie", "")
        sign_in(world, c)
        clients = c.get(world.console + "/clients")
        csrf = csrf_of(clients.text)
        url = world.console + f"/clients/{world.client_id}/quarantine"
        assert c.post(url, data={"reason": "no csrf"}).status_code == 403
        assert c.post(url, data={"reason": "wrong", "csrf": csrf[:-1] + "0"}).status_code == 403
        assert c.post(url, data={"reason": "wrong", "csrf": "\u00e9\U0001f600" * 8}).status_code == 403
        # A foreign Origin (or Sec-Fetch-Site: cross-site) is refused even with the right token.
        r = c.post(url, data={"reason": "x", "csrf": csrf}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        r = c.post(url, data={"reason": "x", "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert c.post(world.console + "/logout", data={"x": ""}).status_code == 403  # logout is a form too
        assert "quarantined" not in world.admin.get(f"/clients/{world.client_id}").json()
        # The CSRF token of one session does not work in another.
        with browser(world) as other:
            sign_in(world, other)
            assert other.post(url, data={"reason": "x", "csrf": csrf}).status_code == 403
        # With it, the action is taken, as the console user, through the admin API's code path.
        r = c.post(url, data={"reason": "tested", "csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/console/clients?done=quarantined"
    marker = world.admin.get(f"/clients/{world.client_id}").json()["quarantined"]
    assert marker["reason"] == "tested"
    [event] = audit(world, "client.quarantined")
    assert event["actor"] == "console:admin-token" and event["subject"] == world.client_id


def test_logout_ends_the_session_for_every_copy_of_the_cookie(world: World) -> None:
    with browser(world) as c:
        sign_in(world, c)
        stolen = c.cookies.get("tessera_console")
        overview = c.get(world.console)
        assert overview.status_code == 200
        r = c.post(world.console + "/logout", data={"csrf": csrf_of(overview.text)})
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
    with browser(world) as copy:
        copy.cookies.set("tessera_console", stolen or "", path="/console")
        assert copy.get(world.console + "/audit").status_code == 303
    assert any(e["actor"] == "console:admin-token" for e in audit(world, "console.logout"))


def test_admin_passkey_signs_in_once_per_challenge(world: World) -> None:
    with browser(world) as c:
        page = c.get(world.console + "/login")
        csrf = csrf_of(page.text)
        options = c.post(world.console + "/login/passkey/options", json={}, headers={"X-CSRF-Token": csrf})
        assert options.status_code == 200
        body = options.json()
        assert body["userVerification"] == "required" and body.get("allowCredentials", []) == []
        assertion = json.dumps(world.ada.get(body, world.srv.issuer))
        challenge = c.cookies.get("tessera_console_challenge")
        r = c.post(world.console + "/login/passkey", data={"csrf": csrf, "credential": assertion})
        assert r.status_code == 303 and r.headers["location"] == "/console", r.text
        who = c.get(world.console).text
        assert 'id="who">console:ada<' in who
        # The same assertion again, with the same challenge cookie: refused (the challenge is spent).
        c.cookies.delete("tessera_console")
        c.cookies.set("tessera_console_challenge", challenge or "", path="/console")
        again = c.post(world.console + "/login/passkey", data={"csrf": csrf, "credential": assertion})
        assert again.status_code == 403 and "tessera_console=" not in again.headers.get("set-cookie", "")
        # A fresh assertion (a higher signature counter) over the spent challenge: refused too.
        fresh = json.dumps(world.ada.get(body, world.srv.issuer))
        again = c.post(world.console + "/login/passkey", data={"csrf": csrf, "credential": fresh})
        assert again.status_code == 403 and "tessera_console=" not in again.headers.get("set-cookie", "")
    logins = [e for e in audit(world, "console.login") if e["actor"] == "console:ada"]
    assert [e["data"]["method"] for e in logins] == ["passkey"]
    reasons = [e["data"]["reason"] for e in audit(world, "console.login_failed")]
    assert "counter_regressed" in reasons and "replayed" in reasons, reasons


def test_a_passkey_session_ends_when_its_person_leaves_the_admin_group(world: World) -> None:
    with browser(world) as c:
        assert passkey_sign_in(world, c, world.ada).status_code == 303
        assert c.get(world.console + "/people").status_code == 200
        person = world.admin.get("/people/ada").json()
        body = {"name": person["name"], "groups": ["ops"], "channels": person["channels"]}
        assert world.admin.put("/people/ada", json=body).status_code == 200
        try:
            assert c.get(world.console + "/people").status_code == 303
        finally:
            body["groups"] = ["admins"]
            assert world.admin.put("/people/ada", json=body).status_code == 200
        assert c.get(world.console + "/people").status_code == 200


def test_passkey_without_user_verification_is_refused(world: World) -> None:
    with browser(world) as c:
        r = passkey_sign_in(world, c, world.ada, uv=False)
        assert r.status_code == 403 and "tessera_console=" not in r.headers.get("set-cookie", "")


def test_a_non_admin_persons_passkey_is_refused(world: World) -> None:
    with browser(world) as c:
        r = passkey_sign_in(world, c, world.bob)
        assert r.status_code == 403
        assert "does not belong to a console administrator" in r.text
        assert "tessera_console=" not in r.headers.get("set-cookie", "")
        assert c.get(world.console).status_code == 303
    refused = [e for e in audit(world, "console.login_failed") if e["data"]["reason"] == "not_an_admin"]
    assert len(refused) == 1 and refused[0]["data"]["method"] == "passkey"


def test_secure_cookies_under_an_https_issuer(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Behind a TLS-terminating proxy the issuer is https://: every console cookie is then Secure."""
    srv = LiveServer(tmp_path_factory.mktemp("console-https") / "data")
    issuer = f"https://localhost:{srv.port}"
    srv.env["TESSERA_ISSUER"] = issuer
    srv.issuer = f"http://127.0.0.1:{srv.port}"  # where the test reaches it (the proxy's side)
    srv.start()
    try:
        with httpx.Client(timeout=10, follow_redirects=False, headers={"Origin": issuer}) as c:
            page = c.get(srv.issuer + "/console/login")
            assert "secure" in [f.strip().lower() for f in page.headers["set-cookie"].split(";")]
            # (httpx keeps a Secure cookie to itself over http://; a browser behind the proxy sends it)
            login = page.headers["set-cookie"].split(";")[0]
            r = c.post(
                srv.issuer + "/console/login",
                data={"csrf": csrf_of(page.text), "token": srv.admin_token},
                headers={"Cookie": login},
            )
            assert r.status_code == 303
            [cookie] = [h for h in r.headers.get_list("set-cookie") if h.startswith("tessera_console=")]
            assert "secure" in [f.strip().lower() for f in cookie.split(";")]
    finally:
        srv.stop()


def test_audit_page_reports_a_broken_chain(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = LiveServer(tmp_path_factory.mktemp("console-chain") / "data").start()
    try:
        srv.register(client_name="chain")
        world = World(srv, srv.admin(), SoftAuthenticator(), SoftAuthenticator(), "")
        with browser(world) as c:
            sign_in(world, c)
            first = c.get(world.console + "/audit").text
            assert 'data-ok="true"' in first and "verified from the first record" in first
            again = c.get(world.console + "/audit").text
            assert 'data-ok="true"' in again and re.search(r"\d+ new record\(s\) after record \d+", again)
            verified = int(re.search(r"after record (\d+)", again).group(1))  # type: ignore[union-attr]

            db_path = srv.data_dir / "tessera.db"
            with sqlite3.connect(db_path) as db:  # an old record altered in place
                (actor,) = db.execute("SELECT actor FROM audit_log WHERE seq = 2").fetchone()
                db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
            full = c.get(world.console + "/audit", params={"full": "1"}).text
            assert 'data-ok="false"' in full and "record 2 was altered" in full, full
            with sqlite3.connect(db_path) as db:
                db.execute("UPDATE audit_log SET actor = ? WHERE seq = 2", (actor,))
            restored = c.get(world.console + "/audit", params={"full": "1"}).text
            assert 'data-ok="true"' in restored, restored
            head = re.search(r"from the first record: (\d+) record", restored)
            assert head is not None and int(head.group(1)) >= verified

            # The record a later visit starts from is itself altered: the next visit says so.
            with sqlite3.connect(db_path) as db:
                db.execute("UPDATE audit_log SET hash = ? WHERE seq = ?", ("0" * 64, int(head.group(1))))
            page = c.get(world.console + "/audit").text
            assert 'data-ok="false"' in page and f"record {head.group(1)}, verified before, was altered" in page
        world.admin.close()
    finally:
        srv.stop()


@pytest.mark.postgres
def test_every_page_on_postgresql(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> None:
    """The console's own queries (chart buckets, CIBA rows, revocations, audit pages) on PostgreSQL."""
    srv = approval_server(
        tmp_path_factory.mktemp("console-pg") / "data", TESSERA_DATABASE_URL=postgres.create_database()
    )
    srv.start()
    try:
        client = srv.register(client_name="pg")
        for secret in (client["client_secret"], "wrong"):
            httpx.post(
                srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=(client["client_id"], secret)
            )
        world = World(srv, srv.admin(), SoftAuthenticator(), SoftAuthenticator(), client["client_id"])
        with browser(world) as c:
            sign_in(world, c)
            for window in ("1h", "24h", "7d"):
                r = c.get(world.console, params={"window": window})
                assert r.status_code == 200 and "1 issued, 1 refused" in r.text, r.text
            for path in PAGES:
                assert c.get(world.console + path).status_code == 200, path
            audit_page = c.get(world.console + "/audit", params={"event": "token.issued"}).text
            assert 'data-ok="true"' in audit_page and "token.issued" in audit_page
        world.admin.close()
    finally:
        srv.stop()


def test_wrong_token_refused_audited_never_echoed_then_limited(world: World) -> None:
    """Runs last: it uses up this address's failed sign-ins for a minute."""
    wrong = "wrong-" + world.srv.admin_token
    with browser(world) as c:
        csrf = csrf_of(c.get(world.console + "/login").text)
        before = len(audit(world, "console.login_failed"))
        statuses = []
        for _ in range(12):
            r = c.post(world.console + "/login", data={"csrf": csrf, "token": wrong})
            statuses.append(r.status_code)
            assert wrong not in r.text and world.srv.admin_token not in r.text
            assert "tessera_console=" not in r.headers.get("set-cookie", "")
        # Ten failures a minute from one address (the earlier tests' failed passkeys count too).
        before_limit = statuses.index(429)
        assert 1 <= before_limit <= 10 and set(statuses[:before_limit]) == {401}, statuses
        assert set(statuses[before_limit:]) == {429}
        # While limited, even the right token is refused.
        r = c.post(world.console + "/login", data={"csrf": csrf, "token": world.srv.admin_token})
        assert r.status_code == 429 and "tessera_console=" not in r.headers.get("set-cookie", "")
    events = audit(world, "console.login_failed")[before:]
    assert [e["data"]["reason"] for e in events].count("wrong_token") == before_limit
    assert "limited" in [e["data"]["reason"] for e in events]
    assert all(e["data"]["address"] == "127.0.0.1" for e in events)
    assert wrong not in json.dumps(events) and world.srv.admin_token not in json.dumps(events)
