"""Token introspection: RFC 7662.

- §2.1: the caller authenticates as a client (secret or ``private_key_jwt``, single-use assertion); ``token``
  is required; ``token_type_hint`` is ignored.
- §2.2: an active token's response carries ``active``, ``scope``, ``client_id``, ``token_type``, ``exp``,
  ``iat``, ``sub``, ``aud``, ``iss`` and ``jti``, equal to the token's own claims; a revoked, expired,
  unknown, malformed or foreign token is ``{"active": false}`` and nothing more.
- Any authenticated client may introspect a token it holds (a resource server is a client too).
- §2.3: bad client credentials are 401 ``invalid_client``. Authlib introspects as an independent client.

Expiry is tested by moving an injected clock (in-process application, real SQLite store), not by waiting.
"""

from __future__ import annotations

import pathlib
import time
import warnings
from typing import Any

import authlib.deprecate  # noqa: F401  (installs its own "always" filter, which the block below overrides)
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey

from status_support import basic, introspect, issue, payload
from support import ASSERTION_TYPE, LiveServer, client_assertion, ec_jwk, ec_key, sign_es256
from support import assert_oauth_error as assert_error
from tessera.clock import FrozenClock
from tessera.http.app import build_app
from tessera.runtime import open_runtime
from tessera.settings import load_settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Authlib 1.9 and Starlette warn that they prefer httpx2
    from authlib.integrations.httpx_client import OAuth2Client
    from starlette.testclient import TestClient
from authlib.oauth2.rfc7523 import PrivateKeyJWT

API = "https://api.example.test/orders"
API2 = "https://api.example.test/billing"
MEMBERS = {"active", "scope", "client_id", "token_type", "exp", "iat", "sub", "aud", "iss", "jti"}


def post(server: LiveServer, data: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(server.issuer + "/oauth/introspect", data=data, timeout=10, **kw)


def expected(token: str) -> dict[str, Any]:
    claims = payload(token)
    return {"active": True, "token_type": "Bearer", **{k: claims[k] for k in MEMBERS - {"active", "token_type"}}}


@pytest.fixture(scope="module")
def owner(server: LiveServer) -> dict[str, Any]:
    return server.register(scope="orders:read orders:write", allowed_resources=[API, API2], default_resource=API)


@pytest.fixture(scope="module")
def resource_server(server: LiveServer) -> dict[str, Any]:
    return server.register(scope="introspect")


def test_discovery_names_the_introspection_endpoint(server: LiveServer) -> None:
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert md["introspection_endpoint"] == server.issuer + "/oauth/introspect"
    assert set(md["introspection_endpoint_auth_methods_supported"]) == {
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
    }
    assert "ES256" in md["introspection_endpoint_auth_signing_alg_values_supported"]


def test_an_active_token(server: LiveServer, owner: dict[str, Any]) -> None:
    token = issue(server, owner, scope="orders:read")
    r = post(server, {"token": token}, auth=basic(owner))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body == expected(token)
    assert (body["scope"], body["aud"], body["sub"], body["client_id"]) == (
        "orders:read",
        API,
        owner["client_id"],
        owner["client_id"],
    )
    assert body["iss"] == server.issuer
    assert body["exp"] > body["iat"]


def test_several_audiences_are_a_list(server: LiveServer, owner: dict[str, Any]) -> None:
    r = httpx.post(
        server.token_endpoint,
        data={"grant_type": "client_credentials", "resource": [API, API2]},
        auth=basic(owner),
        timeout=10,
    )
    token = r.json()["access_token"]
    body = introspect(server, owner, token)
    assert body == expected(token)
    assert body["aud"] == [API, API2]


def test_a_resource_server_introspects_a_token_of_another_client(
    server: LiveServer, owner: dict[str, Any], resource_server: dict[str, Any]
) -> None:
    token = issue(server, owner)
    assert introspect(server, resource_server, token) == expected(token)


def test_token_type_hint_is_ignored(server: LiveServer, owner: dict[str, Any]) -> None:
    token = issue(server, owner)
    for hint in ("access_token", "refresh_token", "unknown"):
        r = post(server, {"token": token, "token_type_hint": hint}, auth=basic(owner))
        assert r.json() == expected(token), hint


def test_a_revoked_token_is_inactive_and_says_nothing_more(
    server: LiveServer, owner: dict[str, Any], resource_server: dict[str, Any]
) -> None:
    token = issue(server, owner)
    r = httpx.post(server.issuer + "/oauth/revoke", data={"token": token}, auth=basic(owner), timeout=10)
    assert r.status_code == 200
    assert introspect(server, owner, token) == {"active": False}
    assert introspect(server, resource_server, token) == {"active": False}
    other = issue(server, owner)
    with server.admin() as admin:
        assert admin.post("/tokens/revoke", json={"jti": payload(other)["jti"]}).json() == {"revoked": 1}
    assert introspect(server, resource_server, other) == {"active": False}


def test_invalid_and_foreign_tokens_are_inactive(server: LiveServer, owner: dict[str, Any]) -> None:
    real = issue(server, owner)
    jwks = httpx.get(server.issuer + "/oauth/jwks", timeout=10).json()
    kid = jwks["keys"][0]["kid"]
    forged = sign_es256({"alg": "ES256", "typ": "at+jwt", "kid": kid}, payload(real), ec_key())
    foreign = sign_es256(
        {"alg": "ES256", "typ": "at+jwt", "kid": "elsewhere"},
        {**payload(real), "iss": "https://other.example"},
        ec_key(),
    )
    head, body, sig = real.split(".")
    tampered = ".".join([head, body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB"), sig])
    for value in ("garbage", "a.b.c", forged, foreign, tampered, real + "x", "x" * 9000):
        assert introspect(server, owner, value) == {"active": False}, value[:40]
    assert introspect(server, owner, real)["active"] is True


def test_token_is_required(server: LiveServer, owner: dict[str, Any]) -> None:
    assert_error(post(server, {}, auth=basic(owner)), 400, "invalid_request")
    assert_error(post(server, {"token": ""}, auth=basic(owner)), 400, "invalid_request")


def test_client_authentication_is_required(server: LiveServer, owner: dict[str, Any]) -> None:
    token = issue(server, owner)
    assert_error(post(server, {"token": token}), 401, "invalid_client")
    assert_error(post(server, {"token": token, "client_id": owner["client_id"]}), 401, "invalid_client")
    assert_error(post(server, {"token": token}, auth=(owner["client_id"], "wrong")), 401, "invalid_client")


def test_malformed_requests(server: LiveServer, owner: dict[str, Any]) -> None:
    token = issue(server, owner)
    url = server.issuer + "/oauth/introspect"
    assert_error(httpx.post(url, json={"token": token}, auth=basic(owner), timeout=10), 400, "invalid_request")
    r = httpx.post(
        url,
        content=f"token={token}&token={token}".encode(),
        auth=basic(owner),
        timeout=10,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(r, 400, "invalid_request")
    assert httpx.get(url, params={"token": token}, timeout=10).status_code == 405


def test_private_key_jwt_caller_with_the_endpoint_as_audience(server: LiveServer, owner: dict[str, Any]) -> None:
    key = ec_key()
    rs = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "rs1")]})
    url = server.issuer + "/oauth/introspect"
    token = issue(server, owner)
    assertion = client_assertion(key, rs["client_id"], url, kid="rs1")
    form = {"token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    r = httpx.post(url, data=form, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == expected(token)
    assert_error(httpx.post(url, data=form, timeout=10), 401, "invalid_client")  # RFC 7523 §3 (7): replay


def test_authlib_introspects_a_token(server: LiveServer, owner: dict[str, Any]) -> None:
    key = ec_key()
    rs = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "al2")]})
    private = ECKey.import_key(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    token = issue(server, owner)
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    with OAuth2Client(
        rs["client_id"],
        private,
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint_auth_method="private_key_jwt",
        timeout=10,
    ) as client:
        client.register_client_auth_method(PrivateKeyJWT(alg="ES256", headers={"kid": "al2"}))
        r = client.introspect_token(md["introspection_endpoint"], token=token)
    assert r.status_code == 200, r.text
    assert r.json() == expected(token)


def test_an_expired_token_is_inactive(tmp_path: pathlib.Path) -> None:
    clock = FrozenClock(time.time())
    settings = load_settings(
        env={
            "TESSERA_DATA_DIR": str(tmp_path / "data"),
            "TESSERA_ISSUER": "http://127.0.0.1:9",
            "TESSERA_REGISTRATION_TOKEN": "r" * 32,
            "TESSERA_LOG_LEVEL": "warning",
        }
    )
    app = build_app(open_runtime(settings, clock=clock))
    with TestClient(app, base_url=settings.issuer) as tc:
        r = tc.post(
            "/oauth/register",
            headers={"Authorization": "Bearer " + "r" * 32},
            json={"grant_types": ["client_credentials"], "access_token_lifetime": 300},
        )
        assert r.status_code == 201, r.text
        auth = (r.json()["client_id"], r.json()["client_secret"])
        r = tc.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=auth)
        token = r.json()["access_token"]
        assert payload(token)["exp"] - payload(token)["iat"] == 300

        def active() -> Any:
            return tc.post("/oauth/introspect", data={"token": token}, auth=auth).json()["active"]

        assert active() is True
        clock.advance(299)
        assert active() is True
        clock.advance(1)  # RFC 7662 §2.2: active only "before its expiration time"
        assert tc.post("/oauth/introspect", data={"token": token}, auth=auth).json() == {"active": False}
