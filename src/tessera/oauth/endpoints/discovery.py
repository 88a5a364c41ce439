"""Authorization server metadata — RFC 8414, served at both well-known paths.

Only what this server really supports is listed; each capability that lands adds itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tessera.oauth.clients import ASSERTION_ALGS

__all__ = ["metadata"]


def metadata(
    *, issuer: str, grant_types: Sequence[str], signing_algs: Sequence[str], registration: bool
) -> dict[str, Any]:
    md: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": issuer + "/oauth/token",
        "jwks_uri": issuer + "/oauth/jwks",
        "grant_types_supported": list(grant_types),
        # RFC 8414 §2 makes response_types_supported REQUIRED; no redirect-based grant is offered yet.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "access_token_signing_alg_values_supported": list(signing_algs),
    }
    if registration:
        md["registration_endpoint"] = issuer + "/oauth/register"
    return md
