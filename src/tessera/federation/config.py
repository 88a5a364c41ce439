"""Trusted issuers: which external identity tokens Tessera accepts, and what their holders may get.

One trust configuration per external issuer (a CI platform, a Kubernetes cluster, a SPIFFE trust
domain, another cloud). It names:

- where the keys come from — OpenID discovery (``<issuer>/.well-known/openid-configuration``), a
  pinned ``jwks_uri``, an inline ``jwks``, or a SPIFFE trust bundle (``spiffe_bundle_uri`` or an
  inline ``spiffe_bundle``, keys with ``use: jwt-svid``);
- how a token is checked — allowed algorithms, accepted ``aud`` values, maximum lifetime and age,
  leeway, expected ``typ``, ``jti`` replay protection;
- how the identity is mapped — CEL: ``subject`` (default ``assertion.sub``), named ``attributes``,
  a boolean ``condition``. A shared multi-tenant issuer (GitHub Actions, GitLab.com, or any with
  ``shared = true``) is refused without a ``condition``: anyone can get a token from it;
- what the mapped principal may get — ``bindings``, tried in order, the first whose ``when`` holds:
  audiences, scopes, maximum token lifetime, whether it may delegate (act for another subject) or
  impersonate.

A principal is ``<name>/<subject>``: client ids cannot contain ``/``, so a mapped principal never
collides with a local client, nor one trust configuration's principals with another's.

Configuration is validated on load; every error names the trust configuration and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tessera.federation.cel import CelError, Expression, claims_used, compile_expression

__all__ = [
    "ALGORITHMS",
    "SHARED_ISSUERS",
    "Binding",
    "FederationConfigError",
    "TrustedIssuer",
    "parse_trusted_issuer",
    "parse_trusted_issuers",
]

ALGORITHMS = frozenset({"ES256", "RS256", "PS256", "EdDSA"})
#: Issuers anyone can get a token from: a condition pinning the tenant is mandatory.
SHARED_ISSUERS = ("https://token.actions.githubusercontent.com", "https://gitlab.com")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ATTRIBUTE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
MAX_ATTRIBUTES = 32
MAX_BINDINGS = 32
_KNOWN = {
    "name",
    "issuer",
    "jwks_uri",
    "jwks",
    "spiffe_bundle_uri",
    "spiffe_bundle",
    "trust_domain",
    "algorithms",
    "audiences",
    "max_token_lifetime",
    "max_token_age",
    "leeway",
    "jti_replay",
    "typ",
    "subject",
    "attributes",
    "condition",
    "shared",
    "bindings",
}
_BINDING_KNOWN = {"when", "audiences", "scopes", "max_lifetime", "may_delegate", "may_impersonate"}


class FederationConfigError(ValueError):
    """A trust configuration that cannot be used; the message names it and the field."""


@dataclass(frozen=True)
class Binding:
    """What a mapped principal may get."""

    audiences: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    max_lifetime: int = 900
    may_delegate: bool = False
    may_impersonate: bool = False
    when: Expression | None = None


@dataclass(frozen=True)
class TrustedIssuer:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    bindings: tuple[Binding, ...]
    algorithms: frozenset[str] = frozenset({"RS256", "ES256"})
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    spiffe_bundle_uri: str | None = None
    spiffe_bundle: dict[str, Any] | None = None
    trust_domain: str | None = None
    max_token_lifetime: int = 3600
    max_token_age: int = 3600
    leeway: int = 30
    jti_replay: bool = False
    typ: str | None = None
    subject: Expression = field(default_factory=lambda: compile_expression("assertion.sub"))
    attributes: tuple[tuple[str, Expression], ...] = ()
    condition: Expression | None = None
    shared: bool = False
    #: the claims the expressions read (None: possibly all of them); only these are given to CEL
    claims_used: frozenset[str] | None = None
    #: the configuration as given (for listing, export and change detection)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def spiffe(self) -> bool:
        return self.spiffe_bundle is not None or self.spiffe_bundle_uri is not None

    def principal(self, subject: str) -> str:
        return f"{self.name}/{subject}"


def _fail(name: str, field_name: str, why: str) -> FederationConfigError:
    return FederationConfigError(f"trusted_issuers.{name}.{field_name}: {why}")


def _url(name: str, field_name: str, value: Any, *, allow_http: bool) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise _fail(name, field_name, "must be a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment or parts.query:
        raise _fail(name, field_name, "must be an absolute http(s) URL without query or fragment")
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme == "http" and not (allow_http or loopback):
        raise _fail(name, field_name, "must use https")
    return value


def _int(name: str, field_name: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _fail(name, field_name, f"must be an integer in {lo}..{hi}")
    return value


def _bool(name: str, field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, field_name, "must be true or false")
    return value


def _strings(name: str, field_name: str, value: Any, *, nonempty: bool, limit: int = 64) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit or (nonempty and not value):
        raise _fail(name, field_name, f"must be a{' non-empty' if nonempty else 'n'} array of at most {limit} strings")
    for v in value:
        if not isinstance(v, str) or not v or len(v) > 512:
            raise _fail(name, field_name, "every entry must be a non-empty string of at most 512 characters")
    return tuple(dict.fromkeys(value))


def _expr(name: str, field_name: str, value: Any) -> Expression:
    try:
        return compile_expression(value)
    except CelError as e:
        raise _fail(name, field_name, str(e)) from None


def _jwks(name: str, field_name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("keys"), list) or not value["keys"]:
        raise _fail(name, field_name, "must be a JWK Set with at least one key")
    for jwk in value["keys"]:
        if not isinstance(jwk, dict) or any(m in jwk for m in ("d", "p", "q", "k")):
            raise _fail(name, field_name, "must hold public keys only")
    return value


def _binding(name: str, index: int, raw: Any, max_lifetime: int) -> Binding:
    where = f"bindings[{index}]"
    if not isinstance(raw, dict):
        raise _fail(name, where, "must be a table")
    unknown = set(raw) - _BINDING_KNOWN
    if unknown:
        raise _fail(name, where, f"unknown field(s) {', '.join(sorted(unknown))}")
    if "audiences" not in raw:
        raise _fail(name, where + ".audiences", "is required: the audiences the principal may get tokens for")
    scopes = _strings(name, where + ".scopes", raw.get("scopes", []), nonempty=False)
    for s in scopes:
        if not _SCOPE.fullmatch(s):
            raise _fail(name, where + ".scopes", f"{s[:40]!r} is not a scope token (RFC 6749 §3.3)")
    return Binding(
        audiences=_strings(name, where + ".audiences", raw["audiences"], nonempty=True),
        scopes=scopes,
        max_lifetime=_int(name, where + ".max_lifetime", raw.get("max_lifetime", min(900, max_lifetime)), 1, 86400),
        may_delegate=_bool(name, where + ".may_delegate", raw.get("may_delegate", False)),
        may_impersonate=_bool(name, where + ".may_impersonate", raw.get("may_impersonate", False)),
        when=_expr(name, where + ".when", raw["when"]) if "when" in raw else None,
    )


def parse_trusted_issuer(
    raw: Any, *, own_issuer: str, max_lifetime: int = 3600, leeway: int = 30, allow_http: bool = False
) -> TrustedIssuer:
    """One trust configuration from its TOML/JSON form; ``FederationConfigError`` names what is wrong."""
    if not isinstance(raw, dict):
        raise FederationConfigError("trusted_issuers: every entry must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FederationConfigError(
            f"trusted_issuers: name {str(name)[:40]!r} must be 1-63 lowercase letters, digits or '-'"
        )
    unknown = set(raw) - _KNOWN
    if unknown:
        raise _fail(name, "*", f"unknown field(s) {', '.join(sorted(unknown))}")
    if "issuer" not in raw:
        raise _fail(name, "issuer", "is required")
    issuer = raw["issuer"]
    spiffe = "spiffe_bundle" in raw or "spiffe_bundle_uri" in raw
    if spiffe:
        # A SPIFFE trust domain's JWT-SVIDs have no iss requirement; the configured string is matched
        # against iss when present and otherwise names the trust domain's bundle.
        if not isinstance(issuer, str) or not issuer or len(issuer) > 2048:
            raise _fail(name, "issuer", "must be a non-empty string")
    else:
        _url(name, "issuer", issuer, allow_http=allow_http)
        if issuer.endswith("/") and urlsplit(issuer).path not in ("", "/"):
            raise _fail(name, "issuer", "must be the exact issuer identifier")
    if issuer.rstrip("/") == own_issuer.rstrip("/"):
        # The loop guard: Tessera's own tokens are checked as its own, never as an external issuer's.
        raise _fail(name, "issuer", "is Tessera's own issuer; its tokens cannot be federated back")
    sources = [k for k in ("jwks_uri", "jwks", "spiffe_bundle_uri", "spiffe_bundle") if k in raw]
    if len(sources) > 1:
        raise _fail(name, sources[1], f"give one key source, not {' and '.join(sources)}")
    algorithms = frozenset(_strings(name, "algorithms", raw.get("algorithms", ["RS256", "ES256"]), nonempty=True))
    if not algorithms <= ALGORITHMS:
        raise _fail(name, "algorithms", f"must be a subset of {sorted(ALGORITHMS)} (never none or HMAC)")
    trust_domain = raw.get("trust_domain")
    if spiffe:
        if not isinstance(trust_domain, str) or not re.fullmatch(r"[a-z0-9._-]{1,255}", trust_domain):
            raise _fail(name, "trust_domain", "is required for a SPIFFE bundle: a trust domain name")
    elif trust_domain is not None:
        raise _fail(name, "trust_domain", "only applies to a SPIFFE trust bundle")
    attributes_raw = raw.get("attributes", {})
    if not isinstance(attributes_raw, dict) or len(attributes_raw) > MAX_ATTRIBUTES:
        raise _fail(name, "attributes", f"must be a table of at most {MAX_ATTRIBUTES} CEL expressions")
    attributes = []
    for key, source in attributes_raw.items():
        if not _ATTRIBUTE.fullmatch(key):
            raise _fail(name, f"attributes.{str(key)[:40]}", "names are lowercase letters, digits and '_'")
        attributes.append((key, _expr(name, f"attributes.{key}", source)))
    condition = _expr(name, "condition", raw["condition"]) if "condition" in raw else None
    shared = _bool(name, "shared", raw.get("shared", any(issuer.startswith(s) for s in SHARED_ISSUERS)))
    if shared and condition is None:
        raise _fail(
            name,
            "condition",
            "is required: this issuer is shared by many tenants; without a condition anyone's tokens are trusted",
        )
    bindings_raw = raw.get("bindings")
    if not isinstance(bindings_raw, list) or not bindings_raw or len(bindings_raw) > MAX_BINDINGS:
        raise _fail(name, "bindings", f"must be 1..{MAX_BINDINGS} bindings (what the mapped principals may get)")
    typ = raw.get("typ")
    if typ is not None and (not isinstance(typ, str) or not typ or len(typ) > 64):
        raise _fail(name, "typ", "must be a string")
    bindings = tuple(_binding(name, i, b, max_lifetime) for i, b in enumerate(bindings_raw))
    subject = _expr(name, "subject", raw.get("subject", "assertion.sub"))
    expressions = [subject, *(e for _, e in attributes), *([condition] if condition else [])]
    expressions += [b.when for b in bindings if b.when is not None]
    return TrustedIssuer(
        name=name,
        issuer=issuer,
        audiences=_strings(name, "audiences", raw.get("audiences"), nonempty=True),
        bindings=bindings,
        algorithms=algorithms,
        jwks_uri=_url(name, "jwks_uri", raw["jwks_uri"], allow_http=allow_http) if "jwks_uri" in raw else None,
        jwks=_jwks(name, "jwks", raw["jwks"]) if "jwks" in raw else None,
        spiffe_bundle_uri=(
            _url(name, "spiffe_bundle_uri", raw["spiffe_bundle_uri"], allow_http=allow_http)
            if "spiffe_bundle_uri" in raw
            else None
        ),
        spiffe_bundle=_jwks(name, "spiffe_bundle", raw["spiffe_bundle"]) if "spiffe_bundle" in raw else None,
        trust_domain=trust_domain,
        max_token_lifetime=_int(name, "max_token_lifetime", raw.get("max_token_lifetime", 3600), 1, 7 * 86400),
        max_token_age=_int(name, "max_token_age", raw.get("max_token_age", 3600), 1, 7 * 86400),
        leeway=_int(name, "leeway", raw.get("leeway", leeway), 0, 300),
        jti_replay=_bool(name, "jti_replay", raw.get("jti_replay", False)),
        typ=typ,
        subject=subject,
        attributes=tuple(attributes),
        condition=condition,
        shared=shared,
        claims_used=claims_used(e.source for e in expressions),
        raw=dict(raw),
    )


def parse_trusted_issuers(
    raws: list[Any], *, own_issuer: str, max_lifetime: int = 3600, leeway: int = 30, allow_http: bool = False
) -> dict[str, TrustedIssuer]:
    """Several trust configurations; names and issuer strings must each be unique."""
    out: dict[str, TrustedIssuer] = {}
    issuers: set[str] = set()
    for raw in raws:
        t = parse_trusted_issuer(
            raw, own_issuer=own_issuer, max_lifetime=max_lifetime, leeway=leeway, allow_http=allow_http
        )
        if t.name in out:
            raise _fail(t.name, "name", "is used twice")
        if t.issuer in issuers:
            raise _fail(t.name, "issuer", "is already trusted under another name (one configuration per issuer)")
        if t.trust_domain and any(o.trust_domain == t.trust_domain for o in out.values()):
            raise _fail(t.name, "trust_domain", "is already trusted under another name")
        out[t.name] = t
        issuers.add(t.issuer)
    return out
