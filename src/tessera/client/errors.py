"""The one error a token source raises: ``TokenError``, carrying the RFC 6749 §5.2 error response."""

from __future__ import annotations

__all__ = ["TokenError"]


class TokenError(Exception):
    """No access token could be obtained.

    ``error`` and ``error_description`` are the token endpoint's RFC 6749 §5.2 members
    (``invalid_client``, ``invalid_scope``, ``invalid_target``, …) when it answered with one. When
    it did not, ``error`` names what happened on this side instead:

    - ``unreachable``: the request failed in transport (connection refused, timeout, TLS);
    - ``invalid_response``: the answer was not an RFC 6749 §5.1 Bearer token response or §5.2 error;
    - ``discovery_failed``: RFC 8414 metadata could not be fetched or does not name this issuer;
    - ``credential_unavailable``: the credential could not be produced (an empty or missing
      assertion file, an unusable key).
    """

    def __init__(self, error: str, error_description: str | None = None, *, status_code: int | None = None) -> None:
        self.error = error
        self.error_description = error_description
        self.status_code = status_code
        super().__init__(f"{error}: {error_description}" if error_description else error)
