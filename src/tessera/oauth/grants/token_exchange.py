"""OAuth 2.0 Token Exchange — RFC 8693.

``subject_token`` (types ``jwt``, ``id_token``, ``access_token``) is either

- an external identity token from a trusted issuer (``tessera.federation``), mapped to the principal
  ``<trust>/<subject>`` with what its binding allows; or
- an access token Tessera issued itself (down-scoping: audience and scope may only narrow, the
  lifetime never extends past the original's ``exp``; a revoked or expired token is refused).

A token Tessera minted for an outside audience (``typ: JWT``) is never accepted back (loop guard).

The actor is the principal of ``actor_token`` if one is given, else the authenticated client when
it is not the subject itself. An actor that may delegate gets a token whose ``act`` claim names it,
with the subject token's own chain nested inside (RFC 8693 §4.1: the newest actor outermost), the
depth capped; an actor that may only impersonate gets a token without ``act`` (the audit record names
the actor); any other actor is refused. A subject token's ``may_act`` claim (§4.4) must name the
actor. What the token may carry is what both subject and actor may get.

``requested_token_type``: ``access_token`` (an RFC 9068 token, the default) or ``jwt`` — an
identity token for an outside audience (a cloud STS, a partner API): ``typ: JWT``, one audience,
minimal claims, signed with the outbound signing algorithm.

Errors (§2.2.2): a subject or actor token that is invalid or unacceptable by policy is
``invalid_request``; an audience or resource that is not allowed is ``invalid_target``; a scope that
is not allowed is ``invalid_scope``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from tessera.audit import AuditEvent
from tessera.federation.validator import ExternalIdentity, FederationRefused, IssuerRegistry
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.clients import Client, parse_scope
from tessera.oauth.errors import InvalidClient, InvalidRequest, InvalidScope, InvalidTarget
from tessera.oauth.forms import Form
from tessera.oauth.grants import TokenRequest, TokenResponse
from tessera.oauth.keys import KeyRing
from tessera.oauth.policy import IssuanceContext, IssuancePolicy, apply_limits, federation_context
from tessera.oauth.status_entries import StatusAllocator
from tessera.oauth.tokens import NotOurToken, mint_access_token, mint_identity_token, read_access_token
from tessera.store.interfaces import AssertionReplayed, IssuanceRecorder, TokenReader
from tessera.verify.jws import parse_compact

__all__ = [
    "ACCESS_TOKEN",
    "ID_TOKEN",
    "JWT",
    "Party",
    "TokenExchangeGrant",
    "external_party",
    "narrow_audiences",
    "narrow_scope",
]

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT_TYPES = (ACCESS_TOKEN, JWT, ID_TOKEN)
REQUESTED_TYPES = (ACCESS_TOKEN, JWT)


@dataclass(frozen=True)
class Party:
    """A subject or an actor of an exchange and what it may get."""

    principal: str
    iss: str
    audiences: frozenset[str]
    scopes: frozenset[str]
    max_lifetime: int
    default_audiences: tuple[str, ...] = ()
    default_scopes: tuple[str, ...] = ()
    #: the presented token's exp when the result must not outlive it (Tessera's own tokens)
    exp: int | None = None
    act: dict[str, Any] | None = None
    may_act: Any = None
    may_delegate: bool = False
    may_impersonate: bool = False
    client_id: str | None = None
    trust: str | None = None
    use: AssertionUse | None = None
    #: RFC 9449 §6.1: the key thumbprint the presented token is bound to (``cnf.jkt``)
    jkt: str | None = None
    #: the presented token's jti when Tessera issued it: the new token's parent (revoked with it)
    token_jti: str | None = None
    #: an external identity's issuer, subject, claims and mapped attributes (the flows' context)
    federation: dict[str, Any] | None = None


def bound_key(claims: dict[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if isinstance(cnf, dict) and "jkt" not in cnf:
        return None
    if not isinstance(jkt, str) or not jkt:
        raise InvalidRequest("a presented token's cnf.jkt is malformed")
    return jkt


def act_depth(act: Any) -> int:
    depth = 0
    while isinstance(act, dict) and depth < 64:
        depth += 1
        act = act.get("act")
    return depth


def external_party(identity: ExternalIdentity) -> Party:
    b = identity.binding
    use = (
        # "/" cannot occur in a client id: this namespace never collides with client assertions.
        AssertionUse(f"trust/{identity.trust.name}", identity.jti, identity.exp)
        if identity.trust.jti_replay and identity.jti
        else None
    )
    return Party(
        principal=identity.principal,
        iss=identity.trust.issuer,
        audiences=frozenset(b.audiences),
        scopes=frozenset(b.scopes),
        max_lifetime=b.max_lifetime,
        default_audiences=b.audiences[:1],
        default_scopes=b.scopes,
        may_act=identity.claims.get("may_act"),
        may_delegate=b.may_delegate,
        may_impersonate=b.may_impersonate,
        trust=identity.trust.name,
        use=use,
        jkt=bound_key(identity.claims),
        federation=federation_context(identity),
    )


def client_party(client: Client, issuer: str, default_audience: str, max_lifetime: int) -> Party:
    audiences = set(client.allowed_resources) | {client.default_resource or default_audience}
    return Party(
        principal=client.client_id,
        iss=issuer,
        audiences=frozenset(audiences),
        scopes=client.scopes,
        max_lifetime=min(max_lifetime, client.token_lifetime_cap or max_lifetime),
        default_audiences=(client.default_resource or default_audience,),
        default_scopes=tuple(client.registered_scope),
        may_delegate=client.may_delegate,
        may_impersonate=client.may_impersonate,
        client_id=client.client_id,
    )


def requested_audiences(request: TokenRequest) -> list[str]:
    """RFC 8693 §2.1: ``audience`` (logical names) and ``resource`` (URIs) both name targets."""
    wanted = [*request.form.getlist("audience"), *request.form.getlist("resource")]
    for a in wanted:
        if not a or len(a) > 512 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in a):
            raise InvalidTarget("audience and resource values must be non-empty printable strings")
    return list(dict.fromkeys(wanted))


class TokenExchangeGrant:
    grant_type: ClassVar[str] = "urn:ietf:params:oauth:grant-type:token-exchange"
    requires_authentication: ClassVar[bool] = False

    def __init__(
        self,
        *,
        issuer: str,
        keys: Callable[[], KeyRing],
        signing_alg: str,
        outbound_alg: str,
        registry: IssuerRegistry,
        recorder: IssuanceRecorder,
        tokens: TokenReader,
        clients: Callable[[str], Awaitable[Client | None]],
        now: Callable[[], float],
        max_lifetime: int,
        default_audience: str,
        max_act_depth: int,
        leeway: int,
        status_allocator: StatusAllocator | None = None,
        status_min_lifetime: int = 0,
        policy: IssuancePolicy | None = None,
    ) -> None:
        self._policy = policy
        self._issuer = issuer
        self._keys = keys
        self._alg = signing_alg
        self._outbound_alg = outbound_alg
        self._registry = registry
        self._recorder = recorder
        self._tokens = tokens
        self._clients = clients
        self._now = now
        self._max_lifetime = max_lifetime
        self._default_audience = default_audience
        self._max_depth = max_act_depth
        self._leeway = leeway
        self._statuses = status_allocator
        self._status_min_lifetime = status_min_lifetime

    # -- parties ------------------------------------------------------------------------------------
    async def _party(self, token: str, token_type: str, role: str) -> Party:
        try:
            _, unverified, _, _ = parse_compact(token) if len(token) <= 16 * 1024 else ({}, {}, b"", b"")
        except Exception:
            raise InvalidRequest(f"the {role} token is not a JWT") from None
        if unverified.get("iss") == self._issuer:
            return await self._own_party(token, token_type, role)
        try:
            identity = await self._registry.validate(token)
        except FederationRefused as e:
            raise InvalidRequest(f"the {role} token is not accepted: {e}") from None
        return external_party(identity)

    async def _own_party(self, token: str, token_type: str, role: str) -> Party:
        header = _header(token)
        if str(header.get("typ", "")).lower() != "at+jwt":
            # The loop guard: what Tessera minted for an outside audience never comes back in.
            raise InvalidRequest(
                f"the {role} token is not a Tessera access token (tokens for outside audiences are not accepted)"
            )
        if token_type == ID_TOKEN:
            # RFC 8693 §3: the declared type says what the token is; Tessera issues no ID tokens.
            raise InvalidRequest(f"the {role} token is a Tessera access token, not an id_token")
        try:
            claims = read_access_token(token, self._keys(), self._issuer)
        except NotOurToken as e:
            raise InvalidRequest(f"the {role} token is not accepted: {e}") from None
        now = self._now()
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now - self._leeway:
            raise InvalidRequest(f"the {role} token has expired")
        record = await self._tokens.find_token(claims["jti"])
        if record is None or record.status != 0 or record.revoked_at is not None:
            raise InvalidRequest(f"the {role} token has been revoked")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        scopes = parse_scope(claims.get("scope", "")) if claims.get("scope") else []
        sub = str(claims.get("sub"))
        client = await self._clients(sub) if "/" not in sub else None
        return Party(
            principal=sub,
            iss=self._issuer,
            audiences=frozenset(audiences),
            scopes=frozenset(scopes),
            max_lifetime=self._max_lifetime,
            default_audiences=tuple(audiences),
            default_scopes=tuple(scopes),
            exp=exp,
            act=claims.get("act") if isinstance(claims.get("act"), dict) else None,
            may_act=claims.get("may_act"),
            may_delegate=bool(client and client.may_delegate),
            may_impersonate=bool(client and client.may_impersonate),
            client_id=str(claims.get("client_id") or sub),
            jkt=bound_key(claims),
            token_jti=str(claims["jti"]),
        )

    # -- the grant ----------------------------------------------------------------------------------
    def check_request(self, form: Form) -> None:
        subject_token, subject_type = form.get("subject_token"), form.get("subject_token_type")
        if not subject_token or not subject_type:
            raise InvalidRequest("subject_token and subject_token_type are required (RFC 8693 §2.1)")
        if subject_type not in SUBJECT_TYPES:
            raise InvalidRequest(f"subject_token_type must be one of {', '.join(SUBJECT_TYPES)}")
        actor_token, actor_type = form.get("actor_token"), form.get("actor_token_type")
        if bool(actor_token) != bool(actor_type):
            raise InvalidRequest("actor_token_type is required with actor_token, and only with it (RFC 8693 §2.1)")
        if actor_type is not None and actor_type not in SUBJECT_TYPES:
            raise InvalidRequest(f"actor_token_type must be one of {', '.join(SUBJECT_TYPES)}")
        if (form.get("requested_token_type") or ACCESS_TOKEN) not in REQUESTED_TYPES:
            raise InvalidRequest(f"requested_token_type must be one of {', '.join(REQUESTED_TYPES)}")

    async def respond(self, request: TokenRequest) -> TokenResponse:
        form = request.form  # well-formed: check_request passed
        subject_token, subject_type = form["subject_token"], form["subject_token_type"]
        actor_token, actor_type = form.get("actor_token"), form.get("actor_token_type")
        requested = form.get("requested_token_type") or ACCESS_TOKEN
        # A public client (auth method "none") proved nothing: it is treated as an anonymous caller.
        authn = request.client
        caller = authn.client if authn is not None and authn.method != "none" else None

        subject = await self._party(subject_token, subject_type, "subject")
        actor = await self._party(actor_token, actor_type or JWT, "actor") if actor_token else None
        if actor is not None and actor.principal == subject.principal:
            actor = None  # acting for oneself is no actor: the caller is still checked below
        if actor is None and caller is not None and caller.client_id != subject.principal:
            actor = client_party(caller, self._issuer, self._default_audience, self._max_lifetime)
        for role, party in (("subject", subject), ("actor", actor)):
            if party is not None and party.jkt is not None:
                # RFC 9449: a DPoP-bound token is usable only with proof of its key, here as anywhere; the
                # new token is bound to the same key. Never traded for an unbound or outside token.
                if request.dpop_jkt is None or not hmac.compare_digest(request.dpop_jkt, party.jkt):
                    raise InvalidRequest(f"the {role} token is DPoP-bound: the request needs a DPoP proof by its key")
                if requested == JWT:
                    raise InvalidRequest(f"the {role} token is DPoP-bound: it cannot become an outside-audience token")
        act: dict[str, Any] | None = subject.act
        mode = "self"
        if actor is not None:
            _check_may_act(subject.may_act, actor)
            if actor.may_delegate:
                mode = "delegation"
                act = {"sub": actor.principal, **({"iss": actor.iss} if actor.iss != self._issuer else {})}
                if subject.act:
                    act["act"] = subject.act
                if act_depth(act) > self._max_depth:
                    raise InvalidRequest(f"the delegation chain would be deeper than {self._max_depth}")
            elif actor.may_impersonate:
                mode = "impersonation"
            else:
                raise InvalidRequest("the actor may neither delegate nor impersonate")
        parties = [subject] + ([actor] if actor is not None and mode != "self" else [])

        audiences = narrow_audiences(requested_audiences(request), parties)
        scope = narrow_scope(form.get("scope"), parties)
        now = int(self._now())
        lifetime = min([self._max_lifetime] + [p.max_lifetime for p in parties])
        lifetime = min([lifetime] + [p.exp - now for p in parties if p.exp is not None])
        if lifetime <= 0:
            raise InvalidRequest("the subject or actor token expires too soon")
        client_id = (
            caller.client_id
            if caller is not None
            else actor.principal
            if actor is not None and mode != "self"
            else subject.client_id or subject.principal
        )
        if self._policy is not None and self._policy.applies(
            "token_exchange", caller.metadata if caller is not None else None
        ):
            limits = await self._policy.check(
                IssuanceContext(
                    "token_exchange",
                    client_id,
                    caller.metadata if caller is not None else {},
                    scope,
                    audiences,
                    lifetime,
                    subject.principal,
                    federation=subject.federation,
                    source_ip=request.source_ip,
                )
            )
            scope, audiences, lifetime = apply_limits(scope, audiences, lifetime, limits)
        uses = [p.use for p in (subject, actor) if p is not None and p.use is not None]
        if request.client is not None and request.client.assertion is not None:
            uses.append(request.client.assertion)
        ring = self._keys()
        # Lineage: the subject's Tessera token, else the actor's — revoking it revokes what came of it.
        parent = subject.token_jti or (actor.token_jti if actor is not None else None)
        extra: dict[str, Any] = {}
        if act:
            extra["act"] = act
        status = None
        if requested == JWT:
            if len(audiences) != 1:
                raise InvalidTarget("a token for an outside audience names exactly one audience")
            token = mint_identity_token(
                key=ring.signer(self._outbound_alg),
                issuer=self._issuer,
                client_id=client_id,
                sub=subject.principal,
                aud=audiences[0],
                now=now,
                lifetime=lifetime,
                grant_type=self.grant_type,
                extra=extra,
                parent_jti=parent,
            )
        else:
            if request.dpop_jkt:
                extra["cnf"] = {"jkt": request.dpop_jkt}
            if self._statuses is not None and lifetime >= self._status_min_lifetime:
                status = await self._statuses.allocate()
            token = mint_access_token(
                key=ring.signer(self._alg),
                issuer=self._issuer,
                client_id=client_id,
                sub=subject.principal,
                aud=audiences,
                scope=scope,
                now=now,
                lifetime=lifetime,
                grant_type=self.grant_type,
                extra=extra or None,
                status=status,
                parent_jti=parent,
            )
        event = AuditEvent(
            "token.issued",
            actor=actor.principal
            if actor is not None and mode != "self"
            else (caller.client_id if caller else subject.principal),
            subject=subject.principal,
            data={
                "grant_type": self.grant_type,
                "jti": token.record.jti,
                "aud": audiences,
                "scope": " ".join(scope),
                "kid": token.record.kid,
                "exp": token.record.exp,
                "mode": mode,
                "issued_token_type": requested,
                "act_depth": act_depth(act),
                **({"trust": subject.trust} if subject.trust else {}),
                **({"actor_trust": actor.trust} if actor is not None and actor.trust else {}),
                **({"status_list": status.list_id, "status_idx": status.idx} if status else {}),
            },
        )
        try:
            await self._recorder.record_issuance(token.record, uses, event)
        except AssertionReplayed as e:
            if request.client is not None and e.concerns(request.client.assertion):
                raise InvalidClient("client_assertion was already used (jti replay)") from None
            raise InvalidRequest("a presented token was already used (jti replay)") from None
        if requested == JWT:
            body: dict[str, Any] = {
                "access_token": token.value,
                "issued_token_type": JWT,
                "token_type": "N_A",  # RFC 8693 §2.2.1: not an access token
                "expires_in": lifetime,
            }
        else:
            body = {
                "access_token": token.value,
                "issued_token_type": ACCESS_TOKEN,
                "token_type": "DPoP" if request.dpop_jkt else "Bearer",
                "expires_in": lifetime,
            }
            if scope:
                body["scope"] = " ".join(scope)
        return TokenResponse(body)


def _header(token: str) -> dict[str, Any]:
    try:
        header, _, _, _ = parse_compact(token)
    except Exception:
        return {}
    return header


def _check_may_act(may_act: Any, actor: Party) -> None:
    """RFC 8693 §4.4: ``may_act`` names who may act for the subject; absent, policy decides."""
    if may_act is None:
        return
    if not isinstance(may_act, dict) or may_act.get("sub") != actor.principal:
        raise InvalidRequest("the subject token's may_act does not name this actor")
    if "iss" in may_act and may_act["iss"] != actor.iss:
        raise InvalidRequest("the subject token's may_act names another issuer for this actor")


def narrow_audiences(wanted: list[str], parties: list[Party]) -> list[str]:
    allowed = set(parties[0].audiences)
    for p in parties[1:]:
        allowed &= p.audiences
    if not wanted:
        wanted = [a for a in parties[0].default_audiences if a in allowed]
        if not wanted:
            raise InvalidTarget("no audience was requested and there is no default both parties may use")
    outside = [a for a in wanted if a not in allowed]
    if outside:
        raise InvalidTarget(f"audience not allowed: {' '.join(outside)[:200]}")
    return wanted


def narrow_scope(requested: str | None, parties: list[Party]) -> list[str]:
    allowed = set(parties[0].scopes)
    for p in parties[1:]:
        allowed &= p.scopes
    if requested is None:
        return [s for s in parties[0].default_scopes if s in allowed]
    try:
        scope = parse_scope(requested)
    except ValueError as e:
        raise InvalidScope(str(e)) from None
    extra = [s for s in scope if s not in allowed]
    if extra:
        raise InvalidScope(f"scope not allowed: {' '.join(extra)[:200]}")
    return scope
