"""Authorization server metadata — RFC 8414, served at both well-known paths.

Only what this server really supports is listed; each capability that lands adds itself:
RFC 8414 §2 names ``revocation_endpoint`` (RFC 7009) and ``introspection_endpoint`` (RFC 7662) with
their ``*_auth_methods_supported`` and ``*_auth_signing_alg_values_supported``;
draft-ietf-oauth-status-list §9.1 and §14: "it is RECOMMENDED to use the
``status_list_aggregation_endpoint`` parameter" for the list of all status list URIs;
RFC 9449 §5.1 ``dpop_signing_alg_values_supported`` signals DPoP support at the token endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tessera.oauth.ciba import ACR_VALUES, CIBA_GRANT
from tessera.oauth.clients import ASSERTION_ALGS
from tessera.oauth.dpop import DPOP_SIGNING_ALGS

__all__ = ["AUTH_METHODS_SUPPORTED", "metadata"]

AUTH_METHODS_SUPPORTED = ("private_key_jwt", "client_secret_basic", "client_secret_post")


def metadata(
    *,
    issuer: str,
    grant_types: Sequence[str],
    signing_algs: Sequence[str],
    registration: bool,
    authorization_details_types: Sequence[str] = (),
) -> dict[str, Any]:
    md: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": issuer + "/oauth/token",
        "authorization_endpoint": issuer + "/oauth/authorize",
        "jwks_uri": issuer + "/oauth/jwks",
        "grant_types_supported": list(grant_types),
        # RFC 8414 §2 makes response_types_supported REQUIRED; no redirect-based grant is offered yet.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS_SUPPORTED),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "access_token_signing_alg_values_supported": list(signing_algs),
        "revocation_endpoint": issuer + "/oauth/revoke",
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS_SUPPORTED),
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "introspection_endpoint": issuer + "/oauth/introspect",
        "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS_SUPPORTED),
        "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "status_list_aggregation_endpoint": issuer + "/oauth/status",
        "dpop_signing_alg_values_supported": list(DPOP_SIGNING_ALGS),
    }
    if registration:
        md["registration_endpoint"] = issuer + "/oauth/register"
    if CIBA_GRANT in grant_types:
        # OpenID CIBA Core 1.0 §4; push is not offered (FAPI-CIBA §5.2.2), nor "none" for signed requests.
        md["backchannel_authentication_endpoint"] = issuer + "/oauth/bc-authorize"
        md["backchannel_token_delivery_modes_supported"] = ["poll", "ping"]
        md["backchannel_authentication_request_signing_alg_values_supported"] = list(ASSERTION_ALGS)
        md["backchannel_user_code_parameter_supported"] = True
        md["scopes_supported"] = ["openid"]
        md["subject_types_supported"] = ["public"]
        md["id_token_signing_alg_values_supported"] = list(signing_algs)
        md["acr_values_supported"] = list(ACR_VALUES)
        md["claims_supported"] = ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr"]
    if authorization_details_types:
        md["authorization_details_types_supported"] = list(authorization_details_types)
    return md
