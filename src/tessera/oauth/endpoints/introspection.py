"""Token introspection — RFC 7662.

§2.1: "the endpoint MUST also require some form of authorization": the caller authenticates as a
client exactly as at the token endpoint; ``token`` is REQUIRED; ``token_type_hint`` is ignored (only
access tokens exist here; "If the server is unable to locate the token using the given hint, it MUST
extend its search across all of its supported token types").

§2.2: ``active`` is true only for a token "issued by this authorization server", not revoked and
"within its given time window of validity". A value that is not an access token signed by this server
with a key it still publishes, an unknown, expired or revoked token: ``{"active": false}`` and nothing
else ("SHOULD NOT include any additional information about an inactive token"). An active token's
response carries the §2.2 members ``scope``, ``client_id``, ``token_type``, ``exp``, ``iat``, ``sub``,
``aud``, ``iss``, ``jti``, from the stored record.

Who may introspect what (§4: the server "MAY restrict which protected resources may introspect which
tokens"): any authenticated client may introspect any token it presents. Holding a JWT access token
already reveals its claims, and its revocation state is public in its status list; introspection adds
nothing a token holder cannot learn, while restricting it would shut out the resource servers it is for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tessera.oauth.client_auth import ClientAuthenticator, assertion_replayed
from tessera.oauth.errors import InvalidRequest
from tessera.oauth.forms import Form
from tessera.oauth.keys import KeyRing
from tessera.oauth.status_list import VALID
from tessera.oauth.tokens import NotOurToken, read_access_token
from tessera.store.interfaces import AssertionRecorder, AssertionReplayed, TokenReader

__all__ = ["IntrospectionEndpoint"]

INACTIVE: dict[str, Any] = {"active": False}


class IntrospectionEndpoint:
    def __init__(
        self,
        *,
        issuer: str,
        authenticator: ClientAuthenticator,
        keys: Callable[[], KeyRing],
        tokens: TokenReader,
        assertions: AssertionRecorder,
        now: Callable[[], float],
    ) -> None:
        self._issuer = issuer
        self._authenticator = authenticator
        self._keys = keys
        self._tokens = tokens
        self._assertions = assertions
        self._now = now

    async def handle(self, headers: Mapping[str, str], form: Form) -> dict[str, Any]:
        authn = await self._authenticator.authenticate_confidential(headers, form)
        value = form.get("token")
        if not value:
            raise InvalidRequest("token is required (RFC 7662 §2.1)")
        if authn.assertion is not None:
            try:
                await self._assertions.consume_assertion(authn.assertion)
            except AssertionReplayed:
                raise assertion_replayed(authn.client.client_id) from None
        try:
            claims = read_access_token(value, self._keys(), self._issuer)
        except NotOurToken:
            return dict(INACTIVE)
        record = await self._tokens.find_token(claims["jti"])
        now = int(self._now())
        if record is None or record.revoked_at is not None or record.status != VALID or now >= record.exp:
            return dict(INACTIVE)
        body: dict[str, Any] = {
            "active": True,
            "client_id": record.client_id,
            "token_type": "Bearer",
            "exp": record.exp,
            "iat": record.iat,
            "sub": record.sub,
            "aud": record.aud[0] if len(record.aud) == 1 else list(record.aud),
            "iss": self._issuer,
            "jti": record.jti,
        }
        if record.scope:
            body["scope"] = record.scope
        # What the token itself says about who and how: RFC 8693 §4.1 act (delegation), RFC 9396 §9.2
        # authorization_details, OpenID Connect acr/auth_time (CIBA, approvals), RFC 9449 §6.2 cnf.
        for name in ("act", "authorization_details", "acr", "auth_time", "cnf"):
            if name in claims:
                body[name] = claims[name]
        if isinstance(claims.get("cnf"), dict) and "jkt" in claims["cnf"]:
            body["token_type"] = "DPoP"  # RFC 9449 §6.2
        return body
