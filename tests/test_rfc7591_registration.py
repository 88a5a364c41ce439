"""RFC 7591 (OAuth 2.0 Dynamic Client Registration) and RFC 7592 (its management protocol).

Registration needs the initial access token (RFC 7591 §3, a bearer token); the registration access
token it returns alone reads, replaces and deletes that client at its ``registration_client_uri``
(RFC 7592 §2). Each change is an audit record that holds no secret.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import ASSERTION_TYPE, LiveServer, client_assertion, ec_jwk, ec_key

BASE = {
    "grant_types": ["client_credentials"],
    "token_endpoint_auth_method": "client_secret_basic",
    "scope": "read write",
}


def _register(
    server: LiveServer,
    body: Any = None,
    *,
    token: str | None = "",
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST to the registration endpoint; ``token=""`` means the server's initial access token."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token or server.reg_token}"
    if content is not None:
        hdrs.setdefault("Content-Type", "application/json")
        return httpx.post(server.issuer + "/oauth/register", content=content, headers=hdrs, timeout=10)
    return httpx.post(server.issuer + "/oauth/register", json=body, headers=hdrs, timeout=10)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(server: LiveServer, client_id: str, secret: str, **form: str) -> httpx.Response:
    return httpx.post(
        server.token_endpoint, data={"grant_type": "client_credentials", **form}, auth=(client_id, secret), timeout=10
    )


def _assertion_token(server: LiveServer, client_id: str, key: Any) -> httpx.Response:
    return httpx.post(
        server.token_endpoint,
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(key, client_id, server.token_endpoint),
        },
    )


def _assert_error(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error, body
    assert r.headers["cache-control"] == "no-store"


def _assert_bearer_challenge(r: httpx.Response) -> None:
    _assert_error(r, 401, "invalid_token")
    challenge = r.headers["www-authenticate"]
    assert challenge.split(" ", 1)[0] == "Bearer"
    assert 'error="invalid_token"' in challenge


def _audit(server: LiveServer) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with server.admin() as admin:
        while True:
            r = admin.get("/audit", params={"after": records[-1]["seq"] if records else 0, "limit": 1000})
            assert r.status_code == 200, r.text
            if not r.json():
                return records
            records += r.json()


# -- RFC 7591 §3: the initial access token ---------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Bearer", "Basic dXNlcjpwYXNz"],
    ids=["missing", "wrong", "empty", "basic-scheme"],
)
def test_registration_needs_the_initial_access_token(server: LiveServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    r = _register(server, BASE, token=None, headers=headers)
    _assert_bearer_challenge(r)


def test_discovery_advertises_the_registration_endpoint(server: LiveServer) -> None:
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert md["registration_endpoint"] == server.issuer + "/oauth/register"


def test_registration_is_closed_without_an_initial_access_token(tmp_path: pathlib.Path) -> None:
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_REGISTRATION_TOKEN": ""}).start()
    try:
        r = _register(srv, BASE)
        _assert_error(r, 403, "access_denied")
        md = httpx.get(srv.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
        assert "registration_endpoint" not in md
    finally:
        srv.stop()


# -- RFC 7591 §3.2.1: the client information response ------------------------------------------------------


def test_secret_client_registration_returns_credentials_and_echoes_metadata(server: LiveServer) -> None:
    metadata = {
        **BASE,
        "client_name": "Zürich build agent ☃",
        "contacts": ["ops@example.com"],
        "allowed_resources": ["https://api.example.com", "https://files.example.com"],
        "default_resource": "https://api.example.com",
        "access_token_lifetime": 600,
    }
    before = time.time()
    r = _register(server, metadata)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    cid = body["client_id"]
    assert isinstance(cid, str) and cid
    assert isinstance(body["client_secret"], str) and len(body["client_secret"]) >= 32
    assert isinstance(body["client_id_issued_at"], int)
    assert before - 5 <= body["client_id_issued_at"] <= time.time() + 5
    assert body["client_secret_expires_at"] == 0
    assert isinstance(body["registration_access_token"], str) and len(body["registration_access_token"]) >= 32
    assert body["registration_client_uri"] == f"{server.issuer}/oauth/register/{cid}"
    for name, value in metadata.items():
        assert body[name] == value, name

    tok = _token(server, cid, body["client_secret"])
    assert tok.status_code == 200, tok.text
    assert tok.json()["scope"] == "read write"


def test_client_secret_post_registration(server: LiveServer) -> None:
    body = server.register(token_endpoint_auth_method="client_secret_post")
    assert body["token_endpoint_auth_method"] == "client_secret_post"
    assert body["client_secret_expires_at"] == 0
    r = httpx.post(
        server.token_endpoint,
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_id": body["client_id"],
            "client_secret": body["client_secret"],
        },
    )
    assert r.status_code == 200, r.text


def test_private_key_jwt_registration_issues_no_secret(server: LiveServer) -> None:
    key = ec_key()
    jwks = {"keys": [ec_jwk(key, "k1")]}
    body = server.register(
        token_endpoint_auth_method="private_key_jwt", jwks=jwks, token_endpoint_auth_signing_alg="ES256"
    )
    assert "client_secret" not in body
    assert "client_secret_expires_at" not in body
    assert body["jwks"] == jwks
    assert body["token_endpoint_auth_signing_alg"] == "ES256"
    assert body["registration_access_token"]
    r = _assertion_token(server, body["client_id"], key)
    assert r.status_code == 200, r.text


def test_unknown_metadata_is_ignored(server: LiveServer) -> None:
    body = server.register(x_vendor_extension={"nested": True}, favourite_colour="teal")
    assert "x_vendor_extension" not in body
    assert "favourite_colour" not in body
    with server.admin() as admin:
        stored = admin.get(f"/clients/{body['client_id']}").json()
    assert "x_vendor_extension" not in stored and "favourite_colour" not in stored


# -- RFC 7591 §3.2.2: errors ------------------------------------------------------------------------------

_KEY = ec_jwk(ec_key(), "k1")
INVALID_METADATA = {
    "unknown-grant-type": {"grant_types": ["password"]},
    "unsupported-grant-type": {"grant_types": ["client_credentials", "urn:example:unknown"]},
    "grant-types-not-array": {"grant_types": "client_credentials"},
    "unknown-auth-method": {"token_endpoint_auth_method": "tls_client_auth"},
    "none-with-client-credentials": {"token_endpoint_auth_method": "none"},
    "private-key-jwt-without-keys": {"token_endpoint_auth_method": "private_key_jwt"},
    "jwks-and-jwks-uri": {
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [_KEY]},
        "jwks_uri": "https://client.example.com/jwks",
    },
    "jwks-private-key": {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{**_KEY, "d": "AAAA"}]}},
    "jwks-duplicate-kid": {
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [_KEY, ec_jwk(ec_key(), "k1")]},
    },
    "jwks-empty": {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": []}},
    "jwks-uri-http-not-loopback": {
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks_uri": "http://client.example.com/jwks",
    },
    "signing-alg-without-private-key-jwt": {"token_endpoint_auth_signing_alg": "ES256"},
    "scope-with-backslash": {"scope": "read wr\\ite"},
    "scope-with-quote": {"scope": 'read "write"'},
    "scope-not-string": {"scope": ["read"]},
    "response-types": {"response_types": ["code"]},
    "default-resource-not-allowed": {
        "allowed_resources": ["https://api.example.com"],
        "default_resource": "https://other.example.com",
    },
    "resource-with-fragment": {"allowed_resources": ["https://api.example.com/#frag"]},
    "resource-relative": {"allowed_resources": ["/api"]},
    "lifetime-too-short": {"access_token_lifetime": 5},
    "lifetime-above-server-max": {"access_token_lifetime": 86_401},
    "lifetime-bool": {"access_token_lifetime": True},
    "lifetime-string": {"access_token_lifetime": "600"},
    "client-name-not-string": {"client_name": 42},
}


@pytest.mark.parametrize("overrides", INVALID_METADATA.values(), ids=INVALID_METADATA.keys())
def test_invalid_client_metadata(server: LiveServer, overrides: dict[str, Any]) -> None:
    r = _register(server, {**BASE, **overrides})
    _assert_error(r, 400, "invalid_client_metadata")
    assert r.json()["error_description"]


@pytest.mark.parametrize("raw", [b"[]", b'"a string"', b"null", b"42"], ids=["array", "string", "null", "number"])
def test_metadata_must_be_a_json_object(server: LiveServer, raw: bytes) -> None:
    _assert_error(_register(server, content=raw), 400, "invalid_client_metadata")


def test_redirect_uris_are_refused_with_invalid_redirect_uri(server: LiveServer) -> None:
    r = _register(server, {**BASE, "redirect_uris": ["https://client.example.com/cb"]})
    _assert_error(r, 400, "invalid_redirect_uri")


def test_broken_json_is_invalid_request(server: LiveServer) -> None:
    _assert_error(_register(server, content=b'{"grant_types": ['), 400, "invalid_request")
    _assert_error(_register(server, content=b"\xff\xfe{}"), 400, "invalid_request")


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain", None])
def test_body_must_be_application_json(server: LiveServer, ctype: str | None) -> None:
    headers = {"Authorization": f"Bearer {server.reg_token}"}
    if ctype:
        headers["Content-Type"] = ctype
    r = httpx.post(server.issuer + "/oauth/register", content=json.dumps(BASE).encode(), headers=headers, timeout=10)
    _assert_error(r, 400, "invalid_request")


def test_oversize_body_is_refused_with_413(server: LiveServer) -> None:
    big = json.dumps({**BASE, "client_name": "x" * 70_000}).encode()
    _assert_error(_register(server, content=big), 413, "invalid_request")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming too
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = httpx.post(
        server.issuer + "/oauth/register",
        content=chunks(),
        timeout=10,
        headers={"Authorization": f"Bearer {server.reg_token}", "Content-Type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    _assert_error(r, 413, "invalid_request")


# -- RFC 7592 §2.1: read -----------------------------------------------------------------------------------


def test_read_returns_the_client_without_secrets(server: LiveServer) -> None:
    reg = server.register(client_name="reader")
    r = httpx.get(reg["registration_client_uri"], headers=_bearer(reg["registration_access_token"]), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["client_id"] == reg["client_id"]
    assert body["client_name"] == "reader"
    assert body["scope"] == "read write"
    assert body["registration_client_uri"] == reg["registration_client_uri"]
    assert body["client_id_issued_at"] == reg["client_id_issued_at"]
    assert "client_secret" not in body
    secret = reg["client_secret"]
    for needle in (secret, hashlib.sha256(secret.encode()).hexdigest()):
        assert needle not in r.text


def test_read_response_includes_the_registration_access_token(server: LiveServer) -> None:
    reg = server.register()
    r = httpx.get(reg["registration_client_uri"], headers=_bearer(reg["registration_access_token"]), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["registration_access_token"] == reg["registration_access_token"]


def test_read_with_an_invalid_registration_access_token_is_401(server: LiveServer) -> None:
    a, b = server.register(), server.register()
    uri = a["registration_client_uri"]
    _assert_bearer_challenge(httpx.get(uri, timeout=10))
    _assert_bearer_challenge(httpx.get(uri, headers=_bearer("not-the-token"), timeout=10))
    _assert_bearer_challenge(httpx.get(uri, headers=_bearer(b["registration_access_token"]), timeout=10))
    _assert_bearer_challenge(httpx.get(uri, headers=_bearer(server.reg_token), timeout=10))
    # A client that does not exist looks exactly like a wrong token (RFC 7592 §2).
    missing = server.issuer + "/oauth/register/no-such-client"
    _assert_bearer_challenge(httpx.get(missing, headers=_bearer(a["registration_access_token"]), timeout=10))


# -- RFC 7592 §2.2: update ---------------------------------------------------------------------------------


def _put(reg: dict[str, Any], body: Any, token: str | None = None) -> httpx.Response:
    return httpx.put(
        reg["registration_client_uri"],
        json=body,
        timeout=10,
        headers=_bearer(token or reg["registration_access_token"]),
    )


def test_update_replaces_the_metadata(server: LiveServer) -> None:
    reg = server.register(client_name="before", contacts=["a@example.com"])
    r = _put(
        reg,
        {
            "client_id": reg["client_id"],
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "read",
            # read-only fields a client echoes back are ignored, not refused
            "registration_client_uri": reg["registration_client_uri"],
            "client_secret_expires_at": 0,
            "client_secret": reg["client_secret"],
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["client_id"] == reg["client_id"]
    assert body["scope"] == "read"
    assert "client_name" not in body and "contacts" not in body  # omitted fields are removed
    assert "client_secret" not in body  # same method: the secret is unchanged and not re-sent

    assert _token(server, reg["client_id"], reg["client_secret"]).json()["scope"] == "read"
    _assert_error(_token(server, reg["client_id"], reg["client_secret"], scope="write"), 400, "invalid_scope")
    got = httpx.get(reg["registration_client_uri"], headers=_bearer(reg["registration_access_token"]), timeout=10)
    assert got.json()["scope"] == "read" and "client_name" not in got.json()


@pytest.mark.parametrize(
    "body",
    [
        {**BASE},
        {**BASE, "client_id": "someone-else"},
        {**BASE, "client_id": "{cid}", "client_secret": "not-the-secret"},
        {**BASE, "client_id": "{cid}", "grant_types": ["password"]},
        ["not", "an", "object"],
    ],
    ids=["no-client-id", "other-client-id", "wrong-secret", "invalid-metadata", "not-an-object"],
)
def test_invalid_update_is_refused_and_changes_nothing(server: LiveServer, body: Any) -> None:
    reg = server.register(client_name="unchanged")
    if isinstance(body, dict) and body.get("client_id") == "{cid}":
        body = {**body, "client_id": reg["client_id"]}
    _assert_error(_put(reg, body), 400, "invalid_client_metadata")
    got = httpx.get(reg["registration_client_uri"], headers=_bearer(reg["registration_access_token"]), timeout=10)
    assert got.json()["client_name"] == "unchanged"


def test_update_needs_this_clients_registration_access_token(server: LiveServer) -> None:
    a, b = server.register(), server.register()
    body = {**BASE, "client_id": a["client_id"], "scope": "read"}
    _assert_bearer_challenge(_put(a, body, token=b["registration_access_token"]))
    _assert_bearer_challenge(_put(a, body, token="wrong"))
    got = httpx.get(a["registration_client_uri"], headers=_bearer(a["registration_access_token"]), timeout=10)
    assert got.json()["scope"] == "read write"


def test_switching_to_a_secret_method_issues_a_secret_and_back_drops_it(server: LiveServer) -> None:
    key = ec_key()
    reg = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    r = _put(reg, {**BASE, "client_id": reg["client_id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    secret = body["client_secret"]
    assert len(secret) >= 32
    assert body["client_secret_expires_at"] == 0
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert _token(server, reg["client_id"], secret).status_code == 200
    _assert_error(_assertion_token(server, reg["client_id"], key), 401, "invalid_client")

    r = _put(
        reg,
        {
            **BASE,
            "client_id": reg["client_id"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [ec_jwk(key, "k1")]},
        },
    )
    assert r.status_code == 200, r.text
    assert "client_secret" not in r.json()
    _assert_error(_token(server, reg["client_id"], secret), 401, "invalid_client")
    assert _assertion_token(server, reg["client_id"], key).status_code == 200


# -- RFC 7592 §2.3: delete ---------------------------------------------------------------------------------


def test_delete_removes_the_client(server: LiveServer) -> None:
    reg = server.register()
    assert _token(server, reg["client_id"], reg["client_secret"]).status_code == 200
    auth = _bearer(reg["registration_access_token"])
    _assert_bearer_challenge(httpx.delete(reg["registration_client_uri"], headers=_bearer("wrong"), timeout=10))

    r = httpx.delete(reg["registration_client_uri"], headers=auth, timeout=10)
    assert r.status_code == 204
    assert r.content == b""

    _assert_error(_token(server, reg["client_id"], reg["client_secret"]), 401, "invalid_client")
    _assert_bearer_challenge(httpx.get(reg["registration_client_uri"], headers=auth, timeout=10))
    _assert_bearer_challenge(httpx.delete(reg["registration_client_uri"], headers=auth, timeout=10))
    with server.admin() as admin:
        assert admin.get(f"/clients/{reg['client_id']}").status_code == 404


# -- audit -------------------------------------------------------------------------------------------------


def test_registration_update_and_delete_are_audited_without_secrets(server: LiveServer) -> None:
    key = ec_key()
    reg = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    cid, rat = reg["client_id"], reg["registration_access_token"]
    r = _put(reg, {**BASE, "client_id": cid})
    assert r.status_code == 200, r.text
    secret = r.json()["client_secret"]
    assert httpx.delete(reg["registration_client_uri"], headers=_bearer(rat), timeout=10).status_code == 204

    records = _audit(server)
    mine = [rec for rec in records if rec["subject"] == cid and rec["event"].startswith("client.")]
    assert [rec["event"] for rec in mine] == ["client.registered", "client.updated", "client.deleted"]
    registered, updated, deleted = mine
    assert registered["actor"] == "registration"
    assert registered["data"]["metadata"]["token_endpoint_auth_method"] == "private_key_jwt"
    assert updated["data"]["metadata"]["token_endpoint_auth_method"] == "client_secret_basic"
    assert updated["data"]["secret_issued"] is True
    assert deleted["data"]["via"] == "rfc7592"

    everything = json.dumps(records)
    for needle in (
        secret,
        rat,
        hashlib.sha256(secret.encode()).hexdigest(),
        hashlib.sha256(rat.encode()).hexdigest(),
        server.reg_token,
    ):
        assert needle not in everything
    with server.admin() as admin:
        assert admin.get("/audit/verify").json()["ok"] is True


# -- RFC 7592 self-management may narrow, never widen -----------------------------------------------------


def test_self_update_cannot_widen_scope_audience_or_lifetime(server: LiveServer) -> None:
    reg = server.register(scope="read", allowed_resources=["https://api.example"], access_token_lifetime=300)
    rat = {"Authorization": f"Bearer {reg['registration_access_token']}"}
    base = {
        "client_id": reg["client_id"],
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"],
    }
    current = {**base, "scope": "read", "allowed_resources": ["https://api.example"], "access_token_lifetime": 300}
    widenings = [
        {"scope": "read admin"},  # more scope
        {"allowed_resources": ["https://payments.internal"]},  # another audience
        {"access_token_lifetime": 900},  # longer tokens
    ]
    dropped_cap = {k: v for k, v in current.items() if k != "access_token_lifetime"}  # no cap = server maximum
    for body in [*({**current, **w} for w in widenings), dropped_cap]:
        r = httpx.put(reg["registration_client_uri"], json=body, headers=rat, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata", (body, r.text)
    # The registration is unchanged: still read only, 300 s, one resource.
    t = _token(server, reg["client_id"], reg["client_secret"])
    assert t.status_code == 200 and t.json()["scope"] == "read" and t.json()["expires_in"] == 300
    # Narrowing is allowed.
    r = httpx.put(
        reg["registration_client_uri"],
        json={**base, "scope": "read", "access_token_lifetime": 60},
        headers=rat,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert _token(server, reg["client_id"], reg["client_secret"]).json()["expires_in"] == 60


def test_replaced_client_key_stops_working_at_once(server: LiveServer) -> None:
    """A key cache keyed by update time in whole seconds once kept a replaced key alive."""
    old, new = ec_key(), ec_key()
    reg = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(old, "k1")]})
    assert _assertion_token(server, reg["client_id"], old).status_code == 200
    r = httpx.put(
        reg["registration_client_uri"],
        timeout=10,
        headers={"Authorization": f"Bearer {reg['registration_access_token']}"},
        json={
            "client_id": reg["client_id"],
            "token_endpoint_auth_method": "private_key_jwt",
            "scope": "read write",
            "jwks": {"keys": [ec_jwk(new, "k1")]},
        },
    )
    assert r.status_code == 200, r.text
    assert _assertion_token(server, reg["client_id"], new).status_code == 200
    refused = _assertion_token(server, reg["client_id"], old)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
