"""The composition root shared by ``tessera serve`` and the CLI: settings → KEK → store → keys.

First start creates what is missing: the data directory, the database schema, a KEK file (only
when ``TESSERA_KEK`` is not set) and an active and a next signing key per configured algorithm.
Clients declared in the config file are synced into the registry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from tessera.audit import AuditEvent
from tessera.clock import Clock, SystemClock
from tessera.federation.config import FederationConfigError, TrustedIssuer, parse_trusted_issuers
from tessera.oauth.bundle import build_bundle
from tessera.oauth.clients import SECRET_METHODS, Client, ClientPolicy, hash_secret, validate_metadata
from tessera.oauth.endpoints.discovery import metadata
from tessera.oauth.endpoints.status_lists import status_list_token
from tessera.oauth.errors import OAuthError
from tessera.oauth.keys import KEK, KekError, KeyRing
from tessera.oauth.revocation import TokenSelector, revocation_event
from tessera.oauth.status_entries import status_list_uri
from tessera.settings import Settings, SettingsError
from tessera.store.sql import repo
from tessera.store.sql.store import SqlStore

__all__ = [
    "SUPPORTED_GRANTS",
    "Runtime",
    "audit_checkpoint",
    "check_trusted_issuers",
    "client_policy",
    "delete_trusted_issuer",
    "export_bundle",
    "load_trusted_issuers",
    "open_runtime",
    "put_trusted_issuer",
    "server_metadata",
]

log = logging.getLogger("tessera")
SUPPORTED_GRANTS = (
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:openid:params:grant-type:ciba",
)


def client_policy(settings: Settings) -> ClientPolicy:
    return ClientPolicy(
        grant_types=SUPPORTED_GRANTS,
        max_token_lifetime=settings.access_token_lifetime,
        allow_http_loopback_jwks_uri=settings.dev_mode,
    )


def server_metadata(settings: Settings) -> dict[str, Any]:
    """The RFC 8414 metadata document, as served and as put in trust bundles."""
    return metadata(
        issuer=settings.issuer,
        grant_types=SUPPORTED_GRANTS,
        signing_algs=settings.signing_algs,
        registration=bool(settings.registration_token),
        authorization_details_types=settings.authorization_details_types,
    )


@dataclass
class Runtime:
    settings: Settings
    store: SqlStore
    kek: KEK
    clock: Clock

    def close(self) -> None:
        self.store.close()


def _load_kek(settings: Settings, store: SqlStore) -> KEK:
    if settings.kek:
        return KEK.from_text(settings.kek)
    path = settings.data_dir / "kek"
    if path.exists():
        return KEK.from_text(path.read_text())
    if store.read(repo.load_keys):
        raise KekError(f"signing keys exist but no key-encryption key was found: set TESSERA_KEK or restore {path}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(KEK.generate_text() + "\n")
    log.warning(
        "created a key-encryption key at %s; in production, set TESSERA_KEK from a secret store "
        "instead of keeping it beside the database",
        path,
    )
    return KEK.from_text(path.read_text())


def _check_kek(kek: KEK, store: SqlStore) -> None:
    """Refuse a KEK that does not open the stored keys, before anything is sealed under it."""
    for rec in store.read(repo.load_keys):
        if rec.sealed_private is not None:
            kek.open(rec.sealed_private, rec.kid.encode())
            return


def _declared_client(raw: dict[str, Any], settings: Settings, now: int) -> Client:
    if not isinstance(raw.get("client_id"), str) or not raw["client_id"]:
        raise SettingsError("clients: every declared client needs a client_id")
    cid = raw["client_id"]
    try:
        md = validate_metadata(
            {k: v for k, v in raw.items() if k not in ("client_id", "client_secret", "client_secret_sha256")},
            client_policy(settings),
        )
    except OAuthError as e:
        raise SettingsError(f"clients.{cid}: {e.description}") from None
    secret_hash = None
    if md["token_endpoint_auth_method"] in SECRET_METHODS:
        if raw.get("client_secret_sha256"):
            secret_hash = str(raw["client_secret_sha256"]).lower()
        elif raw.get("client_secret"):
            if len(str(raw["client_secret"])) < 32:
                raise SettingsError(f"clients.{cid}: client_secret must be at least 32 characters")
            secret_hash = hash_secret(str(raw["client_secret"]))
        else:
            raise SettingsError(f"clients.{cid}: a secret method needs client_secret or client_secret_sha256")
    return Client(client_id=cid, metadata=md, secret_hash=secret_hash, source="config", created_at=now, updated_at=now)


def sync_declared_clients(settings: Settings, store: SqlStore) -> None:
    now = int(store.clock.now())
    declared = {c.client_id: c for c in (_declared_client(raw, settings, now) for raw in settings.clients)}
    with store.transaction() as conn:
        # Several hosts may start at once with a changed config: one syncs at a time (SQLite's BEGIN
        # IMMEDIATE already serializes writers; PostgreSQL needs the lock).
        repo.serialize(conn, "declared-clients")
        events: list[AuditEvent] = []
        existing = {c.client_id: c for c in repo.list_clients(conn, limit=1_000_000)}
        for cid, want in declared.items():
            have = existing.get(cid)
            if have is None:
                repo.insert_client(conn, want)
                events.append(
                    AuditEvent("client.declared", actor="config", subject=cid, data={"metadata": want.metadata})
                )
            elif have.source != "config":
                raise SettingsError(f"clients.{cid}: a client with this id was registered by other means")
            elif (have.metadata, have.secret_hash) != (want.metadata, want.secret_hash):
                repo.update_client(conn, Client(cid, want.metadata, want.secret_hash, "config", have.created_at, now))
                events.append(
                    AuditEvent("client.updated", actor="config", subject=cid, data={"metadata": want.metadata})
                )
        now_s = int(store.clock.now())
        for cid, have in existing.items():
            if have.source == "config" and cid not in declared:
                repo.delete_client(conn, cid)
                events.append(AuditEvent("client.deleted", actor="config", subject=cid, data={"via": "config"}))
                selector = TokenSelector(client_id=cid)
                revoked = repo.revoke_tokens(conn, selector, now_s, now_s - settings.leeway)
                events.append(revocation_event(selector, revoked, actor="config", via="config"))
        repo.append_audit(conn, events, store.now_ms())


def sync_declared_issuers(settings: Settings, store: SqlStore) -> None:
    """Trusted issuers of the config file into the store (source "config"); the admin API and CLI
    manage the others. A name used by an operator-added issuer cannot be declared."""
    declared = {raw["name"]: raw for raw in settings.trusted_issuers}
    now = int(store.clock.now())
    with store.transaction() as conn:
        repo.serialize(conn, "declared-issuers")
        existing = {i.name: i for i in repo.list_trusted_issuers(conn)}
        events: list[AuditEvent] = []
        for name, raw in declared.items():
            have = existing.get(name)
            if have is not None and have.source != "config":
                raise SettingsError(f"trusted_issuers.{name}: an issuer with this name was added by an operator")
            if have is None or have.config != raw:
                repo.put_trusted_issuer(conn, name, raw, "config", now)
                kind = "issuer.declared" if have is None else "issuer.updated"
                events.append(AuditEvent(kind, actor="config", subject=name, data={"config": raw}))
        for name, have in existing.items():
            if have.source == "config" and name not in declared:
                repo.delete_trusted_issuer(conn, name)
                events.append(AuditEvent("issuer.deleted", actor="config", subject=name, data={"via": "config"}))
        try:
            check_trusted_issuers(settings, [i.config for i in repo.list_trusted_issuers(conn)])
        except FederationConfigError as e:
            raise SettingsError(str(e)) from None
        repo.append_audit(conn, events, store.now_ms())


def check_trusted_issuers(settings: Settings, configs: list[dict[str, Any]]) -> dict[str, TrustedIssuer]:
    """Parse a complete set of trust configurations (names and issuers unique across all of them)."""
    return parse_trusted_issuers(
        configs,
        own_issuer=settings.issuer,
        max_lifetime=settings.access_token_lifetime,
        leeway=settings.leeway,
        allow_http=settings.dev_mode,
    )


def put_trusted_issuer(runtime: Runtime, name: str, config: dict[str, Any], actor: str) -> bool:
    """Add or replace an operator-managed trusted issuer (admin API, CLI); True if created.

    ``FederationConfigError`` names what is wrong; ``PermissionError`` if the config file declares it."""
    settings, store = runtime.settings, runtime.store
    config = {**config, "name": name}
    now = int(runtime.clock.now())
    with store.transaction() as conn:
        repo.serialize(conn, "declared-issuers")
        existing = {i.name: i for i in repo.list_trusted_issuers(conn)}
        if name in existing and existing[name].source == "config":
            raise PermissionError("this issuer is declared in the config file; change it there")
        others = [i.config for n, i in existing.items() if n != name]
        check_trusted_issuers(settings, [*others, config])
        created = repo.put_trusted_issuer(conn, name, config, "admin", now)
        kind = "issuer.created" if created else "issuer.updated"
        repo.append_audit(conn, [AuditEvent(kind, actor=actor, subject=name, data={"config": config})], store.now_ms())
    return created


def delete_trusted_issuer(runtime: Runtime, name: str, actor: str) -> bool:
    store = runtime.store
    with store.transaction() as conn:
        repo.serialize(conn, "declared-issuers")
        existing = {i.name: i for i in repo.list_trusted_issuers(conn)}
        if name not in existing:
            return False
        if existing[name].source == "config":
            raise PermissionError("this issuer is declared in the config file; remove it there")
        repo.delete_trusted_issuer(conn, name)
        event = AuditEvent("issuer.deleted", actor=actor, subject=name, data={"via": "admin"})
        repo.append_audit(conn, [event], store.now_ms())
    return True


def load_trusted_issuers(settings: Settings, store: SqlStore) -> list[TrustedIssuer]:
    """Every stored trust configuration that still parses under the current settings; one that does
    not (say dev_mode was turned off under an http:// issuer) is left out — refused, never half-used."""
    out: list[TrustedIssuer] = []
    for stored in store.read(repo.list_trusted_issuers):
        try:
            out.extend(check_trusted_issuers(settings, [stored.config]).values())
        except FederationConfigError as e:
            log.error("trusted issuer %s is not used: %s", stored.name, e)
    return out


def open_runtime(
    settings: Settings, clock: Clock | None = None, *, migrate: bool = True, bootstrap: bool = True
) -> Runtime:
    clock = clock or SystemClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.database_url, clock, client_cache_ttl=settings.client_cache_ttl, leeway=settings.leeway)
    try:
        if migrate:
            store.migrate()
        kek = _load_kek(settings, store)
        _check_kek(kek, store)
        if bootstrap:
            store.bootstrap_keys(settings.signing_algs, kek)
            sync_declared_clients(settings, store)
            sync_declared_issuers(settings, store)
        runtime = Runtime(settings, store, kek, clock)
        if bootstrap:
            from tessera.approval_runtime import sync_declared_people

            sync_declared_people(runtime)
    except Exception:
        store.close()
        raise
    return runtime


def audit_checkpoint(runtime: Runtime, *, unless_newer_than: float = 0) -> dict[str, Any] | None:
    """Sign the audit chain's head with the active key and append it as an ``audit.checkpoint`` record.

    With ``unless_newer_than`` (seconds), nothing is made if a checkpoint that recent exists: every
    server process runs the periodic checkpoint, and without a leader they would each make one per
    interval. The check is made holding the chain's head lock, so of processes that wake together one
    makes the checkpoint and the others find it. None when skipped.
    """
    from tessera.audit.checkpoint import CHECKPOINT_TYP, checkpoint_claims
    from tessera.oauth.jws import sign_compact

    settings, store = runtime.settings, runtime.store
    now = int(runtime.clock.now())
    key = KeyRing.from_records(store.read(repo.load_keys), runtime.kek, now).signer(settings.signing_algs[0])
    with store.transaction() as conn:
        seq, head = repo.audit_head_row(conn, lock=True)
        last = repo.last_event_ts(conn, "audit.checkpoint") if unless_newer_than > 0 else None
        if last is not None and last > store.now_ms() - unless_newer_than * 1000:
            return None
        token = sign_compact(
            {"alg": key.alg, "kid": key.kid, "typ": CHECKPOINT_TYP},
            checkpoint_claims(settings.issuer, seq, head, now),
            key.private,
        )
        data = {"seq": seq, "hash": head, "jws": token, "kid": key.kid}
        repo.append_audit(conn, [AuditEvent("audit.checkpoint", actor="system", data=data)], store.now_ms())
    return data


def export_bundle(runtime: Runtime, lifetime: int) -> str:
    """A signed trust bundle (``tessera.oauth.bundle``) of the current metadata, keys and status lists."""
    settings, store = runtime.settings, runtime.store
    now = int(runtime.clock.now())
    ring = KeyRing.from_records(store.read(repo.load_keys), runtime.kek, now)
    key = ring.signer(settings.signing_algs[0])
    lists: dict[str, str] = {}
    for list_id in store.live_status_lists():
        state = store.status_list(list_id)
        if state is not None:
            lists[status_list_uri(settings.issuer, list_id)] = status_list_token(
                key=key, issuer=settings.issuer, state=state, now=now, ttl=settings.status_list_ttl, exp=now + lifetime
            )
    return build_bundle(
        key=key,
        issuer=settings.issuer,
        now=now,
        lifetime=lifetime,
        metadata=server_metadata(settings),
        jwks=ring.jwks,
        status_lists=lists,
    )
