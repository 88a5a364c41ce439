"""JWT access tokens: RFC 9068 (JSON Web Token Profile for OAuth 2.0 Access Tokens).

RFC 9068 §2.1: the header ``typ`` MUST be ``at+jwt``. §2.2: ``iss``, ``exp``, ``aud``, ``sub``,
``client_id``, ``iat`` and ``jti`` are REQUIRED. For ``client_credentials`` the subject is the
client itself (§2.2, "sub ... the client identifier when the grant has no resource owner").

A token with a status list entry also carries the ``status`` claim of draft-ietf-oauth-status-list
§6.2 (see ``status_entries.py``). ``read_access_token`` recognises a token this server signed
(revocation, introspection, operator revocation); anything else is ``NotOurToken``.
"""

from __future__ import annotations

import base64
import binascii
import warnings
from dataclasses import dataclass, field
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError

from tessera.oauth.jws import sign_compact
from tessera.oauth.keys import KeyRing, SigningKey
from tessera.oauth.randomness import random_id
from tessera.oauth.status_entries import StatusEntry

__all__ = [
    "AccessToken",
    "IssuedToken",
    "NotOurToken",
    "mint_access_token",
    "mint_id_token",
    "mint_identity_token",
    "new_jti",
    "read_access_token",
    "read_id_token",
]

MAX_TOKEN_BYTES = 8192


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
    status_list: int | None = None
    status_idx: int | None = None
    #: Status Type (draft-ietf-oauth-status-list §7): 0 VALID, 1 INVALID (revoked).
    status: int = 0
    revoked_at: int | None = None
    #: RFC 8693: the Tessera token this one was exchanged from (its revocation revokes this one)
    parent_jti: str | None = None


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
    status: StatusEntry | None = None,
    parent_jti: str | None = None,
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
    if status is not None:
        claims["status"] = status.claim(issuer)
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
        status_list=status.list_id if status else None,
        status_idx=status.idx if status else None,
        parent_jti=parent_jti,
    )
    return AccessToken(value, record, claims)


def mint_identity_token(
    *,
    key: SigningKey,
    issuer: str,
    client_id: str,
    sub: str,
    aud: str,
    now: int,
    lifetime: int,
    grant_type: str,
    extra: dict[str, Any] | None = None,
    parent_jti: str | None = None,
) -> AccessToken:
    """A token for an outside audience (a cloud STS, a partner API) that trusts Tessera as an OpenID
    issuer: ``typ: JWT``, one audience, minimal claims (``iss``, ``sub``, ``aud``, ``iat``, ``nbf``,
    ``exp``, ``jti``, and ``act`` for a delegation). Never accepted back by Tessera itself: it is not
    an RFC 9068 access token."""
    jti = new_jti()
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": jti,
    }
    if extra:
        claims.update(extra)
    header = {"alg": key.alg, "typ": "JWT", "kid": key.kid}
    value = sign_compact(header, claims, key.private)
    record = IssuedToken(
        jti=jti,
        client_id=client_id,
        sub=sub,
        aud=[aud],
        scope="",
        kid=key.kid,
        grant_type=grant_type,
        iat=now,
        exp=now + lifetime,
        parent_jti=parent_jti,
    )
    return AccessToken(value, record, claims)


def mint_id_token(
    *,
    key: SigningKey,
    issuer: str,
    client_id: str,
    sub: str,
    now: int,
    lifetime: int,
    acr: str,
    auth_time: int,
) -> AccessToken:
    """An OpenID Connect ID Token (OIDC Core §2) for the client that asked (CIBA §10.1.1): ``aud`` the
    client, ``sub`` the person, ``acr`` and ``auth_time``. ``typ: JWT``; never an access token."""
    jti = new_jti()
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": client_id,
        "iat": now,
        "exp": now + lifetime,
        "auth_time": auth_time,
        "acr": acr,
        "jti": jti,
    }
    header = {"alg": key.alg, "typ": "JWT", "kid": key.kid}
    value = sign_compact(header, claims, key.private)
    record = IssuedToken(
        jti=jti,
        client_id=client_id,
        sub=sub,
        aud=[client_id],
        scope="openid",
        kid=key.kid,
        grant_type="id_token",
        iat=now,
        exp=now + lifetime,
    )
    return AccessToken(value, record, claims)


def read_id_token(value: str, ring: KeyRing, issuer: str, client_id: str) -> dict[str, Any]:
    """The claims of an ID token this server issued to ``client_id`` (a CIBA ``id_token_hint``).
    Expiry is not checked: OIDC Core §3.1.2.1 accepts an expired ID token as a hint."""
    claims = _own_jws(value, ring, (None, "JWT"), "not an ID token")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if claims.get("iss") != issuer or client_id not in auds or "auth_time" not in claims:
        raise NotOurToken("not an ID token this server issued to this client")
    return claims


class NotOurToken(Exception):
    """The value is not an access token this server signed with a key it still publishes."""


def _segment(part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError) as e:
        raise NotOurToken("not a JWT") from e
    if not isinstance(value, dict):
        raise NotOurToken("not a JWT")
    return value


def _own_jws(value: str, ring: KeyRing, typs: tuple[str | None, ...], not_this: str) -> dict[str, Any]:
    """The claims of a compact JWS signed with a key this server publishes, its ``typ`` one of ``typs``."""
    if not isinstance(value, str) or len(value) > MAX_TOKEN_BYTES or value.count(".") != 2:
        raise NotOurToken("not a compact JWS")
    header = _segment(value.split(".", 1)[0])
    if header.get("typ") not in typs or "crit" in header:
        raise NotOurToken(not_this)
    found = ring.verifier(header.get("kid"))
    # The algorithm is the published key's, never the header's choice.
    if found is None or header.get("alg") != found[0]:
        raise NotOurToken("not signed with a key this server publishes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(jwt.decode(value, found[1], algorithms=[found[0]]).claims)
    except (JoseError, ValueError, TypeError):
        raise NotOurToken("the signature does not verify") from None


def read_access_token(value: str, ring: KeyRing, issuer: str) -> dict[str, Any]:
    """The claims of an access token signed by this server (RFC 9068 header, our issuer, a published
    key, a valid signature). Expiry is not checked here: callers decide what an expired token means."""
    claims = _own_jws(value, ring, ("at+jwt",), "not an RFC 9068 access token")
    if claims.get("iss") != issuer or not isinstance(claims.get("jti"), str):
        raise NotOurToken("not issued by this server")
    return claims
