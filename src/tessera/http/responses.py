"""Rendering core values and core errors as HTTP responses."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from tessera.oauth.errors import InvalidClient, InvalidToken, OAuthError

__all__ = ["NO_STORE", "json_response", "oauth_error"]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, headers=headers, media_type="application/json"
    )


def oauth_error(error: OAuthError, realm: str) -> Response:
    """RFC 6749 §5.2 error response. ``invalid_client`` is 401 with ``WWW-Authenticate`` (§5.2: MUST
    when the client used the Authorization header; sent always so every client learns the scheme);
    RFC 6750 §3 for bearer-protected endpoints."""
    headers = dict(NO_STORE)
    if isinstance(error, InvalidClient):
        headers["WWW-Authenticate"] = f'Basic realm="{realm}"'
    elif isinstance(error, InvalidToken):
        desc = error.description.replace('"', "'")
        headers["WWW-Authenticate"] = f'Bearer realm="{realm}", error="invalid_token", error_description="{desc}"'
    return json_response(error.body(), error.status_code, headers)
