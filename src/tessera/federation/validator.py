"""Checking an external identity token and mapping it to a principal.

Order, chosen so that nothing about an untrusted token costs a network request:

1. size and shape (a compact JWS; JWE is not accepted);
2. the issuer: ``iss`` must equal a configured issuer string exactly — no normalisation, no
   trailing-slash tolerance; a SPIFFE JWT-SVID without ``iss`` is routed by its ``sub``'s trust
   domain. An unknown issuer is refused before any key is fetched;
3. the header: ``alg`` in that issuer's allow-list, no ``crit``, ``typ`` as configured (and never a
   type that means another kind of token: DPoP proofs, status lists, logout tokens);
4. the signature, with that issuer's keys only (``kid`` selects among them; ``jku``, ``x5u`` and
   ``jwk`` headers are never followed). Keys are cached per issuer by ``tessera.verify.trust``: an
   unknown ``kid`` refetches at most once per cooldown, so a ``kid`` of another issuer cannot make
   Tessera fetch anything more than once;
5. the claims (RFC 7519 §4.1, RFC 7523 §3): ``aud`` contains an accepted audience; ``exp`` present
   and not passed; ``nbf``/``iat`` not in the future; ``exp - iat`` at most the configured lifetime;
   ``now - iat`` at most the configured age; ``sub`` present (a SPIFFE ID of the trust domain for
   SVIDs); ``jti`` present when replay protection is on (consumed with the issuance);
6. the mapping: ``condition`` must be true, ``subject`` a non-empty string, every attribute must
   evaluate; a missing claim or any evaluation error denies. The first binding whose ``when`` holds
   decides what the principal may get; none holding denies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from tessera.federation.cel import CelError, activation, add_variables
from tessera.federation.config import Binding, TrustedIssuer
from tessera.verify.errors import VerificationError
from tessera.verify.jws import parse_compact, verify_signature
from tessera.verify.trust import TrustPolicy, TrustStore

__all__ = ["ExternalIdentity", "FederationRefused", "IssuerRegistry"]

MAX_TOKEN_BYTES = 16 * 1024
#: header types that name some other kind of JWT: never an identity assertion
_FOREIGN_TYPES = {"dpop+jwt", "statuslist+jwt", "logout+jwt", "secevent+jwt", "token-introspection+jwt"}


class FederationRefused(Exception):
    """The external token is not accepted; the message is safe to return to the caller."""

    def __init__(self, message: str, *, trust: str | None = None) -> None:
        super().__init__(message)
        self.trust = trust


@dataclass(frozen=True)
class ExternalIdentity:
    trust: TrustedIssuer
    subject: str
    attributes: dict[str, Any]
    binding: Binding
    claims: dict[str, Any] = field(repr=False)

    @property
    def principal(self) -> str:
        return self.trust.principal(self.subject)

    @property
    def jti(self) -> str | None:
        jti = self.claims.get("jti")
        return jti if isinstance(jti, str) else None

    @property
    def exp(self) -> int:
        return int(self.claims["exp"])

    def summary(self) -> dict[str, Any]:
        """What a dry run reports: as whom the token would be accepted and what it could get."""
        b = self.binding
        return {
            "trust": self.trust.name,
            "principal": self.principal,
            "subject": self.subject,
            "attributes": self.attributes,
            "binding": {
                "audiences": list(b.audiences),
                "scopes": list(b.scopes),
                "max_lifetime": b.max_lifetime,
                "may_delegate": b.may_delegate,
                "may_impersonate": b.may_impersonate,
            },
        }


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e11


class IssuerRegistry:
    """The trusted issuers and their key caches."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        now: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
        keys_ttl: float = 300.0,
        keys_max_stale: float = 3600.0,
        unknown_kid_cooldown: float = 30.0,
    ) -> None:
        self._now = now
        self._stores: dict[str, TrustStore] = {}
        self._by_issuer: dict[str, TrustedIssuer] = {}
        self._by_domain: dict[str, TrustedIssuer] = {}
        self._transport = transport
        self._policy = (keys_ttl, keys_max_stale, unknown_kid_cooldown)
        #: the names of the trusted issuers under an incident quarantine (tessera.incidents), if any
        self.quarantined: Callable[[], frozenset[str]] | None = None
        self.replace(issuers)

    @property
    def issuers(self) -> list[TrustedIssuer]:
        return list(self._by_issuer.values())

    def replace(self, issuers: Iterable[TrustedIssuer]) -> None:
        """Install a new set of trust configurations (an operator changed them). Key caches of the
        configurations that did not change are kept; the others start empty."""
        by_issuer: dict[str, TrustedIssuer] = {}
        by_domain: dict[str, TrustedIssuer] = {}
        for t in issuers:
            by_issuer[t.issuer] = t
            if t.trust_domain:
                by_domain[t.trust_domain] = t
        keep = {t.name for t in by_issuer.values() if self._current(t.name) == t.raw}
        for name in [n for n in self._stores if n not in keep]:
            self._stores.pop(name)  # its httpx client is closed by the garbage collector
        self._by_issuer, self._by_domain = by_issuer, by_domain

    def _current(self, name: str) -> dict[str, Any] | None:
        for t in self._by_issuer.values():
            if t.name == name:
                return t.raw
        return None

    def keys_fetched_at(self) -> dict[str, float | None]:
        """When each trusted issuer's keys in use were fetched (None: not yet), by issuer name."""
        return {name: store.keys_fetched_at for name, store in self._stores.items()}

    def configured_hosts(self) -> set[str]:
        """The hosts named by the operator's configurations (issuer, pinned key or bundle URLs)."""
        hosts = set()
        for t in self._by_issuer.values():
            for url in (t.issuer, t.jwks_uri, t.spiffe_bundle_uri):
                if url and url.startswith(("https://", "http://")):
                    host = urlsplit(url).hostname
                    if host:
                        hosts.add(host)
        return hosts

    def get(self, name: str) -> TrustedIssuer | None:
        for t in self._by_issuer.values():
            if t.name == name:
                return t
        return None

    def _store(self, t: TrustedIssuer) -> TrustStore:
        store = self._stores.get(t.name)
        if store is None:
            ttl, max_stale, cooldown = self._policy
            static = t.jwks is not None or t.spiffe_bundle is not None
            policy = TrustPolicy(
                keys_ttl=ttl,
                keys_max_stale=math.inf if static else max_stale,
                unknown_kid_cooldown=cooldown,
                leeway=t.leeway,
                algorithms=t.algorithms,
            )
            store = TrustStore(
                t.issuer,
                policy,
                self._now,
                jwks_uri=t.jwks_uri or t.spiffe_bundle_uri,
                ahttp=httpx.AsyncClient(transport=self._transport, timeout=5.0, follow_redirects=False),
                source="static" if static else "network",
                metadata_path="/.well-known/openid-configuration",
                key_use="jwt-svid" if t.spiffe else "sig",
            )
            if static:
                store._install_keys(t.jwks or t.spiffe_bundle, math.inf)
            self._stores[t.name] = store
        return store

    def find(self, claims: dict[str, Any]) -> TrustedIssuer | None:
        iss = claims.get("iss")
        if isinstance(iss, str):
            return self._by_issuer.get(iss)
        sub = claims.get("sub")
        if iss is None and isinstance(sub, str) and sub.startswith("spiffe://"):
            return self._by_domain.get(sub[9:].split("/", 1)[0])
        return None

    async def validate(self, token: str, *, audiences: Iterable[str] | None = None) -> ExternalIdentity:
        """The mapped identity of a trusted external token, or ``FederationRefused``.

        ``audiences`` replaces the trust configuration's accepted ``aud`` values (the JWT bearer grant
        requires the assertion to name this authorization server)."""
        trust, claims = await self.authenticate(token, audiences=audiences)
        return self._map(trust, claims)

    async def authenticate(
        self, token: str, *, audiences: Iterable[str] | None = None
    ) -> tuple[TrustedIssuer, dict[str, Any]]:
        """Steps 1-5 (no mapping): the trust configuration and the verified claims."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise FederationRefused("the token is too large")
        try:
            header, claims, signing_input, signature = parse_compact(token)
        except VerificationError as e:
            raise FederationRefused(f"not a compact JWS: {e}") from None
        trust = self.find(claims)
        if trust is None:
            raise FederationRefused("the token's issuer is not trusted")
        name = trust.name
        if self.quarantined is not None and name in self.quarantined():
            raise FederationRefused("the token's issuer is quarantined (an incident response)", trust=name)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in trust.algorithms:
            raise FederationRefused("the token's algorithm is not allowed for its issuer", trust=name)
        if "crit" in header:
            raise FederationRefused("the token has critical header parameters", trust=name)
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise FederationRefused("the token's typ is not a string", trust=name)
        if trust.typ is not None:
            # RFC 7515 §4.1.9: "application/" may be omitted; the comparison ignores it and case.
            want = trust.typ.lower().removeprefix("application/")
            if typ is None or typ.lower().removeprefix("application/") != want:
                raise FederationRefused(f"the token's typ must be {trust.typ}", trust=name)
        elif typ is not None and typ.lower().removeprefix("application/") in _FOREIGN_TYPES:
            raise FederationRefused("the token is not an identity token (typ)", trust=name)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise FederationRefused("the token's kid is not a string", trust=name)
        try:
            keys, _age, _stale = await self._store(trust).keys_for_async(kid, alg)
        except VerificationError as e:
            raise FederationRefused(f"the issuer's key could not be found ({e.reason})", trust=name) from None
        for key in keys[:4]:
            try:
                verify_signature(alg, key, signing_input, signature)
                break
            except VerificationError:
                continue
        else:
            raise FederationRefused("the token's signature does not verify", trust=name)
        self._check_claims(trust, claims, audiences)
        return trust, claims

    def _check_claims(self, t: TrustedIssuer, claims: dict[str, Any], audiences: Iterable[str] | None) -> None:
        now, leeway, name = self._now(), t.leeway, t.name
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
        accepted = set(audiences) if audiences is not None else set(t.audiences)
        if not auds or not all(isinstance(a, str) for a in auds) or not accepted.intersection(auds):
            raise FederationRefused("the token's aud is not an accepted audience", trust=name)
        exp = claims.get("exp")
        if not _num(exp):
            raise FederationRefused("the token has no numeric exp", trust=name)
        assert isinstance(exp, int | float)
        if exp <= now - leeway:
            raise FederationRefused("the token has expired", trust=name)
        nbf = claims.get("nbf")
        if nbf is not None and (not _num(nbf) or nbf > now + leeway):
            raise FederationRefused("the token is not yet valid (nbf)", trust=name)
        iat = claims.get("iat")
        if iat is not None:
            if not _num(iat) or iat > now + leeway:
                raise FederationRefused("the token's iat is in the future", trust=name)
            if now - iat > t.max_token_age + leeway:
                raise FederationRefused(f"the token is older than {t.max_token_age} s", trust=name)
        start: float = iat if iat is not None else nbf if nbf is not None else now
        if exp - start > t.max_token_lifetime + leeway:
            raise FederationRefused(f"the token lives longer than {t.max_token_lifetime} s", trust=name)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise FederationRefused("the token has no sub", trust=name)
        if t.spiffe and not sub.startswith(f"spiffe://{t.trust_domain}/"):
            raise FederationRefused("the SVID's sub is not a SPIFFE ID of the trust domain", trust=name)
        if t.jti_replay:
            jti = claims.get("jti")
            if not isinstance(jti, str) or not jti or len(jti) > 256:
                raise FederationRefused("the token needs a jti (replay protection is on)", trust=name)

    @staticmethod
    def _map(t: TrustedIssuer, claims: dict[str, Any]) -> ExternalIdentity:
        used = t.claims_used
        context = activation(assertion=claims if used is None else {k: claims[k] for k in used if k in claims})
        try:
            if t.condition is not None and not t.condition.evaluate_bool(context):
                raise FederationRefused("the trust configuration's condition does not hold", trust=t.name)
            subject = t.subject.evaluate(context)
            attributes = {k: e.evaluate(context) for k, e in t.attributes}
        except CelError as e:
            raise FederationRefused(f"attribute mapping failed: {e}", trust=t.name) from None
        if not isinstance(subject, str) or not subject or len(subject) > 256 or not subject.isprintable():
            raise FederationRefused("the mapped subject must be a printable string of 1..256 characters", trust=t.name)
        if any(b.when is not None for b in t.bindings):
            add_variables(context, subject=subject, attributes=attributes)
        for binding in t.bindings:
            try:
                if binding.when is None or binding.when.evaluate_bool(context):
                    return ExternalIdentity(t, subject, attributes, binding, claims)
            except CelError as e:
                raise FederationRefused(f"binding condition failed: {e}", trust=t.name) from None
        raise FederationRefused("no binding of the trust configuration applies to this identity", trust=t.name)

    async def aclose(self) -> None:
        for store in self._stores.values():
            await store.ahttp.aclose()
