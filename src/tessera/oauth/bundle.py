"""Trust bundles: everything a disconnected relying party needs to verify Tessera's tokens offline.

A bundle is one compact JWS (RFC 7515), signed with the active signing key, header
``{"alg", "kid", "typ": "tessera-bundle+jwt"}``; its payload:

- ``iss``, ``iat``, ``exp`` (``iat`` + the bundle's lifetime);
- ``metadata``: the RFC 8414 authorization server metadata, as served;
- ``jwks``: the published JWK Set (RFC 7517), as served — it holds the key that signed the bundle;
- ``status_lists``: an object mapping each status list URI to its Status List Token
  (draft-ietf-oauth-status-list §5.1, a signed JWT string) for every list that holds an entry of an
  unexpired token. These list tokens expire with the bundle, so that an offline verifier can use them
  as long as it may use the bundle.

The format is documented for relying parties in ``docs/verification.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.oauth.jws import sign_compact
from tessera.oauth.keys import SigningKey

__all__ = ["BUNDLE_TYP", "MAX_BUNDLE_LIFETIME", "MIN_BUNDLE_LIFETIME", "build_bundle"]

BUNDLE_TYP = "tessera-bundle+jwt"
MIN_BUNDLE_LIFETIME = 60
MAX_BUNDLE_LIFETIME = 30 * 86400


def build_bundle(
    *,
    key: SigningKey,
    issuer: str,
    now: int,
    lifetime: int,
    metadata: Mapping[str, Any],
    jwks: Mapping[str, Any],
    status_lists: Mapping[str, str],
) -> str:
    if not MIN_BUNDLE_LIFETIME <= lifetime <= MAX_BUNDLE_LIFETIME:
        raise ValueError(f"a bundle lives from {MIN_BUNDLE_LIFETIME} to {MAX_BUNDLE_LIFETIME} seconds")
    if not any(k.get("kid") == key.kid for k in jwks.get("keys", [])):
        raise ValueError("the bundle's signing key is not in its JWKS")
    header = {"alg": key.alg, "kid": key.kid, "typ": BUNDLE_TYP}
    payload = {
        "iss": issuer,
        "iat": now,
        "exp": now + lifetime,
        "metadata": dict(metadata),
        "jwks": dict(jwks),
        "status_lists": dict(status_lists),
    }
    return sign_compact(header, payload, key.private)
