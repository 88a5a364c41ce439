"""OpenID Connect CIBA Core 1.0: discovery (§4), client registration (§4), and the backchannel
authentication endpoint (§7 request, §7.1.1 signed requests, §7.3 acknowledgement, §13 errors).

One module server (development mode off, so an http loopback notification endpoint is refused);
each test uses its own people and clients. Fresh servers only where a global setting must differ
(the per-person message limit, the lockout threshold). The token endpoint side is in
``test_ciba_token.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ciba_support import CIBA, Ciba, ciba_world, claims_of
from support import ASSERTION_TYPE, assert_oauth_error, client_assertion, ec_jwk, ec_key, sign_es256


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ciba]:
    with ciba_world(tmp_path_factory.mktemp("ciba-bc") / "data") as world:
        yield world


@pytest.fixture(scope="module")
def poll_client(w: Ciba) -> dict[str, Any]:
    return w.client()


def error_of(r: httpx.Response, status: int, error: str) -> None:
    assert_oauth_error(r, status, error)
    if error == "invalid_client":
        assert r.headers["www-authenticate"], r.headers


# -- discovery -----------------------------------------------------------------------------------------------


def test_discovery_advertises_ciba(w: Ciba) -> None:
    md = httpx.get(w.srv.issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert md["backchannel_authentication_endpoint"] == w.srv.issuer + "/oauth/bc-authorize"
    assert sorted(md["backchannel_token_delivery_modes_supported"]) == ["ping", "poll"]
    algs = md["backchannel_authentication_request_signing_alg_values_supported"]
    assert "ES256" in algs and "none" not in algs and not any(a.startswith("HS") for a in algs)
    assert md["backchannel_user_code_parameter_supported"] is True
    assert CIBA in md["grant_types_supported"]
    # The same document at the RFC 8414 path.
    md2 = httpx.get(w.srv.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert md2["backchannel_authentication_endpoint"] == md["backchannel_authentication_endpoint"]


# -- registration (§4) ---------------------------------------------------------------------------------------

_KEY = ec_key()
_BASE: dict[str, Any] = {
    "grant_types": [CIBA],
    "token_endpoint_auth_method": "client_secret_basic",
    "scope": "read",
    "backchannel_token_delivery_mode": "poll",
}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            {
                "backchannel_token_delivery_mode": "push",
                "backchannel_client_notification_endpoint": "https://c.example/cb",
            },
            "push",
        ),
        ({"backchannel_token_delivery_mode": "carrier-pigeon"}, "unknown mode"),
        ({"backchannel_token_delivery_mode": None}, "no mode (REQUIRED)"),
        ({"backchannel_token_delivery_mode": "ping"}, "ping without a notification endpoint"),
        (
            {
                "backchannel_token_delivery_mode": "ping",
                "backchannel_client_notification_endpoint": "http://c.example/cb",
            },
            "http, not loopback",
        ),
        (
            {
                "backchannel_token_delivery_mode": "ping",
                "backchannel_client_notification_endpoint": "http://127.0.0.1:9/cb",
            },
            "http loopback without development mode",
        ),
        (
            {
                "backchannel_token_delivery_mode": "ping",
                "backchannel_client_notification_endpoint": "https://c.example/cb#frag",
            },
            "fragment",
        ),
        (
            {"backchannel_authentication_request_signing_alg": "none", "jwks": {"keys": [ec_jwk(_KEY, "k1")]}},
            "alg none",
        ),
        (
            {"backchannel_authentication_request_signing_alg": "HS256", "jwks": {"keys": [ec_jwk(_KEY, "k1")]}},
            "symmetric alg",
        ),
        ({"backchannel_authentication_request_signing_alg": "ES256"}, "signing alg without keys"),
        ({"backchannel_user_code_parameter": "true"}, "user_code parameter not a boolean"),
        ({"backchannel_user_code_parameter": 1}, "user_code parameter a number"),
        ({"grant_types": ["client_credentials"]}, "CIBA metadata on a client without the CIBA grant"),
        ({"token_endpoint_auth_method": "none"}, "public client"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_registration_refuses_bad_ciba_metadata(w: Ciba, change: dict[str, Any], why: str) -> None:
    md = {**_BASE, **change}
    md = {k: v for k, v in md.items() if v is not None}
    r = w.register_raw(**md)
    assert r.status_code == 400, (why, r.text)
    assert r.json()["error"] == "invalid_client_metadata", r.text
    if why == "public client":
        assert "confidential" in r.json()["error_description"], r.text


def test_registration_accepts_and_echoes_ciba_metadata(w: Ciba) -> None:
    ping = w.client(
        backchannel_token_delivery_mode="ping",
        backchannel_client_notification_endpoint="https://client.example/cb",
        backchannel_user_code_parameter=True,
    )
    assert ping["backchannel_token_delivery_mode"] == "ping"
    assert ping["backchannel_client_notification_endpoint"] == "https://client.example/cb"
    assert ping["backchannel_user_code_parameter"] is True
    signed = w.client(
        jwks={"keys": [ec_jwk(_KEY, "k1")]},
        backchannel_authentication_request_signing_alg="ES256",
        token_endpoint_auth_method="private_key_jwt",
    )
    assert signed["backchannel_authentication_request_signing_alg"] == "ES256"
    got = httpx.get(
        signed["registration_client_uri"],
        headers={"Authorization": "Bearer " + signed["registration_access_token"]},
        timeout=10,
    )
    assert got.status_code == 200 and got.json()["backchannel_authentication_request_signing_alg"] == "ES256"


# -- the request: transport and client authentication ----------------------------------------------------------


def test_get_is_not_allowed(w: Ciba) -> None:
    assert httpx.get(w.bc_endpoint, timeout=10).status_code == 405


def test_json_body_is_invalid_request(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("json-body")
    r = httpx.post(
        w.bc_endpoint,
        json={"scope": "openid", "login_hint": "json-body"},
        auth=(poll_client["client_id"], poll_client["client_secret"]),
        timeout=10,
    )
    error_of(r, 400, "invalid_request")


def test_duplicate_parameters_are_invalid_request(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("dup-params")
    r = httpx.post(
        w.bc_endpoint,
        content=b"scope=openid&login_hint=dup-params&login_hint=dup-params",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=(poll_client["client_id"], poll_client["client_secret"]),
        timeout=10,
    )
    error_of(r, 400, "invalid_request")


def test_client_authentication_is_required(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("authn")
    r = httpx.post(w.bc_endpoint, data={"scope": "openid", "login_hint": "authn"}, timeout=10)
    error_of(r, 401, "invalid_client")
    r = httpx.post(
        w.bc_endpoint,
        data={"scope": "openid", "login_hint": "authn"},
        auth=(poll_client["client_id"], "not-the-secret"),
        timeout=10,
    )
    error_of(r, 401, "invalid_client")
    # client_secret_post is not this client's method either.
    r = httpx.post(
        w.bc_endpoint,
        data={
            "scope": "openid",
            "login_hint": "authn",
            "client_id": poll_client["client_id"],
            "client_secret": poll_client["client_secret"],
        },
        timeout=10,
    )
    error_of(r, 401, "invalid_client")


@pytest.fixture(scope="module")
def jwt_client(w: Ciba) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
    key = ec_key()
    c = w.client(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    w.person("asserted")
    return c, key


def assertion_form(c: dict[str, Any], key: Any, aud: str) -> dict[str, str]:
    return {
        "scope": "openid",
        "login_hint": "asserted",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, c["client_id"], aud),
    }


def test_private_key_jwt_client_authentication(w: Ciba, jwt_client: tuple[dict[str, Any], Any]) -> None:
    c, key = jwt_client
    for aud in (w.srv.issuer, w.srv.token_endpoint):
        r = httpx.post(w.bc_endpoint, data=assertion_form(c, key, aud), timeout=15)
        assert r.status_code == 200, (aud, r.text)
    r = httpx.post(w.bc_endpoint, data=assertion_form(c, key, "https://other.example"), timeout=15)
    error_of(r, 401, "invalid_client")


def test_client_assertion_replay_is_refused(w: Ciba, jwt_client: tuple[dict[str, Any], Any]) -> None:
    c, key = jwt_client
    form = assertion_form(c, key, w.srv.issuer)
    assert httpx.post(w.bc_endpoint, data=form, timeout=15).status_code == 200
    error_of(httpx.post(w.bc_endpoint, data=form, timeout=15), 401, "invalid_client")


def test_private_key_jwt_audience_may_be_the_backchannel_endpoint(
    w: Ciba, jwt_client: tuple[dict[str, Any], Any]
) -> None:
    c, key = jwt_client
    r = httpx.post(w.bc_endpoint, data=assertion_form(c, key, w.bc_endpoint), timeout=15)
    assert r.status_code == 200, r.text


def test_client_without_the_ciba_grant_is_unauthorized(w: Ciba) -> None:
    w.person("no-grant")
    cc = w.srv.register(scope="read")
    error_of(w.bc(cc, login_hint="no-grant"), 400, "unauthorized_client")


# -- parameters ------------------------------------------------------------------------------------------------


def test_scope_must_contain_openid_and_be_allowed(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("scoped")
    error_of(w.bc(poll_client, login_hint="scoped", scope=None), 400, "invalid_request")
    error_of(w.bc(poll_client, login_hint="scoped", scope="read"), 400, "invalid_request")
    error_of(w.bc(poll_client, login_hint="scoped", scope="openid admin"), 400, "invalid_scope")
    r = w.bc(poll_client, login_hint="scoped", scope="openid read write")
    assert r.status_code == 200, r.text


def test_exactly_one_hint(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("hints")
    error_of(w.bc(poll_client), 400, "invalid_request")
    error_of(w.bc(poll_client, login_hint="hints", login_hint_token="a.b.c"), 400, "invalid_request")
    error_of(w.bc(poll_client, login_hint=""), 400, "invalid_request")


def test_login_hint_by_id_and_by_email(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("mailable", email="Mailable@Example.com")
    error_of(w.bc(poll_client, login_hint="nobody-here"), 400, "unknown_user_id")
    error_of(w.bc(poll_client, login_hint="nobody@example.com"), 400, "unknown_user_id")
    assert w.bc(poll_client, login_hint="mailable").status_code == 200
    # Both requests reached the same person.
    w.next_link("mailable")
    r = w.bc(poll_client, login_hint="mailable@example.com")
    assert r.status_code == 200, r.text
    w.next_link("mailable")


@pytest.fixture(scope="module")
def issued(w: Ciba, poll_client: dict[str, Any]) -> dict[str, Any]:
    """A completed CIBA flow for "hinted" with ``poll_client``: the token response."""
    w.person("hinted")
    return w.approved(poll_client, "hinted")[1]


def test_id_token_hint_issued_to_this_client_names_the_person(
    w: Ciba, poll_client: dict[str, Any], issued: dict[str, Any]
) -> None:
    r = w.bc(poll_client, id_token_hint=issued["id_token"])
    assert r.status_code == 200, r.text
    # The approval link went to the person the ID token names.
    link = w.next_link("hinted")
    assert link.startswith(w.srv.issuer)


def test_id_token_hint_must_be_ours_and_for_this_client(
    w: Ciba, poll_client: dict[str, Any], issued: dict[str, Any]
) -> None:
    other = w.client()
    error_of(w.bc(other, id_token_hint=issued["id_token"]), 400, "invalid_request")
    error_of(w.bc(poll_client, id_token_hint="garbage"), 400, "invalid_request")
    error_of(w.bc(poll_client, id_token_hint="a.b.c"), 400, "invalid_request")
    # An access token is not an ID token (typ at+jwt), even for the same person.
    error_of(w.bc(poll_client, id_token_hint=issued["access_token"]), 400, "invalid_request")
    # An ID token re-signed with a key of our own making is refused.
    claims = claims_of(issued["id_token"])
    forged = pyjwt.encode(
        claims, ec_key(), algorithm="ES256", headers={"kid": pyjwt.get_unverified_header(issued["id_token"])["kid"]}
    )
    error_of(w.bc(poll_client, id_token_hint=forged), 400, "invalid_request")


def test_login_hint_token_without_a_trusted_issuer(w: Ciba, poll_client: dict[str, Any]) -> None:
    now = int(time.time())
    token = pyjwt.encode(
        {"iss": "https://idp.example", "sub": "hinted", "aud": w.srv.issuer, "iat": now, "exp": now + 300},
        ec_key(),
        algorithm="ES256",
    )
    error_of(w.bc(poll_client, login_hint_token=token), 400, "invalid_request")


def test_binding_message(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("binder")
    error_of(w.bc(poll_client, login_hint="binder", binding_message="x" * 65), 400, "invalid_binding_message")
    # C1 controls, bidi overrides and line separators pass the form parser; the endpoint refuses them.
    for bad in ("ab\x85cd", "pay \u202eevil", "ab\u2028cd"):
        error_of(w.bc(poll_client, login_hint="binder", binding_message=bad), 400, "invalid_binding_message")
    # C0 controls are refused by the strict form parser first (oauth/forms.py), as for every parameter.
    error_of(w.bc(poll_client, login_hint="binder", binding_message="ab\ncd"), 400, "invalid_request")
    error_of(w.bc(poll_client, login_hint="binder", binding_message="   "), 400, "invalid_binding_message")
    r = w.bc(poll_client, login_hint="binder", binding_message="W4SCT " + "y" * 58)
    assert r.status_code == 200, r.text
    # The person sees it on the approval page.
    page = w.people["binder"].page.get(w.next_link("binder"))
    assert page.status_code == 200 and "W4SCT" in page.text


def test_user_code(w: Ciba) -> None:
    w.person("coded", user_code="123456")
    w.person("uncoded")
    c = w.client(backchannel_user_code_parameter=True)
    error_of(w.bc(c, login_hint="coded"), 400, "missing_user_code")
    error_of(w.bc(c, login_hint="coded", user_code="654321"), 400, "invalid_user_code")
    # A person without a user code cannot be asked by a client that must send one.
    error_of(w.bc(c, login_hint="uncoded", user_code="123456"), 400, "invalid_user_code")
    r = w.bc(c, login_hint="coded", user_code="123456")
    assert r.status_code == 200, r.text
    assert w.admin.get("/people/coded").json()["has_user_code"] is True
    assert "123456" not in w.admin.get("/people/coded").text


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", " 60", "0x10", "1234567890"])
def test_requested_expiry_must_be_a_positive_integer(w: Ciba, poll_client: dict[str, Any], value: str) -> None:
    w.person("expiring")
    error_of(w.bc(poll_client, login_hint="expiring", requested_expiry=value), 400, "invalid_request")


def test_requested_expiry_unicode_digit_is_invalid_request(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("expiring")
    error_of(w.bc(poll_client, login_hint="expiring", requested_expiry="\u00b2"), 400, "invalid_request")


def test_requested_expiry_is_honoured_up_to_the_maximum(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("expiry-ok")
    r = w.bc(poll_client, login_hint="expiry-ok", requested_expiry="60")
    assert r.status_code == 200 and r.json()["expires_in"] == 60, r.text
    r = w.bc(poll_client, login_hint="expiry-ok", requested_expiry="99999")
    assert r.status_code == 200 and r.json()["expires_in"] == 600, r.text


def test_short_requested_expiry_is_not_access_denied(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("expiry-short")
    r = w.bc(poll_client, login_hint="expiry-short", requested_expiry="10")
    # §7.1: the OP may answer another expires_in than asked; refusing the person is wrong.
    assert r.status_code == 200, r.text
    assert 10 <= r.json()["expires_in"] <= 30


def test_ping_client_notification_token(w: Ciba) -> None:
    w.person("pinged")
    # https loopback: registration accepts it; the guarded transport (development mode off) never calls it.
    c = w.client(
        backchannel_token_delivery_mode="ping", backchannel_client_notification_endpoint="https://127.0.0.1:9/cb"
    )
    error_of(w.bc(c, login_hint="pinged"), 400, "invalid_request")
    error_of(w.bc(c, login_hint="pinged", client_notification_token="t" * 1025), 400, "invalid_request")
    error_of(w.bc(c, login_hint="pinged", client_notification_token="has space"), 400, "invalid_request")
    error_of(w.bc(c, login_hint="pinged", client_notification_token='quote"d'), 400, "invalid_request")
    r = w.bc(c, login_hint="pinged", client_notification_token="t" * 1024)
    assert r.status_code == 200, r.text
    r = w.bc(c, login_hint="pinged", client_notification_token="abc-._~+/DEF==")
    assert r.status_code == 200, r.text


def test_acr_values(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("acr")
    error_of(w.bc(poll_client, login_hint="acr", acr_values="urn:example:gold"), 400, "invalid_request")
    r = w.bc(poll_client, login_hint="acr", acr_values="urn:example:gold urn:tessera:aal3")
    assert r.status_code == 200, r.text
    r = w.bc(poll_client, login_hint="acr", acr_values="http://idmanagement.gov/ns/assurance/aal/2")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        '{"type": "deployment"}',
        "[]",
        '["deployment"]',
        '[{"kind": "deployment"}]',
        '[{"type": "unknown_type"}]',
        '[{"type": "deployment"}, {"type": "unknown_type"}]',
    ],
)
def test_authorization_details_refused(w: Ciba, poll_client: dict[str, Any], value: str) -> None:
    w.person("details")
    error_of(w.bc(poll_client, login_hint="details", authorization_details=value), 400, "invalid_authorization_details")


def test_authorization_details_accepted(w: Ciba, poll_client: dict[str, Any]) -> None:
    # Carried into the access token: test_ciba_token.py::test_success_response_and_tokens.
    w.person("details-ok")
    details = [{"type": "deployment", "locations": ["https://api.example"], "actions": ["deploy"]}]
    r = w.bc(poll_client, login_hint="details-ok", authorization_details=json.dumps(details))
    assert r.status_code == 200, r.text


# -- the person cannot be asked: 403 access_denied (§13) -----------------------------------------------------


def test_person_who_cannot_approve_is_access_denied(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("no-device", enrol=False)
    error_of(w.bc(poll_client, login_hint="no-device"), 403, "access_denied")
    w.person("gone")
    assert w.bc(poll_client, login_hint="gone").status_code == 200
    w.person("gone", enrol=False, disabled=True)
    assert w.admin.get("/people/gone").json()["disabled"] is True
    error_of(w.bc(poll_client, login_hint="gone"), 403, "access_denied")


def test_locked_person_is_access_denied(tmp_path: Any) -> None:
    with ciba_world(tmp_path / "data", TESSERA_APPROVAL_MAX_FAILURES="1") as w2:
        c = w2.client()
        p = w2.person("locky")
        assert w2.bc(c, login_hint="locky").status_code == 200
        link = w2.next_link("locky")
        # A proof made for "deny" offered as "approve": a failed proof, which locks at one failure.
        page = p.page.get(link).text
        from approval_support import form_fields

        assert p.auth is not None
        opts = p.page.options(page, "decide", {"decision": "deny"})
        fields = form_fields(page, "decide")
        fields.update(credential=json.dumps(p.auth.get(opts.json(), p.page.origin)), decision="approve")
        assert p.page.post_form(link, fields).status_code == 403
        assert w2.admin.get("/people/locky").json()["locked"] is True
        r = w2.bc(c, login_hint="locky")
        error_of(r, 403, "access_denied")
        assert "locked" in r.json()["error_description"]
        assert w2.admin.post("/people/locky/unlock").status_code == 200
        assert w2.bc(c, login_hint="locky").status_code == 200


def test_message_rate_limit_is_access_denied(tmp_path: Any) -> None:
    with ciba_world(tmp_path / "data", TESSERA_MESSAGES_PER_PERSON_PER_MINUTE="2") as w2:
        c = w2.client()
        w2.person("busy")  # the enrolment link is one message
        statuses = [w2.bc(c, login_hint="busy") for _ in range(3)]
        assert statuses[0].status_code == 200, statuses[0].text
        error_of(statuses[-1], 403, "access_denied")
        assert [r.status_code for r in statuses].count(200) <= 2
        # Another person is not limited by busy's messages.
        w2.person("calm")
        assert w2.bc(c, login_hint="calm").status_code == 200


# -- the acknowledgement (§7.3) ------------------------------------------------------------------------------


def test_acknowledgement(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("acked")
    r = w.bc(poll_client, login_hint="acked")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"auth_req_id", "expires_in", "interval"}
    # §7.3: "at least 128 bits"; FAPI-CIBA: at least 160 bits of entropy (27+ chars of base64url; ours: 43).
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", body["auth_req_id"]), body
    assert body["expires_in"] == 600  # the configured maximum without requested_expiry
    assert body["interval"] == 1  # TESSERA_CIBA_INTERVAL
    again = w.bc(poll_client, login_hint="acked").json()
    assert again["auth_req_id"] != body["auth_req_id"]


def test_auth_req_id_is_not_stored_in_clear(w: Ciba, poll_client: dict[str, Any]) -> None:
    w.person("stored")
    auth_req_id = w.start(poll_client, "stored")
    w.next_link("stored")  # the request is committed and its message delivered
    files = sorted(w.db.parent.glob(w.db.name + "*"))
    assert files, list(w.db.parent.iterdir())
    blob = b"".join(f.read_bytes() for f in files)
    # The search can find what is stored: the SHA-256 of the id is there ...
    assert hashlib.sha256(auth_req_id.encode()).hexdigest().encode() in blob
    # ... the id itself is not, in any encoding a reader could use.
    for form in (
        auth_req_id.encode(),
        auth_req_id.encode("utf-16-le"),
        base64.b64decode(auth_req_id + "=" * (-len(auth_req_id) % 4), altchars=b"-_"),
    ):
        assert form not in blob


# -- signed authentication requests (§7.1.1) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(w: Ciba) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
    key = ec_key()
    c = w.client(
        jwks={"keys": [ec_jwk(key, "k1")]},
        backchannel_authentication_request_signing_alg="ES256",
    )
    w.person("signed")
    return c, key


def request_object(
    w: Ciba,
    client: dict[str, Any],
    key: Any,
    *,
    drop: str | None = None,
    header: dict[str, Any] | None = None,
    **over: Any,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client["client_id"],
        "aud": w.srv.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
        "scope": "openid",
        "login_hint": "signed",
    }
    claims.update(over)
    if drop:
        del claims[drop]
    return pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1", **(header or {})})


def send_signed(w: Ciba, client: dict[str, Any], request: str, **extra: str) -> httpx.Response:
    return httpx.post(
        w.bc_endpoint,
        data={"request": request, **extra},
        auth=(client["client_id"], client["client_secret"]),
        timeout=15,
    )


def test_signed_request_accepted(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    c, key = signer
    r = send_signed(w, c, request_object(w, c, key, binding_message="SIGNED 1"))
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 600


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "nbf", "jti"])
def test_signed_request_missing_claim(w: Ciba, signer: tuple[dict[str, Any], Any], claim: str) -> None:
    c, key = signer
    error_of(send_signed(w, c, request_object(w, c, key, drop=claim)), 400, "invalid_request")


def test_signed_request_refusals(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    c, key = signer
    now = int(time.time())
    cases = {
        "wrong key": request_object(w, c, ec_key()),
        "wrong aud": request_object(w, c, key, aud="https://other.example"),
        "token endpoint as aud": request_object(w, c, key, aud=w.srv.token_endpoint),
        "wrong iss": request_object(w, c, key, iss="someone-else"),
        "expired": request_object(w, c, key, iat=now - 600, nbf=now - 600, exp=now - 120),
        "nbf in the future": request_object(w, c, key, nbf=now + 600),
        "lifetime over 60 min": request_object(w, c, key, exp=now + 3700),
        "exp as a string": request_object(w, c, key, exp=str(now + 300)),
        # An ES256 signature under a header claiming ES384: the registered alg decides, not the header.
        "other alg in header": sign_es256({"alg": "ES384", "kid": "k1"}, claims_of(request_object(w, c, key)), key),
    }
    for why, request in cases.items():
        r = send_signed(w, c, request)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", (why, r.text)


def test_signed_request_alg_none(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    c, _ = signer
    now = int(time.time())
    claims = {
        "iss": c["client_id"],
        "aud": w.srv.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
        "scope": "openid",
        "login_hint": "signed",
    }

    def seg(v: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()

    unsigned = seg({"alg": "none", "typ": "JWT"}) + "." + seg(claims) + "."
    error_of(send_signed(w, c, unsigned), 400, "invalid_request")


def test_signed_request_jti_replay(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    c, key = signer
    request = request_object(w, c, key)
    assert send_signed(w, c, request).status_code == 200
    error_of(send_signed(w, c, request), 400, "invalid_request")


def test_signed_request_shape(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    c, key = signer
    # A parameter outside the request object.
    error_of(send_signed(w, c, request_object(w, c, key), binding_message="outside"), 400, "invalid_request")
    # JWE-shaped (five parts).
    error_of(send_signed(w, c, "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"), 400, "invalid_request")
    # A client that registered a signing alg must sign.
    error_of(w.bc(c, login_hint="signed"), 400, "invalid_request")


def test_signed_request_requested_expiry_number_or_string(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    c, key = signer
    r = send_signed(w, c, request_object(w, c, key, requested_expiry=120))
    assert r.status_code == 200 and r.json()["expires_in"] == 120, r.text
    r = send_signed(w, c, request_object(w, c, key, requested_expiry="90"))
    assert r.status_code == 200 and r.json()["expires_in"] == 90, r.text
    error_of(send_signed(w, c, request_object(w, c, key, requested_expiry=True)), 400, "invalid_request")
    error_of(send_signed(w, c, request_object(w, c, key, requested_expiry=-1)), 400, "invalid_request")


def test_signed_request_binding_message_with_control_characters(w: Ciba, signer: tuple[dict[str, Any], Any]) -> None:
    # Inside a request object the form parser does not see the value: the endpoint's own check applies.
    c, key = signer
    for bad in ("ab\ncd", "ab\x1bcd", "x" * 65):
        r = send_signed(w, c, request_object(w, c, key, binding_message=bad))
        error_of(r, 400, "invalid_binding_message")
