"""The backchannel authentication endpoint — OpenID Connect CIBA Core 1.0 §7 (request), §7.3
(acknowledgement), §13 (errors).

A confidential client registered for the CIBA grant names the person (exactly one of ``login_hint``,
``id_token_hint``, ``login_hint_token``) and what it wants (``scope`` with ``openid``, RFC 9396
``authorization_details``, a ``binding_message``); Tessera opens an approval request for that person
(``tessera.approvals``: a one-time link on their channels, proof with an enrolled authenticator) and
answers with an ``auth_req_id`` the client redeems at the token endpoint once the person approved.
Signed requests (§7.1.1) carry every parameter inside a JWS the client signed with its registered key.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.approvals.errors import ApprovalError, RateLimited
from tessera.approvals.people import Person
from tessera.approvals.service import ApprovalService
from tessera.audit import AuditEvent
from tessera.channels.message import Message, new_message_id
from tessera.oauth.ciba import CIBA_GRANT, aal_of_acr, auth_req_hash
from tessera.oauth.client_auth import AssertionUse, AuthenticatedClient, ClientAuthenticator, assertion_replayed
from tessera.oauth.clients import parse_scope
from tessera.oauth.errors import (
    AccessDenied,
    ExpiredLoginHintToken,
    InvalidAuthorizationDetails,
    InvalidBindingMessage,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidUserCode,
    MissingUserCode,
    UnauthorizedClient,
    UnknownUserId,
)
from tessera.oauth.forms import Form
from tessera.oauth.grants.client_credentials import resolve_audience
from tessera.oauth.keys import KeyRing
from tessera.oauth.tokens import NotOurToken, read_id_token
from tessera.store.interfaces import AssertionRecorder, AssertionReplayed
from tessera.verify.tool_calls import TOOL_INVOCATION, check_entry

__all__ = ["BackchannelEndpoint", "CibaPolicy"]

#: RFC 6750 §2.1 b64token
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_CLIENT_AUTH = {"client_id", "client_secret", "client_assertion", "client_assertion_type"}
_REQUEST_CLAIMS = {"iss", "aud", "exp", "iat", "nbf", "jti"}
MAX_REQUEST_OBJECT_LIFETIME = 3600


@dataclass(frozen=True)
class CibaPolicy:
    max_expiry: int = 300
    interval: int = 5
    default_assurance: str = "aal2"
    binding_message_max: int = 64
    authorization_details_types: tuple[str, ...] = ()
    #: seconds of clock skew tolerated on request objects
    leeway: int = 30


class BackchannelEndpoint:
    def __init__(
        self,
        *,
        issuer: str,
        authenticator: ClientAuthenticator,
        approvals: ApprovalService,
        keys: Callable[[], KeyRing],
        replay: AssertionRecorder,
        now: Callable[[], float],
        policy: CibaPolicy,
        login_hint_token: Callable[[str], Any] | None = None,
        default_audience: str,
    ) -> None:
        self._issuer = issuer
        self._authn = authenticator
        self._approvals = approvals
        self._keys = keys
        self._replay = replay
        self._now = now
        self._policy = policy
        self._login_hint_token = login_hint_token
        self._default_audience = default_audience

    async def handle(self, headers: Mapping[str, str], form: Form) -> dict[str, Any]:
        authn = await self._authn.authenticate_confidential(headers, form)
        client = authn.client
        cid = client.client_id
        if authn.assertion is not None:
            # RFC 7523 §3 (7): a client assertion is single use here as at the token endpoint.
            try:
                await self._replay.consume_assertion(authn.assertion)
            except AssertionReplayed:
                raise assertion_replayed(cid) from None
        if CIBA_GRANT not in client.grant_types:
            raise UnauthorizedClient("the client is not registered for the CIBA grant", client_id=cid)
        params = await self._parameters(authn, form)
        scope = self._scope(params, client)
        person = await self._person(params, authn)
        mode = client.metadata.get("backchannel_token_delivery_mode", "poll")
        token = params.get("client_notification_token")
        if mode == "ping":
            # §7.1: client_notification_token is REQUIRED for the ping mode.
            if not isinstance(token, str) or not token:
                raise InvalidRequest("client_notification_token is required for the ping mode", client_id=cid)
            if len(token) > 1024 or not _B64TOKEN.match(token):
                raise InvalidRequest("client_notification_token must be an RFC 6750 bearer token (<= 1024)")
        self._user_code(params, client.metadata.get("backchannel_user_code_parameter", False), person, cid)
        binding = self._binding_message(params.get("binding_message"), cid)
        details = self._authorization_details(params.get("authorization_details"), cid)
        expires_in = self._expiry(params.get("requested_expiry"), authn)
        acr = params.get("acr_values")
        if acr is not None and not isinstance(acr, str):
            raise InvalidRequest("acr_values must be a string", client_id=cid)
        assurance = aal_of_acr(acr, self._policy.default_assurance)
        if assurance is None:
            raise InvalidRequest("none of the acr_values is supported", client_id=cid)

        auth_req_id = secrets.token_urlsafe(32)  # 256 bits (§7.3: at least 128 bits; FAPI-CIBA: 160)
        key = auth_req_hash(auth_req_id)
        now = int(self._now())
        audience = self._audience(params.get("resource"), details, client)
        body = {
            "requester": cid,
            "on_behalf_of": person.person_id,
            "action": "authorize " + (client.metadata.get("client_name") or cid),
            "resource": ", ".join(audience)
            if any(d["type"] == TOOL_INVOCATION for d in details)
            else ", ".join(sorted({d["type"] for d in details}))
            if details
            else "scope: " + " ".join(scope),
            "scope": scope,
            "authorization_details": details,
            "binding_message": binding,
            "approvers": [person.person_id],
            "quorum": 1,
            "assurance": assurance,
            "ttl": max(30, expires_in),  # the approval may outlive a very short request; the record decides
            "environment": {"client": cid, "delivery": mode},
        }
        ping = None
        if mode == "ping":
            endpoint = client.metadata["backchannel_client_notification_endpoint"]
            ping = Message(
                id=new_message_id(),
                channel="ciba-ping",
                kind="ciba.ping",
                recipient=endpoint[:500],
                subject="",
                text="",
                data={"endpoint": endpoint, "token": token, "auth_req_id": auth_req_id},
                created_at=now,
            )
        grant = {"scope": scope, "audience": audience, "authorization_details": details, "assurance": assurance}

        def record(tx: Any, approval_id: str) -> None:
            tx.insert_ciba(
                {
                    "auth_req_hash": key,
                    "client_id": cid,
                    "person_id": person.person_id,
                    "approval_id": approval_id,
                    "grant": grant,
                    "mode": mode,
                    "interval": self._policy.interval,
                    "last_poll_at": None,
                    "status": "pending",
                    "created_at": now,
                    "expires_at": now + expires_in,
                }
            )
            tx.audit(
                AuditEvent(
                    "ciba.requested",
                    actor=cid,
                    subject=person.person_id,
                    data={
                        "approval_id": approval_id,
                        "mode": mode,
                        "expires_in": expires_in,
                        "scope": scope,
                        "assurance": assurance,
                        "authorization_details_types": sorted({d["type"] for d in details}),
                        "signed_request": form.get("request") is not None,
                    },
                )
            )

        try:
            await asyncio.to_thread(
                lambda: self._approvals.create_request(
                    body, cid, origin="ciba", self_service=True, on_decision=ping, also=record
                )
            )
        except RateLimited:
            raise AccessDenied("too many authentication requests for this person or client; try later") from None
        except ApprovalError as e:
            raise AccessDenied(e.description, client_id=cid) from None
        return {"auth_req_id": auth_req_id, "expires_in": expires_in, "interval": self._policy.interval}

    # -- parameters --------------------------------------------------------------------------------------
    async def _parameters(self, authn: AuthenticatedClient, form: Form) -> dict[str, Any]:
        client = authn.client
        cid = client.client_id
        alg = client.metadata.get("backchannel_authentication_request_signing_alg")
        request = form.get("request")
        if request is None:
            if alg is not None:
                raise InvalidRequest("this client must send a signed authentication request (request)", client_id=cid)
            return {k: form.get(k) for k in form if k not in _CLIENT_AUTH}
        # §7.1.1: with a signed request, all parameters are in it; only client authentication is outside.
        extra = [k for k in form if k not in _CLIENT_AUTH and k != "request"]
        if extra:
            raise InvalidRequest(f"parameters outside the signed request are not allowed: {extra[0]}", client_id=cid)
        if request.count(".") == 4:
            raise InvalidRequest("encrypted request objects are not supported", client_id=cid)
        if request.count(".") != 2:
            raise InvalidRequest("request must be a compact JWS", client_id=cid)
        if alg is None:
            if "jwks" not in client.metadata and "jwks_uri" not in client.metadata:
                raise InvalidRequest("the client has no registered keys to sign requests with", client_id=cid)
            try:
                header = json.loads(_b64d(request.split(".", 1)[0]))
                alg = header.get("alg")
            except ValueError:
                raise InvalidRequest("request is not a JWS", client_id=cid) from None
            from tessera.oauth.clients import ASSERTION_ALGS

            if alg not in ASSERTION_ALGS:
                raise InvalidRequest("request must be signed with an asymmetric algorithm", client_id=cid)
        try:
            claims = await self._authn.verify_client_jws(client, request, str(alg))
        except ValueError as e:
            raise InvalidRequest(str(e), client_id=cid) from None
        now = int(self._now())
        leeway = self._policy.leeway
        for name in sorted(_REQUEST_CLAIMS):
            if name not in claims:
                raise InvalidRequest(f"the signed request lacks the {name} claim (CIBA §7.1.1)", client_id=cid)
        aud = claims["aud"]
        if not (aud == self._issuer or (isinstance(aud, list) and self._issuer in aud)):
            raise InvalidRequest("the signed request's aud must be this issuer", client_id=cid)
        if claims["iss"] != cid:
            raise InvalidRequest("the signed request's iss must be the client_id", client_id=cid)
        for name in ("exp", "iat", "nbf"):
            if isinstance(claims[name], bool) or not isinstance(claims[name], int | float):
                raise InvalidRequest(f"{name} must be a number", client_id=cid)
        if claims["exp"] <= now - leeway:
            raise InvalidRequest("the signed request has expired", client_id=cid)
        if claims["nbf"] > now + leeway:
            raise InvalidRequest("the signed request is not valid yet (nbf)", client_id=cid)
        if claims["iat"] > now + leeway:
            raise InvalidRequest("the signed request was issued in the future", client_id=cid)
        # FAPI-CIBA §5.2.2: exp - nbf no longer than 60 minutes.
        if claims["exp"] - claims["nbf"] > MAX_REQUEST_OBJECT_LIFETIME or claims["exp"] - claims["iat"] > 3600:
            raise InvalidRequest("the signed request may live at most 60 minutes", client_id=cid)
        if claims["nbf"] < now - MAX_REQUEST_OBJECT_LIFETIME:
            raise InvalidRequest("the signed request is too old (nbf)", client_id=cid)
        jti = claims["jti"]
        if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
            raise InvalidRequest("jti must be a string", client_id=cid)
        try:
            await self._replay.consume_assertion(AssertionUse(f"ciba-request/{cid}", jti, int(claims["exp"])))
        except AssertionReplayed:
            raise InvalidRequest("the signed request was used before (jti)", client_id=cid) from None
        out = {k: v for k, v in claims.items() if k not in _REQUEST_CLAIMS}
        # §7.1.1: requested_expiry may be a string or a number in a signed request.
        if isinstance(out.get("requested_expiry"), int) and not isinstance(out["requested_expiry"], bool):
            out["requested_expiry"] = str(out["requested_expiry"])
        return out

    def _scope(self, params: Mapping[str, Any], client: Any) -> list[str]:
        raw = params.get("scope")
        if not isinstance(raw, str) or not raw:
            raise InvalidRequest("scope is required and must contain openid (CIBA §7.1)", client_id=client.client_id)
        try:
            scope = parse_scope(raw)
        except ValueError as e:
            raise InvalidRequest(str(e), client_id=client.client_id) from None
        if "openid" not in scope:
            raise InvalidRequest("scope must contain openid (CIBA §7.1)", client_id=client.client_id)
        extra = [s for s in scope if s != "openid" and s not in client.scopes]
        if extra:
            raise InvalidScope(
                f"scope not allowed for this client: {' '.join(extra)[:200]}", client_id=client.client_id
            )
        return scope

    async def _person(self, params: Mapping[str, Any], authn: AuthenticatedClient) -> Person:
        cid = authn.client.client_id
        hints = [h for h in ("login_hint", "id_token_hint", "login_hint_token") if params.get(h) is not None]
        if len(hints) != 1:
            # §7.1: "one and only one of the hints MUST be provided".
            raise InvalidRequest(
                "exactly one of login_hint, id_token_hint, login_hint_token is required", client_id=cid
            )
        value = params[hints[0]]
        if not isinstance(value, str) or not value or len(value) > 8192:
            raise InvalidRequest(f"{hints[0]} must be a non-empty string", client_id=cid)
        if hints[0] == "login_hint":
            who = value
        elif hints[0] == "id_token_hint":
            try:
                claims = read_id_token(value, self._keys(), self._issuer, cid)
            except NotOurToken:
                raise InvalidRequest("id_token_hint is not an ID token this server issued to this client") from None
            who = str(claims["sub"])
        else:
            who = await self._from_login_hint_token(value, cid)
        person = await asyncio.to_thread(self._approvals.find_person, who)
        if person is None:
            raise UnknownUserId("the hint does not identify a known person", client_id=cid)
        if person.agent or person.disabled:
            raise AccessDenied("this person cannot approve requests", client_id=cid)
        record, auths = await asyncio.to_thread(self._approvals.get_person, person.person_id)
        if record.locked_at is not None:
            raise AccessDenied("this person is locked after too many failed proofs", client_id=cid)
        if not auths:
            raise AccessDenied("this person has no enrolled authenticator", client_id=cid)
        return person

    async def _from_login_hint_token(self, value: str, cid: str) -> str:
        """A JWT from a trusted issuer (docs/federation.md) naming the person: the mapped ``person``
        or ``email`` attribute, else an RFC 9493 ``sub_id`` (email or opaque)."""
        from tessera.federation.validator import FederationRefused

        if self._login_hint_token is None:
            raise InvalidRequest("login_hint_token needs a trusted issuer configuration", client_id=cid)
        try:
            identity = await self._login_hint_token(value)
        except FederationRefused as e:
            if "expired" in str(e):
                raise ExpiredLoginHintToken("the login_hint_token has expired", client_id=cid) from None
            raise InvalidRequest(f"login_hint_token is not accepted: {e}", client_id=cid) from None
        for name in ("person", "email"):
            if isinstance(identity.attributes.get(name), str):
                return str(identity.attributes[name])
        sub_id = identity.claims.get("sub_id")
        if isinstance(sub_id, dict):
            if sub_id.get("format") == "email" and isinstance(sub_id.get("email"), str):
                return str(sub_id["email"])
            if sub_id.get("format") == "opaque" and isinstance(sub_id.get("id"), str):
                return str(sub_id["id"])
        raise UnknownUserId("the login_hint_token does not name a person", client_id=cid)

    def _user_code(self, params: Mapping[str, Any], required: bool, person: Person, cid: str) -> None:
        code = params.get("user_code")
        if not required:
            return
        if not isinstance(code, str) or not code:
            raise MissingUserCode("this client must send the person's user_code", client_id=cid)
        if not person.user_code_matches(code):
            raise InvalidUserCode("the user_code is not valid", client_id=cid)

    def _binding_message(self, value: Any, cid: str) -> str | None:
        if value is None:
            return None
        # §7.1: "relatively short" and displayable on both devices; plain printable text only.
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > self._policy.binding_message_max
            or any(not c.isprintable() for c in value)
        ):
            raise InvalidBindingMessage(
                f"binding_message must be 1-{self._policy.binding_message_max} printable characters", client_id=cid
            )
        return value

    def _authorization_details(self, value: Any, cid: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidAuthorizationDetails("authorization_details is not JSON", client_id=cid) from None
        # RFC 9396 §2: a JSON array of objects, each with a "type" string the AS knows.
        if not isinstance(value, list) or not value or len(value) > 16:
            raise InvalidAuthorizationDetails(
                "authorization_details must be a JSON array of 1-16 objects", client_id=cid
            )
        for d in value:
            if not isinstance(d, dict) or not isinstance(d.get("type"), str):
                raise InvalidAuthorizationDetails("each authorization detail is an object with a type", client_id=cid)
            if d["type"] not in self._policy.authorization_details_types:
                raise InvalidAuthorizationDetails(
                    f"unknown authorization details type {d['type'][:64]!r}", client_id=cid
                )
            if d["type"] == TOOL_INVOCATION:
                # One tool call (tessera.verify.tool_calls): the hash is the hash of the arguments shown.
                try:
                    check_entry(d, self._now())
                except ValueError as e:
                    raise InvalidAuthorizationDetails(f"tool_invocation: {e}", client_id=cid) from None
        if len(json.dumps(value)) > 8192:
            raise InvalidAuthorizationDetails("authorization_details is too large", client_id=cid)
        return value

    def _audience(self, resource: Any, details: list[dict[str, Any]], client: Any) -> list[str]:
        """RFC 8707 §2: ``resource`` names where the token will be used. Without it, a ``tool_invocation``
        entry's server (its RFC 9396 §2.2 ``locations``) is the audience, else the client's default."""
        cid = client.client_id
        if resource is not None and (not isinstance(resource, str) or not resource):
            raise InvalidTarget("resource must be one absolute URI (RFC 8707 §2)", client_id=cid)
        servers = list(dict.fromkeys(d["locations"][0] for d in details if d["type"] == TOOL_INVOCATION))
        audience = resolve_audience(client, [resource] if resource else servers, self._default_audience)
        if any(s not in audience for s in servers):
            raise InvalidTarget("a tool_invocation's server must be the token's resource", client_id=cid)
        return audience

    def _expiry(self, value: Any, authn: AuthenticatedClient) -> int:
        if value is None:
            return self._policy.max_expiry
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,9}", value) or int(value) <= 0:
            raise InvalidRequest("requested_expiry must be a positive integer", client_id=authn.client.client_id)
        return min(int(value), self._policy.max_expiry)


def _b64d(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
