"""Interoperability: independent OAuth clients and JWT relying parties against a live server.

- Clients: Authlib's httpx integration (``OAuth2Client`` and ``AsyncOAuth2Client``) doing the RFC 6749 §4.4
  client credentials grant, authenticating with ``private_key_jwt`` (RFC 7523 §2.2, Authlib's own
  ``PrivateKeyJWT``) and with ``client_secret_basic`` (RFC 6749 §2.3.1).
- Relying parties: PyJWT, joserfc and jwcrypto verify the issued RFC 9068 access tokens against the JWKS
  found through discovery: key chosen by ``kid``, ``alg`` allow-list ``["ES256"]``, ``iss``, ``aud``,
  ``exp`` and the ``at+jwt`` type (RFC 9068 §4); tampered tokens are refused by each of them.
- Discovery: RFC 8414 metadata equals the OpenID configuration document; the JWKS is cacheable and public.

Nothing here is located by a hard-coded path except the two well-known documents.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from typing import Any

import authlib.deprecate  # noqa: F401  (installs its own "always" filter, which the block below overrides)
import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from jwcrypto import jwk as jc_jwk
from jwcrypto import jwt as jc_jwt
from jwcrypto.common import JWException

from support import b64u, ec_jwk, ec_key

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Authlib 1.9 warns that its httpx integration prefers httpx2
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client
    from authlib.integrations.httpx_client import OAuthError as AuthlibOAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign

ALLOWED_ALGS = ["ES256"]
API = "https://api.example.test/orders"
API2 = "https://api.example.test/billing"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's ``PrivateKeyJWT``, signing with Authlib's ``private_key_jwt_sign``, with a 2-minute assertion.

    Authlib's default assertion lives 3600 s, which Tessera accepts (``assertion_max_lifetime``); a client
    that wants a shorter window signs with ``expires_in`` as here. Both are exercised.
    """

    alg = "ES256"

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            header=dict(self.headers or {}),
            expires_in=120,
        )


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def discovery(server) -> dict[str, Any]:
    r = httpx.get(server.issuer + "/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def jwks(discovery) -> dict[str, Any]:
    r = httpx.get(discovery["jwks_uri"], timeout=10)
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def pkjwt_client(server) -> dict[str, Any]:
    """A private_key_jwt client whose tokens default to a resource server of its own (RFC 8707)."""
    key = ec_key()
    reg = server.register(
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [ec_jwk(key, "authlib-k1")]},
        token_endpoint_auth_signing_alg="ES256",
        scope="orders:read orders:write",
        allowed_resources=[API, API2],
        default_resource=API,
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {**reg, "private_key": ECKey.import_key(pem), "kid": "authlib-k1", "audience": API}


@pytest.fixture(scope="module")
def basic_client(server) -> dict[str, Any]:
    """A client_secret_basic client without resources: its tokens are for the server's default audience."""
    reg = server.register(token_endpoint_auth_method="client_secret_basic", scope="read write")
    return {**reg, "audience": server.issuer}


# -- Authlib token requests ----------------------------------------------------------------------------


def _pkjwt_sync(discovery: dict[str, Any], c: dict[str, Any], **params: Any) -> dict[str, Any]:
    with OAuth2Client(
        c["client_id"], c["private_key"], token_endpoint_auth_method="private_key_jwt", timeout=10
    ) as client:
        client.register_client_auth_method(
            ShortLivedPrivateKeyJWT(discovery["token_endpoint"], headers={"kid": c["kid"]})
        )
        return dict(client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", **params))


def _pkjwt_async(discovery: dict[str, Any], c: dict[str, Any], **params: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with AsyncOAuth2Client(
            c["client_id"], c["private_key"], token_endpoint_auth_method="private_key_jwt", timeout=10
        ) as client:
            client.register_client_auth_method(
                ShortLivedPrivateKeyJWT(discovery["token_endpoint"], headers={"kid": c["kid"]})
            )
            return dict(
                await client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", **params)
            )

    return asyncio.run(run())


def _basic_sync(discovery: dict[str, Any], c: dict[str, Any], **params: Any) -> dict[str, Any]:
    with OAuth2Client(
        c["client_id"], c["client_secret"], token_endpoint_auth_method="client_secret_basic", timeout=10
    ) as client:
        return dict(client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", **params))


def _basic_async(discovery: dict[str, Any], c: dict[str, Any], **params: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with AsyncOAuth2Client(
            c["client_id"], c["client_secret"], token_endpoint_auth_method="client_secret_basic", timeout=10
        ) as client:
            return dict(
                await client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", **params)
            )

    return asyncio.run(run())


FLOWS: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {
    "OAuth2Client-private_key_jwt": (_pkjwt_sync, "pkjwt_client"),
    "AsyncOAuth2Client-private_key_jwt": (_pkjwt_async, "pkjwt_client"),
    "OAuth2Client-client_secret_basic": (_basic_sync, "basic_client"),
    "AsyncOAuth2Client-client_secret_basic": (_basic_async, "basic_client"),
}


# -- relying parties -----------------------------------------------------------------------------------
# Each returns (header, claims) of a token it accepted, or raises. typ is checked by hand after the
# library verified the signature: none of the three checks the JOSE "typ" header on its own.


def _check_typ(header: dict[str, Any]) -> None:
    if header.get("typ") != "at+jwt":
        raise ValueError(f"typ {header.get('typ')!r} is not at+jwt (RFC 9068 §4)")


def verify_pyjwt(
    token: str, *, jwks_uri: str, jwks: dict[str, Any], issuer: str, audience: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    signing_key = pyjwt.PyJWKClient(jwks_uri, cache_jwk_set=False, timeout=10).get_signing_key_from_jwt(token)
    out = pyjwt.decode_complete(
        token,
        signing_key.key,
        algorithms=ALLOWED_ALGS,
        issuer=issuer,
        audience=audience,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    _check_typ(out["header"])
    return out["header"], out["payload"]


def verify_joserfc(
    token: str, *, jwks_uri: str, jwks: dict[str, Any], issuer: str, audience: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    tok = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=ALLOWED_ALGS)
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    ).validate(tok.claims)
    _check_typ(dict(tok.header))
    return dict(tok.header), dict(tok.claims)


def verify_jwcrypto(
    token: str, *, jwks_uri: str, jwks: dict[str, Any], issuer: str, audience: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    keyset = jc_jwk.JWKSet.from_json(json.dumps(jwks))
    t = jc_jwt.JWT(
        jwt=token,
        key=keyset,
        algs=ALLOWED_ALGS,
        expected_type="JWS",
        check_claims={"iss": issuer, "aud": audience, "exp": None, "iat": None, "sub": None, "jti": None},
    )
    header = json.loads(t.header)
    _check_typ(header)
    return header, json.loads(t.claims)


RELYING_PARTIES = {"pyjwt": verify_pyjwt, "joserfc": verify_joserfc, "jwcrypto": verify_jwcrypto}
REJECTIONS: dict[str, tuple[type[BaseException], ...]] = {
    "pyjwt": (pyjwt.PyJWTError,),
    "joserfc": (JoseError,),
    "jwcrypto": (JWException, ValueError),
}


# -- tokens from Authlib, verified by each relying party ---------------------------------------------------


@pytest.mark.parametrize("rp", RELYING_PARTIES)
@pytest.mark.parametrize("flow", FLOWS)
def test_authlib_token_verifies_with_relying_party(request, server, discovery, jwks, flow: str, rp: str) -> None:
    fetch, client_fixture = FLOWS[flow]
    c = request.getfixturevalue(client_fixture)
    body = fetch(discovery, c)
    assert body["token_type"] == "Bearer"
    assert body["scope"] == c["scope"]  # no scope requested: the registered scope (RFC 6749 §3.3)
    assert body["expires_in"] == 900

    header, claims = RELYING_PARTIES[rp](
        body["access_token"], jwks_uri=discovery["jwks_uri"], jwks=jwks, issuer=server.issuer, audience=c["audience"]
    )
    assert header["alg"] == "ES256"
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    # RFC 9068 §2.2 claims; for client_credentials the subject is the client itself.
    assert claims["iss"] == server.issuer
    assert claims["sub"] == c["client_id"]
    assert claims["client_id"] == c["client_id"]
    assert claims["aud"] == c["audience"]
    assert claims["scope"] == c["scope"]
    assert claims["exp"] - claims["iat"] == 900
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


@pytest.mark.parametrize("rp", RELYING_PARTIES)
def test_scope_and_resource_through_authlib(server, discovery, jwks, pkjwt_client, rp: str) -> None:
    """RFC 8707 §2: a ``resource`` other than the client's default becomes ``aud``; an RP for the default refuses it.

    (Authlib sends form parameters through a dict, so it cannot repeat ``resource``; several resources
    are covered over raw HTTP in test_rfc6749_client_credentials.py.)
    """
    body = _pkjwt_sync(discovery, pkjwt_client, scope="orders:read", resource=API2)
    assert body["scope"] == "orders:read"
    verify = RELYING_PARTIES[rp]
    _, claims = verify(
        body["access_token"], jwks_uri=discovery["jwks_uri"], jwks=jwks, issuer=server.issuer, audience=API2
    )
    assert claims["aud"] == API2
    assert claims["scope"] == "orders:read"
    with pytest.raises(REJECTIONS[rp]):
        verify(body["access_token"], jwks_uri=discovery["jwks_uri"], jwks=jwks, issuer=server.issuer, audience=API)


def test_jti_is_unique_across_tokens(discovery, pkjwt_client, basic_client) -> None:
    tokens = [
        _pkjwt_sync(discovery, pkjwt_client),
        _pkjwt_async(discovery, pkjwt_client),
        _basic_sync(discovery, basic_client),
        _basic_async(discovery, basic_client),
        _basic_sync(discovery, basic_client),
    ]
    jtis = [pyjwt.decode(t["access_token"], options={"verify_signature": False})["jti"] for t in tokens]
    assert len(set(jtis)) == len(jtis)
    assert len({t["access_token"] for t in tokens}) == len(tokens)


def test_authlib_default_private_key_jwt_works_out_of_the_box(discovery, pkjwt_client) -> None:
    """Authlib's stock ``PrivateKeyJWT`` (3600 s assertions, aud = token endpoint) gets a token unchanged,
    and its assertion is single use like any other."""
    with OAuth2Client(
        pkjwt_client["client_id"], pkjwt_client["private_key"], token_endpoint_auth_method="private_key_jwt", timeout=10
    ) as client:
        client.register_client_auth_method(PrivateKeyJWT(discovery["token_endpoint"], alg="ES256"))
        token = client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    claims = pyjwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == pkjwt_client["client_id"] == claims["sub"]


def test_authlib_wrong_secret_is_invalid_client(discovery, basic_client) -> None:
    with (
        OAuth2Client(basic_client["client_id"], basic_client["client_secret"] + "x", timeout=10) as client,
        pytest.raises(AuthlibOAuthError) as exc,
    ):
        client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    assert exc.value.error == "invalid_client"


# -- tampered tokens: refused by every relying party ---------------------------------------------------------


@pytest.fixture(scope="module")
def good_token(discovery, basic_client) -> str:
    return _basic_sync(discovery, basic_client)["access_token"]


def _flip_payload_char(token: str) -> str:
    h, p, s = token.split(".")
    i = len(p) // 2
    return ".".join([h, p[:i] + ("B" if p[i] != "B" else "C") + p[i + 1 :], s])


def _alg_none(token: str) -> str:
    h, p, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))
    return b64u(json.dumps({**header, "alg": "none"}).encode()) + "." + p + "."


def _hs256_with_public_key(token: str, jwks: dict[str, Any]) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the server's public key (PEM)."""
    h, p, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))
    public = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    pem = ECKey.import_key(public).as_pem()
    si = b64u(json.dumps({**header, "alg": "HS256"}).encode()) + "." + p
    return si + "." + b64u(hmac.new(pem, si.encode(), hashlib.sha256).digest())


@pytest.mark.parametrize("tamper", ["payload_char", "alg_none", "hs256_public_key", "wrong_aud", "wrong_iss"])
@pytest.mark.parametrize("rp", RELYING_PARTIES)
def test_tampered_token_rejected(server, discovery, jwks, basic_client, good_token, rp: str, tamper: str) -> None:
    verify = RELYING_PARTIES[rp]
    issuer, audience = server.issuer, basic_client["audience"]
    verify(good_token, jwks_uri=discovery["jwks_uri"], jwks=jwks, issuer=issuer, audience=audience)  # control
    token = good_token
    if tamper == "payload_char":
        token = _flip_payload_char(good_token)
    elif tamper == "alg_none":
        token = _alg_none(good_token)
    elif tamper == "hs256_public_key":
        token = _hs256_with_public_key(good_token, jwks)
    elif tamper == "wrong_aud":
        audience = "https://someone-else.example"
    elif tamper == "wrong_iss":
        issuer = server.issuer + "/other"
    assert token.count(".") == 2
    with pytest.raises(REJECTIONS[rp]):
        verify(token, jwks_uri=discovery["jwks_uri"], jwks=jwks, issuer=issuer, audience=audience)


# -- discovery and JWKS --------------------------------------------------------------------------------------


def test_rfc8414_metadata_equals_openid_configuration(server, discovery) -> None:
    r = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == discovery
    # RFC 8414 §3.3: the issuer in the metadata MUST be identical to the issuer the client used.
    assert discovery["issuer"] == server.issuer
    assert discovery["token_endpoint"].startswith(server.issuer + "/")
    assert discovery["jwks_uri"].startswith(server.issuer + "/")
    assert "client_credentials" in discovery["grant_types_supported"]
    assert {"private_key_jwt", "client_secret_basic"} <= set(discovery["token_endpoint_auth_methods_supported"])
    assert "ES256" in discovery["token_endpoint_auth_signing_alg_values_supported"]


def test_jwks_is_cacheable_and_public(discovery) -> None:
    r = httpx.get(discovery["jwks_uri"], timeout=10)
    assert r.status_code == 200
    directives = [d.strip() for d in r.headers["cache-control"].split(",")]
    max_age = [d for d in directives if d.startswith("max-age=")]
    assert len(max_age) == 1 and int(max_age[0].split("=", 1)[1]) > 0
    keys = r.json()["keys"]
    assert keys
    kids = [k["kid"] for k in keys]
    assert len(kids) == len(set(kids))
    for k in keys:
        assert not PRIVATE_MEMBERS & set(k), f"private member published in {k['kid']}"
        assert k["kty"] in {"EC", "RSA", "OKP"}
        # Every published key imports as a public key in each library.
        assert not KeySet.import_key_set({"keys": [k]}).keys[0].is_private
        assert not jc_jwk.JWK(**k).has_private
        assert pyjwt.PyJWK(k).key is not None


# -- Authlib's requests-based OAuth2Session, the client most integrations start from ---------------------------


def test_authlib_oauth2session_with_both_auth_methods(server, discovery, jwks, pkjwt_client, basic_client) -> None:
    from authlib.integrations.requests_client import OAuth2Session

    with OAuth2Session(
        basic_client["client_id"], basic_client["client_secret"], token_endpoint_auth_method="client_secret_basic"
    ) as session:
        basic = session.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", scope="read")
    with OAuth2Session(
        pkjwt_client["client_id"], pkjwt_client["private_key"], token_endpoint_auth_method="private_key_jwt"
    ) as session:
        session.register_client_auth_method(PrivateKeyJWT(discovery["token_endpoint"], alg="ES256"))
        pkjwt = session.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    for token, client in ((basic, basic_client), (pkjwt, pkjwt_client)):
        assert token["token_type"].lower() == "bearer"
        key = pyjwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token["access_token"]).key
        claims = pyjwt.decode(
            token["access_token"], key, algorithms=["ES256"], audience=client["audience"], issuer=server.issuer
        )
        assert claims["client_id"] == client["client_id"] == claims["sub"]
    assert basic["scope"] == "read"
