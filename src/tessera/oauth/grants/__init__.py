"""Grant handlers: one module per grant type, each naming its RFC. Registered in ``server.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from tessera.oauth.client_auth import AuthenticatedClient
from tessera.oauth.forms import Form

__all__ = ["Grant", "TokenRequest", "TokenResponse"]


@dataclass(frozen=True)
class TokenRequest:
    form: Form
    #: None for an anonymous caller of a grant that does not require client authentication
    client: AuthenticatedClient | None
    headers: dict[str, str] = field(default_factory=dict)
    #: RFC 9449: the JWK thumbprint of a verified DPoP proof; the token is bound to it (``cnf.jkt``).
    dpop_jkt: str | None = None
    #: the caller's address as the server saw it (uvicorn applies --forwarded-allow-ips), for the flows
    source_ip: str | None = None


@dataclass(frozen=True)
class TokenResponse:
    body: dict[str, Any]
    audit: dict[str, Any] = field(default_factory=dict)


class Grant(Protocol):
    grant_type: ClassVar[str]
    #: RFC 6749 §4.4 and friends: the grant is only for clients that authenticated.
    requires_authentication: ClassVar[bool]

    def check_request(self, form: Form) -> None:
        """The grant's own parameters are present and well-formed (``invalid_request`` otherwise).
        Called by the token endpoint after client authentication and before it decides whether the
        client may use the grant: a malformed request is reported as such (RFC 6749 §5.2)."""
        ...

    async def respond(self, request: TokenRequest) -> TokenResponse:
        """Called only after ``check_request`` passed."""
        ...
