"""Dynamic client registration — RFC 7591, and its management protocol, RFC 7592.

Registration needs the initial access token (RFC 7591 §3, bearer). Each registration returns a
registration access token (256-bit, stored as its SHA-256 digest) that alone reads, updates and
deletes that client at its ``registration_client_uri``. RFC 7592 §2: a token that is not valid —
including one for a client that does not exist — is answered with 401, revealing nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from tessera.audit import AuditEvent
from tessera.oauth.clients import (
    SECRET_METHODS,
    Client,
    ClientPolicy,
    generate_client_id,
    generate_secret,
    hash_secret,
    parse_scope,
    secret_matches,
    validate_metadata,
)
from tessera.oauth.errors import InvalidClientMetadata, InvalidToken
from tessera.store.interfaces import ClientReader, ClientWriter

__all__ = ["RegistrationEndpoint", "bearer_token"]

READ_ONLY = ("registration_access_token", "registration_client_uri", "client_id_issued_at", "client_secret_expires_at")


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
        return token or None
    return None


def _only_narrows(client: Client, new: dict[str, Any]) -> None:
    """A client managing itself (RFC 7592) may change its keys, name and contacts, and narrow what it may
    obtain — never widen it: the registration access token must not undo an operator's restriction."""
    old = client.metadata
    widened = []
    if not set(new["grant_types"]) <= set(old.get("grant_types", ["client_credentials"])):
        widened.append("grant_types")
    if not set(parse_scope(new.get("scope", ""))) <= set(parse_scope(old.get("scope", ""))):
        widened.append("scope")
    old_targets = set(old.get("allowed_resources", [])) | (
        {old["default_resource"]} if "default_resource" in old else set()
    )
    if not set(new.get("allowed_resources", [])) <= old_targets:
        widened.append("allowed_resources")
    if "default_resource" in new and new["default_resource"] not in old_targets:
        widened.append("default_resource")
    if (
        "access_token_lifetime" in old
        and new.get("access_token_lifetime", old["access_token_lifetime"] + 1) > old["access_token_lifetime"]
    ):
        widened.append("access_token_lifetime")
    for flag in ("may_delegate", "may_impersonate"):
        if new.get(flag) and not old.get(flag):
            widened.append(flag)
    if new.get("federated_credentials") and new["federated_credentials"] != old.get("federated_credentials"):
        widened.append("federated_credentials")
    if widened:
        raise InvalidClientMetadata(
            f"a client cannot widen its own registration ({', '.join(widened)}); ask an operator"
        )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: metadata only the server sets; a client's RFC 7592 update keeps them as they are
SERVER_CONTROLLED = ("onboarding", "quarantined", "suspended")


class RegistrationEndpoint:
    def __init__(
        self,
        *,
        issuer: str,
        initial_access_token: str | None,
        policy: ClientPolicy,
        reader: ClientReader,
        writer: ClientWriter,
        now: Callable[[], float],
        onboarding: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None,
    ) -> None:
        self._onboarding = onboarding
        self._issuer = issuer
        self._initial = initial_access_token
        self._policy = policy
        self._reader = reader
        self._writer = writer
        self._now = now

    @property
    def enabled(self) -> bool:
        return bool(self._initial)

    def client_uri(self, client_id: str) -> str:
        return f"{self._issuer}/oauth/register/{client_id}"

    def _response(self, client: Client, *, secret: str | None = None, rat: str | None = None) -> dict[str, Any]:
        out = client.public_view()
        out["registration_client_uri"] = self.client_uri(client.client_id)
        if client.auth_method in SECRET_METHODS:
            out["client_secret_expires_at"] = 0
        if secret:
            out["client_secret"] = secret
        if rat:
            out["registration_access_token"] = rat
        return out

    def check_initial_token(self, authorization: str | None) -> None:
        token = bearer_token(authorization)
        if not self._initial or token is None or not hmac.compare_digest(token.encode(), self._initial.encode()):
            raise InvalidToken("a valid initial access token is required (RFC 7591 §3)")

    async def register(self, authorization: str | None, body: Any) -> dict[str, Any]:
        self.check_initial_token(authorization)
        metadata = validate_metadata(body, self._policy)
        granted = [flag for flag in ("may_delegate", "may_impersonate") if metadata.get(flag)]
        if granted:
            # Acting for other subjects is a privilege an operator grants (admin API, CLI, config file);
            # the holder of an initial access token cannot give it to the client it registers.
            raise InvalidClientMetadata(f"{', '.join(granted)} can only be set by an operator")
        now = int(self._now())
        secret = generate_secret() if metadata["token_endpoint_auth_method"] in SECRET_METHODS else None
        rat = secrets.token_urlsafe(32)
        client_id = generate_client_id()
        if self._onboarding is not None:
            # The flows in force decide (docs/flows.md, trigger client.register): a denial is
            # invalid_client_metadata; an approval step registers the client with no token until approved.
            marker = await self._onboarding(client_id, metadata)
            if marker is not None:
                metadata = {**metadata, "onboarding": marker}
        client = Client(
            client_id=client_id,
            metadata=metadata,
            secret_hash=hash_secret(secret) if secret else None,
            source="registration",
            created_at=now,
            updated_at=now,
            registration_token_hash=_digest(rat),
        )
        await self._writer.create_client(
            client,
            AuditEvent(
                "client.registered",
                actor="registration",
                subject=client.client_id,
                data={"metadata": metadata, "via": "rfc7591"},
            ),
        )
        return self._response(client, secret=secret, rat=rat)

    async def _authorized(self, client_id: str, authorization: str | None) -> Client:
        token = bearer_token(authorization)
        client = await self._reader.get_client(client_id) if token and len(client_id) <= 256 else None
        if (
            client is None
            or token is None
            or not client.registration_token_hash
            or not hmac.compare_digest(_digest(token).encode(), client.registration_token_hash.encode())
        ):
            raise InvalidToken("the registration access token is not valid for this client")
        return client

    async def read(self, client_id: str, authorization: str | None) -> dict[str, Any]:
        # RFC 7592 §3: the client information response includes the registration access token; the one
        # presented is still the valid one (it is only stored hashed, so it is echoed, not looked up).
        client = await self._authorized(client_id, authorization)
        return self._response(client, rat=bearer_token(authorization))

    async def update(self, client_id: str, authorization: str | None, body: Any) -> dict[str, Any]:
        client = await self._authorized(client_id, authorization)
        if not isinstance(body, dict):
            raise InvalidClientMetadata("client metadata must be a JSON object")
        # RFC 7592 §2.2: the request MUST include client_id, and it must be this client's.
        if body.get("client_id") != client.client_id:
            raise InvalidClientMetadata("client_id in the body must be the client being updated")
        if "client_secret" in body and not secret_matches(str(body["client_secret"]), client.secret_hash):
            raise InvalidClientMetadata("client_secret does not match the current secret")
        fields = {k: v for k, v in body.items() if k not in READ_ONLY and k not in ("client_id", "client_secret")}
        metadata = validate_metadata(fields, self._policy)
        _only_narrows(client, metadata)
        for kept in SERVER_CONTROLLED:
            # Set by the server (onboarding approval, quarantine), never by the client's own update.
            if kept in client.metadata:
                metadata[kept] = client.metadata[kept]
        secret = None
        secret_hash = client.secret_hash
        if metadata["token_endpoint_auth_method"] in SECRET_METHODS:
            if not secret_hash:
                secret = generate_secret()
                secret_hash = hash_secret(secret)
        else:
            secret_hash = None
        updated = Client(
            client_id=client.client_id,
            metadata=metadata,
            secret_hash=secret_hash,
            source=client.source,
            created_at=client.created_at,
            updated_at=int(self._now()),
            registration_token_hash=client.registration_token_hash,
        )
        await self._writer.update_client(
            updated,
            AuditEvent(
                "client.updated",
                actor="registration",
                subject=client.client_id,
                data={"metadata": metadata, "via": "rfc7592", "secret_issued": secret is not None},
            ),
        )
        return self._response(updated, secret=secret, rat=bearer_token(authorization))

    async def delete(self, client_id: str, authorization: str | None) -> None:
        client = await self._authorized(client_id, authorization)
        await self._writer.delete_client(
            client.client_id,
            AuditEvent("client.deleted", actor="registration", subject=client.client_id, data={"via": "rfc7592"}),
        )
