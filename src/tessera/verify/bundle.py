"""Offline trust bundles for disconnected sites.

A bundle (``tessera bundle export``) is a compact JWS, header ``typ: tessera-bundle+jwt``, signed
with the issuer's active key. Its payload: ``iss``, ``iat``, ``exp``, ``metadata`` (the issuer's
RFC 8414 metadata), ``jwks`` (the published JWK Set) and ``status_lists`` (status list URI → the
signed status list token). The relying party verifies the bundle with keys it already trusts (the
JWKS of a previous bundle, or one obtained out of band), refuses an expired bundle, and then
verifies tokens and status list tokens with the bundle's keys exactly as if they had been fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera.verify.errors import BadSignature, InvalidBundle, MalformedToken, UnsupportedAlgorithm
from tessera.verify.jws import ALGORITHMS, PublicKey, parse_compact, public_key_from_jwk, verify_signature

__all__ = ["BUNDLE_TYP", "Bundle", "read_bundle"]

BUNDLE_TYP = "tessera-bundle+jwt"


@dataclass(frozen=True)
class Bundle:
    issuer: str
    iat: float
    exp: float
    metadata: dict[str, Any]
    jwks: dict[str, Any]
    status_lists: dict[str, str]


def _keys(jwks: Any) -> list[PublicKey]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise InvalidBundle("trusted keys must be a JWK Set")
    out = []
    for jwk in jwks["keys"]:
        try:
            out.append(public_key_from_jwk(jwk))
        except (ValueError, MalformedToken):
            continue
    return out


def read_bundle(text: str, *, issuer: str, trusted_jwks: dict[str, Any], now: float, leeway: float = 0) -> Bundle:
    """Verify a bundle against ``trusted_jwks`` and return its contents; ``InvalidBundle`` otherwise."""
    try:
        header, claims, signing_input, signature = parse_compact(text.strip())
    except MalformedToken as e:
        raise InvalidBundle(f"not a bundle: {e.message}") from None
    if str(header.get("typ", "")).lower() != BUNDLE_TYP:
        raise InvalidBundle(f"typ must be {BUNDLE_TYP}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise InvalidBundle("the bundle's alg is not accepted")
    kid = header.get("kid")
    candidates = [k for k in _keys(trusted_jwks) if kid is None or k.kid == kid]
    for key in candidates[:4]:
        try:
            verify_signature(alg, key, signing_input, signature)
            break
        except (BadSignature, UnsupportedAlgorithm):
            continue
    else:
        raise InvalidBundle("the bundle is not signed by a trusted key")
    if claims.get("iss") != issuer:
        raise InvalidBundle("the bundle is from another issuer")
    iat, exp = claims.get("iat"), claims.get("exp")
    if type(iat) not in (int, float) or type(exp) not in (int, float) or iat is None or exp is None:
        raise InvalidBundle("the bundle needs numeric iat and exp")
    if now >= exp + leeway:
        raise InvalidBundle("the bundle has expired")
    if iat > now + leeway:
        raise InvalidBundle("the bundle was issued in the future")
    metadata, jwks, lists = claims.get("metadata"), claims.get("jwks"), claims.get("status_lists", {})
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
        raise InvalidBundle("the bundle's metadata names another issuer")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise InvalidBundle("the bundle has no JWK Set")
    if not isinstance(lists, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in lists.items()):
        raise InvalidBundle("status_lists must map URIs to status list tokens")
    return Bundle(issuer, float(iat), float(exp), metadata, jwks, lists)
