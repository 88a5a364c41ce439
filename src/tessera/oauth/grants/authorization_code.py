"""The authorization code grant (RFC 6749 §4.1.3) with PKCE (RFC 7636 §4.5-4.6), and the refresh token
grant (RFC 6749 §6) with rotation (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).

Tokens are the person's, used by the agent: access token ``sub`` = the person and ``act`` =
``{"sub": <client_id>}`` (RFC 8693 §4.1), as the CIBA grant mints them; ``aud`` = the RFC 8707
resource the person consented to.

Code checks, in order, none of which changes state except the replay: unknown → issued to another
client → already used (the replay revokes what the first use issued, RFC 6749 §4.1.2) → expired →
redirect_uri differs (§4.1.3) → the PKCE verifier does not match (RFC 7636 §4.6) → the consent was
revoked → the person was disabled → the flows in force. Then one conditional update consumes the code.

Refresh checks: unknown → another client's → revoked → already rotated (reuse: the whole family is
revoked) → expired → consent revoked → narrower scope/resource only (RFC 6749 §6, RFC 8707 §2.2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from tessera.audit import AuditEvent
from tessera.oauth.authcode import (
    AUTHORIZATION_CODE,
    REFRESH_FAMILY_TTL,
    REFRESH_TOKEN,
    REFRESH_TTL,
    AuthCodeStore,
    RefreshRecord,
    digest,
    new_secret,
    pkce_matches,
    valid_verifier,
)
from tessera.oauth.client_auth import AuthenticatedClient
from tessera.oauth.clients import Client, parse_scope
from tessera.oauth.errors import InvalidClient, InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget
from tessera.oauth.forms import Form
from tessera.oauth.grants import TokenRequest, TokenResponse
from tessera.oauth.keys import KeyRing
from tessera.oauth.policy import IssuanceContext, IssuancePolicy, apply_limits
from tessera.oauth.status_entries import StatusAllocator
from tessera.oauth.tokens import IssuedToken, mint_access_token

__all__ = ["AuthorizationCodeGrant", "RefreshTokenGrant"]

_UNKNOWN = "the code is unknown, expired, used or was issued to another client"
_UNKNOWN_RT = "the refresh token is unknown, expired, revoked or was issued to another client"


class _Minter:
    def __init__(
        self,
        *,
        issuer: str,
        keys: Callable[[], KeyRing],
        signing_alg: str,
        store: AuthCodeStore,
        now: Callable[[], float],
        max_lifetime: int,
        status_allocator: StatusAllocator | None = None,
        status_min_lifetime: int = 0,
        on_revoked: Callable[[list[int | None]], None] = lambda _: None,
        person_refusal: Callable[[str], Awaitable[str | None]] | None = None,
        policy: IssuancePolicy | None = None,
    ) -> None:
        self._issuer = issuer
        self._keys = keys
        self._alg = signing_alg
        self._store = store
        self._now = now
        self._max_lifetime = max_lifetime
        self._statuses = status_allocator
        self._status_min_lifetime = status_min_lifetime
        self._on_revoked = on_revoked
        self._person_refusal = person_refusal
        self._policy = policy

    @staticmethod
    def _client(request: TokenRequest) -> AuthenticatedClient:
        # RFC 6749 §4.1.3: a public client sends its client_id; a confidential one authenticates.
        if request.client is None:
            raise InvalidClient("client_id is required (RFC 6749 §4.1.3)")
        return request.client

    def _revoked(self, tokens: list[IssuedToken]) -> None:
        self._on_revoked([t.status_list for t in tokens])

    async def _mint(
        self,
        request: TokenRequest,
        client: Client,
        person_id: str,
        scope: list[str],
        audience: list[str],
        acr: str,
        auth_time: int,
        grant: str,
    ) -> tuple[object, list[str], list[str], int]:
        if self._person_refusal is not None:
            why = await self._person_refusal(person_id)
            if why is not None:
                raise InvalidGrant(f"the grant no longer holds: {why}", client_id=client.client_id)
        lifetime = min(self._max_lifetime, client.token_lifetime_cap or self._max_lifetime)
        if self._policy is not None and self._policy.applies(grant, client.metadata):
            limits = await self._policy.check(
                IssuanceContext(
                    grant, client.client_id, client.metadata, scope, audience, lifetime, person_id, person=person_id
                )
            )
            scope, audience, lifetime = apply_limits(scope, audience, lifetime, limits)
        status = None
        if self._statuses is not None and lifetime >= self._status_min_lifetime:
            status = await self._statuses.allocate()
        extra: dict[str, object] = {"act": {"sub": client.client_id}, "acr": acr, "auth_time": auth_time}
        if request.dpop_jkt:
            extra["cnf"] = {"jkt": request.dpop_jkt}
        access = mint_access_token(
            key=self._keys().signer(self._alg),
            issuer=self._issuer,
            client_id=client.client_id,
            sub=person_id,
            aud=audience,
            scope=scope,
            now=int(self._now()),
            lifetime=lifetime,
            grant_type=grant,
            status=status,
            extra=extra,
        )
        return access, scope, audience, lifetime

    def _body(self, request: TokenRequest, access: object, scope: list[str], lifetime: int) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": access.value,  # type: ignore[attr-defined]
            "token_type": "DPoP" if request.dpop_jkt else "Bearer",
            "expires_in": lifetime,
        }
        if scope:
            body["scope"] = " ".join(scope)
        return body

    def _event(
        self, grant: str, client: str, person: str, access: object, audience: list[str], method: str, **data: object
    ) -> AuditEvent:
        record = access.record  # type: ignore[attr-defined]
        return AuditEvent(
            "token.issued",
            actor=client,
            subject=person,
            data={
                "grant_type": grant,
                "jti": record.jti,
                "aud": audience,
                "scope": record.scope,
                "kid": record.kid,
                "exp": record.exp,
                "auth_method": method,
                "act": client,
                **data,
            },
        )


class AuthorizationCodeGrant(_Minter):
    grant_type: ClassVar[str] = AUTHORIZATION_CODE
    #: public clients (token_endpoint_auth_method none) identify themselves with client_id alone
    requires_authentication: ClassVar[bool] = False

    def check_request(self, form: Form) -> None:
        code = form.get("code")
        if not code:
            raise InvalidRequest("code is required (RFC 6749 §4.1.3)")
        verifier = form.get("code_verifier")
        if not verifier:
            raise InvalidRequest("code_verifier is required: this server requires PKCE (RFC 7636 §4.5)")
        if not valid_verifier(verifier):
            raise InvalidRequest("code_verifier must be 43 to 128 unreserved characters (RFC 7636 §4.1)")
        if len(code) > 256:
            raise InvalidGrant(_UNKNOWN)

    async def respond(self, request: TokenRequest) -> TokenResponse:
        authn = self._client(request)
        client = authn.client
        form = request.form
        key = digest(form["code"])
        now = int(self._now())
        rec = await self._store.get_code(key)
        if rec is None or rec.client_id != client.client_id:
            raise InvalidGrant(_UNKNOWN, client_id=client.client_id)
        if rec.used_at is not None:
            # RFC 6749 §4.1.2: "If an authorization code is used more than once, the authorization
            # server MUST deny the request and SHOULD revoke (when possible) all tokens previously issued."
            self._revoked(await self._store.revoke_code_family(key, client.client_id, now))
            raise InvalidGrant(_UNKNOWN, client_id=client.client_id)
        if now >= rec.expires_at:
            raise InvalidGrant(_UNKNOWN, client_id=client.client_id)
        sent = form.get("redirect_uri")
        if (rec.redirect_uri_sent and sent != rec.redirect_uri) or (sent is not None and sent != rec.redirect_uri):
            raise InvalidGrant("redirect_uri differs from the authorization request's (RFC 6749 §4.1.3)")
        if not pkce_matches(form["code_verifier"], rec.code_challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge (RFC 7636 §4.6)")
        if not await self._store.grant_live(rec.grant_id):
            raise InvalidGrant("the person's consent was revoked", client_id=client.client_id)
        audience = list(rec.resource)
        resources = form.getlist("resource")
        if resources:
            # RFC 8707 §2.2: the token request may name the resource again (the MCP SDK does); only
            # resources the person consented to, in the authorization request, may be named.
            if any(r not in rec.resource for r in resources):
                raise InvalidTarget("resource was not in the authorization request (RFC 8707 §2.2)")
            audience = list(dict.fromkeys(resources))
        access, scope, audience, lifetime = await self._mint(
            request, client, rec.person_id, list(rec.scope), audience, rec.acr, rec.auth_time, self.grant_type
        )
        refresh_value = None
        refresh = None
        if REFRESH_TOKEN in client.grant_types:
            refresh_value = new_secret()
            refresh = RefreshRecord(
                token_hash=digest(refresh_value),
                family_id=new_secret()[:32],
                grant_id=rec.grant_id,
                client_id=client.client_id,
                person_id=rec.person_id,
                scope=list(rec.scope),
                resource=list(rec.resource),
                acr=rec.acr,
                auth_time=rec.auth_time,
                created_at=now,
                expires_at=now + REFRESH_TTL,
                family_expires_at=now + REFRESH_FAMILY_TTL,
                access_jti=access.record.jti,  # type: ignore[attr-defined]
            )
        event = self._event(
            self.grant_type, client.client_id, rec.person_id, access, audience, authn.method, grant_id=rec.grant_id
        )
        if not await self._store.redeem_code(key, now, [access.record], refresh, [event]):  # type: ignore[attr-defined]
            # Lost the race to a parallel redemption (or the consent was revoked meanwhile): a replay.
            self._revoked(await self._store.revoke_code_family(key, client.client_id, now))
            raise InvalidGrant(_UNKNOWN, client_id=client.client_id)
        body = self._body(request, access, scope, lifetime)
        if refresh_value is not None:
            body["refresh_token"] = refresh_value
        return TokenResponse(body)


class RefreshTokenGrant(_Minter):
    grant_type: ClassVar[str] = REFRESH_TOKEN
    requires_authentication: ClassVar[bool] = False

    def check_request(self, form: Form) -> None:
        value = form.get("refresh_token")
        if not value:
            raise InvalidRequest("refresh_token is required (RFC 6749 §6)")
        if len(value) > 256:
            raise InvalidGrant(_UNKNOWN_RT)

    async def respond(self, request: TokenRequest) -> TokenResponse:
        authn = self._client(request)
        client = authn.client
        form = request.form
        key = digest(form["refresh_token"])
        now = int(self._now())
        rec = await self._store.get_refresh(key)
        # OAuth 2.1 §4.3.1 / RFC 6749 §10.4: bound to the client it was issued to.
        if rec is None or rec.client_id != client.client_id or rec.revoked_at is not None:
            raise InvalidGrant(_UNKNOWN_RT, client_id=client.client_id)
        if rec.used_at is not None:
            # RFC 9700 §4.14.2: a rotated refresh token presented again — one of the two holders is an
            # attacker; the server cannot tell which, so the whole family is revoked.
            self._revoked(await self._store.revoke_family(rec.family_id, client.client_id, now, "refresh_reuse"))
            raise InvalidGrant(_UNKNOWN_RT, client_id=client.client_id)
        if now >= rec.expires_at or now >= rec.family_expires_at:
            raise InvalidGrant(_UNKNOWN_RT, client_id=client.client_id)
        if not await self._store.grant_live(rec.grant_id):
            raise InvalidGrant("the person's consent was revoked", client_id=client.client_id)
        scope = list(rec.scope)
        if form.get("scope") is not None:
            try:
                asked = parse_scope(form["scope"])
            except ValueError as e:
                raise InvalidScope(str(e), client_id=client.client_id) from None
            wider = [s for s in asked if s not in rec.scope]
            if wider:
                # RFC 6749 §6: "MUST NOT include any scope not originally granted by the resource owner".
                raise InvalidScope(f"scope was not granted: {' '.join(wider)[:200]}", client_id=client.client_id)
            scope = asked
        audience = list(rec.resource)
        resources = form.getlist("resource")
        if resources:
            if any(r not in rec.resource for r in resources):
                raise InvalidTarget("resource was not granted (RFC 8707 §2.2)", client_id=client.client_id)
            audience = list(dict.fromkeys(resources))
        access, scope, audience, lifetime = await self._mint(
            request, client, rec.person_id, scope, audience, rec.acr, rec.auth_time, self.grant_type
        )
        value = new_secret()
        new = RefreshRecord(
            token_hash=digest(value),
            family_id=rec.family_id,
            grant_id=rec.grant_id,
            client_id=client.client_id,
            person_id=rec.person_id,
            scope=list(rec.scope),  # the grant's scope: a narrower access token does not narrow the family
            resource=list(rec.resource),
            acr=rec.acr,
            auth_time=rec.auth_time,
            created_at=now,
            expires_at=min(now + REFRESH_TTL, rec.family_expires_at),
            family_expires_at=rec.family_expires_at,
            access_jti=access.record.jti,  # type: ignore[attr-defined]
        )
        event = self._event(
            self.grant_type, client.client_id, rec.person_id, access, audience, authn.method, grant_id=rec.grant_id
        )
        if not await self._store.rotate_refresh(key, now, [access.record], new, [event]):  # type: ignore[attr-defined]
            self._revoked(await self._store.revoke_family(rec.family_id, client.client_id, now, "refresh_reuse"))
            raise InvalidGrant(_UNKNOWN_RT, client_id=client.client_id)
        body = self._body(request, access, scope, lifetime)
        body["refresh_token"] = value
        return TokenResponse(body)
