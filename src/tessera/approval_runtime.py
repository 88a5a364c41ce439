"""Composition of the approval side: settings → channels, the approval service and declared people.

Kept beside ``runtime.py`` (the composition root): the approval core (``tessera.approvals``) and the
channels (``tessera.channels``) never import the store or the settings themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tessera.approvals.errors import ApprovalError
from tessera.approvals.people import parse_people
from tessera.approvals.service import ApprovalConfig, ApprovalService
from tessera.channels.file import FileChannel
from tessera.channels.message import Channel
from tessera.channels.smtp import SmtpChannel
from tessera.channels.webhook import WebhookChannel
from tessera.settings import Settings, SettingsError, is_loopback_host
from tessera.store.sql.approvals import SqlApprovalStore

if TYPE_CHECKING:
    from tessera.runtime import Runtime

__all__ = ["approval_config", "approval_service", "build_channels", "sync_declared_people"]

log = logging.getLogger("tessera.approvals")


def build_channels(settings: Settings) -> dict[str, Channel]:
    """Every configured channel by name: "email" (SMTP), "webhook:<name>", and "file" (always: the
    development channel, a JSON-lines file beside the database unless ``outbox_file`` names one)."""
    out: dict[str, Channel] = {}
    if settings.smtp_host:
        try:
            out["email"] = SmtpChannel(
                settings.smtp_host,
                settings.smtp_port,
                settings.smtp_from,
                tls=settings.smtp_tls,  # type: ignore[arg-type]
                username=settings.smtp_username or None,
                password=settings.smtp_password or None,
            )
        except ValueError as e:
            raise SettingsError(f"smtp: {e}") from None
    for raw in settings.webhooks:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("url"), str):
            raise SettingsError("webhooks: every webhook needs a name and a url")
        keys = raw.get("keys") or []
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise SettingsError(f"webhooks.{raw['name']}: keys must list at least one whsec_ or whsk_ key")
        try:
            ch = WebhookChannel(raw["name"], raw["url"], keys, allow_http_loopback=settings.dev_mode)
        except ValueError as e:
            raise SettingsError(f"webhooks.{raw['name']}: {e}") from None
        if ch.name in out:
            raise SettingsError(f"webhooks: two webhooks are named {raw['name']}")
        out[ch.name] = ch
    out["file"] = FileChannel(settings.outbox_file or settings.data_dir / "messages.jsonl")
    return out


def approval_config(settings: Settings, channels: set[str] | frozenset[str]) -> ApprovalConfig:
    rp_id = settings.rp_id
    if not rp_id or (rp_id.replace(".", "").isdigit() and not is_loopback_host(rp_id)) or ":" in rp_id:
        log.warning("WebAuthn needs a host name as its relying party id (got %r): passkeys will not work", rp_id)
    return ApprovalConfig(
        issuer=settings.issuer,
        origin=settings.origin,
        rp_id=rp_id,
        link_ttl=settings.approval_link_ttl,
        max_ttl=settings.approval_max_ttl,
        enrol_ttl=settings.enrolment_link_ttl,
        max_attempts=settings.approval_max_attempts,
        max_failures=settings.approval_max_failures,
        per_person_per_minute=settings.messages_per_person_per_minute,
        per_requester_per_minute=settings.messages_per_requester_per_minute,
        channels=frozenset(channels),
    )


def approval_service(
    runtime: Runtime,
    *,
    channels: set[str] | frozenset[str] | None = None,
    on_enqueue: Callable[[], None] = lambda: None,
) -> ApprovalService:
    names = channels if channels is not None else set(build_channels(runtime.settings))
    return ApprovalService(
        SqlApprovalStore(runtime.store),
        runtime.kek,
        approval_config(runtime.settings, names),
        now=runtime.clock.now,
        on_enqueue=on_enqueue,
    )


def sync_declared_people(runtime: Runtime) -> None:
    """People of the config file into the store (source "config"); the admin API and CLI manage the others."""
    settings = runtime.settings
    declared = {p.person_id: p for p in parse_people(settings.people)}
    service = approval_service(runtime)
    existing = {rec.person.person_id: rec for rec, _ in service.list_people()}
    for pid, person in declared.items():
        have = existing.get(pid)
        if have is not None and have.source != "config":
            raise SettingsError(f"people.{pid}: a person with this id was added by an operator")
        if have is None or have.person.to_json() != person.to_json():
            raw: dict[str, Any] = person.to_json()
            try:
                service.put_person(raw, pid, "config", source="config")
            except ApprovalError as e:
                raise SettingsError(f"people.{pid}: {e.description}") from None
    for pid, have in existing.items():
        if have.source == "config" and pid not in declared:
            service.delete_person(pid, "config", source_ok=True)
