"""Token revocation: RFC 7009, against a live server.

- §2.1: the client authenticates as at the token endpoint (secret or ``private_key_jwt``, RFC 7523, whose
  assertion is single-use); ``token`` is required; ``token_type_hint`` is ignored whatever its value.
- §2.1: a token issued to another client is refused (``invalid_grant``, the RFC 6749 §5.2 code for a grant
  "issued to another client") and stays valid; the refusal is an audit record.
- §2.2: 200 for a revoked token and for an invalid one (malformed, signed by someone else, already revoked).
- A revoked token is INVALID (0x01) in its status list (draft-ietf-oauth-status-list §7.1) at once, and
  ``token.revoked`` is in the audit log. Authlib revokes a token as an independent client.
"""

from __future__ import annotations

import warnings
from typing import Any

import authlib.deprecate  # noqa: F401  (installs its own "always" filter, which the block below overrides)
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey

from status_support import audit, basic, entry, introspect, issue, payload, status_of
from support import ASSERTION_TYPE, LiveServer, client_assertion, ec_jwk, ec_key, sign_es256
from support import assert_oauth_error as assert_error

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Authlib 1.9 warns that its httpx integration prefers httpx2
    from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT


def revoke(server: LiveServer, data: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(server.issuer + "/oauth/revoke", data=data, timeout=10, **kw)


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> dict[str, Any]:
    return server.register(scope="read write")


@pytest.fixture(scope="module")
def bob(server: LiveServer) -> dict[str, Any]:
    return server.register(scope="read")


def test_discovery_names_the_revocation_endpoint(server: LiveServer) -> None:
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert md["revocation_endpoint"] == server.issuer + "/oauth/revoke"
    assert md["revocation_endpoint_auth_methods_supported"] == md["token_endpoint_auth_methods_supported"]
    assert set(md["revocation_endpoint_auth_methods_supported"]) == {
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
        "none",  # public clients of the authorization code grant (RFC 7009 §2.1)
    }
    assert "ES256" in md["revocation_endpoint_auth_signing_alg_values_supported"]


def test_revoking_an_own_token(server: LiveServer, alice: dict[str, Any]) -> None:
    token = issue(server, alice)
    assert status_of(token) == 0
    r = revoke(server, {"token": token}, auth=basic(alice))
    assert r.status_code == 200, r.text
    assert r.content == b""
    assert r.headers["cache-control"] == "no-store"
    assert introspect(server, alice, token) == {"active": False}
    assert status_of(token) == 1  # the very next fetch: this process dropped its cached list
    records = [r for r in audit(server, "token.revoked") if payload(token)["jti"] in r["data"].get("jtis", [])]
    assert len(records) == 1
    assert records[0]["actor"] == alice["client_id"]
    assert records[0]["data"]["via"] == "rfc7009"
    assert records[0]["data"]["count"] == 1


def test_client_secret_post_and_every_token_type_hint(server: LiveServer, alice: dict[str, Any]) -> None:
    # §2.1: "An authorization server MAY ignore this parameter"; §2.2: an invalid hint "is ignored".
    carol = server.register(token_endpoint_auth_method="client_secret_post")
    creds = {"client_id": carol["client_id"], "client_secret": carol["client_secret"]}
    for hint in ("access_token", "refresh_token", "no_such_type", None):
        r = httpx.post(server.token_endpoint, data={"grant_type": "client_credentials", **creds}, timeout=10)
        token = r.json()["access_token"]
        data = {"token": token, **creds}
        if hint:
            data["token_type_hint"] = hint
        assert revoke(server, data).status_code == 200
        assert introspect(server, alice, token) == {"active": False}, hint
        assert status_of(token) == 1


def test_revoking_twice_is_200_and_recorded_once(server: LiveServer, alice: dict[str, Any]) -> None:
    token = issue(server, alice)
    jti = payload(token)["jti"]
    for _ in range(2):
        assert revoke(server, {"token": token}, auth=basic(alice)).status_code == 200
    assert len([r for r in audit(server, "token.revoked") if jti in r["data"].get("jtis", [])]) == 1


@pytest.mark.parametrize(
    "value",
    ["not-a-token", "a.b.c", "x" * 9000, "eyJhbGciOiJub25lIn0.e30."],
    ids=["garbage", "three-parts", "huge", "alg-none"],
)
def test_an_invalid_token_is_answered_200(server: LiveServer, alice: dict[str, Any], value: str) -> None:
    # §2.2: "invalid tokens do not cause an error response".
    r = revoke(server, {"token": value}, auth=basic(alice))
    assert r.status_code == 200, r.text
    assert r.content == b""


def test_a_token_signed_by_someone_else_is_answered_200_and_revokes_nothing(
    server: LiveServer, alice: dict[str, Any]
) -> None:
    real = issue(server, alice)
    forged_claims = dict(payload(real))
    jwks = httpx.get(server.issuer + "/oauth/jwks", timeout=10).json()
    kid = jwks["keys"][0]["kid"]
    forged = sign_es256({"alg": "ES256", "typ": "at+jwt", "kid": kid}, forged_claims, ec_key())
    assert revoke(server, {"token": forged}, auth=basic(alice)).status_code == 200
    assert introspect(server, alice, real)["active"] is True  # same jti, but the forgery revoked nothing
    assert status_of(real) == 0


def test_a_token_of_another_client_is_refused(server: LiveServer, alice: dict[str, Any], bob: dict[str, Any]) -> None:
    token = issue(server, alice)
    r = revoke(server, {"token": token}, auth=basic(bob))
    assert_error(r, 400, "invalid_grant")
    assert introspect(server, alice, token)["active"] is True
    assert status_of(token) == 0
    refused = [r for r in audit(server, "token.revocation_refused") if r["actor"] == bob["client_id"]]
    assert refused and refused[-1]["data"]["error"] == "invalid_grant"


def test_token_is_required(server: LiveServer, alice: dict[str, Any]) -> None:
    assert_error(revoke(server, {}, auth=basic(alice)), 400, "invalid_request")
    assert_error(revoke(server, {"token": ""}, auth=basic(alice)), 400, "invalid_request")
    assert_error(revoke(server, {"token_type_hint": "access_token"}, auth=basic(alice)), 400, "invalid_request")


def test_client_authentication_is_required(server: LiveServer, alice: dict[str, Any]) -> None:
    token = issue(server, alice)
    assert_error(revoke(server, {"token": token}), 401, "invalid_client")
    assert_error(revoke(server, {"token": token, "client_id": alice["client_id"]}), 401, "invalid_client")
    assert_error(revoke(server, {"token": token}, auth=(alice["client_id"], "wrong")), 401, "invalid_client")
    assert_error(revoke(server, {"token": token}, auth=("no-such-client", "x" * 43)), 401, "invalid_client")
    assert introspect(server, alice, token)["active"] is True


def test_malformed_requests(server: LiveServer, alice: dict[str, Any]) -> None:
    token = issue(server, alice)
    url = server.issuer + "/oauth/revoke"
    r = httpx.post(url, json={"token": token}, auth=basic(alice), timeout=10)
    assert_error(r, 400, "invalid_request")
    r = httpx.post(
        url,
        content=f"token={token}&token={token}".encode(),
        auth=basic(alice),
        timeout=10,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(r, 400, "invalid_request")  # RFC 6749 §3.2: parameters MUST NOT be repeated
    r = httpx.post(
        url,
        content=b"token=" + b"a" * 70_000,
        auth=basic(alice),
        timeout=10,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413
    assert httpx.get(url, timeout=10).status_code == 405
    assert introspect(server, alice, token)["active"] is True


def test_private_key_jwt_with_the_revocation_endpoint_as_audience(server: LiveServer) -> None:
    key = ec_key()
    c = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    url = server.issuer + "/oauth/revoke"

    def form(assertion: str, token: str) -> dict[str, str]:
        return {"token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}

    def token() -> str:
        a = client_assertion(key, c["client_id"], server.token_endpoint)
        r = httpx.post(
            server.token_endpoint,
            timeout=10,
            data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": a},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    first, second = token(), token()
    assertion = client_assertion(key, c["client_id"], url)  # RFC 7523 §3: aud identifies the server
    assert revoke(server, form(assertion, first)).status_code == 200
    assert status_of(first) == 1
    # RFC 7523 §3 (7): the same assertion (same jti) is not accepted twice.
    assert_error(revoke(server, form(assertion, second)), 401, "invalid_client")
    assert status_of(second) == 0
    other = client_assertion(key, c["client_id"], "https://elsewhere.example/oauth/revoke")
    assert_error(revoke(server, form(other, second)), 401, "invalid_client")
    assert revoke(server, form(client_assertion(key, c["client_id"], server.issuer), second)).status_code == 200
    assert status_of(second) == 1


def test_authlib_revokes_a_token(server: LiveServer) -> None:
    key = ec_key()
    c = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "al1")]})
    private = ECKey.import_key(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    with OAuth2Client(
        c["client_id"],
        private,
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint_auth_method="private_key_jwt",
        timeout=10,
    ) as client:
        # No token endpoint given: Authlib signs each assertion for the URL it posts to.
        client.register_client_auth_method(PrivateKeyJWT(alg="ES256", headers={"kid": "al1"}))
        token = client.fetch_token(md["token_endpoint"], grant_type="client_credentials")["access_token"]
        assert status_of(token) == 0
        r = client.revoke_token(md["revocation_endpoint"], token=token, token_type_hint="access_token")
        assert r.status_code == 200, r.text
    assert status_of(token) == 1
    uri, idx = entry(token)
    assert uri.startswith(server.issuer + "/oauth/status/") and isinstance(idx, int)


def test_revocation_by_a_running_process_is_visible_at_once(server: LiveServer, alice: dict[str, Any]) -> None:
    # Warm this process's one-second list cache, revoke, read again without waiting: the list is rebuilt.
    token, other = issue(server, alice), issue(server, alice)
    assert entry(token)[0] == entry(other)[0]
    assert (status_of(token), status_of(other)) == (0, 0)
    assert revoke(server, {"token": token}, auth=basic(alice)).status_code == 200
    assert (status_of(token), status_of(other)) == (1, 0)
