"""JWT Bearer Token Grant — RFC 7523 §2.1.

The ``assertion`` is an external identity token from a trusted issuer (``tessera.federation``); it
must identify this authorization server in ``aud`` (RFC 7523 §3 (3): the issuer identifier or the
token endpoint URL) and satisfy the trust configuration (keys, algorithms, lifetime, ``jti``
replay, CEL condition, bindings). The token's subject is the mapped principal. RFC 7523 §3.1: every
problem with the assertion is ``invalid_grant``. The grant may be called without client
authentication (§3.1: authentication is optional); an authenticated client becomes ``client_id``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import ClassVar

from tessera.audit import AuditEvent
from tessera.federation.validator import FederationRefused, IssuerRegistry
from tessera.oauth.errors import InvalidClient, InvalidGrant, InvalidRequest
from tessera.oauth.forms import Form
from tessera.oauth.grants import TokenRequest, TokenResponse
from tessera.oauth.grants.token_exchange import external_party, narrow_audiences, narrow_scope
from tessera.oauth.keys import KeyRing
from tessera.oauth.policy import IssuanceContext, IssuancePolicy, apply_limits, federation_context
from tessera.oauth.status_entries import StatusAllocator
from tessera.oauth.tokens import mint_access_token
from tessera.store.interfaces import AssertionReplayed, IssuanceRecorder

__all__ = ["JwtBearerGrant"]


class JwtBearerGrant:
    grant_type: ClassVar[str] = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    requires_authentication: ClassVar[bool] = False

    def __init__(
        self,
        *,
        issuer: str,
        token_endpoint: str,
        keys: Callable[[], KeyRing],
        signing_alg: str,
        registry: IssuerRegistry,
        recorder: IssuanceRecorder,
        now: Callable[[], float],
        max_lifetime: int,
        status_allocator: StatusAllocator | None = None,
        status_min_lifetime: int = 0,
        policy: IssuancePolicy | None = None,
    ) -> None:
        self._policy = policy
        self._issuer = issuer
        self._audiences = (issuer, token_endpoint)
        self._keys = keys
        self._alg = signing_alg
        self._registry = registry
        self._recorder = recorder
        self._now = now
        self._max_lifetime = max_lifetime
        self._statuses = status_allocator
        self._status_min_lifetime = status_min_lifetime

    def check_request(self, form: Form) -> None:
        if not form.get("assertion"):
            raise InvalidRequest("assertion is required (RFC 7523 §2.1)")

    async def respond(self, request: TokenRequest) -> TokenResponse:
        assertion = request.form["assertion"]
        try:
            identity = await self._registry.validate(assertion, audiences=self._audiences)
        except FederationRefused as e:
            raise InvalidGrant(f"the assertion is not accepted: {e}") from None
        try:
            party = external_party(identity)
        except InvalidRequest as e:
            raise InvalidGrant(e.description) from None
        wanted = list(dict.fromkeys(request.form.getlist("resource")))
        audiences = narrow_audiences(wanted, [party])
        scope = narrow_scope(request.form.get("scope"), [party])
        if party.jkt is not None and (request.dpop_jkt is None or not hmac.compare_digest(request.dpop_jkt, party.jkt)):
            raise InvalidGrant("the assertion is DPoP-bound: the request needs a DPoP proof by its key (RFC 9449)")
        # A public client (auth method "none") proved nothing: it is treated as an anonymous caller.
        caller = request.client.client if request.client is not None and request.client.method != "none" else None
        lifetime = min(self._max_lifetime, party.max_lifetime)
        if self._policy is not None and self._policy.applies("jwt_bearer", caller.metadata if caller else None):
            limits = await self._policy.check(
                IssuanceContext(
                    "jwt_bearer",
                    caller.client_id if caller else party.principal,
                    caller.metadata if caller else {},
                    scope,
                    audiences,
                    lifetime,
                    party.principal,
                    federation=federation_context(identity),
                    source_ip=request.source_ip,
                )
            )
            scope, audiences, lifetime = apply_limits(scope, audiences, lifetime, limits)
        status = None
        if self._statuses is not None and lifetime >= self._status_min_lifetime:
            status = await self._statuses.allocate()
        now = int(self._now())
        token = mint_access_token(
            key=self._keys().signer(self._alg),
            issuer=self._issuer,
            client_id=caller.client_id if caller else party.principal,
            sub=party.principal,
            aud=audiences,
            scope=scope,
            now=now,
            lifetime=lifetime,
            grant_type=self.grant_type,
            status=status,
            extra={"cnf": {"jkt": request.dpop_jkt}} if request.dpop_jkt else None,
        )
        uses = [u for u in (party.use, request.client.assertion if request.client else None) if u is not None]
        event = AuditEvent(
            "token.issued",
            actor=caller.client_id if caller else None,
            subject=party.principal,
            data={
                "grant_type": self.grant_type,
                "jti": token.record.jti,
                "aud": audiences,
                "scope": " ".join(scope),
                "kid": token.record.kid,
                "exp": token.record.exp,
                "trust": identity.trust.name,
                **({"status_list": status.list_id, "status_idx": status.idx} if status else {}),
            },
        )
        try:
            await self._recorder.record_issuance(token.record, uses, event)
        except AssertionReplayed as e:
            if request.client is not None and e.concerns(request.client.assertion):
                raise InvalidClient("client_assertion was already used (jti replay)") from None
            raise InvalidGrant("the assertion was already used (jti replay)") from None
        body = {
            "access_token": token.value,
            "token_type": "DPoP" if request.dpop_jkt else "Bearer",
            "expires_in": lifetime,
        }
        if scope:
            body["scope"] = " ".join(scope)
        return TokenResponse(body)
