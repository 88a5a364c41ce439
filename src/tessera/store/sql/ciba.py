"""``CibaStore`` over SQLAlchemy: each poll and redemption is one transaction holding the record's row
(``FOR UPDATE`` on PostgreSQL; SQLite writers are serial), run by the group-commit writer."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tessera.audit import AuditEvent
from tessera.oauth.ciba import CibaRecord, PollDecision, decide_poll
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.revocation import TokenSelector, revocation_event
from tessera.oauth.tokens import IssuedToken
from tessera.store.interfaces import AssertionReplayed
from tessera.store.sql import repo
from tessera.store.sql.tables import approval_requests, approval_votes, ciba_requests

if TYPE_CHECKING:
    from tessera.store.sql.store import SqlStore

__all__ = ["SqlCiba", "insert_ciba"]


def insert_ciba(conn: sa.Connection, values: dict[str, Any]) -> None:
    conn.execute(sa.insert(ciba_requests).values(**values))


def _load(conn: sa.Connection, auth_req_hash: str, lock: bool) -> CibaRecord | None:
    q = sa.select(ciba_requests).where(ciba_requests.c.auth_req_hash == auth_req_hash)
    if lock and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        return None
    status = conn.execute(
        sa.select(approval_requests.c.status, approval_requests.c.expires_at).where(
            approval_requests.c.request_id == row.approval_id
        )
    ).first()
    votes = [
        {"person_id": v.person_id, "decision": v.decision, "aal": v.evidence.get("aal"), "at": v.created_at}
        for v in conn.execute(sa.select(approval_votes).where(approval_votes.c.request_id == row.approval_id))
    ]
    return CibaRecord(
        auth_req_hash=row.auth_req_hash,
        client_id=row.client_id,
        person_id=row.person_id,
        approval_id=row.approval_id,
        grant=dict(row.grant),
        mode=row.mode,
        interval=int(row.interval),
        last_poll_at=row.last_poll_at,
        status=row.status,
        created_at=row.created_at,
        expires_at=row.expires_at,
        redeemed_at=row.redeemed_at,
        issued=list(row.issued) if row.issued is not None else None,
        approval_status=status.status if status is not None else "expired",
        votes=votes,
    )


def _update(conn: sa.Connection, auth_req_hash: str, values: dict[str, Any]) -> None:
    if values:
        conn.execute(sa.update(ciba_requests).where(ciba_requests.c.auth_req_hash == auth_req_hash).values(**values))


class SqlCiba:
    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def load(self, auth_req_hash: str) -> CibaRecord | None:
        return await asyncio.to_thread(self._store.read, lambda c: _load(c, auth_req_hash, False))

    async def poll(
        self, auth_req_hash: str, client_id: str, now: int, assertion: AssertionUse | None = None
    ) -> PollDecision:
        def work(conn: sa.Connection) -> tuple[PollDecision, list[AuditEvent]]:
            # The client assertion first: a replayed token request changes nothing, revokes nothing.
            if assertion is not None and not repo.consume_assertions(conn, [assertion]):
                raise AssertionReplayed(assertion.jti, ((assertion.client_id, assertion.jti),))
            decision = decide_poll(_load(conn, auth_req_hash, True), client_id, now)
            if not decision.redeem:
                _update(conn, auth_req_hash, decision.updates)
            return decision, []

        return await self._store.writer.submit(work)

    async def redeem(
        self,
        auth_req_hash: str,
        client_id: str,
        now: int,
        tokens: list[IssuedToken],
        events: list[AuditEvent],
        assertion: AssertionUse | None,
    ) -> PollDecision:
        def work(conn: sa.Connection) -> tuple[PollDecision, list[AuditEvent]]:
            decision = decide_poll(_load(conn, auth_req_hash, True), client_id, now)
            if not decision.redeem:
                _update(conn, auth_req_hash, decision.updates)
                return decision, []
            if assertion is not None and not repo.consume_assertions(conn, [assertion]):
                raise AssertionReplayed(assertion.jti, ((assertion.client_id, assertion.jti),))
            # The atomic consume: only one transaction moves the record from pending to redeemed.
            done = conn.execute(
                sa.update(ciba_requests)
                .where(ciba_requests.c.auth_req_hash == auth_req_hash, ciba_requests.c.status == "pending")
                .values(status="redeemed", redeemed_at=now, last_poll_at=now, issued=[t.jti for t in tokens])
            )
            if done.rowcount != 1:
                return PollDecision(decide_poll(None, "", now).error, replay=True), []
            repo.insert_tokens(conn, tokens)
            return decision, events

        return await self._store.writer.submit(work)

    async def revoke_issued(self, auth_req_hash: str, actor: str) -> list[IssuedToken]:
        def work(conn: sa.Connection) -> tuple[list[IssuedToken], list[AuditEvent]]:
            row = conn.execute(
                sa.select(ciba_requests.c.issued).where(ciba_requests.c.auth_req_hash == auth_req_hash)
            ).first()
            revoked: list[IssuedToken] = []
            events: list[AuditEvent] = []
            for jti in row.issued if row is not None and row.issued else []:
                selector = TokenSelector(jti=jti)
                got = repo.revoke_tokens(conn, selector, now_s := int(self._store.clock.now()), now_s)
                revoked += got
                events.append(revocation_event(selector, got, actor=actor, via="ciba_replay"))
            return revoked, events

        return await self._store.writer.submit(work)
