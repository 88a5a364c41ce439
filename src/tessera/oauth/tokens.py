"""JWT access tokens: RFC 9068 (JSON Web Token Profile for OAuth 2.0 Access Tokens).

RFC 9068 §2.1: the header ``typ`` MUST be ``at+jwt``. §2.2: ``iss``, ``exp``, ``aud``, ``sub``,
``client_id``, ``iat`` and ``jti`` are REQUIRED. For ``client_credentials`` the subject is the
client itself (§2.2, "sub ... the client identifier when the grant has no resource owner").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tessera.oauth.jws import sign_compact
from tessera.oauth.keys import SigningKey
from tessera.oauth.randomness import random_id

__all__ = ["AccessToken", "IssuedToken", "mint_access_token", "new_jti"]


def new_jti() -> str:
    return random_id(18)  # 144 bits


@dataclass(frozen=True)
class IssuedToken:
    """What is stored about an issued token (never the token itself)."""

    jti: str
    client_id: str
    sub: str
    aud: list[str]
    scope: str
    kid: str
    grant_type: str
    iat: int
    exp: int


@dataclass(frozen=True)
class AccessToken:
    value: str
    record: IssuedToken
    claims: dict[str, Any] = field(repr=False)


def mint_access_token(
    *,
    key: SigningKey,
    issuer: str,
    client_id: str,
    sub: str,
    aud: list[str],
    scope: list[str],
    now: int,
    lifetime: int,
    grant_type: str,
    extra: dict[str, Any] | None = None,
) -> AccessToken:
    jti = new_jti()
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": aud[0] if len(aud) == 1 else aud,
        "exp": now + lifetime,
        "iat": now,
        "jti": jti,
        "client_id": client_id,
    }
    if scope:
        claims["scope"] = " ".join(scope)
    if extra:
        claims.update(extra)
    header = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid}
    value = sign_compact(header, claims, key.private)
    record = IssuedToken(
        jti=jti,
        client_id=client_id,
        sub=sub,
        aud=aud,
        scope=" ".join(scope),
        kid=key.kid,
        grant_type=grant_type,
        iat=now,
        exp=now + lifetime,
    )
    return AccessToken(value, record, claims)
