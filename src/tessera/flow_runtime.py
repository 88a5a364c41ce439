"""Composition of the flow side: stored versions, publication and rollback, the flows in force.

Versions are immutable and content-addressed; publishing makes one version of a flow the one in force
(audited ``flow.published``); a rollback publishes an earlier version again (``flow.rolled_back``).
Flows that ship with Tessera (``tessera/workflows/default``) are in force until an operator publishes
their own version of the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tessera.audit import AuditEvent
from tessera.store.sql import repo
from tessera.store.sql.tables import approval_requests, flow_published, flow_versions
from tessera.workflows.loader import load_dir, parse_flow
from tessera.workflows.model import Flow

if TYPE_CHECKING:
    from tessera.runtime import Runtime
    from tessera.store.sql.store import SqlStore

__all__ = [
    "DEFAULT_FLOWS",
    "PublicationRefused",
    "flow_by_version",
    "list_versions",
    "publication_digest",
    "publish",
    "published_flows",
    "request_publication_approval",
    "rollback",
    "rollback_target",
]


class PublicationRefused(Exception):
    """The approval named for a publication or rollback does not cover it."""


DEFAULT_FLOWS = Path(__file__).resolve().parent / "workflows" / "default"


def _flow(row: Any) -> Flow:
    return parse_flow(dict(row.document), f"{row.flow_id}@{row.version}")


def published_flows(store: SqlStore) -> list[Flow]:
    """The flows in force: each flow's published version; shipped defaults for ids never published."""

    def work(conn: sa.Connection) -> list[Flow]:
        rows = conn.execute(
            sa.select(flow_versions).join(flow_published, flow_published.c.version == flow_versions.c.version)
        ).all()
        return [_flow(r) for r in rows]

    mine = store.read(work)
    ids = {f.id for f in mine}
    defaults = [f for f in load_dir(DEFAULT_FLOWS) if f.id not in ids] if DEFAULT_FLOWS.is_dir() else []
    return sorted([*mine, *defaults], key=lambda f: f.id)


def flow_by_version(store: SqlStore, version: str) -> Flow | None:
    """Any stored version (a pending request finishes on the version it started on)."""
    row = store.read(lambda c: c.execute(sa.select(flow_versions).where(flow_versions.c.version == version)).first())
    if row is not None:
        return _flow(row)
    if DEFAULT_FLOWS.is_dir():
        return next((f for f in load_dir(DEFAULT_FLOWS) if f.version == version), None)
    return None


def list_versions(store: SqlStore) -> list[dict[str, Any]]:
    def work(conn: sa.Connection) -> list[dict[str, Any]]:
        published = {r.flow_id: r for r in conn.execute(sa.select(flow_published))}
        out = []
        for r in conn.execute(sa.select(flow_versions).order_by(flow_versions.c.flow_id, flow_versions.c.created_at)):
            p = published.get(r.flow_id)
            out.append(
                {
                    "flow": r.flow_id,
                    "version": r.version,
                    "on": r.trigger,
                    "tag": r.tag,
                    "created_at": r.created_at,
                    "status": "published" if p is not None and p.version == r.version else "stored",
                    "published_at": p.published_at if p is not None and p.version == r.version else None,
                }
            )
        return out

    return store.read(work)


def _store_version(conn: sa.Connection, flow: Flow, tag: str | None, actor: str, now: int) -> None:
    exists = conn.execute(sa.select(flow_versions.c.version).where(flow_versions.c.version == flow.version)).first()
    if exists is None:
        conn.execute(
            sa.insert(flow_versions).values(
                version=flow.version,
                flow_id=flow.id,
                trigger=flow.on,
                document=dict(flow.document),
                source=flow.source,
                tag=tag,
                created_at=now,
                created_by=actor,
            )
        )


def _make_current(conn: sa.Connection, flow_id: str, version: str, actor: str, now: int) -> str | None:
    old = conn.execute(sa.select(flow_published.c.version).where(flow_published.c.flow_id == flow_id)).first()
    if old is not None:
        conn.execute(
            sa.update(flow_published)
            .where(flow_published.c.flow_id == flow_id)
            .values(version=version, published_at=now, published_by=actor)
        )
    else:
        conn.execute(
            sa.insert(flow_published).values(flow_id=flow_id, version=version, published_at=now, published_by=actor)
        )
    return old.version if old is not None else None


def publication_digest(kind: str, pairs: Sequence[tuple[str, str]]) -> str:
    """What an approval of a publication (``publish``) or rollback (``rollback``) covers: exactly these
    flows at exactly these versions."""
    text = kind + "\n" + "\n".join(f"{fid}={version}" for fid, version in sorted(pairs))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def request_publication_approval(
    runtime: Runtime, kind: str, pairs: Sequence[tuple[str, str]], actor: str, summary: str
) -> dict[str, Any]:
    """Open the approval request a publication or rollback needs (``TESSERA_FLOW_PUBLISH_APPROVAL``
    names who approves); it covers exactly ``pairs`` and is used once."""
    from tessera.approval_runtime import approval_service

    policy = runtime.settings.flow_publish_approval or {}
    body = {
        **{k: v for k, v in policy.items() if k in ("approvers", "groups", "quorum", "assurance", "ttl")},
        "requester": actor,
        "action": f"{kind} flows",
        "resource": ", ".join(f"{fid}@{version[:22]}" for fid, version in sorted(pairs))[:500],
        "environment": {"changes": summary[:500], "digest": publication_digest(kind, pairs)},
    }
    return approval_service(runtime).create_request(
        body, actor, origin=f"flow-publish:{publication_digest(kind, pairs)}"
    )


def _use_approval(conn: sa.Connection, request_id: str, digest: str) -> None:
    """The approval must be granted, for exactly this change, and not used before; it is used now."""
    r = approval_requests.c
    row = conn.execute(sa.select(r.status, r.origin).where(r.request_id == request_id)).first()
    if row is None:
        raise PublicationRefused(f"no approval request {request_id}")
    if row.origin != f"flow-publish:{digest}":
        used = row.origin == f"flow-publish-used:{digest}"
        raise PublicationRefused(
            f"the approval {request_id} was already used"
            if used
            else f"the approval {request_id} was not given for these flow versions"
        )
    if row.status != "approved":
        raise PublicationRefused(f"the approval {request_id} is {row.status}, not approved")
    conn.execute(
        sa.update(approval_requests).where(r.request_id == request_id).values(origin=f"flow-publish-used:{digest}")
    )


def publish(
    runtime: Runtime, flows: Sequence[Flow], actor: str, tag: str | None = None, approval: str | None = None
) -> list[dict[str, Any]]:
    """Store each flow's version (if new) and make it the published one; one audit record per change.
    ``approval``: the approved request covering exactly these versions, used up in the same transaction."""
    store = runtime.store
    now = int(runtime.clock.now())
    changes: list[dict[str, Any]] = []

    def work(conn: sa.Connection) -> None:
        if approval is not None:
            _use_approval(conn, approval, publication_digest("publish", [(f.id, f.version) for f in flows]))
        events = []
        for flow in flows:
            _store_version(conn, flow, tag, actor, now)
            previous = _make_current(conn, flow.id, flow.version, actor, now)
            if previous == flow.version:
                continue
            change = {"flow": flow.id, "version": flow.version, "previous": previous, "tag": tag}
            if approval is not None:
                change["approval"] = approval
            changes.append(change)
            events.append(AuditEvent("flow.published", actor=actor, subject=flow.id, data=change))
        repo.append_audit(conn, events, store.now_ms())

    with store.transaction() as conn:
        work(conn)
    return changes


def rollback_target(runtime: Runtime, flow_id: str, version: str | None) -> str:
    """The version a rollback would publish (``LookupError`` when there is none)."""
    return str(runtime.store.read(lambda conn: _target(conn, flow_id, version)))


def _target(conn: sa.Connection, flow_id: str, version: str | None) -> str:
    rows = conn.execute(
        sa.select(flow_versions.c.version)
        .where(flow_versions.c.flow_id == flow_id)
        .order_by(flow_versions.c.created_at)
    ).all()
    versions = [r.version for r in rows]
    current = conn.execute(sa.select(flow_published.c.version).where(flow_published.c.flow_id == flow_id)).first()
    if not versions:
        raise LookupError(f"no stored version of flow {flow_id}")
    if version is None:
        if current is None or current.version not in versions or versions.index(current.version) == 0:
            raise LookupError(f"flow {flow_id} has no earlier version to roll back to")
        return str(versions[versions.index(current.version) - 1])
    if version not in versions:
        raise LookupError(f"flow {flow_id} has no stored version {version}")
    return version


def rollback(
    runtime: Runtime, flow_id: str, version: str | None, actor: str, approval: str | None = None
) -> dict[str, Any]:
    """Publish an earlier stored version again (the one before the current, unless ``version`` names one)."""
    store = runtime.store
    now = int(runtime.clock.now())
    with store.transaction() as conn:
        version = _target(conn, flow_id, version)
        if approval is not None:
            _use_approval(conn, approval, publication_digest("rollback", [(flow_id, version)]))
        previous = _make_current(conn, flow_id, version, actor, now)
        change = {"flow": flow_id, "version": version, "previous": previous}
        if approval is not None:
            change["approval"] = approval
        repo.append_audit(
            conn, [AuditEvent("flow.rolled_back", actor=actor, subject=flow_id, data=change)], store.now_ms()
        )
    return change
