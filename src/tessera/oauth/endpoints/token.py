"""The token endpoint — RFC 6749 §3.2, §5.1 and §5.2.

Order of checks: grant_type present and registered (``unsupported_grant_type``) → client
authentication (``invalid_client``) → the client may use this grant (``unauthorized_client``) →
the grant's own checks. Every refusal after the body was parsed is an audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tessera.audit import AuditEvent
from tessera.oauth.client_auth import ClientAuthenticator
from tessera.oauth.errors import (
    InvalidClient,
    InvalidRequest,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from tessera.oauth.forms import Form
from tessera.oauth.grants import Grant, TokenRequest
from tessera.store.interfaces import AuditSink

__all__ = ["TokenEndpoint"]

log = logging.getLogger("tessera.token")


class TokenEndpoint:
    def __init__(self, grants: Sequence[Grant], authenticator: ClientAuthenticator, audit: AuditSink) -> None:
        self._grants = {g.grant_type: g for g in grants}
        if len(self._grants) != len(grants):
            raise ValueError("two grant handlers claim the same grant_type")
        self._authenticator = authenticator
        self._audit = audit

    @property
    def grant_types(self) -> list[str]:
        return list(self._grants)

    async def handle(self, headers: Mapping[str, str], form: Form) -> dict[str, Any]:
        client_id: str | None = None
        grant_type = form.get("grant_type")
        try:
            if not grant_type:
                raise InvalidRequest("grant_type is required")
            grant = self._grants.get(grant_type)
            if grant is None:
                raise UnsupportedGrantType(f"grant_type {grant_type[:80]!r} is not supported")
            authn = await self._authenticator.authenticate(headers, form)
            client_id = authn.client.client_id
            if grant.requires_authentication and authn.method == "none":
                raise InvalidClient("this grant requires client authentication", client_id=client_id)
            if grant_type not in authn.client.grant_types:
                raise UnauthorizedClient(f"the client is not registered for {grant_type}", client_id=client_id)
            response = await grant.respond(TokenRequest(form=form, client=authn, headers=dict(headers)))
        except OAuthError as e:
            await self._refused(e, grant_type, e.client_id or client_id)
            raise
        return response.body

    async def _refused(self, error: OAuthError, grant_type: str | None, client_id: str | None) -> None:
        event = AuditEvent(
            "token.refused",
            actor=client_id,
            subject=client_id,
            data={
                "grant_type": (grant_type or "")[:80],
                "error": error.error,
                "error_description": error.description[:200],
            },
        )
        try:
            await self._audit.audit(event)
        except Exception:  # the refusal stands even if it could not be logged
            log.exception("could not write the audit record of a refused token request")
