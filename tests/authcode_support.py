"""Helpers for the authorization code tests: a person with a passkey, an agent (public or confidential
client), and the person's browser session driven over plain HTTP (the browser test drives the same
pages in Chromium). PKCE values are computed here with hashlib alone."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from approval_support import Mailbox, PageClient, form_fields
from support import LiveServer
from webauthn_support import SoftAuthenticator

RESOURCE = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:8976/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def data_attr(page: str, form_id: str, name: str) -> str:
    m = re.search(rf'<form[^>]*id="{form_id}"[^>]*>', page)
    assert m, f"no form {form_id}: {page[:500]}"
    a = re.search(rf'data-{name}="([^"]*)"', m.group(0))
    assert a, f"no data-{name} on {form_id}"
    return html.unescape(a.group(1))


@dataclass
class Person:
    pid: str
    page: PageClient
    auth: SoftAuthenticator


@dataclass
class Agent:
    client_id: str
    secret: str | None = None
    redirect_uri: str = REDIRECT
    metadata: dict[str, Any] = field(default_factory=dict)

    def auth_fields(self) -> dict[str, str]:
        out = {"client_id": self.client_id}
        if self.secret:
            out["client_secret"] = self.secret
        return out


class World:
    def __init__(self, srv: LiveServer) -> None:
        self.srv = srv
        self.mb = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        self.admin = srv.admin()

    def person(self, pid: str, **fields: Any) -> Person:
        r = self.admin.put(f"/people/{pid}", json={"name": pid.title(), "channels": ["file"], **fields})
        assert r.status_code in (200, 201), r.text
        before = len([m for m in self.mb.all() if m["kind"] == "enrolment.link" and m["data"]["person_id"] == pid])
        assert self.admin.post(f"/people/{pid}/enrolment").status_code == 202
        link = self.mb.link("enrolment.link", pid, before + 1)
        p = Person(pid, PageClient(self.srv.issuer), SoftAuthenticator())
        p.page.enrol_passkey(link, p.auth)
        return p

    def agent(self, **metadata: Any) -> Agent:
        body = {
            "client_name": "Calendar agent",
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "redirect_uris": [REDIRECT],
            "scope": "tools.read tools.write",
            "allowed_resources": [RESOURCE],
            **metadata,
        }
        r = self.admin.post("/clients", json=body)
        assert r.status_code == 201, r.text
        out = r.json()
        return Agent(out["client_id"], out.get("client_secret"), out["redirect_uris"][0], out)

    def authorize_url(self, agent: Agent, challenge: str, **extra: str) -> str:
        params = {
            "response_type": "code",
            "client_id": agent.client_id,
            "redirect_uri": agent.redirect_uri,
            "scope": "tools.read",
            "state": "st-" + secrets.token_hex(4),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": RESOURCE,
        }
        params.update(extra)
        return self.srv.issuer + "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v != ""})

    # -- the person's browser ------------------------------------------------------------------------
    def sign_in(self, person: Person, page: str, *, hint: str = "") -> httpx.Response:
        options_url = self.srv.issuer + data_attr(page, "signin", "options")
        csrf = data_attr(page, "signin", "csrf")
        o = person.page.http.post(
            options_url, json={"hint": hint}, headers={"X-CSRF-Token": csrf, "Origin": self.srv.issuer}
        )
        assert o.status_code == 200, o.text
        cred = person.auth.get(o.json(), self.srv.issuer)
        fields = form_fields(page, "signin")
        fields.update(credential=json.dumps(cred), hint=hint)
        return person.page.post_form(self.srv.issuer + "/oauth/signin", fields)

    def consent(self, person: Person, url: str, decision: str = "approve") -> httpx.Response:
        """From the authorize URL to the redirect back to the client (sign-in and consent as needed)."""
        r = person.page.get(url)
        if r.status_code == 200 and 'id="signin"' in r.text:
            done = self.sign_in(person, r.text)
            assert done.status_code == 303, done.text
            r = person.page.get(done.headers["location"])
        if r.status_code == 200 and 'id="decide"' in r.text:
            fields = form_fields(r.text, "decide")
            fields["decision"] = decision
            r = person.page.post_form(self.srv.issuer + "/oauth/authorize/consent", fields)
        return r

    def code_for(self, person: Person, agent: Agent, **extra: str) -> tuple[str, str, dict[str, str]]:
        verifier, challenge = pkce()
        r = self.consent(person, self.authorize_url(agent, challenge, **extra))
        assert r.status_code == 303, r.text
        q = query_of(r.headers["location"])
        assert r.headers["location"].startswith(agent.redirect_uri + "?"), r.headers["location"]
        assert "code" in q, q
        return q["code"], verifier, q

    def token(self, agent: Agent, **fields: str) -> httpx.Response:
        return httpx.post(self.srv.token_endpoint, data={**agent.auth_fields(), **fields}, timeout=15)

    def redeem(self, agent: Agent, code: str, verifier: str) -> httpx.Response:
        return self.token(
            agent, grant_type="authorization_code", code=code, code_verifier=verifier, redirect_uri=agent.redirect_uri
        )

    def audit_events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        for _ in range(100):
            batch = self.admin.get("/audit", params={"after": after, "limit": 1000}).json()
            if not batch:
                break
            out += batch
            after = batch[-1]["seq"]
        return out
