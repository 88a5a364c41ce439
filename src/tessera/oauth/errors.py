"""One exception class per RFC / OpenID error code.

The core raises these; ``tessera.http`` renders them (RFC 6749 §5.2 JSON body, status code and,
for ``invalid_client``, ``WWW-Authenticate``). ``description`` is safe to show to the client:
it never contains secrets or the submitted credential.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AccessDenied",
    "AuthorizationPending",
    "ExpiredLoginHintToken",
    "ExpiredToken",
    "InvalidAuthorizationDetails",
    "InvalidBindingMessage",
    "InvalidClient",
    "InvalidClientMetadata",
    "InvalidDPoPProof",
    "InvalidGrant",
    "InvalidRedirectUri",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "InvalidToken",
    "InvalidUserCode",
    "MissingUserCode",
    "OAuthError",
    "SlowDown",
    "TemporarilyUnavailable",
    "UnauthorizedClient",
    "UnknownUserId",
    "UnsupportedGrantType",
    "UseDPoPNonce",
]


class OAuthError(Exception):
    error: ClassVar[str] = "server_error"
    status_code: ClassVar[int] = 400

    def __init__(self, description: str = "", *, client_id: str | None = None) -> None:
        super().__init__(description or self.error)
        self.description = description
        self.client_id = client_id

    def body(self) -> dict[str, str]:
        out = {"error": self.error}
        if self.description:
            out["error_description"] = self.description
        return out


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2: missing, repeated or malformed parameter."""

    error = "invalid_request"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: client authentication failed. Rendered with 401 and WWW-Authenticate."""

    error = "invalid_client"
    status_code = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: the authenticated client may not use this grant type."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the requested resource is invalid, unknown or not allowed for this client."""

    error = "invalid_target"


class InvalidClientMetadata(OAuthError):
    """RFC 7591 §3.2.2."""

    error = "invalid_client_metadata"


class InvalidRedirectUri(OAuthError):
    """RFC 7591 §3.2.2."""

    error = "invalid_redirect_uri"


class InvalidToken(OAuthError):
    """RFC 6750 §3.1 / RFC 7592 §2: the registration access token (or bearer token) is not valid."""

    error = "invalid_token"
    status_code = 401


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status_code = 503


class InvalidDPoPProof(OAuthError):
    """RFC 9449 §5: "If the DPoP proof is invalid, the authorization server issues an error response per
    Section 5.2 of [RFC6749] with invalid_dpop_proof as the value of the error parameter"."""

    error = "invalid_dpop_proof"


class UseDPoPNonce(OAuthError):
    """RFC 9449 §8: the proof lacks a current server nonce. ``nonce`` is the one to use; the HTTP layer
    sends it in the ``DPoP-Nonce`` response header."""

    error = "use_dpop_nonce"

    def __init__(self, description: str = "", *, nonce: str, client_id: str | None = None) -> None:
        super().__init__(description, client_id=client_id)
        self.nonce = nonce


# -- OpenID CIBA Core 1.0 §13 (authentication request errors) and §11 (token errors) ---------------------
class AccessDenied(OAuthError):
    """CIBA §13: 403 at the backchannel endpoint; §11: 400 at the token endpoint (the person denied)."""

    error = "access_denied"


class ExpiredLoginHintToken(OAuthError):
    error = "expired_login_hint_token"


class UnknownUserId(OAuthError):
    error = "unknown_user_id"


class MissingUserCode(OAuthError):
    error = "missing_user_code"


class InvalidUserCode(OAuthError):
    error = "invalid_user_code"


class InvalidBindingMessage(OAuthError):
    error = "invalid_binding_message"


class InvalidAuthorizationDetails(OAuthError):
    """RFC 9396 §5."""

    error = "invalid_authorization_details"


class AuthorizationPending(OAuthError):
    error = "authorization_pending"


class SlowDown(OAuthError):
    """CIBA §11 / RFC 8628 §3.5: polling too fast; ``interval`` is the new minimum, in seconds."""

    error = "slow_down"

    def __init__(self, description: str = "", *, interval: int, client_id: str | None = None) -> None:
        super().__init__(description, client_id=client_id)
        self.interval = interval

    def body(self) -> dict[str, str]:
        out = super().body()
        out["interval"] = self.interval  # type: ignore[assignment]
        return out


class ExpiredToken(OAuthError):
    error = "expired_token"
