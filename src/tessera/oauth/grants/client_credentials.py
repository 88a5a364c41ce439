"""Client Credentials Grant — RFC 6749 §4.4, with RFC 8707 resource indicators and RFC 9068 tokens.

The client is the subject. Audience: each ``resource`` the client asked for (RFC 8707 §2), each of
which must be an absolute URI without a fragment and allowed for this client; without ``resource``,
the client's ``default_resource`` or the server's default audience (RFC 9068 §3: the server MUST
use a default resource indicator). Scope: the requested scope, each token registered for the
client; without ``scope``, everything registered (RFC 6749 §3.3 lets the server use a default).
A token living at least ``status_min_lifetime`` seconds gets a status list entry (draft-ietf-oauth-
status-list §6.2), so that it can be revoked without relying parties calling home.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from tessera.audit import AuditEvent
from tessera.oauth.clients import Client, check_resource_uri, parse_scope
from tessera.oauth.errors import InvalidClient, InvalidScope, InvalidTarget
from tessera.oauth.forms import Form
from tessera.oauth.grants import TokenRequest, TokenResponse
from tessera.oauth.keys import KeyRing
from tessera.oauth.policy import IssuanceContext, IssuancePolicy, apply_limits
from tessera.oauth.status_entries import StatusAllocator
from tessera.oauth.tokens import mint_access_token
from tessera.store.interfaces import AssertionReplayed, IssuanceRecorder

__all__ = ["ClientCredentialsGrant", "resolve_audience", "resolve_scope"]


def resolve_scope(client: Client, requested: str | None) -> list[str]:
    if requested is None:
        return client.registered_scope
    try:
        scope = parse_scope(requested)
    except ValueError as e:
        raise InvalidScope(str(e), client_id=client.client_id) from None
    extra = [s for s in scope if s not in client.scopes]
    if extra:
        raise InvalidScope(f"scope not allowed for this client: {' '.join(extra)[:200]}", client_id=client.client_id)
    return scope


def resolve_audience(client: Client, resources: list[str], default_audience: str) -> list[str]:
    if not resources:
        return [client.default_resource or default_audience]
    allowed = set(client.allowed_resources) | {client.default_resource or default_audience}
    for r in resources:
        reason = check_resource_uri(r)
        if reason:
            raise InvalidTarget(f"resource {reason} (RFC 8707 §2)", client_id=client.client_id)
        if r not in allowed:
            raise InvalidTarget("resource is not allowed for this client", client_id=client.client_id)
    return list(dict.fromkeys(resources))


class ClientCredentialsGrant:
    grant_type: ClassVar[str] = "client_credentials"
    requires_authentication: ClassVar[bool] = True

    def __init__(
        self,
        *,
        issuer: str,
        keys: Callable[[], KeyRing],
        signing_alg: str,
        recorder: IssuanceRecorder,
        now: Callable[[], float],
        max_lifetime: int,
        default_audience: str,
        status_allocator: StatusAllocator | None = None,
        status_min_lifetime: int = 0,
        policy: IssuancePolicy | None = None,
    ) -> None:
        self._policy = policy
        self._issuer = issuer
        self._keys = keys
        self._alg = signing_alg
        self._recorder = recorder
        self._now = now
        self._max_lifetime = max_lifetime
        self._default_audience = default_audience
        self._statuses = status_allocator
        self._status_min_lifetime = status_min_lifetime

    def check_request(self, form: Form) -> None:
        return None  # scope and resource are checked against the client in respond

    async def respond(self, request: TokenRequest) -> TokenResponse:
        authn = request.client
        assert authn is not None  # requires_authentication
        client = authn.client
        scope = resolve_scope(client, request.form.get("scope"))
        aud = resolve_audience(client, request.form.getlist("resource"), self._default_audience)
        lifetime = min(self._max_lifetime, client.token_lifetime_cap or self._max_lifetime)
        if self._policy is not None and self._policy.applies("client_credentials", client.metadata):
            limits = await self._policy.check(
                IssuanceContext(
                    "client_credentials",
                    client.client_id,
                    client.metadata,
                    scope,
                    aud,
                    lifetime,
                    client.client_id,
                    source_ip=request.source_ip,
                )
            )
            scope, aud, lifetime = apply_limits(scope, aud, lifetime, limits)
        status = None
        if self._statuses is not None and lifetime >= self._status_min_lifetime:
            status = await self._statuses.allocate()
        token = mint_access_token(
            key=self._keys().signer(self._alg),
            issuer=self._issuer,
            client_id=client.client_id,
            sub=client.client_id,
            aud=aud,
            scope=scope,
            now=int(self._now()),
            lifetime=lifetime,
            grant_type=self.grant_type,
            status=status,
            extra={"cnf": {"jkt": request.dpop_jkt}} if request.dpop_jkt else None,
        )
        event = AuditEvent(
            "token.issued",
            actor=client.client_id,
            subject=client.client_id,
            data={
                "grant_type": self.grant_type,
                "jti": token.record.jti,
                "aud": aud,
                "scope": token.record.scope,
                "kid": token.record.kid,
                "exp": token.record.exp,
                "auth_method": authn.method,
                **({"status_list": status.list_id, "status_idx": status.idx} if status else {}),
            },
        )
        try:
            await self._recorder.record_issuance(token.record, authn.assertion, event)
        except AssertionReplayed:
            # RFC 7523 §3 (7): a jti seen before means the assertion is replayed.
            raise InvalidClient("client_assertion was already used (jti replay)", client_id=client.client_id) from None
        # RFC 9449 §5: a DPoP-bound token's token_type is "DPoP".
        body = {
            "access_token": token.value,
            "token_type": "DPoP" if request.dpop_jkt else "Bearer",
            "expires_in": lifetime,
        }
        if scope:
            body["scope"] = " ".join(scope)
        return TokenResponse(body)
