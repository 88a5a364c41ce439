"""Revoking issued tokens: what to revoke and the audit record that says so.

Every path that revokes goes through a ``TokenSelector`` — RFC 7009 (one token, by its client), the
operator (admin API, ``tessera tokens revoke``: by ``jti``, client, subject or the token itself),
client deletion (every token of the client) and key revocation (every token the key signed). A
revoked token gets ``revoked_at`` and the Status Type INVALID (0x01, draft-ietf-oauth-status-list §7.1),
so the next status list shows it.

Selecting by ``jti`` revokes that token whatever its expiry; the other selectors revoke the tokens
that a relying party could still accept: ``exp`` no earlier than now minus the leeway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tessera.audit import AuditEvent
from tessera.oauth.errors import InvalidRequest
from tessera.oauth.keys import KeyRing
from tessera.oauth.tokens import IssuedToken, NotOurToken, read_access_token

__all__ = ["MAX_LISTED_JTIS", "TokenSelector", "revocation_event", "selector_from_request"]

#: A revocation record lists the revoked ``jti`` values when there are at most this many.
MAX_LISTED_JTIS = 100


@dataclass(frozen=True)
class TokenSelector:
    """Exactly one of: a token id, a client, a subject, a signing key."""

    jti: str | None = None
    client_id: str | None = None
    sub: str | None = None
    kid: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.jti, self.client_id, self.sub, self.kid) if v is not None]
        if len(given) != 1 or not isinstance(given[0], str) or not given[0] or len(given[0]) > 256:
            raise ValueError("a token selector names exactly one of jti, client_id, sub, kid (1-256 characters)")

    @property
    def unexpired_only(self) -> bool:
        return self.jti is None

    def describe(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


def selector_from_request(body: Any, ring: KeyRing, issuer: str) -> TokenSelector:
    """An operator's request: a JSON object with exactly one of ``jti``, ``client_id``, ``sub``, ``token``."""
    allowed = ("jti", "client_id", "sub", "token")
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in allowed:
        raise InvalidRequest(f"the body must be a JSON object with exactly one of {', '.join(allowed)}")
    name, value = next(iter(body.items()))
    if not isinstance(value, str) or not value or (name != "token" and len(value) > 256):
        raise InvalidRequest(f"{name} must be a non-empty string")
    if name == "token":
        try:
            return TokenSelector(jti=read_access_token(value, ring, issuer)["jti"])
        except (NotOurToken, ValueError):
            raise InvalidRequest("token is not an access token issued by this server") from None
    return TokenSelector(**{name: value})


def revocation_event(selector: TokenSelector, revoked: Sequence[IssuedToken], *, actor: str, via: str) -> AuditEvent:
    """One ``token.revoked`` record per revocation action, however many tokens it revoked."""
    data: dict[str, Any] = {"via": via, "selector": selector.describe(), "count": len(revoked)}
    if len(revoked) <= MAX_LISTED_JTIS:
        data["jtis"] = sorted(t.jti for t in revoked)
    subject = selector.client_id or selector.sub or selector.kid
    if subject is None:
        subject = revoked[0].client_id if revoked else None
    return AuditEvent("token.revoked", actor=actor, subject=subject, data=data)
