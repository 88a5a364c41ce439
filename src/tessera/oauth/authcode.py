"""The authorization code grant for agents acting for a person — RFC 6749 §4.1 with RFC 7636 (PKCE),
as profiled by OAuth 2.1 and the security BCP (RFC 9700) and required by the MCP authorization spec.

What is decided here, free of HTTP and storage:

- PKCE (RFC 7636): only ``S256`` (§4.2); ``plain`` and a missing method are refused, since RFC 9700
  §2.1.1 says ``plain`` only protects against an attacker who cannot read the authorization request.
  The verifier is 43-128 unreserved characters (§4.1) and is checked in constant time (§4.6).
- Redirect URIs (RFC 6749 §3.1.2, RFC 9700 §4.1.3): registered in full and compared as exact strings.
  https, or http on a loopback IP literal (RFC 8252 §7.3), or a private-use scheme with a dot in it
  (RFC 8252 §7.1) for native apps; never a fragment (RFC 6749 §3.1.2) or user info.
- Codes, consent grants, refresh tokens and sign-in sessions: 256-bit random values kept as SHA-256.
  A code lives at most 60 seconds and is used once (RFC 6749 §4.1.2); refresh tokens rotate on every
  use, and the reuse of a rotated one revokes its whole family (RFC 9700 §4.14.2).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from tessera.audit import AuditEvent
from tessera.oauth.tokens import IssuedToken

__all__ = [
    "AUTHORIZATION_CODE",
    "CODE_TTL",
    "REFRESH_TOKEN",
    "AuthCodeStore",
    "CodeRecord",
    "ConsentGrant",
    "RefreshRecord",
    "check_redirect_uri",
    "digest",
    "new_secret",
    "pkce_matches",
    "scope_key",
    "valid_challenge",
    "valid_verifier",
]

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"
#: RFC 6749 §4.1.2: "A maximum authorization code lifetime of 10 minutes is RECOMMENDED"; OAuth 2.1 and
#: the MCP baseline want it short: a code is redeemed by a machine within seconds of the redirect.
CODE_TTL = 60
#: How long a signed-in browser session (passkey sign-in) lasts before the person signs in again.
SESSION_TTL = 900
#: Refresh tokens: each one lasts this long unused; a family never outlives ``REFRESH_FAMILY_TTL``.
REFRESH_TTL = 14 * 86400
REFRESH_FAMILY_TTL = 90 * 86400
MAX_REDIRECT_URIS = 10

# RFC 7636 §4.1: code-verifier = 43*128unreserved; unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# §4.2: S256 gives BASE64URL(SHA256(verifier)) without padding: always 43 characters.
_S256_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")


def new_secret() -> str:
    """256 random bits, base64url: codes, refresh tokens, session cookies."""
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def valid_verifier(verifier: str) -> bool:
    return bool(_VERIFIER.match(verifier))


def valid_challenge(challenge: str) -> bool:
    return bool(_S256_CHALLENGE.match(challenge))


def pkce_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) == code_challenge."""
    import base64

    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))


def scope_key(scope: list[str]) -> str:
    """The scopes of a consent, order-free: what "the same scopes" means when consent is remembered."""
    return " ".join(sorted(set(scope)))


def check_redirect_uri(uri: Any) -> str | None:
    """Whether ``uri`` may be registered as a redirect URI; the reason it may not, or None."""
    from tessera.settings import is_loopback_host

    if not isinstance(uri, str) or not uri or len(uri) > 2048:
        return "must be a non-empty string of at most 2048 characters"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "must not contain spaces or control characters"
    parts = urlsplit(uri)
    if "#" in uri:
        return "must not contain a fragment (RFC 6749 §3.1.2)"
    if not parts.scheme or not _SCHEME.match(parts.scheme):
        return "must be an absolute URI (RFC 6749 §3.1.2)"
    if parts.username is not None or parts.password is not None:
        return "must not contain user information"
    if parts.scheme == "https":
        return None if parts.hostname else "must name a host"
    if parts.scheme == "http":
        # RFC 8252 §7.3 / RFC 9700 §2.1: plain http only for a loopback interface (IP literal, §8.3).
        if parts.hostname and is_loopback_host(parts.hostname) and parts.hostname != "localhost":
            return None
        return "http is allowed only for loopback IP literals (RFC 8252 §7.3); use https"
    if parts.scheme in ("javascript", "data", "file", "vbscript", "about", "blob"):
        return f"the {parts.scheme} scheme is not a redirect target"
    # RFC 8252 §7.1: private-use URI schemes for native apps, in reverse domain name form.
    if "." not in parts.scheme:
        return "a private-use scheme must be a reverse domain name (RFC 8252 §7.1), e.g. com.example.app"
    return None


@dataclass(frozen=True)
class ConsentGrant:
    """What a person allowed a client: these scopes for this resource, until revoked."""

    grant_id: str
    person_id: str
    client_id: str
    scope: list[str]
    resource: list[str]
    created_at: int
    revoked_at: int | None = None
    last_used_at: int | None = None

    def view(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "person_id": self.person_id,
            "client_id": self.client_id,
            "scope": " ".join(self.scope),
            "resource": list(self.resource),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    client_id: str
    person_id: str
    grant_id: str
    redirect_uri: str
    #: RFC 6749 §4.1.3: if redirect_uri was in the authorization request, the token request repeats it.
    redirect_uri_sent: bool
    scope: list[str]
    resource: list[str]
    code_challenge: str
    acr: str
    auth_time: int
    created_at: int
    expires_at: int
    used_at: int | None = None
    issued: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    family_id: str
    grant_id: str
    client_id: str
    person_id: str
    scope: list[str]
    resource: list[str]
    acr: str
    auth_time: int
    created_at: int
    expires_at: int
    family_expires_at: int
    used_at: int | None = None
    revoked_at: int | None = None
    access_jti: str | None = None


class AuthCodeStore(Protocol):
    """Codes, consent grants, refresh tokens and sign-in sessions (``tessera.store.sql.authcode``)."""

    # sign-in sessions (the cookie's value is stored only as its SHA-256)
    async def new_session(self, session_hash: str, now: int, expires_at: int) -> None: ...
    async def get_session(self, session_hash: str, now: int) -> dict[str, Any] | None: ...
    async def set_challenge(self, session_hash: str, challenge: str) -> bool: ...
    async def take_challenge(self, session_hash: str) -> str | None: ...
    async def signed_in(
        self, session_hash: str, new_hash: str, person_id: str, acr: str, now: int, expires_at: int
    ) -> None: ...
    async def end_session(self, session_hash: str) -> None: ...

    # consent grants
    async def find_grant(
        self, person_id: str, client_id: str, scope: list[str], resource: list[str]
    ) -> ConsentGrant | None: ...
    async def get_grant(self, grant_id: str) -> ConsentGrant | None: ...
    async def list_grants(self, person_id: str | None, client_id: str | None) -> list[ConsentGrant]: ...
    async def revoke_grant(
        self, grant_id: str, actor: str, now: int, person_id: str | None = None
    ) -> list[IssuedToken] | None: ...

    # codes
    async def issue_code(
        self, record: CodeRecord, grant: ConsentGrant, new_grant: bool, events: list[AuditEvent]
    ) -> None: ...
    async def get_code(self, code_hash: str) -> CodeRecord | None: ...
    async def redeem_code(
        self,
        code_hash: str,
        now: int,
        tokens: list[IssuedToken],
        refresh: RefreshRecord | None,
        events: list[AuditEvent],
    ) -> bool: ...
    async def revoke_code_family(self, code_hash: str, actor: str, now: int) -> list[IssuedToken]: ...

    # refresh tokens
    async def get_refresh(self, token_hash: str) -> RefreshRecord | None: ...
    async def grant_live(self, grant_id: str) -> bool: ...
    async def rotate_refresh(
        self, token_hash: str, now: int, tokens: list[IssuedToken], new: RefreshRecord, events: list[AuditEvent]
    ) -> bool: ...
    async def revoke_family(self, family_id: str, actor: str, now: int, why: str) -> list[IssuedToken]: ...
