"""The outbox table: enqueue, claim with a lease, record outcomes with their audit records, list, requeue.

Claiming is ``UPDATE … WHERE message_id IN (SELECT … FOR UPDATE SKIP LOCKED)`` on PostgreSQL, so
several server processes share the due rows and never take the same one; SQLite has one writer at a
time (``BEGIN IMMEDIATE``) and needs no row locks. Each status change and its audit record
(``outbox.delivered``, ``outbox.failed``, ``outbox.dead``, ``outbox.requeued``) commit together. The
sealed body is never read back by these functions except by ``claim``, and never listed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tessera.audit import AuditEvent
from tessera.channels.message import Message
from tessera.channels.outbox import OutboxItem
from tessera.store.sql.repo import append_audit
from tessera.store.sql.tables import outbox

__all__ = [
    "SqlOutbox",
    "claim",
    "counts",
    "enqueue",
    "list_messages",
    "mark_delivered",
    "mark_failed",
    "requeue",
]

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
_LISTED = (
    "message_id",
    "channel",
    "kind",
    "recipient",
    "ref",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "created_at",
    "delivered_at",
)


def enqueue(conn: sa.Connection, message: Message, sealed_body: bytes, now_ms: int) -> None:
    """Insert the message as a pending row, due now (call it in the transaction that decided to send it)."""
    conn.execute(
        sa.insert(outbox).values(
            message_id=message.id,
            channel=message.channel,
            kind=message.kind,
            recipient=message.recipient,
            ref=message.ref,
            sealed_body=sealed_body,
            status=PENDING,
            attempts=0,
            next_attempt_at=now_ms,
            created_at=now_ms,
        )
    )


def _due(now_ms: int) -> sa.ColumnElement[bool]:
    c = outbox.c
    return sa.and_(
        c.status == PENDING,
        c.next_attempt_at <= now_ms,
        sa.or_(c.locked_until.is_(None), c.locked_until < now_ms),
    )


def claim(conn: sa.Connection, worker: str, limit: int, lease_ms: int, now_ms: int) -> list[OutboxItem]:
    """Lease up to ``limit`` due rows to ``worker`` (a row whose lease expired is due again); one attempt each."""
    c = outbox.c
    due = sa.select(c.message_id).where(_due(now_ms)).order_by(c.next_attempt_at).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    rows = conn.execute(
        sa.update(outbox)
        # The due condition again: a compare-and-set, whatever the isolation of the subquery.
        .where(c.message_id.in_(due.scalar_subquery()), _due(now_ms))
        .values(locked_by=worker, locked_until=now_ms + lease_ms, attempts=c.attempts + 1)
        .returning(c.message_id, c.channel, c.kind, c.recipient, c.ref, c.sealed_body, c.attempts)
    ).all()
    items = [
        OutboxItem(r.message_id, r.channel, r.kind, r.recipient, r.ref, bytes(r.sealed_body), int(r.attempts), worker)
        for r in rows
    ]
    return sorted(items, key=lambda i: i.message_id)


def _row(conn: sa.Connection, message_id: str) -> Any:
    c = outbox.c
    return conn.execute(
        sa.select(c.message_id, c.channel, c.kind, c.ref, c.attempts, c.status, c.locked_by).where(
            c.message_id == message_id
        )
    ).first()


def _event(name: str, row: Any, worker: str, **extra: Any) -> AuditEvent:
    data = {
        "message_id": row.message_id,
        "channel": row.channel,
        "kind": row.kind,
        "ref": row.ref,
        "attempts": int(row.attempts),
        "worker": worker,
        **extra,
    }
    return AuditEvent(name, actor="system", subject=row.message_id, data=data)


def mark_delivered(conn: sa.Connection, message_id: str, worker: str, now_ms: int) -> bool:
    """Record a delivery (whoever holds the lease now: the message did reach the recipient). False if it
    was already recorded as delivered; idempotent."""
    c = outbox.c
    done = conn.execute(
        sa.update(outbox)
        .where(c.message_id == message_id, c.status != DELIVERED)
        .values(status=DELIVERED, delivered_at=now_ms, locked_by=None, locked_until=None, last_error=None)
    ).rowcount
    if not done:
        return False
    append_audit(conn, [_event("outbox.delivered", _row(conn, message_id), worker)], now_ms)
    return True


def mark_failed(
    conn: sa.Connection, message_id: str, worker: str, error: str, retry_at_ms: int | None, now_ms: int
) -> bool:
    """Record a failed attempt by the lease holder: due again at ``retry_at_ms``, or dead if None.

    False (and nothing recorded) if ``worker`` no longer holds the lease or the row is no longer pending.
    ``error`` must be safe to store (DeliveryError messages are).
    """
    c = outbox.c
    error = error[:500]
    values: dict[str, Any] = {"last_error": error, "locked_by": None, "locked_until": None}
    if retry_at_ms is None:
        values["status"] = DEAD
    else:
        values["next_attempt_at"] = retry_at_ms
    done = conn.execute(
        sa.update(outbox).where(c.message_id == message_id, c.status == PENDING, c.locked_by == worker).values(**values)
    ).rowcount
    if not done:
        return False
    row = _row(conn, message_id)
    if retry_at_ms is None:
        event = _event("outbox.dead", row, worker, error=error)
    else:
        event = _event("outbox.failed", row, worker, error=error, retry_at=retry_at_ms)
    append_audit(conn, [event], now_ms)
    return True


def list_messages(
    conn: sa.Connection, *, status: str | None = None, ref: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Metadata of the newest messages (admin API): never the body."""
    q = sa.select(*(outbox.c[name] for name in _LISTED))
    if status is not None:
        q = q.where(outbox.c.status == status)
    if ref is not None:
        q = q.where(outbox.c.ref == ref)
    q = q.order_by(outbox.c.created_at.desc(), outbox.c.message_id).limit(max(1, min(limit, 1000)))
    return [dict(r._mapping) for r in conn.execute(q)]


def requeue(conn: sa.Connection, message_id: str, now_ms: int, actor: str = "operator") -> bool:
    """A dead letter back to pending, due now, with its attempts reset. False if it is not dead."""
    c = outbox.c
    done = conn.execute(
        sa.update(outbox)
        .where(c.message_id == message_id, c.status == DEAD)
        .values(status=PENDING, attempts=0, next_attempt_at=now_ms, locked_by=None, locked_until=None)
    ).rowcount
    if not done:
        return False
    row = _row(conn, message_id)
    event = _event("outbox.requeued", row, worker="")
    append_audit(conn, [AuditEvent(event.event, actor=actor, subject=event.subject, data=event.data)], now_ms)
    return True


def counts(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).all()
    out = {PENDING: 0, DELIVERED: 0, DEAD: 0}
    out.update({str(s): int(n) for s, n in rows})
    return out


class SqlOutbox:
    """``OutboxStore`` over an engine (each call its own transaction, run off the event loop)."""

    def __init__(self, engine: sa.Engine, now_ms: Callable[[], int]) -> None:
        self.engine = engine
        self.now_ms = now_ms

    def _tx(self, fn: Callable[[sa.Connection], Any]) -> Any:
        with self.engine.begin() as conn:
            return fn(conn)

    async def claim(self, worker: str, limit: int, lease_ms: int) -> list[OutboxItem]:
        items: list[OutboxItem] = await asyncio.to_thread(
            self._tx, lambda c: claim(c, worker, limit, lease_ms, self.now_ms())
        )
        return items

    async def delivered(self, item: OutboxItem) -> None:
        await asyncio.to_thread(self._tx, lambda c: mark_delivered(c, item.message_id, item.worker, self.now_ms()))

    async def failed(self, item: OutboxItem, error: str, retry_at_ms: int | None) -> None:
        await asyncio.to_thread(
            self._tx, lambda c: mark_failed(c, item.message_id, item.worker, error, retry_at_ms, self.now_ms())
        )

    # -- the synchronous side: whoever decides to send, the admin API, the CLI ----------------------------
    def enqueue(self, message: Message, sealed_body: bytes) -> None:
        self._tx(lambda c: enqueue(c, message, sealed_body, self.now_ms()))

    def list_messages(
        self, *, status: str | None = None, ref: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._tx(lambda c: list_messages(c, status=status, ref=ref, limit=limit))
        return rows

    def requeue(self, message_id: str, actor: str = "operator") -> bool:
        return bool(self._tx(lambda c: requeue(c, message_id, self.now_ms(), actor)))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = self._tx(counts)
        return out
