"""The approval core's storage contract (``tessera.approvals.records.ApprovalTx``) over SQLAlchemy Core."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from tessera.approvals.people import parse_person
from tessera.approvals.quorum import Policy
from tessera.approvals.records import (
    AuthenticatorRecord,
    Commit,
    EnrolmentRecord,
    LinkRecord,
    PersonRecord,
    RequestRecord,
    VoteRecord,
)
from tessera.approvals.transaction import Transaction
from tessera.audit import AuditEvent
from tessera.store.sql import repo
from tessera.store.sql.tables import (
    approval_links,
    approval_requests,
    approval_votes,
    authenticators,
    enrolments,
    people,
    rate_events,
)

if TYPE_CHECKING:
    from tessera.approvals.people import Person
    from tessera.channels.message import Message
    from tessera.store.sql.store import SqlStore

__all__ = ["SqlApprovalStore", "SqlApprovalTx"]

T = TypeVar("T")


def _person(row: Any) -> PersonRecord:
    return PersonRecord(
        person=parse_person(dict(row.profile), row.person_id),
        source=row.source,
        failures=int(row.failures),
        locked_at=row.locked_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _request(row: Any) -> RequestRecord:
    tx_json = dict(row.tx)
    return RequestRecord(
        request_id=row.request_id,
        tx=Transaction.from_json(tx_json),
        tx_json=tx_json,
        tx_hash=row.tx_hash,
        binding_message=row.binding_message,
        requester=row.requester,
        policy=Policy.from_json(row.policy),
        status=row.status,
        origin=row.origin,
        created_at=row.created_at,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
    )


def _columns(rec: Any) -> dict[str, Any]:
    """A record whose fields are exactly its table's columns, as insert values."""
    return {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}


def _record(cls: type[T], row: Any) -> T:
    """The inverse of ``_columns``: a row of a table whose columns are exactly ``cls``'s fields."""
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


class SqlApprovalTx:
    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.events: list[AuditEvent] = []
        self._pg = conn.dialect.name == "postgresql"

    def _one(self, q: Any, lock: bool) -> Any:
        if lock and self._pg:
            q = q.with_for_update()
        return self.conn.execute(q).first()

    def audit(self, event: AuditEvent) -> None:
        self.events.append(event)

    # -- people ------------------------------------------------------------------------------------
    def get_person(self, person_id: str, *, lock: bool = False) -> PersonRecord | None:
        row = self._one(sa.select(people).where(people.c.person_id == person_id), lock)
        return _person(row) if row is not None else None

    def list_people(self) -> list[PersonRecord]:
        return [_person(r) for r in self.conn.execute(sa.select(people).order_by(people.c.person_id))]

    def put_person(self, person: Person, source: str, now: int) -> bool:
        profile = person.to_json()
        profile.pop("person_id")
        done = self.conn.execute(
            sa.update(people)
            .where(people.c.person_id == person.person_id)
            .values(profile=profile, source=source, updated_at=now)
        )
        if done.rowcount == 1:
            return False
        self.conn.execute(
            sa.insert(people).values(
                person_id=person.person_id, profile=profile, source=source, created_at=now, updated_at=now
            )
        )
        return True

    def delete_person(self, person_id: str) -> bool:
        self.conn.execute(sa.delete(authenticators).where(authenticators.c.person_id == person_id))
        self.conn.execute(sa.delete(enrolments).where(enrolments.c.person_id == person_id))
        return self.conn.execute(sa.delete(people).where(people.c.person_id == person_id)).rowcount == 1

    def set_failures(self, person_id: str, failures: int, locked_at: int | None) -> None:
        self.conn.execute(
            sa.update(people).where(people.c.person_id == person_id).values(failures=failures, locked_at=locked_at)
        )

    # -- authenticators ------------------------------------------------------------------------------
    def authenticators(self, person_id: str) -> list[AuthenticatorRecord]:
        q = sa.select(authenticators).where(authenticators.c.person_id == person_id)
        return [_record(AuthenticatorRecord, r) for r in self.conn.execute(q.order_by(authenticators.c.created_at))]

    def add_authenticator(self, rec: AuthenticatorRecord) -> None:
        self.conn.execute(sa.insert(authenticators).values(**_columns(rec)))

    def delete_authenticator(self, person_id: str, authenticator_id: str) -> bool:
        q = sa.delete(authenticators).where(
            authenticators.c.person_id == person_id, authenticators.c.authenticator_id == authenticator_id
        )
        return self.conn.execute(q).rowcount == 1

    def use_authenticator(self, authenticator_id: str, public: dict[str, Any], now: int) -> None:
        self.conn.execute(
            sa.update(authenticators)
            .where(authenticators.c.authenticator_id == authenticator_id)
            .values(public=public, last_used_at=now)
        )

    # -- enrolments ------------------------------------------------------------------------------------
    def insert_enrolment(self, rec: EnrolmentRecord) -> None:
        self.conn.execute(sa.insert(enrolments).values(**_columns(rec)))

    def get_enrolment(self, token_hash: str, *, lock: bool = False) -> EnrolmentRecord | None:
        row = self._one(sa.select(enrolments).where(enrolments.c.token_hash == token_hash), lock)
        return _record(EnrolmentRecord, row) if row is not None else None

    def update_enrolment(self, token_hash: str, **values: Any) -> None:
        self.conn.execute(sa.update(enrolments).where(enrolments.c.token_hash == token_hash).values(**values))

    def supersede_enrolments(self, person_id: str, now: int) -> None:
        """An older enrolment link stops working when a new one is sent."""
        self.conn.execute(
            sa.update(enrolments)
            .where(enrolments.c.person_id == person_id, enrolments.c.used_at.is_(None))
            .values(used_at=now, state={"superseded": True})
        )

    # -- approval requests ---------------------------------------------------------------------------
    def insert_request(self, rec: RequestRecord) -> None:
        self.conn.execute(
            sa.insert(approval_requests).values(
                request_id=rec.request_id,
                tx=rec.tx_json,
                tx_hash=rec.tx_hash,
                binding_message=rec.binding_message,
                requester=rec.requester,
                policy=rec.policy.to_json(),
                status=rec.status,
                origin=rec.origin,
                created_at=rec.created_at,
                expires_at=rec.expires_at,
                decided_at=rec.decided_at,
            )
        )

    def get_request(self, request_id: str, *, lock: bool = False) -> RequestRecord | None:
        row = self._one(sa.select(approval_requests).where(approval_requests.c.request_id == request_id), lock)
        return _request(row) if row is not None else None

    def set_request_status(self, request_id: str, status: str, decided_at: int) -> None:
        self.conn.execute(
            sa.update(approval_requests)
            .where(approval_requests.c.request_id == request_id)
            .values(status=status, decided_at=decided_at)
        )

    def list_requests(self, status: str | None, limit: int) -> list[RequestRecord]:
        q = sa.select(approval_requests).order_by(approval_requests.c.created_at.desc()).limit(limit)
        if status is not None:
            q = q.where(approval_requests.c.status == status)
        return [_request(r) for r in self.conn.execute(q)]

    def due_requests(self, now: int, limit: int) -> list[str]:
        q = (
            sa.select(approval_requests.c.request_id)
            .where(approval_requests.c.status == "pending", approval_requests.c.expires_at <= now)
            .limit(limit)
        )
        return [r[0] for r in self.conn.execute(q)]

    def insert_link(self, rec: LinkRecord) -> None:
        self.conn.execute(sa.insert(approval_links).values(**_columns(rec)))

    def get_link(self, token_hash: str, *, lock: bool = False) -> LinkRecord | None:
        row = self._one(sa.select(approval_links).where(approval_links.c.token_hash == token_hash), lock)
        return _record(LinkRecord, row) if row is not None else None

    def update_link(self, token_hash: str, **values: Any) -> None:
        self.conn.execute(sa.update(approval_links).where(approval_links.c.token_hash == token_hash).values(**values))

    def supersede_links(self, request_id: str, now: int, person_id: str | None = None) -> int:
        q = sa.update(approval_links).where(
            approval_links.c.request_id == request_id,
            approval_links.c.used_at.is_(None),
            approval_links.c.superseded_at.is_(None),
        )
        if person_id is not None:
            q = q.where(approval_links.c.person_id == person_id)
        return int(self.conn.execute(q.values(superseded_at=now)).rowcount)

    def insert_vote(self, vote: VoteRecord) -> bool:
        exists = self.conn.execute(
            sa.select(approval_votes.c.person_id).where(
                approval_votes.c.request_id == vote.request_id, approval_votes.c.person_id == vote.person_id
            )
        ).first()
        if exists is not None:
            return False
        self.conn.execute(
            sa.insert(approval_votes).values(
                request_id=vote.request_id,
                person_id=vote.person_id,
                decision=vote.decision,
                evidence=vote.evidence,
                created_at=vote.created_at,
            )
        )
        return True

    def votes(self, request_id: str) -> list[VoteRecord]:
        q = sa.select(approval_votes).where(approval_votes.c.request_id == request_id)
        return [
            VoteRecord(r.request_id, r.person_id, r.decision, dict(r.evidence), r.created_at)
            for r in self.conn.execute(q.order_by(approval_votes.c.created_at))
        ]

    def insert_ciba(self, values: dict[str, Any]) -> None:
        from tessera.store.sql.ciba import insert_ciba

        insert_ciba(self.conn, values)

    # -- outbox and limits ------------------------------------------------------------------------------
    def enqueue(self, message: Message, sealed_body: bytes, now: int) -> None:
        from tessera.store.sql import outbox

        outbox.enqueue(self.conn, message, sealed_body, now)

    def rate_count(self, key: str, since: int) -> int:
        if self._pg:
            # READ COMMITTED lets two transactions count the same events and both add theirs, passing the
            # limit together: a transaction-scoped lock on the key makes count-then-add one step across
            # processes (SQLite's BEGIN IMMEDIATE already serializes writers).
            lock = int.from_bytes(hashlib.sha256(b"tessera-rate|" + key.encode()).digest()[:8], "big", signed=True)
            self.conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
        q = (
            sa.select(sa.func.count())
            .select_from(rate_events)
            .where(rate_events.c.rate_key == key, rate_events.c.ts > since)
        )
        return int(self.conn.execute(q).scalar_one())

    def rate_add(self, keys: list[str], now: int) -> None:
        if keys:
            self.conn.execute(sa.insert(rate_events), [{"rate_key": k, "ts": now} for k in keys])
        # Events older than the longest window (a minute) are never counted again.
        self.conn.execute(sa.delete(rate_events).where(rate_events.c.ts < now - 120_000))


class SqlApprovalStore:
    """``ApprovalStore``: each ``run`` is one transaction with its audit events; ``read`` a read-only one."""

    def __init__(self, store: SqlStore, on_commit: Callable[[list[AuditEvent]], None] | None = None) -> None:
        self._store = store
        #: Told the audit events of each committed transaction (the server's metrics).
        self.on_commit = on_commit

    def run(self, fn: Callable[[SqlApprovalTx], T]) -> T:
        deferred: Exception | None = None
        value: Any = None
        with self._store.transaction() as conn:
            tx = SqlApprovalTx(conn)
            try:
                value = fn(tx)
            except Commit as c:
                deferred = c.error
            repo.append_audit(conn, tx.events, self._store.now_ms())
        if self.on_commit is not None and tx.events:
            self.on_commit(tx.events)
        if deferred is not None:
            raise deferred
        return value

    def read(self, fn: Callable[[SqlApprovalTx], T]) -> T:
        with self._store.read_engine.connect() as conn:
            return fn(SqlApprovalTx(conn))
