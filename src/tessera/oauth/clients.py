"""The client registry's model: RFC 7591 client metadata, validated once, used everywhere.

Tessera extensions to the RFC 7591 vocabulary (registered by name, documented in
``docs/clients.md``):

- ``allowed_resources``: absolute URIs (RFC 8707 resource indicators) the client may ask tokens for.
- ``default_resource``: the audience of tokens requested without ``resource``.
- ``access_token_lifetime``: the client's own cap on access token lifetime (seconds).
- ``may_delegate`` / ``may_impersonate``: in RFC 8693 token exchange, the client may act for another
  subject (the token records it in ``act``) / may obtain a token for another subject without ``act``.
- ``federated_credentials``: ``[{issuer, subject, audience}]``; the client authenticates with that
  trusted issuer's token as its ``client_assertion`` (no secret or key of its own).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from tessera.oauth.errors import InvalidClientMetadata, InvalidRedirectUri

__all__ = [
    "AUTH_METHODS",
    "CONFIDENTIAL_METHODS",
    "Client",
    "ClientPolicy",
    "check_resource_uri",
    "generate_client_id",
    "generate_secret",
    "hash_secret",
    "new_client",
    "parse_scope",
    "secret_matches",
    "validate_metadata",
]

AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post", "none")
CONFIDENTIAL_METHODS = frozenset({"private_key_jwt", "client_secret_basic", "client_secret_post"})
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
ASSERTION_ALGS = ("ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "EdDSA")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")
_STRING_FIELDS = ("client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri", "software_id", "software_version")
MAX_STRING = 1024
MAX_SCOPES = 100
MAX_JWKS_KEYS = 10
MAX_RESOURCES = 50


def generate_client_id() -> str:
    """128 random bits, base64url; never starting with '-', which command lines would read as an option."""
    while True:
        client_id = secrets.token_urlsafe(16)
        if not client_id.startswith("-"):
            return client_id


def generate_secret() -> str:
    """A 256-bit client secret. High entropy is why a plain SHA-256 is the right hash at rest."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    if not stored_hash:
        return False
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def parse_scope(value: str) -> list[str]:
    """RFC 6749 §3.3: space-delimited, case-sensitive scope tokens; order kept, duplicates dropped."""
    if value == "":
        return []  # no scope (a client registered without one, updated through RFC 7592)
    tokens = value.split(" ")
    if any(t == "" for t in tokens) and value != "":
        # leading, trailing or doubled spaces: tolerate by ignoring empties, but validate the rest
        tokens = [t for t in tokens if t]
    out: list[str] = []
    for t in tokens:
        if not _SCOPE_TOKEN.match(t):
            raise ValueError(f"scope token {t[:40]!r} has characters outside RFC 6749 §3.3 NQCHAR")
        if t not in out:
            out.append(t)
    return out


def check_resource_uri(uri: str) -> str | None:
    """RFC 8707 §2: an absolute URI without a fragment. Returns the reason it is not, or None."""
    if not isinstance(uri, str) or not uri or len(uri) > 2048:
        return "must be a non-empty string"
    parts = urlsplit(uri)
    if not parts.scheme:
        return "must be an absolute URI"
    if "#" in uri:
        return "must not contain a fragment"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "must not contain spaces or control characters"
    return None


@dataclass(frozen=True)
class ClientPolicy:
    """What the server allows clients to register (from settings and the registered grants)."""

    grant_types: tuple[str, ...]
    max_token_lifetime: int
    allow_http_loopback_jwks_uri: bool = True


@dataclass(frozen=True)
class Client:
    client_id: str
    metadata: dict[str, Any]
    secret_hash: str | None = None
    source: str = "registration"
    created_at: int = 0
    updated_at: int = 0
    registration_token_hash: str | None = None
    _scopes: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        scope = self.metadata.get("scope", "")
        object.__setattr__(self, "_scopes", frozenset(parse_scope(scope)) if scope else frozenset())

    @functools.cached_property
    def jwks_digest(self) -> str:
        """SHA-256 of the registered JWK Set's canonical JSON: what key caches are keyed on."""
        jwks = self.metadata.get("jwks")
        return hashlib.sha256(orjson.dumps(jwks, option=orjson.OPT_SORT_KEYS)).hexdigest() if jwks else ""

    @property
    def auth_method(self) -> str:
        return str(self.metadata.get("token_endpoint_auth_method", "client_secret_basic"))

    @property
    def grant_types(self) -> list[str]:
        return list(self.metadata.get("grant_types", ["client_credentials"]))

    @property
    def scopes(self) -> frozenset[str]:
        return self._scopes

    @property
    def registered_scope(self) -> list[str]:
        scope = self.metadata.get("scope", "")
        return parse_scope(scope) if scope else []

    @property
    def allowed_resources(self) -> list[str]:
        return list(self.metadata.get("allowed_resources", []))

    @property
    def may_delegate(self) -> bool:
        return bool(self.metadata.get("may_delegate"))

    @property
    def may_impersonate(self) -> bool:
        return bool(self.metadata.get("may_impersonate"))

    @property
    def federated_credentials(self) -> list[dict[str, str]]:
        return list(self.metadata.get("federated_credentials", []))

    @property
    def default_resource(self) -> str | None:
        return self.metadata.get("default_resource")

    @property
    def token_lifetime_cap(self) -> int | None:
        v = self.metadata.get("access_token_lifetime")
        return int(v) if v is not None else None

    @property
    def is_confidential(self) -> bool:
        return self.auth_method in CONFIDENTIAL_METHODS

    def public_view(self) -> dict[str, Any]:
        """Metadata as returned by RFC 7591/7592 and the admin API: never a secret or its hash."""
        return {"client_id": self.client_id, **self.metadata, "client_id_issued_at": self.created_at}


def _bad(msg: str) -> InvalidClientMetadata:
    return InvalidClientMetadata(msg)


def _validate_jwks(jwks: Any) -> dict[str, Any]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise _bad("jwks must be a JWK Set: an object with a non-empty 'keys' array")
    keys = jwks["keys"]
    if len(keys) > MAX_JWKS_KEYS:
        raise _bad(f"jwks holds more than {MAX_JWKS_KEYS} keys")
    kids = []
    for k in keys:
        if not isinstance(k, dict) or k.get("kty") not in ("EC", "RSA", "OKP"):
            raise _bad("every key in jwks must be an EC, RSA or OKP public key")
        if {"d", "p", "q", "dp", "dq", "qi", "k", "oth"} & set(k):
            raise _bad("jwks must contain public keys only; a private key member was found")
        if "kid" in k:
            kids.append(k["kid"])
        if k.get("alg") is not None and k["alg"] not in ASSERTION_ALGS:
            raise _bad(f"jwks key alg {k['alg']!r} is not an accepted signing algorithm")
    if len(kids) != len(set(kids)):
        raise _bad("kid values in jwks must be unique")
    if len(keys) > 1 and len(kids) != len(keys):
        raise _bad("every key must have a kid when jwks holds more than one key")
    from tessera.oauth.client_auth import import_jwks  # local: keeps joserfc out of metadata-only imports

    try:
        import_jwks(jwks)
    except ValueError as e:
        raise _bad(f"jwks: {e}") from None
    return {"keys": keys}


def validate_metadata(raw: Any, policy: ClientPolicy) -> dict[str, Any]:
    """RFC 7591 §2 metadata → the normalized metadata Tessera stores. Unknown members are ignored
    (RFC 7591 §2: the server MUST ignore metadata it does not understand)."""
    if not isinstance(raw, dict):
        raise _bad("client metadata must be a JSON object")
    md: dict[str, Any] = {}

    grants = raw.get("grant_types", ["client_credentials"])
    if not isinstance(grants, list) or not grants or not all(isinstance(g, str) for g in grants):
        raise _bad("grant_types must be a non-empty array of strings")
    unknown = [g for g in grants if g not in policy.grant_types]
    if unknown:
        raise _bad(f"grant_types not supported by this server: {unknown}")
    md["grant_types"] = list(dict.fromkeys(grants))

    method = raw.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise _bad(f"token_endpoint_auth_method must be one of {list(AUTH_METHODS)}")
    _validate_redirects(raw, md)
    if method == "none" and "client_credentials" in md["grant_types"]:
        # RFC 6749 §4.4: the client credentials grant MUST only be used by confidential clients.
        raise _bad("token_endpoint_auth_method 'none' cannot be used with the client_credentials grant")
    md["token_endpoint_auth_method"] = method

    alg = raw.get("token_endpoint_auth_signing_alg")
    if alg is not None:
        if method != "private_key_jwt":
            raise _bad("token_endpoint_auth_signing_alg applies only to private_key_jwt")
        if alg not in ASSERTION_ALGS:
            raise _bad(f"token_endpoint_auth_signing_alg must be one of {list(ASSERTION_ALGS)}")
        md["token_endpoint_auth_signing_alg"] = alg

    has_jwks, has_uri = raw.get("jwks") is not None, raw.get("jwks_uri") is not None
    if has_jwks and has_uri:
        raise _bad("jwks and jwks_uri MUST NOT both be present (RFC 7591 §2)")
    federated = raw.get("federated_credentials")
    if federated is not None:
        if method != "private_key_jwt" or has_jwks or has_uri:
            raise _bad("federated_credentials replace keys: use private_key_jwt without jwks or jwks_uri")
        md["federated_credentials"] = _validate_federated(federated)
    elif method == "private_key_jwt" and not (has_jwks or has_uri):
        raise _bad("private_key_jwt requires jwks, jwks_uri or federated_credentials")
    if has_jwks:
        md["jwks"] = _validate_jwks(raw["jwks"])
    if has_uri:
        uri = raw["jwks_uri"]
        parts = urlsplit(uri) if isinstance(uri, str) else None
        from tessera.settings import is_loopback_host

        if (
            parts is None
            or not parts.hostname
            or parts.fragment
            or not (
                parts.scheme == "https"
                or (parts.scheme == "http" and policy.allow_http_loopback_jwks_uri and is_loopback_host(parts.hostname))
            )
        ):
            raise _bad("jwks_uri must be an https URL (http only for loopback hosts)")
        md["jwks_uri"] = uri

    scope = raw.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise _bad("scope must be a string of space-separated scope tokens")
        try:
            tokens = parse_scope(scope)
        except ValueError as e:
            raise _bad(str(e)) from None
        if len(tokens) > MAX_SCOPES:
            raise _bad(f"scope holds more than {MAX_SCOPES} tokens")
        md["scope"] = " ".join(tokens)

    for name in _STRING_FIELDS:
        if name in raw:
            v = raw[name]
            if not isinstance(v, str) or len(v) > MAX_STRING:
                raise _bad(f"{name} must be a string of at most {MAX_STRING} characters")
            md[name] = v
    if "contacts" in raw:
        c = raw["contacts"]
        if not isinstance(c, list) or len(c) > 20 or not all(isinstance(x, str) and len(x) <= 320 for x in c):
            raise _bad("contacts must be an array of at most 20 strings")
        md["contacts"] = c

    resources = raw.get("allowed_resources", [])
    if not isinstance(resources, list) or len(resources) > MAX_RESOURCES:
        raise _bad(f"allowed_resources must be an array of at most {MAX_RESOURCES} URIs")
    for r in resources:
        reason = check_resource_uri(r)
        if reason:
            raise _bad(f"allowed_resources: {str(r)[:80]!r} {reason}")
    if resources:
        md["allowed_resources"] = list(dict.fromkeys(resources))
    default = raw.get("default_resource")
    if default is not None:
        reason = check_resource_uri(default)
        if reason:
            raise _bad(f"default_resource {reason}")
        if default not in md.get("allowed_resources", []):
            raise _bad("default_resource must be one of allowed_resources")
        md["default_resource"] = default

    for flag in ("may_delegate", "may_impersonate"):
        if flag in raw:
            if not isinstance(raw[flag], bool):
                raise _bad(f"{flag} must be true or false")
            if raw[flag] and method == "none":
                raise _bad(f"{flag} needs a client that authenticates (not token_endpoint_auth_method none)")
            if raw[flag]:
                md[flag] = True

    lifetime = raw.get("access_token_lifetime")
    if lifetime is not None:
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int)
            or not (10 <= lifetime <= policy.max_token_lifetime)
        ):
            raise _bad(f"access_token_lifetime must be an integer from 10 to {policy.max_token_lifetime}")
        md["access_token_lifetime"] = lifetime
    _validate_ciba(raw, md, method, policy)
    return md


CIBA_GRANT = "urn:openid:params:grant-type:ciba"
CIBA_MODES = ("poll", "ping")


def _validate_ciba(raw: dict[str, Any], md: dict[str, Any], method: str, policy: ClientPolicy) -> None:
    """OpenID CIBA Core 1.0 §4 client metadata. Push mode is not offered (FAPI-CIBA §5.2.2 forbids it,
    and a token lost in a failed push cannot be recovered)."""
    names = (
        "backchannel_token_delivery_mode",
        "backchannel_client_notification_endpoint",
        "backchannel_authentication_request_signing_alg",
        "backchannel_user_code_parameter",
    )
    if CIBA_GRANT not in md["grant_types"]:
        present = [n for n in names if raw.get(n) is not None]
        if present:
            raise _bad(f"{present[0]} applies only to clients registered for the CIBA grant")
        return
    if method not in CONFIDENTIAL_METHODS:
        # CIBA §4: "This specification requires the Client to be a Confidential Client".
        raise _bad("the CIBA grant is for confidential clients only")
    mode = raw.get("backchannel_token_delivery_mode")
    if mode not in CIBA_MODES:
        # §4: backchannel_token_delivery_mode is REQUIRED; one of the modes the OP supports.
        raise _bad("backchannel_token_delivery_mode must be poll or ping (push is not offered)")
    md["backchannel_token_delivery_mode"] = mode
    endpoint = raw.get("backchannel_client_notification_endpoint")
    if mode == "ping" and endpoint is None:
        raise _bad("backchannel_client_notification_endpoint is REQUIRED for the ping mode (CIBA §4)")
    if endpoint is not None:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
        from tessera.settings import is_loopback_host

        if (
            parts is None
            or not parts.hostname
            or parts.fragment
            or parts.username
            or parts.password
            or len(endpoint) > 2048
            or not (
                parts.scheme == "https"
                or (parts.scheme == "http" and policy.allow_http_loopback_jwks_uri and is_loopback_host(parts.hostname))
            )
        ):
            # §4: "This URL MUST use the https scheme."
            raise _bad("backchannel_client_notification_endpoint must be an https URL without a fragment")
        md["backchannel_client_notification_endpoint"] = endpoint
    alg = raw.get("backchannel_authentication_request_signing_alg")
    if alg is not None:
        if alg not in ASSERTION_ALGS:  # never "none" (§4: the value none MUST NOT be used)
            raise _bad(f"backchannel_authentication_request_signing_alg must be one of {list(ASSERTION_ALGS)}")
        if "jwks" not in md and "jwks_uri" not in md:
            raise _bad("signed authentication requests need the client's keys (jwks or jwks_uri)")
        md["backchannel_authentication_request_signing_alg"] = alg
    user_code = raw.get("backchannel_user_code_parameter")
    if user_code is not None:
        if not isinstance(user_code, bool):
            raise _bad("backchannel_user_code_parameter must be true or false")
        if user_code:
            md["backchannel_user_code_parameter"] = True


def _validate_redirects(raw: dict[str, Any], md: dict[str, Any]) -> None:
    """RFC 7591 §2 ``redirect_uris`` and ``response_types`` for the authorization code grant
    (docs/authorization-code.md). §2.1: ``authorization_code`` goes with ``response_types: ["code"]``
    (the default when the grant is registered); ``refresh_token`` only with it here (no other grant
    issues refresh tokens); the implicit grant and ``token`` response type are not offered."""
    from tessera.oauth.authcode import MAX_REDIRECT_URIS, check_redirect_uri

    grants = md["grant_types"]
    wants_code = "authorization_code" in grants
    if "implicit" in grants:
        raise _bad("the implicit grant is not offered (OAuth 2.1 §1.6)")
    if "refresh_token" in grants and not wants_code:
        raise _bad("refresh_token is issued only with the authorization_code grant here")
    types = raw.get("response_types")
    if types is None:
        types = ["code"] if wants_code else []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise _bad("response_types must be an array of strings")
    if any(t != "code" for t in types):
        raise _bad("response_types: only code is offered (no implicit or hybrid flow)")
    if types and not wants_code:
        raise _bad("response_types code needs the authorization_code grant (RFC 7591 §2.1)")
    if wants_code and not types:
        raise _bad("the authorization_code grant needs response_types code (RFC 7591 §2.1)")
    uris = raw.get("redirect_uris")
    if not wants_code:
        if uris not in (None, []):
            raise InvalidRedirectUri("redirect_uris apply only to clients of the authorization_code grant")
        return
    if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
        # RFC 6749 §3.1.2.2 / OAuth 2.1 §2.3.1: every client of a redirect-based grant registers them.
        raise InvalidRedirectUri(f"redirect_uris must be an array of 1 to {MAX_REDIRECT_URIS} URIs")
    for uri in uris:
        reason = check_redirect_uri(uri)
        if reason:
            raise InvalidRedirectUri(f"redirect_uri {str(uri)[:80]!r} {reason}")
    md["redirect_uris"] = list(dict.fromkeys(uris))
    md["response_types"] = ["code"]


def _validate_federated(value: Any) -> list[dict[str, str]]:
    """Federated identity credentials (like Entra ID's): the client authenticates with a token its
    platform issued — ``issuer`` (a trusted issuer), ``subject`` (its exact ``sub``) and ``audience``
    (the ``aud`` it must carry) — instead of a secret or a key of its own."""
    if not isinstance(value, list) or not 1 <= len(value) <= 20:
        raise _bad("federated_credentials must be an array of 1 to 20 credentials")
    out = []
    for cred in value:
        if not isinstance(cred, dict) or set(cred) != {"issuer", "subject", "audience"}:
            raise _bad("each federated credential has exactly issuer, subject and audience")
        if not all(isinstance(v, str) and 0 < len(v) <= 512 for v in cred.values()):
            raise _bad("federated credential issuer, subject and audience are non-empty strings")
        out.append({"issuer": cred["issuer"], "subject": cred["subject"], "audience": cred["audience"]})
    return out


def new_client(
    raw: Any, policy: ClientPolicy, now: int, *, source: str, client_id: str | None = None
) -> tuple[Client, str | None]:
    """A new client from RFC 7591 metadata; returns it and its secret (shown once) if it has one."""
    metadata = validate_metadata(raw, policy)
    if client_id is not None and (
        not isinstance(client_id, str) or not re.fullmatch(r"[A-Za-z0-9._~:@-]{1,256}", client_id)
    ):
        raise InvalidClientMetadata("client_id must be 1-256 characters of A-Z a-z 0-9 . _ ~ : @ -")
    secret = generate_secret() if metadata["token_endpoint_auth_method"] in SECRET_METHODS else None
    client = Client(
        client_id=client_id or generate_client_id(),
        metadata=metadata,
        secret_hash=hash_secret(secret) if secret else None,
        source=source,
        created_at=now,
        updated_at=now,
    )
    return client, secret
