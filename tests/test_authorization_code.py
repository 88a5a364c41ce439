"""The authorization code grant with PKCE against a live server: the person signs in with a passkey
(a software authenticator, over plain HTTP) and consents; the agent redeems and refreshes. Every
error path of RFC 6749 §4.1, RFC 7636, RFC 9207, RFC 8707 and the refresh rotation of RFC 9700 §4.14.
Tokens are checked with PyJWT against the published JWKS (nothing of Tessera's helps verify them)."""

from __future__ import annotations

import hashlib
import pathlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from approval_support import approval_server, form_fields
from authcode_support import REDIRECT, RESOURCE, Agent, Person, World, pkce, query_of
from support import LiveServer, assert_oauth_error


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Flows reload every second (the flows test publishes one).
    s = approval_server(tmp_path_factory.mktemp("authcode") / "data", TESSERA_KEY_REFRESH_INTERVAL="1").start()
    yield s
    s.stop()
    r = s.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def world(srv: LiveServer) -> World:
    return World(srv)


@pytest.fixture(scope="module")
def alice(world: World) -> Person:
    return world.person("alice", email="alice@example.com")


@pytest.fixture
def agent(world: World) -> Agent:
    return world.agent()


def verify(srv: LiveServer, token: str, audience: str = RESOURCE) -> dict[str, Any]:
    jwks = jwt.PyJWKClient(srv.issuer + "/oauth/jwks")
    key = jwks.get_signing_key_from_jwt(token)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    return jwt.decode(token, key.key, algorithms=[header["alg"]], audience=audience, issuer=srv.issuer)


def introspect(world: World, token: str) -> dict[str, Any]:
    if not hasattr(world, "_rs"):
        world._rs = world.srv.register(scope="read")  # type: ignore[attr-defined]
    rs = world._rs  # type: ignore[attr-defined]
    r = httpx.post(
        world.srv.issuer + "/oauth/introspect",
        data={"token": token},
        auth=(rs["client_id"], rs["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def code_row(srv: LiveServer, code: str, sql: str) -> None:
    with sqlite3.connect(srv.data_dir / "tessera.db") as db:
        db.execute(sql, (hashlib.sha256(code.encode()).hexdigest(),))


# -- discovery and registration ---------------------------------------------------------------------------


def test_discovery_advertises_the_code_flow_and_the_mcp_sdk_parses_it(srv: LiveServer) -> None:
    from mcp.shared.auth import OAuthMetadata

    md = httpx.get(srv.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert md["authorization_endpoint"] == srv.issuer + "/oauth/authorize"
    assert md["response_types_supported"] == ["code"]
    assert md["code_challenge_methods_supported"] == ["S256"]
    assert md["authorization_response_iss_parameter_supported"] is True
    assert {"authorization_code", "refresh_token"} <= set(md["grant_types_supported"])
    assert "none" in md["token_endpoint_auth_methods_supported"]
    parsed = OAuthMetadata.model_validate(md)
    assert str(parsed.authorization_endpoint) == srv.issuer + "/oauth/authorize"
    assert parsed.code_challenge_methods_supported == ["S256"]


def test_dynamic_registration_of_an_mcp_public_client(srv: LiveServer) -> None:
    body = {
        "client_name": "MCP agent",
        "redirect_uris": ["http://127.0.0.1:33418/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": "tools.read",
    }
    r = httpx.post(
        srv.issuer + "/oauth/register", json=body, headers={"Authorization": f"Bearer {srv.reg_token}"}, timeout=10
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["redirect_uris"] == body["redirect_uris"] and out["response_types"] == ["code"]
    assert "client_secret" not in out and out["token_endpoint_auth_method"] == "none"


def test_a_client_cannot_add_a_redirect_uri_through_rfc7592(srv: LiveServer) -> None:
    body = {
        "redirect_uris": ["https://agent.example.com/cb"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "none",
    }
    reg = httpx.post(
        srv.issuer + "/oauth/register", json=body, headers={"Authorization": f"Bearer {srv.reg_token}"}, timeout=10
    ).json()
    auth = {"Authorization": f"Bearer {reg['registration_access_token']}"}
    wider = {
        **body,
        "client_id": reg["client_id"],
        "redirect_uris": [*body["redirect_uris"], "https://evil.example/cb"],
    }
    r = httpx.put(reg["registration_client_uri"], json=wider, headers=auth, timeout=10)
    assert_oauth_error(r, 400, "invalid_client_metadata")
    narrower = {**body, "client_id": reg["client_id"]}
    assert httpx.put(reg["registration_client_uri"], json=narrower, headers=auth, timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"redirect_uris": ["http://agent.example.com/cb"]}, "invalid_redirect_uri"),  # http, not loopback
        ({"redirect_uris": ["https://agent.example.com/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://u:p@agent.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["myapp:/cb"]}, "invalid_redirect_uri"),  # not reverse-DNS (RFC 8252 §7.1)
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"response_types": ["code", "id_token"]}, "invalid_client_metadata"),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials", "refresh_token"]}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_redirect_uri"),  # redirect_uris on a non-code client
    ],
)
def test_registration_refuses_bad_redirect_metadata(srv: LiveServer, change: dict[str, Any], error: str) -> None:
    body: dict[str, Any] = {
        "redirect_uris": ["https://agent.example.com/cb"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "none",
        **change,
    }
    if body["grant_types"] == ["client_credentials"] or "client_credentials" in body["grant_types"]:
        body["token_endpoint_auth_method"] = "client_secret_basic"
    r = httpx.post(
        srv.issuer + "/oauth/register", json=body, headers={"Authorization": f"Bearer {srv.reg_token}"}, timeout=10
    )
    assert_oauth_error(r, 400, error)


def test_client_credentials_clients_are_unchanged(srv: LiveServer) -> None:
    c = srv.register(scope="read")
    assert "redirect_uris" not in c and "response_types" not in c
    r = httpx.post(
        srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=(c["client_id"], c["client_secret"])
    )
    assert r.status_code == 200, r.text
    # ... and may not use the code flow.
    r = httpx.post(
        srv.token_endpoint,
        data={"grant_type": "authorization_code", "code": "x" * 43, "code_verifier": "v" * 43},
        auth=(c["client_id"], c["client_secret"]),
    )
    assert_oauth_error(r, 400, "unauthorized_client")


# -- the whole flow ---------------------------------------------------------------------------------------


def test_sign_in_consent_code_and_token(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, q = world.code_for(alice, agent, scope="tools.read tools.write")
    assert q["iss"] == world.srv.issuer and q["state"].startswith("st-")
    r = world.redeem(agent, code, verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "tools.read tools.write" and body["refresh_token"]
    claims = verify(world.srv, body["access_token"])
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": agent.client_id}
    assert claims["client_id"] == agent.client_id
    assert claims["aud"] == RESOURCE
    assert claims["acr"].startswith("urn:tessera:aal")
    events = [e["event"] for e in world.audit_events()]
    for name in ("signin.succeeded", "grant.consented", "authorize.code_issued", "token.issued"):
        assert name in events, name


def test_consent_is_remembered_per_client_scope_and_resource(world: World, alice: Person, agent: Agent) -> None:
    world.code_for(alice, agent)  # consents to tools.read
    _, challenge = pkce()
    r = alice.page.get(world.authorize_url(agent, challenge))  # same scopes: straight back with a code
    assert r.status_code == 303 and "code" in query_of(r.headers["location"])
    r = alice.page.get(world.authorize_url(agent, challenge, scope="tools.read tools.write"))
    assert r.status_code == 200 and 'id="decide"' in r.text  # more scopes: asked again
    assert "tools.write" in r.text and RESOURCE in r.text and "Calendar agent" in r.text
    r = alice.page.get(world.authorize_url(agent, challenge, prompt="consent"))
    assert r.status_code == 200 and 'id="decide"' in r.text


def test_the_person_denies(world: World, alice: Person, agent: Agent) -> None:
    _, challenge = pkce()
    r = world.consent(alice, world.authorize_url(agent, challenge, state="deny-me"), decision="deny")
    assert r.status_code == 303
    q = query_of(r.headers["location"])
    assert q["error"] == "access_denied" and q["state"] == "deny-me" and q["iss"] == world.srv.issuer
    assert "code" not in q


def test_sign_in_by_id_then_passkey(world: World) -> None:
    bob = world.person("bob", email="bob@example.com")
    agent = world.agent()
    _, challenge = pkce()
    page = bob.page.get(world.authorize_url(agent, challenge))
    assert 'id="signin"' in page.text
    done = world.sign_in(bob, page.text, hint="bob@example.com")
    assert done.status_code == 303, done.text
    assert "tessera_session" in done.headers["set-cookie"]
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    consent = bob.page.get(done.headers["location"])
    assert 'id="decide"' in consent.text and "Bob" in consent.text
    assert "script-src 'self'" in consent.headers["content-security-policy"]


def test_the_sign_in_options_do_not_tell_who_exists(world: World, alice: Person, agent: Agent) -> None:
    from authcode_support import data_attr

    _, challenge = pkce()
    page = httpx.Client(timeout=10)
    first = page.get(world.authorize_url(agent, challenge))
    url = world.srv.issuer + data_attr(first.text, "signin", "options")
    headers = {"X-CSRF-Token": data_attr(first.text, "signin", "csrf"), "Origin": world.srv.issuer}

    def allowed(hint: str) -> list[dict[str, Any]]:
        r = page.post(url, json={"hint": hint}, headers=headers)
        assert r.status_code == 200, r.text
        return list(r.json()["allowCredentials"])

    real, ghost = allowed("alice@example.com"), allowed("ghost@example.com")
    assert len(real) == 1 and len(ghost) == 1 and real[0]["id"] != ghost[0]["id"]
    assert set(real[0]) == set(ghost[0]) and allowed("ghost@example.com") == ghost  # stable
    assert allowed("") == []  # discoverable credentials


def test_a_wrong_passkey_does_not_sign_in(world: World, alice: Person, agent: Agent) -> None:
    from authcode_support import Person as P
    from webauthn_support import SoftAuthenticator

    stranger = P("nobody", type(alice.page)(world.srv.issuer), SoftAuthenticator())
    # A passkey this server never enrolled, for the right RP id.
    stranger.auth.create(
        {"rp": {"id": "127.0.0.1"}, "pubKeyCredParams": [{"alg": -7}], "user": {"id": "AAAA"}, "challenge": "AAAA"},
        world.srv.issuer,
    )
    _, challenge = pkce()
    page = stranger.page.get(world.authorize_url(agent, challenge))
    r = world.sign_in(stranger, page.text)
    assert r.status_code == 403 and 'id="error"' in r.text
    assert "location" not in r.headers


# -- errors shown on a page, never redirected -------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "no-such-client"},
        {"client_id": ""},
        {"redirect_uri": "http://127.0.0.1:8976/other"},
        {"redirect_uri": REDIRECT + "/"},
        {"redirect_uri": REDIRECT.replace("8976", "8977")},
        {"redirect_uri": "https://evil.example/callback"},
    ],
)
def test_errors_before_the_redirect_uri_is_trusted_are_shown_not_redirected(
    world: World, agent: Agent, change: dict[str, str]
) -> None:
    _, challenge = pkce()
    url = world.authorize_url(agent, challenge, **change)
    r = httpx.get(url, timeout=10)
    assert r.status_code == 400 and "location" not in r.headers, r.text
    assert 'id="reason"' in r.text and "evil.example" not in r.headers.get("location", "")


def test_repeated_redirect_uri_is_not_redirected(world: World, agent: Agent) -> None:
    _, challenge = pkce()
    url = world.authorize_url(agent, challenge) + "&redirect_uri=" + REDIRECT
    r = httpx.get(url, timeout=10)
    assert r.status_code == 400 and "location" not in r.headers


def test_a_client_credentials_client_cannot_start_the_flow(world: World) -> None:
    c = world.srv.register(scope="read")
    r = httpx.get(
        world.srv.issuer + "/oauth/authorize",
        params={"client_id": c["client_id"], "response_type": "code", "redirect_uri": REDIRECT},
        timeout=10,
    )
    assert r.status_code == 400 and "location" not in r.headers


# -- errors redirected with iss and state -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),  # no implicit flow
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"response_type": ""}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),  # PKCE required
        ({"code_challenge_method": ""}, "invalid_request"),  # default would be plain
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"resource": "https://other.example.com/mcp"}, "invalid_target"),
        ({"resource": "relative/path"}, "invalid_target"),
        ({"response_mode": "fragment"}, "invalid_request"),
        ({"request": "eyJ.x.y"}, "request_not_supported"),
    ],
)
def test_errors_after_the_redirect_uri_is_trusted_go_back_with_iss_and_state(
    world: World, agent: Agent, change: dict[str, str], error: str
) -> None:
    _, challenge = pkce()
    r = httpx.get(world.authorize_url(agent, challenge, state="s-1", **change), timeout=10)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?")
    q = query_of(location)
    assert q["error"] == error and q["state"] == "s-1" and q["iss"] == world.srv.issuer
    assert "code" not in q


def test_prompt_login_asks_for_the_passkey_again(world: World, alice: Person, agent: Agent) -> None:
    world.code_for(alice, agent)  # signed in, consent remembered
    verifier, challenge = pkce()
    page = alice.page.get(world.authorize_url(agent, challenge, prompt="login"))
    assert page.status_code == 200 and 'id="signin"' in page.text
    done = world.sign_in(alice, page.text)
    assert done.status_code == 303 and "prompt" not in done.headers["location"]
    r = alice.page.get(done.headers["location"])
    assert r.status_code == 303
    assert world.redeem(agent, query_of(r.headers["location"])["code"], verifier).status_code == 200
    bad = httpx.get(world.authorize_url(agent, challenge, prompt="none login"), timeout=10)
    assert query_of(bad.headers["location"])["error"] == "invalid_request"


def test_prompt_none_without_a_session(world: World, agent: Agent) -> None:
    _, challenge = pkce()
    r = httpx.get(world.authorize_url(agent, challenge, prompt="none"), timeout=10)
    assert r.status_code == 303 and query_of(r.headers["location"])["error"] == "login_required"


def test_the_authorization_request_may_be_posted(world: World, alice: Person, agent: Agent) -> None:
    world.code_for(alice, agent)
    verifier, challenge = pkce()
    url = world.authorize_url(agent, challenge)
    r = alice.page.http.post(
        world.srv.issuer + "/oauth/authorize",
        content=url.split("?", 1)[1],
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 303
    code = query_of(r.headers["location"])["code"]
    assert world.redeem(agent, code, verifier).status_code == 200


# -- the token endpoint ------------------------------------------------------------------------------------


def test_pkce_verifier_missing_malformed_or_wrong(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    r = world.token(agent, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert_oauth_error(r, 400, "invalid_request")
    r = world.token(agent, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier="short")
    assert_oauth_error(r, 400, "invalid_request")
    wrong, _ = pkce()
    assert_oauth_error(world.redeem(agent, code, wrong), 400, "invalid_grant")
    # A refused request changed nothing: the right verifier still redeems the code.
    assert world.redeem(agent, code, verifier).status_code == 200


def test_the_token_request_may_repeat_the_resource_but_not_change_it(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    base = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
    assert_oauth_error(world.token(agent, **base, resource="https://other.example.com/mcp"), 400, "invalid_target")
    r = world.token(agent, **base, resource=RESOURCE)
    assert r.status_code == 200, r.text
    assert verify(world.srv, r.json()["access_token"])["aud"] == RESOURCE


def test_redirect_uri_must_match_at_the_token_endpoint(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    r = world.token(
        agent, grant_type="authorization_code", code=code, code_verifier=verifier, redirect_uri=REDIRECT + "x"
    )
    assert_oauth_error(r, 400, "invalid_grant")
    r = world.token(agent, grant_type="authorization_code", code=code, code_verifier=verifier)
    assert_oauth_error(r, 400, "invalid_grant")  # it was in the authorization request: it must be repeated
    assert world.redeem(agent, code, verifier).status_code == 200


def test_a_code_is_bound_to_its_client(world: World, alice: Person, agent: Agent) -> None:
    other = world.agent()
    code, verifier, _ = world.code_for(alice, agent)
    assert_oauth_error(world.redeem(other, code, verifier), 400, "invalid_grant")
    r = world.token(Agent(""), grant_type="authorization_code", code=code, code_verifier=verifier)
    assert r.status_code in (400, 401)
    assert world.redeem(agent, code, verifier).status_code == 200


def test_a_replayed_code_is_refused_and_revokes_what_it_issued(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    first = world.redeem(agent, code, verifier)
    assert first.status_code == 200
    access, refresh = first.json()["access_token"], first.json()["refresh_token"]
    assert introspect(world, access)["active"] is True
    assert_oauth_error(world.redeem(agent, code, verifier), 400, "invalid_grant")
    assert introspect(world, access)["active"] is False
    assert_oauth_error(world.token(agent, grant_type="refresh_token", refresh_token=refresh), 400, "invalid_grant")
    assert "authorize.code_replayed" in [e["event"] for e in world.audit_events()]


def test_an_expired_code_is_refused(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    code_row(world.srv, code, "UPDATE oauth_codes SET expires_at = created_at WHERE code_hash = ?")
    assert_oauth_error(world.redeem(agent, code, verifier), 400, "invalid_grant")


def test_codes_live_at_most_sixty_seconds_and_are_stored_hashed(world: World, alice: Person, agent: Agent) -> None:
    code, _, _ = world.code_for(alice, agent)
    with sqlite3.connect(world.srv.data_dir / "tessera.db") as db:
        rows = db.execute("SELECT code_hash, created_at, expires_at FROM oauth_codes").fetchall()
    assert all(exp - created <= 60 for _, created, exp in rows)
    assert code not in str(rows) and hashlib.sha256(code.encode()).hexdigest() in [r[0] for r in rows]


def test_a_confidential_client_authenticates(world: World, alice: Person) -> None:
    agent = world.agent(token_endpoint_auth_method="client_secret_post")
    assert agent.secret
    code, verifier, _ = world.code_for(alice, agent)
    r = world.token(
        Agent(agent.client_id),
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri=REDIRECT,
    )
    assert_oauth_error(r, 401, "invalid_client")  # its secret is required
    assert world.redeem(agent, code, verifier).status_code == 200


# -- refresh tokens -----------------------------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_family(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent, scope="tools.read tools.write")
    first = world.redeem(agent, code, verifier).json()
    r1 = first["refresh_token"]
    second = world.token(agent, grant_type="refresh_token", refresh_token=r1, scope="tools.read")
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] != r1 and body["scope"] == "tools.read"
    claims = verify(world.srv, body["access_token"])
    assert claims["sub"] == "alice" and claims["act"] == {"sub": agent.client_id}
    # Narrowing is allowed; widening is not.
    wider = world.token(agent, grant_type="refresh_token", refresh_token=body["refresh_token"], scope="tools.admin")
    assert_oauth_error(wider, 400, "invalid_scope")
    other_rs = world.token(
        agent, grant_type="refresh_token", refresh_token=body["refresh_token"], resource="https://x.example/"
    )
    assert_oauth_error(other_rs, 400, "invalid_target")
    # Another client cannot use it.
    assert_oauth_error(
        world.token(world.agent(), grant_type="refresh_token", refresh_token=body["refresh_token"]),
        400,
        "invalid_grant",
    )
    # The rotated r1 presented again: refused, and the live one (and its access token) revoked with it.
    assert_oauth_error(world.token(agent, grant_type="refresh_token", refresh_token=r1), 400, "invalid_grant")
    assert_oauth_error(
        world.token(agent, grant_type="refresh_token", refresh_token=body["refresh_token"]), 400, "invalid_grant"
    )
    assert introspect(world, body["access_token"])["active"] is False
    with sqlite3.connect(world.srv.data_dir / "tessera.db") as db:
        stored = [r[0] for r in db.execute("SELECT token_hash FROM oauth_refresh_tokens")]
    assert r1 not in stored and hashlib.sha256(r1.encode()).hexdigest() in stored


def test_the_person_revokes_consent_on_their_grants_page(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    tokens = world.redeem(agent, code, verifier).json()
    page = alice.page.get(world.srv.issuer + "/account/grants")
    assert page.status_code == 200 and agent.client_id in page.text
    grant = next(g for g in world.admin.get("/grants", params={"client": agent.client_id}).json())
    form_id_page = page.text.split(f'id="grant-{grant["grant_id"]}"')[1]
    fields = form_fields('<form id="f">' + form_id_page.split("<form", 1)[1], "f")
    r = alice.page.post_form(world.srv.issuer + f"/account/grants/{grant['grant_id']}/revoke", fields)
    assert r.status_code == 303
    r = world.token(agent, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert_oauth_error(r, 400, "invalid_grant")
    assert introspect(world, tokens["access_token"])["active"] is False
    # Without the CSRF token, nothing happens.
    r = alice.page.post_form(world.srv.issuer + f"/account/grants/{grant['grant_id']}/revoke", {})
    assert r.status_code == 403
    assert "grant.revoked" in [e["event"] for e in world.audit_events()]


def test_the_admin_revokes_a_grant_by_api_and_cli(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    tokens = world.redeem(agent, code, verifier).json()
    grants = world.admin.get("/grants", params={"person": "alice", "client": agent.client_id}).json()
    assert len(grants) == 1 and grants[0]["scope"] == "tools.read" and grants[0]["resource"] == [RESOURCE]
    r = world.admin.delete(f"/grants/{grants[0]['grant_id']}")
    assert r.status_code == 200 and r.json()["revoked_tokens"] >= 1
    assert_oauth_error(
        world.token(agent, grant_type="refresh_token", refresh_token=tokens["refresh_token"]), 400, "invalid_grant"
    )
    assert world.admin.delete(f"/grants/{grants[0]['grant_id']}x").status_code == 404
    # The CLI verb: a new consent, revoked from the command line.
    code, verifier, _ = world.code_for(alice, agent)
    tokens = world.redeem(agent, code, verifier).json()
    live = [g for g in world.admin.get("/grants", params={"client": agent.client_id}).json() if not g["revoked_at"]]
    listed = world.srv.cli("grants", "list", "--client", agent.client_id)
    assert listed.returncode == 0 and live[0]["grant_id"] in listed.stdout, listed.stdout + listed.stderr
    done = world.srv.cli("grants", "revoke", live[0]["grant_id"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert_oauth_error(
        world.token(agent, grant_type="refresh_token", refresh_token=tokens["refresh_token"]), 400, "invalid_grant"
    )


def test_a_disabled_person_gets_nothing_more(world: World) -> None:
    carol = world.person("carol")
    agent = world.agent()
    code, verifier, _ = world.code_for(carol, agent)
    tokens = world.redeem(agent, code, verifier).json()
    r = world.admin.put("/people/carol", json={"name": "Carol", "channels": ["file"], "disabled": True})
    assert r.status_code == 200, r.text
    assert_oauth_error(
        world.token(agent, grant_type="refresh_token", refresh_token=tokens["refresh_token"]), 400, "invalid_grant"
    )


def test_secrets_never_reach_the_audit_log(world: World, alice: Person, agent: Agent) -> None:
    code, verifier, _ = world.code_for(alice, agent)
    tokens = world.redeem(agent, code, verifier).json()
    text = str(world.audit_events())
    assert code not in text and tokens["refresh_token"] not in text and verifier not in text


def test_the_flows_gate_both_grants(world: World, tmp_path: pathlib.Path) -> None:
    """docs/flows.md: token.issue flows apply to authorization_code and refresh_token (here: Erin's
    tokens may live at most 60 s; and none may be refreshed once a flag scope is asked for)."""
    import time

    import yaml

    erin = world.person("erin")
    agent = world.agent(scope="tools.read tools.write flagged")
    code, verifier, _ = world.code_for(erin, agent)
    before = world.redeem(agent, code, verifier).json()
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "erin-short.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "erin-short",
                "on": "token.issue",
                "grants": ["authorization_code", "refresh_token"],
                "when": 'person.id == "erin"',
                "steps": [
                    {"id": "no-flag", "when": '"flagged" in request.scope', "deny": {}, "reason": "flagged scope"},
                    {"id": "short", "limit": {"lifetime": 60}},
                ],
            }
        )
    )
    r = world.srv.cli("flows", "publish", str(flows), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(1.6)
    code, verifier, _ = world.code_for(erin, agent)
    got = world.redeem(agent, code, verifier)
    assert got.status_code == 200 and got.json()["expires_in"] == 60, got.text
    refreshed = world.token(agent, grant_type="refresh_token", refresh_token=before["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["expires_in"] == 60, refreshed.text
    code, verifier, _ = world.code_for(erin, agent, scope="tools.read flagged")
    denied = world.redeem(agent, code, verifier)
    assert denied.status_code == 400 and "flagged scope" in denied.json()["error_description"], denied.text
    # Issued before the flow was published: the server default.
    assert before["expires_in"] > 60


def test_a_public_client_revokes_its_refresh_token_at_the_revocation_endpoint(
    world: World, alice: Person, agent: Agent
) -> None:
    """RFC 7009 §2: refresh tokens MUST be revocable; the family and its access tokens go with it."""
    code, verifier, _ = world.code_for(alice, agent)
    tokens = world.redeem(agent, code, verifier).json()
    other = world.agent()
    r = httpx.post(
        world.srv.issuer + "/oauth/revoke",
        data={"token": tokens["refresh_token"], "client_id": other.client_id},
        timeout=10,
    )
    assert_oauth_error(r, 400, "invalid_grant")  # another client's token: refused, nothing revoked
    assert introspect(world, tokens["access_token"])["active"] is True
    r = httpx.post(
        world.srv.issuer + "/oauth/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": agent.client_id},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert introspect(world, tokens["access_token"])["active"] is False
    assert_oauth_error(
        world.token(agent, grant_type="refresh_token", refresh_token=tokens["refresh_token"]), 400, "invalid_grant"
    )
    # Without any client identification: invalid_client.
    r = httpx.post(world.srv.issuer + "/oauth/revoke", data={"token": tokens["refresh_token"]}, timeout=10)
    assert r.status_code == 401
