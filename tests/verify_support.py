"""Helpers for the relying-party SDK tests (``tessera.verify``): hand-made JWS, a fake issuer, a fake clock.

Tokens are signed with ``cryptography`` alone; the issuer's HTTP side (RFC 8414 metadata, JWKS, status
list tokens) is an ``httpx.MockTransport`` handler whose keys, answers and outages the test controls,
and which counts every request it gets.
"""

from __future__ import annotations

import collections
import json
import secrets
import threading
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from support import b64u
from tessera.verify import Verifier
from tessera.verify.status_list import encode_status_list

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.test"
T0 = 1_700_000_000.0
METADATA_URL = ISSUER + "/.well-known/oauth-authorization-server"
JWKS_URL = ISSUER + "/oauth/jwks"
STATUS_URL = ISSUER + "/oauth/status/1"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class Clock:
    """The verifier's injected time: only moves when the test says so."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# -- JOSE by hand -------------------------------------------------------------------------------------


def default_alg(key: PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return "RS256"


def raw_signature(alg: str, key: PrivateKey, data: bytes) -> bytes:
    if alg == "ES256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg in ("EdDSA", "Ed25519"):
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(data)
    assert isinstance(key, rsa.RSAPrivateKey)
    if alg == "RS256":
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert alg == "PS256"
    return key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())


def sign_segments(header_b64: str, payload_b64: str, key: PrivateKey, alg: str) -> str:
    """A compact JWS over arbitrary (possibly malformed) first two segments, correctly signed."""
    signing_input = f"{header_b64}.{payload_b64}"
    return signing_input + "." + b64u(raw_signature(alg, key, signing_input.encode()))


def sign(header: dict[str, Any], claims: dict[str, Any], key: PrivateKey) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        alg = default_alg(key)
    return sign_segments(b64u(json.dumps(header).encode()), b64u(json.dumps(claims).encode()), key, alg)


def with_signature(token: str, signature: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + b64u(signature)


def signature_of(token: str) -> bytes:
    import base64

    seg = token.rsplit(".", 1)[1]
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def public_jwk(key: PrivateKey, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    jwk: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        n = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        from cryptography.hazmat.primitives import serialization

        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    else:
        rn = key.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "n": b64u(rn.n.to_bytes((rn.n.bit_length() + 7) // 8, "big")),
            "e": b64u(rn.e.to_bytes((rn.e.bit_length() + 7) // 8, "big")),
        }
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


def access_claims(now: float, **overrides: Any) -> dict[str, Any]:
    """RFC 9068 claims for ``AUDIENCE``; an override of ``None`` drops the claim."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "svc-reporting",
        "aud": AUDIENCE,
        "iat": int(now),
        "exp": int(now) + 300,
        "jti": secrets.token_urlsafe(12),
        "client_id": "svc-reporting",
        "scope": "read",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def status_list_token(
    key: PrivateKey,
    *,
    kid: str | None,
    uri: str,
    now: float,
    statuses: dict[int, int],
    bits: int = 2,
    size: int = 1024,
    ttl: float | None = 300,
    exp: float | None = None,
    typ: str | None = "statuslist+jwt",
    **overrides: Any,
) -> str:
    """A Status List Token (draft-ietf-oauth-status-list-20 §5.1); an override of ``None`` drops the claim."""
    claims: dict[str, Any] = {
        "sub": uri,
        "iss": ISSUER,
        "iat": int(now),
        "exp": int(now) + 86400 if exp is None else exp,
        "ttl": ttl,
        "status_list": {"bits": bits, "lst": encode_status_list(bits, statuses, size)},
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header: dict[str, Any] = {"alg": default_alg(key)}
    if typ is not None:
        header["typ"] = typ
    if kid is not None:
        header["kid"] = kid
    return sign(header, claims, key)


# -- the issuer's HTTP side ---------------------------------------------------------------------------


class FakeIssuer:
    """RFC 8414 metadata, the JWK Set and status list tokens of ``ISSUER``, served through MockTransport.

    ``down`` makes every request fail: ``"connect"`` raises httpx.ConnectError, an int answers that status.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.keys: dict[str, PrivateKey] = {}
        self.published: dict[str, dict[str, Any]] = {}
        self.metadata: dict[str, Any] = {"issuer": ISSUER, "jwks_uri": JWKS_URL, "token_endpoint": ISSUER + "/token"}
        self.jwks_cache_control: str | None = None
        self.jwks_body: bytes | None = None  # served instead of the JWK Set when set (garbage, truncation)
        self.documents: dict[str, str] = {}  # URL -> body served as application/statuslist+jwt
        self.down: str | int | None = None
        self.gate: threading.Event | None = None  # when set, requests wait for it (holds a background refresh)
        self.requests: list[str] = []

    # keys
    def add_key(
        self, kid: str, key: PrivateKey | None = None, *, alg: str | None = None, jwk: dict[str, Any] | None = None
    ) -> PrivateKey:
        key = key or ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = key
        self.published[kid] = jwk if jwk is not None else public_jwk(key, kid, alg)
        return key

    def remove_key(self, kid: str) -> None:
        self.published.pop(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self.published.values())}

    # tokens
    def token(
        self,
        kid: str | None = "k1",
        *,
        header: dict[str, Any] | None = None,
        key: PrivateKey | None = None,
        **claims: Any,
    ) -> str:
        signer = key or self.keys[kid or "k1"]
        h: dict[str, Any] = {"alg": default_alg(signer), "typ": "at+jwt"}
        if kid is not None:
            h["kid"] = kid
        h.update(header or {})
        h = {k: v for k, v in h.items() if v is not None}
        return sign(h, access_claims(self.clock(), **claims), signer)

    def publish_status(
        self, statuses: dict[int, int], *, uri: str = STATUS_URL, kid: str = "k1", **options: Any
    ) -> str:
        token = status_list_token(self.keys[kid], kid=kid, uri=uri, now=self.clock(), statuses=statuses, **options)
        self.documents[uri] = token
        return token

    # HTTP
    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url.copy_with(query=None))
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        self.requests.append(url)
        if self.down == "connect":
            raise httpx.ConnectError("the issuer is down", request=request)
        if isinstance(self.down, int):
            return httpx.Response(self.down, json={"error": "temporarily_unavailable"})
        if url == METADATA_URL:
            return httpx.Response(200, json=self.metadata)
        if url == self.metadata.get("jwks_uri", JWKS_URL):
            headers = {"Cache-Control": self.jwks_cache_control} if self.jwks_cache_control else {}
            if self.jwks_body is not None:
                return httpx.Response(200, content=self.jwks_body, headers=headers)
            return httpx.Response(200, json=self.jwks(), headers=headers)
        if url in self.documents:
            return httpx.Response(200, text=self.documents[url], headers={"Content-Type": "application/statuslist+jwt"})
        return httpx.Response(404)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def count(self, url: str) -> int:
        return collections.Counter(self.requests)[url]


def make_verifier(issuer: FakeIssuer, **options: Any) -> Verifier:
    """A verifier of ``ISSUER`` for ``AUDIENCE`` on the fake issuer, with inline (deterministic) refreshes."""
    settings: dict[str, Any] = {
        "audiences": [AUDIENCE],
        "clock": issuer.clock,
        "background_refresh": False,
        "transport": issuer.transport(),
        "async_transport": issuer.transport(),
    }
    settings.update(options)
    return Verifier(ISSUER, **settings)
