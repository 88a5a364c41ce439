"""Client authentication at the token endpoint.

- ``client_secret_basic`` / ``client_secret_post``: RFC 6749 §2.3.1. Secrets are stored as SHA-256
  digests (they are 256-bit random values we generated) and compared in constant time.
- ``private_key_jwt``: RFC 7523 §2.2 and §3, OpenID Connect Core §9. The assertion's signature is
  verified with an explicit algorithm allow-list — ES256, EdDSA, RS256 and PS256 by the verifier
  SDK's Wycheproof-tested JWS code, the rarer algorithms by joserfc; the key is chosen among the
  client's registered keys only (``jku``, ``x5u``, ``jwk`` headers are never followed).
- ``none`` never authenticates: it only names a public client, which no confidential grant accepts.

RFC 6749 §2.3: a client MUST NOT use more than one authentication method in a request.

The same authentication guards the token, revocation (RFC 7009 §2.1) and introspection endpoints.
RFC 7523 §3 (3): the assertion's ``aud`` identifies the authorization server: its issuer identifier
or the URL of one of those endpoints (clients such as Authlib put the URL they post to).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tessera.federation.cel import CelError
from tessera.federation.validator import FederationRefused, IssuerRegistry
from tessera.oauth.clients import ASSERTION_ALGS, SECRET_METHODS, Client, secret_matches
from tessera.oauth.errors import InvalidClient, InvalidRequest
from tessera.verify.errors import VerificationError
from tessera.verify.jws import PublicKey, b64url_decode, public_key_from_jwk, verify_signature

__all__ = [
    "JWT_BEARER_ASSERTION_TYPE",
    "AssertionUse",
    "AuthenticatedClient",
    "ClientAuthenticator",
    "assertion_replayed",
    "import_jwks",
]

JWT_BEARER_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_BYTES = 8192
#: algorithms verified by the verifier SDK's JWS code; the others (ES384, ES512, RS384, …) by joserfc
FAST_ALGS = frozenset({"ES256", "EdDSA", "Ed25519", "RS256", "PS256"})
_EDDSA = {"EdDSA", "Ed25519"}
_ALGS_FOR_KTY = {
    "EC": {"ES256", "ES384", "ES512"},
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "OKP": {"EdDSA", "Ed25519"},
}


def import_jwks(jwks: Mapping[str, Any]) -> KeySet:
    """Import a client's public JWK Set; ValueError with a readable reason if it is not one."""
    try:
        return KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a valid JWK Set ({e})") from None


@dataclass(frozen=True)
class AssertionUse:
    """A client assertion's ``jti``: recorded with the issuance so that it is used once."""

    client_id: str
    jti: str
    exp: int


@dataclass(frozen=True)
class AuthenticatedClient:
    client: Client
    method: str
    assertion: AssertionUse | None = None


ClientLookup = Callable[[str], Awaitable[Client | None]]
JwksFetcher = Callable[[Client, bool], Awaitable[Mapping[str, Any]]]


def _digest(jwks: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(jwks, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _b64json(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = orjson.loads(raw)  # bounded nesting: deep arrays are a JSONDecodeError, not a RecursionError
    except (binascii.Error, ValueError) as e:
        raise InvalidClient("client_assertion is not a well-formed JWT") from e
    if not isinstance(value, dict):
        raise InvalidClient("client_assertion is not a well-formed JWT")
    return value


class ClientAuthenticator:
    def __init__(
        self,
        *,
        issuer: str,
        token_endpoint: str,
        lookup: ClientLookup,
        fetch_jwks: JwksFetcher,
        now: Callable[[], float],
        assertion_max_lifetime: int,
        leeway: int,
        other_endpoints: tuple[str, ...] = (),
        federation: IssuerRegistry | None = None,
    ) -> None:
        self._federation = federation
        self._issuer = issuer
        self._audiences = {issuer, token_endpoint, *other_endpoints}
        self._lookup = lookup
        self._fetch_jwks = fetch_jwks
        self._now = now
        self._max_lifetime = assertion_max_lifetime
        self._leeway = leeway
        # Keyed by the keys' content: a key replaced within the same second must not linger.
        self._keysets: dict[tuple[str, str], KeySet] = {}
        self._public: dict[tuple[str, str], list[PublicKey]] = {}

    async def authenticate(self, headers: Mapping[str, str], form: Mapping[str, str]) -> AuthenticatedClient:
        authz = headers.get("authorization")
        basic = authz is not None and authz[:6].lower() == "basic "
        used = [
            name
            for name, present in (
                ("client_secret_basic", basic),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form or "client_assertion_type" in form),
            )
            if present
        ]
        if len(used) > 1:
            raise InvalidRequest("more than one client authentication method was used (RFC 6749 §2.3)")
        method = used[0] if used else "none"
        if method == "client_secret_basic":
            assert authz is not None
            client_id, secret = self._parse_basic(authz)
            if "client_id" in form and form["client_id"] != client_id:
                raise InvalidRequest("client_id in the body differs from the authenticated client")
            client = await self._known(client_id, method)
            return self._check_secret(client, secret, method)
        if method == "client_secret_post":
            post_id = form.get("client_id")
            if not post_id:
                raise InvalidRequest("client_secret_post requires client_id")
            client = await self._known(post_id, method)
            return self._check_secret(client, form["client_secret"], method)
        if method == "private_key_jwt":
            return await self._assertion(form)
        public_id = form.get("client_id")
        if not public_id:
            raise InvalidClient("client authentication is required")
        client = await self._known(public_id, method)
        return AuthenticatedClient(client, "none")

    async def authenticate_confidential(
        self, headers: Mapping[str, str], form: Mapping[str, str]
    ) -> AuthenticatedClient:
        """``authenticate``, refusing a public client (``none``): for endpoints only clients may call."""
        authn = await self.authenticate(headers, form)
        if authn.method == "none":
            raise InvalidClient("this endpoint requires client authentication", client_id=authn.client.client_id)
        return authn

    @staticmethod
    def _parse_basic(authz: str) -> tuple[str, str]:
        try:
            decoded = base64.b64decode(authz[6:].strip(), validate=True).decode("utf-8")
            raw_id, raw_secret = decoded.split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidClient("malformed HTTP Basic credentials") from None
        # RFC 6749 §2.3.1: id and secret are application/x-www-form-urlencoded before Basic encoding.
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if not client_id:
            raise InvalidClient("malformed HTTP Basic credentials")
        return client_id, secret

    async def _known(self, client_id: str, method: str) -> Client:
        client = await self._lookup(client_id) if len(client_id) <= 256 else None
        if client is None:
            raise InvalidClient("unknown client or bad credentials")
        if client.auth_method != method:
            # Same answer as an unknown client: the caller has not authenticated, so it learns nothing.
            raise InvalidClient("unknown client or bad credentials", client_id=client.client_id)
        return client

    @staticmethod
    def _check_secret(client: Client, secret: str, method: str) -> AuthenticatedClient:
        if method not in SECRET_METHODS or not secret_matches(secret, client.secret_hash):
            raise InvalidClient("unknown client or bad credentials", client_id=client.client_id)
        return AuthenticatedClient(client, method)

    async def _assertion(self, form: Mapping[str, str]) -> AuthenticatedClient:
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION_TYPE:
            raise InvalidRequest(f"client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}")
        value = form.get("client_assertion", "")
        if not value:
            raise InvalidRequest("client_assertion is missing")
        if len(value) > MAX_ASSERTION_BYTES:
            raise InvalidClient("client_assertion is too large")
        parts = value.split(".")
        if len(parts) != 3:
            raise InvalidClient("client_assertion must be a compact JWS (JWE is not accepted)")
        header, unverified = _b64json(parts[0]), _b64json(parts[1])
        form_id = form.get("client_id")
        if self._federation is not None and form_id and unverified.get("iss") != form_id:
            return await self._federated(form_id, value)
        # RFC 7523 §3: the JWT MUST contain a "sub" claim; for client authentication it is the client_id.
        sub = unverified.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidClient("client_assertion has no sub")
        if "client_id" in form and form["client_id"] != sub:
            raise InvalidClient("client_id does not match the assertion's sub")
        if self._federation is not None and not form_id and unverified.get("iss") != sub:
            # RFC 7523 §2.2: client_id is optional, the assertion identifies the client; §3 (2.B): its sub
            # is the client_id. A workload token whose sub is the client_id of a client with federated
            # credentials authenticates that client without client_id (as the mcp SDK's
            # PrivateKeyJWTOAuthProvider sends it). Any other assertion with iss != sub is refused there.
            return await self._federated(sub, value)
        client = await self._known(sub, "private_key_jwt")
        if "jwks" not in client.metadata and "jwks_uri" not in client.metadata:
            # A client with federated credentials only has no keys of its own to sign with.
            raise InvalidClient("unknown client or bad credentials", client_id=sub)
        alg = header.get("alg")
        allowed = (
            {client.metadata["token_endpoint_auth_signing_alg"]}
            if client.metadata.get("token_endpoint_auth_signing_alg")
            else set(ASSERTION_ALGS) | {"Ed25519"}
        )
        # Until the signature verifies the caller is anonymous: the answer is the same as for an unknown
        # client (the precise reason goes to the audit record through client_id).
        if not isinstance(alg, str) or alg not in allowed or "crit" in header:
            raise InvalidClient("unknown client or bad credentials", client_id=sub)
        if alg in FAST_ALGS:
            claims = await self._verify_fast(client, parts, header, unverified, alg)
        else:
            claims = await self._verify_signature(client, value, header, alg)
        self._check_claims(client, claims)
        return AuthenticatedClient(
            client, "private_key_jwt", AssertionUse(client.client_id, claims["jti"], int(claims["exp"]))
        )

    async def _federated(self, client_id: str, value: str) -> AuthenticatedClient:
        """Secretless authentication with a federated credential (like Entra ID's federated identity
        credentials): the assertion is a token of a trusted issuer whose ``iss``, ``sub`` and ``aud``
        match one of the client's ``federated_credentials``; keys, algorithms, lifetime, ``jti``
        replay and the issuer's condition are those of the trust configuration."""
        assert self._federation is not None
        client = await self._known(client_id, "private_key_jwt")
        creds = client.federated_credentials
        if not creds:
            raise InvalidClient("unknown client or bad credentials", client_id=client.client_id)
        # Until the assertion is verified the caller is anonymous: every refusal reads as an unknown client.
        try:
            trust, claims = await self._federation.authenticate(value, audiences=[c["audience"] for c in creds])
        except FederationRefused:
            raise InvalidClient("unknown client or bad credentials", client_id=client_id) from None
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud or [])
        match = [
            c
            for c in creds
            if c["issuer"] == trust.issuer and c["subject"] == claims.get("sub") and c["audience"] in auds
        ]
        if not match:
            raise InvalidClient("unknown client or bad credentials", client_id=client_id)
        if trust.condition is not None:
            try:
                if not trust.condition.evaluate_bool({"assertion": claims}):
                    raise InvalidClient("unknown client or bad credentials", client_id=client_id)
            except CelError:
                raise InvalidClient("unknown client or bad credentials", client_id=client_id) from None
        jti = claims.get("jti")
        use = (
            # The same namespace as the token exchange and JWT bearer grants: a replay-protected token is
            # single-use whatever role it is presented in, and whichever client presents it.
            AssertionUse(f"trust/{trust.name}", jti, int(claims["exp"]))
            if trust.jti_replay and isinstance(jti, str)
            else None
        )
        return AuthenticatedClient(client, "federated_credential", use)

    async def _keyset(self, client: Client, refresh: bool) -> KeySet:
        if "jwks" in client.metadata:
            key = (client.client_id, client.jwks_digest)
            ks = self._keysets.get(key)
            if ks is None:
                ks = import_jwks(client.metadata["jwks"])
                if len(self._keysets) > 10_000:
                    self._keysets.clear()
                self._keysets[key] = ks
            return ks
        try:
            return import_jwks(await self._fetch_jwks(client, refresh))
        except ValueError:
            raise InvalidClient("the client's keys could not be obtained", client_id=client.client_id) from None

    def _public_keys(self, client: Client, jwks: Mapping[str, Any]) -> list[PublicKey]:
        cache_key = (client.client_id, client.jwks_digest if "jwks" in client.metadata else _digest(jwks))
        keys = self._public.get(cache_key)
        if keys is None:
            keys = []
            for jwk in jwks.get("keys", []):
                try:
                    keys.append(public_key_from_jwk(jwk))
                except (ValueError, VerificationError):
                    continue  # a key of a type the fast path does not handle: only joserfc algorithms use it
            if len(self._public) > 10_000:
                self._public.clear()
            self._public[cache_key] = keys
        return keys

    async def _verify_fast(
        self, client: Client, parts: list[str], header: dict[str, Any], claims: dict[str, Any], alg: str
    ) -> dict[str, Any]:
        """ES256, EdDSA, RS256 and PS256 through the verifier SDK's JWS code (``tessera.verify.jws``: the
        Wycheproof-tested path, with exact signature lengths and ECDSA range checks), which costs about half
        of joserfc's decode on the benchmark machine. The claims were parsed before the signature was
        checked; they count only once it verifies."""
        kid = header.get("kid")
        signing_input = (parts[0] + "." + parts[1]).encode("ascii", "replace")
        try:
            signature = b64url_decode(parts[2])
        except VerificationError:
            raise InvalidClient("client_assertion signature is not base64url", client_id=client.client_id) from None
        for refresh in (False, True):
            if "jwks" in client.metadata:
                jwks: Mapping[str, Any] = client.metadata["jwks"]
            else:
                try:
                    jwks = await self._fetch_jwks(client, refresh)
                except ValueError:
                    raise InvalidClient("the client's keys could not be obtained", client_id=client.client_id) from None
            candidates = [
                k
                for k in self._public_keys(client, jwks)
                if (kid is None or k.kid == kid) and (k.alg is None or k.alg == alg or {k.alg, alg} == _EDDSA)
            ]
            if candidates or "jwks" in client.metadata:
                break
        for key in candidates[:4]:
            try:
                verify_signature(alg, key, signing_input, signature)
            except VerificationError:
                continue
            return claims
        raise InvalidClient(
            "client_assertion signature does not verify with the client's registered keys", client_id=client.client_id
        )

    async def _verify_signature(self, client: Client, value: str, header: dict[str, Any], alg: str) -> dict[str, Any]:
        kid = header.get("kid")
        for refresh in (False, True):
            ks = await self._keyset(client, refresh)
            candidates = [
                k
                for k in ks.keys
                if (kid is None or k.kid == kid)
                and alg in _ALGS_FOR_KTY.get(k.key_type, set())
                and (k.get("alg") is None or k.get("alg") == alg)
            ]
            if candidates or "jwks" in client.metadata:
                break
        for key in candidates[:4]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as superseded by RFC 9864
                    token = jwt.decode(value, key, algorithms=[alg])
            except (JoseError, ValueError, TypeError):
                continue
            claims = dict(token.claims)
            return claims
        raise InvalidClient(
            "client_assertion signature does not verify with the client's registered keys", client_id=client.client_id
        )

    async def verify_client_jws(self, client: Client, value: str, alg: str) -> dict[str, Any]:
        """The claims of a JWS the client signed with one of its registered keys (a CIBA signed
        authentication request); ``ValueError`` when it does not verify. ``alg`` comes from the
        client's registration, never from the header."""
        try:
            header = _b64json(value.split(".", 1)[0])
        except Exception:
            raise ValueError("the request object is not a JWS") from None
        if header.get("alg") != alg:
            raise ValueError(f"the request object must be signed with {alg}")
        try:
            return await self._verify_signature(client, value, header, alg)
        except InvalidClient:
            raise ValueError("the request object's signature does not verify with the client's keys") from None

    def _check_claims(self, client: Client, claims: dict[str, Any]) -> None:
        cid = client.client_id
        now = self._now()
        # RFC 7523 §3 (1): iss MUST be the client_id; (2) sub MUST be the client_id.
        if claims.get("iss") != cid or claims.get("sub") != cid:
            raise InvalidClient("client_assertion iss and sub must both equal the client_id", client_id=cid)
        # RFC 7523 §3 (3): aud MUST identify the authorization server. A single value only: a list
        # of audiences is how assertions get replayed across servers.
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str) or aud not in self._audiences:
            raise InvalidClient("client_assertion aud must be this issuer or the endpoint's URL", client_id=cid)
        # RFC 7523 §3 (4): exp MUST be present and the JWT MUST be rejected once expired.
        exp = claims.get("exp")
        if exp is None or not _is_num(exp):
            raise InvalidClient("client_assertion has no numeric exp", client_id=cid)
        if exp <= now - self._leeway:
            raise InvalidClient("client_assertion has expired", client_id=cid)
        if exp - now > self._max_lifetime + self._leeway:
            raise InvalidClient(f"client_assertion lives longer than {self._max_lifetime} s", client_id=cid)
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_num(nbf) or nbf > now + self._leeway):
            raise InvalidClient("client_assertion is not yet valid (nbf)", client_id=cid)
        iat = claims.get("iat")
        if iat is not None and (not _is_num(iat) or iat > now + self._leeway):
            raise InvalidClient("client_assertion iat is in the future", client_id=cid)
        # RFC 7523 §3 (7) and OIDC Core §9: jti is used to refuse replays; Tessera requires it.
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidClient("client_assertion needs a jti (at most 256 characters)", client_id=cid)


def assertion_replayed(client_id: str) -> InvalidClient:
    # RFC 7523 §3 (7): a jti seen before means the assertion is replayed.
    return InvalidClient("client_assertion was already used (jti replay)", client_id=client_id)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e12
