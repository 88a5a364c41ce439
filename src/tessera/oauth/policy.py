"""The issuance policy seam: before any grant signs a token it asks the flows (``tessera.workflows``,
docs/flows.md) whether and how. The grant hands over what it is about to issue; the policy answers
with limits (a shorter lifetime, fewer scopes or audiences) or raises the protocol error of a denial
or of a pending approval. No policy configured: nothing is asked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tessera.oauth.errors import InvalidTarget

__all__ = ["IssuanceContext", "IssuancePolicy", "PolicyLimits", "apply_limits", "federation_context"]


@dataclass(frozen=True)
class IssuanceContext:
    grant: str  # client_credentials | token_exchange | jwt_bearer | ciba
    client_id: str
    client_metadata: Mapping[str, Any]
    scope: list[str]
    audience: list[str]
    lifetime: int
    subject: str
    authorization_details: list[Any] = field(default_factory=list)
    federation: Mapping[str, Any] | None = None
    person: str | None = None
    #: the caller's IP address (flows read it as ``source.ip``; context alerts watch its network)
    source_ip: str | None = None


@dataclass(frozen=True)
class PolicyLimits:
    lifetime: int | None = None
    scopes: frozenset[str] | None = None
    audiences: frozenset[str] | None = None


class IssuancePolicy(Protocol):
    def applies(self, grant: str, client_metadata: Mapping[str, Any] | None = None) -> bool:
        """Cheap: whether any flow in force could apply to this grant, or the client awaits its
        onboarding approval (else ``check`` is skipped)."""
        ...

    async def check(self, ctx: IssuanceContext) -> PolicyLimits:
        """Allow (with limits), or raise the grant's protocol error (denied, or pending an approval).
        The decision is in the audit chain before this returns; if it cannot be written, it denies."""
        ...


def apply_limits(
    scope: list[str], audience: list[str], lifetime: int, limits: PolicyLimits
) -> tuple[list[str], list[str], int]:
    if limits.scopes is not None:
        scope = [s for s in scope if s in limits.scopes]
    if limits.audiences is not None:
        audience = [a for a in audience if a in limits.audiences]
        if not audience:
            raise InvalidTarget("no requested audience is allowed by the flows in force")
    if limits.lifetime is not None:
        lifetime = min(lifetime, limits.lifetime)
    return scope, audience, lifetime


def federation_context(identity: Any) -> dict[str, Any]:
    """What the flows see of an external identity (``tessera.federation.validator.ExternalIdentity``)."""
    return {
        "issuer": identity.trust.issuer,
        "trust": identity.trust.name,
        "subject": identity.subject,
        "claims": dict(identity.claims),
        "attributes": dict(identity.attributes),
    }
