"""The CIBA grant — OpenID Connect Client-Initiated Backchannel Authentication Core 1.0 §10.1 / §11.

``grant_type=urn:openid:params:grant-type:ciba`` with the ``auth_req_id`` of an approved request
returns, once, an access token (RFC 9068: ``sub`` the person, ``act`` the client that asked — RFC 8693
§4.1 — the approved scope and RFC 9396 ``authorization_details``) and an ID token (``sub`` the person,
``aud`` the client, ``acr`` the assurance the person proved, ``auth_time`` when they approved).

Checks run in the order client binding → expired → too fast → pending → denied → consume, each in
one transaction holding the record (``oauth/ciba.decide_poll``). Of parallel redemptions exactly one
commits; any later use is refused and revokes what the first one issued.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from tessera.audit import AuditEvent
from tessera.oauth.ciba import CIBA_GRANT, CibaStore, acr_of
from tessera.oauth.client_auth import assertion_replayed
from tessera.oauth.errors import AccessDenied, InvalidGrant, InvalidRequest
from tessera.oauth.forms import Form
from tessera.oauth.grants import TokenRequest, TokenResponse
from tessera.oauth.keys import KeyRing
from tessera.oauth.policy import IssuanceContext, IssuancePolicy, apply_limits
from tessera.oauth.status_entries import StatusAllocator
from tessera.oauth.tokens import mint_access_token, mint_id_token
from tessera.store.interfaces import AssertionReplayed

__all__ = ["CibaGrant"]


class CibaGrant:
    grant_type: ClassVar[str] = CIBA_GRANT
    requires_authentication: ClassVar[bool] = True

    def __init__(
        self,
        *,
        issuer: str,
        keys: Callable[[], KeyRing],
        signing_alg: str,
        store: CibaStore,
        now: Callable[[], float],
        max_lifetime: int,
        id_token_lifetime: int = 300,
        status_allocator: StatusAllocator | None = None,
        status_min_lifetime: int = 0,
        on_revoked: Callable[[list[int | None]], None] = lambda _: None,
        person_refusal: Callable[[str], Awaitable[str | None]] | None = None,
        policy: IssuancePolicy | None = None,
    ) -> None:
        self._policy = policy
        self._issuer = issuer
        self._keys = keys
        self._alg = signing_alg
        self._store = store
        self._now = now
        self._max_lifetime = max_lifetime
        self._id_lifetime = id_token_lifetime
        self._statuses = status_allocator
        self._status_min_lifetime = status_min_lifetime
        self._on_revoked = on_revoked
        self._person_refusal = person_refusal

    def check_request(self, form: Form) -> None:
        value = form.get("auth_req_id")
        if not value:
            raise InvalidRequest("auth_req_id is required (CIBA §10.1)")
        if len(value) > 256:
            raise InvalidGrant("auth_req_id is unknown or was issued to another client")

    async def respond(self, request: TokenRequest) -> TokenResponse:
        from tessera.oauth.ciba import auth_req_hash

        authn = request.client
        assert authn is not None
        client = authn.client
        key = auth_req_hash(request.form["auth_req_id"])
        now = int(self._now())
        try:
            decision = await self._store.poll(key, client.client_id, now, authn.assertion)
        except AssertionReplayed:
            raise assertion_replayed(client.client_id) from None
        if decision.replay:
            revoked = await self._store.revoke_issued(key, client.client_id)
            self._on_revoked([t.status_list for t in revoked])
        if not decision.redeem:
            assert decision.error is not None
            raise decision.error
        rec = await self._store.load(key)
        assert rec is not None
        if self._person_refusal is not None:
            # CIBA issue scope 6: a person disabled or locked since approving gets nothing issued.
            why = await self._person_refusal(rec.person_id)
            if why is not None:
                raise AccessDenied(why, client_id=client.client_id)
        approvals = [v for v in rec.votes if v["decision"] == "approve" and v["person_id"] == rec.person_id]
        aal = approvals[0]["aal"] if approvals else rec.grant.get("assurance", "aal1")
        auth_time = approvals[0]["at"] if approvals else now
        lifetime = min(
            self._max_lifetime,
            client.token_lifetime_cap or self._max_lifetime,
            max(rec.grant.get("lifetime", self._max_lifetime), 10),
        )
        scope, audience = list(rec.grant["scope"]), list(rec.grant["audience"])
        if self._policy is not None and self._policy.applies("ciba", client.metadata):
            limits = await self._policy.check(
                IssuanceContext(
                    "ciba",
                    client.client_id,
                    client.metadata,
                    scope,
                    audience,
                    lifetime,
                    rec.person_id,
                    authorization_details=list(rec.grant.get("authorization_details") or []),
                    person=rec.person_id,
                    source_ip=request.source_ip,
                )
            )
            scope, audience, lifetime = apply_limits(scope, audience, lifetime, limits)
        status = None
        if self._statuses is not None and lifetime >= self._status_min_lifetime:
            status = await self._statuses.allocate()
        signer = self._keys().signer(self._alg)
        extra: dict[str, object] = {"act": {"sub": client.client_id}, "acr": acr_of(aal), "auth_time": auth_time}
        if rec.grant.get("authorization_details"):
            extra["authorization_details"] = rec.grant["authorization_details"]
        if request.dpop_jkt:
            extra["cnf"] = {"jkt": request.dpop_jkt}
        access = mint_access_token(
            key=signer,
            issuer=self._issuer,
            client_id=client.client_id,
            sub=rec.person_id,
            aud=audience,
            scope=scope,
            now=now,
            lifetime=lifetime,
            grant_type=self.grant_type,
            status=status,
            extra=extra,
        )
        id_token = mint_id_token(
            key=signer,
            issuer=self._issuer,
            client_id=client.client_id,
            sub=rec.person_id,
            now=now,
            lifetime=self._id_lifetime,
            acr=acr_of(aal),
            auth_time=auth_time,
        )
        event = AuditEvent(
            "ciba.redeemed",
            actor=client.client_id,
            subject=rec.person_id,
            data={
                "approval_id": rec.approval_id,
                "jti": access.record.jti,
                "id_token_jti": id_token.record.jti,
                "aud": audience,
                "scope": access.record.scope,
                "acr": acr_of(aal),
                "auth_method": authn.method,
            },
        )
        try:
            final = await self._store.redeem(
                key, client.client_id, now, [access.record, id_token.record], [event], None
            )
        except AssertionReplayed:
            raise assertion_replayed(client.client_id) from None
        if final.replay:
            revoked = await self._store.revoke_issued(key, client.client_id)
            self._on_revoked([t.status_list for t in revoked])
        if not final.redeem:
            assert final.error is not None
            raise final.error
        body: dict[str, object] = {
            "access_token": access.value,
            "token_type": "DPoP" if request.dpop_jkt else "Bearer",
            "expires_in": lifetime,
            "id_token": id_token.value,
        }
        if scope:
            body["scope"] = " ".join(scope)
        if rec.grant.get("authorization_details"):
            body["authorization_details"] = rec.grant["authorization_details"]
        return TokenResponse(body)
