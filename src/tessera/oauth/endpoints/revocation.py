"""Token revocation — RFC 7009.

§2.1: the client authenticates as at the token endpoint (RFC 6749 §2.3) and sends ``token``
(REQUIRED) and ``token_type_hint`` (OPTIONAL). "An authorization server MAY ignore this parameter":
Tessera issues only access tokens and recognises them by their signature, so the hint is ignored,
whatever its value (§2.2: "An invalid token type hint value is ignored").

§2.1: the server "first validates the client credentials ... and then verifies whether the token was
issued to the client making the revocation request. If this validation fails, the request is refused
and the client is informed of the error". A token issued to another client is therefore refused with
``invalid_grant`` — the RFC 6749 §5.2 code whose definition covers a grant that "was issued to another
client" — and the refusal is an audit record; nothing is revoked.

§2.2: "The authorization server responds with HTTP status code 200 if the token has been revoked
successfully or if the client submitted an invalid token": a value that is not an access token this
server signed, one it does not know, or one already revoked or expired, is answered 200 and changes
nothing. A revoked token gets the Status Type INVALID: the next status list shows it.

Refresh tokens (authorization code grant, docs/authorization-code.md): §2 "Implementations MUST
support the revocation of refresh tokens". A refresh token revokes its whole family — the live refresh
token and the access tokens issued with it (§2.1: "If the token passed to the request is a refresh
token ... the authorization server SHOULD also invalidate all access tokens based on the same
authorization grant"). Public clients (``none``) may revoke their own tokens (§2.1, §5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from tessera.audit import AuditEvent
from tessera.oauth.authcode import AuthCodeStore, digest
from tessera.oauth.client_auth import ClientAuthenticator, assertion_replayed
from tessera.oauth.errors import InvalidGrant, InvalidRequest, OAuthError
from tessera.oauth.forms import Form
from tessera.oauth.keys import KeyRing
from tessera.oauth.revocation import TokenSelector
from tessera.oauth.tokens import IssuedToken, NotOurToken, read_access_token
from tessera.store.interfaces import AssertionRecorder, AssertionReplayed, AuditSink, TokenReader, TokenRevoker

__all__ = ["RevocationEndpoint"]

log = logging.getLogger("tessera.revocation")


class RevocationEndpoint:
    def __init__(
        self,
        *,
        issuer: str,
        authenticator: ClientAuthenticator,
        keys: Callable[[], KeyRing],
        tokens: TokenReader,
        revoker: TokenRevoker,
        assertions: AssertionRecorder,
        audit: AuditSink,
        refresh: AuthCodeStore | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._refresh = refresh
        self._now = now
        self._issuer = issuer
        self._authenticator = authenticator
        self._keys = keys
        self._tokens = tokens
        self._revoker = revoker
        self._assertions = assertions
        self._audit = audit

    async def handle(self, headers: Mapping[str, str], form: Form) -> list[IssuedToken]:
        """Revoke the token if it is the caller's; returns what was revoked (empty: nothing to do)."""
        client_id: str | None = None
        try:
            if self._refresh is not None:
                authn = await self._authenticator.authenticate(headers, form)
            else:
                authn = await self._authenticator.authenticate_confidential(headers, form)
            client_id = authn.client.client_id
            value = form.get("token")
            if not value:
                raise InvalidRequest("token is required (RFC 7009 §2.1)")
            record = await self._find(value)
            if record is None and self._refresh is not None and len(value) <= 256:
                rt = await self._refresh.get_refresh(digest(value))
                if rt is not None:
                    if rt.client_id != client_id:
                        raise InvalidGrant(
                            "the token was issued to another client (RFC 7009 §2.1)", client_id=client_id
                        )
                    if authn.assertion is not None:
                        await self._assertions.consume_assertion(authn.assertion)
                    return await self._refresh.revoke_family(rt.family_id, client_id, int(self._now()), "rfc7009")
            if record is not None and record.client_id != client_id:
                raise InvalidGrant("the token was issued to another client (RFC 7009 §2.1)", client_id=client_id)
            try:
                if record is None:
                    if authn.assertion is not None:
                        await self._assertions.consume_assertion(authn.assertion)
                    return []
                return await self._revoker.revoke(
                    TokenSelector(jti=record.jti), actor=client_id, via="rfc7009", assertion=authn.assertion
                )
            except AssertionReplayed:
                raise assertion_replayed(client_id) from None
        except OAuthError as e:
            await self._refused(e, e.client_id or client_id)
            raise

    async def _find(self, value: str) -> IssuedToken | None:
        try:
            claims = read_access_token(value, self._keys(), self._issuer)
        except NotOurToken:
            return None
        return await self._tokens.find_token(claims["jti"])

    async def _refused(self, error: OAuthError, client_id: str | None) -> None:
        event = AuditEvent(
            "token.revocation_refused",
            actor=client_id,
            subject=client_id,
            data={"error": error.error, "error_description": error.description[:200]},
        )
        try:
            await self._audit.audit(event)
        except Exception:  # the refusal stands even if it could not be logged
            log.exception("could not write the audit record of a refused revocation request")
