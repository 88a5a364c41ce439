"""The token endpoint — RFC 6749 §3.2, §5.1 and §5.2.

Order of checks: grant_type present and registered (``unsupported_grant_type``) → client
authentication (``invalid_client``) → the grant's parameters are present and well-formed
(``invalid_request``) → the client may use this grant (``unauthorized_client``) → the DPoP proof,
if any (``invalid_dpop_proof``, ``use_dpop_nonce``; RFC 9449 §5, §8) → the grant's own checks.
Grants whose own credential suffices (token exchange, JWT bearer) may be called anonymously; a
caller that presents client credentials is still authenticated. Every refusal after the body was
parsed is an audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tessera.audit import AuditEvent
from tessera.oauth.client_auth import AuthenticatedClient, ClientAuthenticator
from tessera.oauth.dpop import DPoPChecker
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


def _has_client_credentials(headers: Mapping[str, str], form: Form) -> bool:
    """Whether the caller identified itself as a client at all (RFC 8693 §2.1 and RFC 7523 §2.1 let
    the grant itself be the only credential: such callers are anonymous)."""
    return (
        "authorization" in headers
        or "client_id" in form
        or "client_secret" in form
        or "client_assertion" in form
        or "client_assertion_type" in form
    )


class TokenEndpoint:
    def __init__(
        self,
        grants: Sequence[Grant],
        authenticator: ClientAuthenticator,
        audit: AuditSink,
        *,
        dpop: DPoPChecker | None = None,
    ) -> None:
        self._grants = {g.grant_type: g for g in grants}
        if len(self._grants) != len(grants):
            raise ValueError("two grant handlers claim the same grant_type")
        self._authenticator = authenticator
        self._audit = audit
        self._dpop = dpop

    @property
    def grant_types(self) -> list[str]:
        return list(self._grants)

    def dpop_nonce(self) -> str | None:
        """A fresh DPoP nonce for the ``DPoP-Nonce`` response header, when server nonces are on (RFC 9449 §8)."""
        return self._dpop.new_nonce() if self._dpop is not None else None

    async def handle(self, headers: Mapping[str, str], form: Form, source_ip: str | None = None) -> dict[str, Any]:
        client_id: str | None = None
        grant_type = form.get("grant_type")
        try:
            if not grant_type:
                raise InvalidRequest("grant_type is required")
            grant = self._grants.get(grant_type)
            if grant is None:
                raise UnsupportedGrantType(f"grant_type {grant_type[:80]!r} is not supported")
            authn: AuthenticatedClient | None = None
            if grant.requires_authentication or _has_client_credentials(headers, form):
                authn = await self._authenticator.authenticate(headers, form)
                client_id = authn.client.client_id
                if grant.requires_authentication and authn.method == "none":
                    raise InvalidClient("this grant requires client authentication", client_id=client_id)
            grant.check_request(form)
            if authn is not None and grant_type not in authn.client.grant_types:
                raise UnauthorizedClient(f"the client is not registered for {grant_type}", client_id=client_id)
            # RFC 9449 §5: a token request with a DPoP proof gets a token bound to the proof's key.
            proof = headers.get("dpop")
            dpop_jkt = None
            if proof is not None and self._dpop is not None:
                dpop_jkt = await self._dpop.check(proof, client_id=client_id)
            response = await grant.respond(
                TokenRequest(form=form, client=authn, headers=dict(headers), dpop_jkt=dpop_jkt, source_ip=source_ip)
            )
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
