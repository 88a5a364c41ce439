"""Repository functions: plain values in and out, one SQL statement or a few, on a given connection.

Transactions are the caller's (the group-commit writer, the CLI, the admin API).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tessera.audit import AuditEvent, AuditRecord, canonical_json, seal
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.clients import Client
from tessera.oauth.keys import KeyRecord, KeyState
from tessera.oauth.revocation import TokenSelector
from tessera.oauth.status_entries import STATUS_BITS, StatusListState, StatusSegment, segment_size
from tessera.oauth.status_list import INVALID, VALID
from tessera.oauth.tokens import IssuedToken
from tessera.store.sql.tables import (
    assertion_jtis,
    audit_log,
    clients,
    issued_tokens,
    signing_keys,
    status_lists,
    status_segments,
    trusted_issuers,
)

__all__ = [
    "StoredIssuer",
    "append_audit",
    "audit_head_row",
    "claim_status_segment",
    "consume_assertion",
    "consume_assertions",
    "delete_client",
    "delete_trusted_issuer",
    "get_client",
    "get_status_list",
    "get_token",
    "insert_client",
    "insert_key",
    "insert_token",
    "insert_tokens",
    "iter_audit",
    "last_event_ts",
    "list_clients",
    "list_trusted_issuers",
    "live_status_lists",
    "load_keys",
    "lock_keys",
    "purge_expired",
    "put_trusted_issuer",
    "release_assertions",
    "revoke_tokens",
    "serialize",
    "update_client",
    "update_key",
]


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        metadata=dict(row.metadata),
        secret_hash=row.secret_hash,
        source=row.source,
        created_at=row.created_at,
        updated_at=row.updated_at,
        registration_token_hash=row.registration_token_hash,
    )


def get_client(conn: sa.Connection, client_id: str) -> Client | None:
    row = conn.execute(sa.select(clients).where(clients.c.client_id == client_id)).first()
    return _client(row) if row else None


def list_clients(conn: sa.Connection, limit: int = 1000, after: str | None = None) -> list[Client]:
    q = sa.select(clients).order_by(clients.c.client_id).limit(limit)
    if after:
        q = q.where(clients.c.client_id > after)
    return [_client(r) for r in conn.execute(q)]


def _client_values(c: Client) -> dict[str, Any]:
    return {
        "metadata": c.metadata,
        "secret_hash": c.secret_hash,
        "registration_token_hash": c.registration_token_hash,
        "source": c.source,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def insert_client(conn: sa.Connection, c: Client) -> None:
    conn.execute(sa.insert(clients).values(client_id=c.client_id, **_client_values(c)))


def update_client(conn: sa.Connection, c: Client) -> bool:
    res = conn.execute(sa.update(clients).where(clients.c.client_id == c.client_id).values(**_client_values(c)))
    return res.rowcount == 1


def delete_client(conn: sa.Connection, client_id: str) -> bool:
    return conn.execute(sa.delete(clients).where(clients.c.client_id == client_id)).rowcount == 1


def _key(row: Any) -> KeyRecord:
    return KeyRecord(
        kid=row.kid,
        alg=row.alg,
        state=KeyState(row.state),
        public_jwk=dict(row.public_jwk),
        sealed_private=row.sealed_private,
        created_at=row.created_at,
        activated_at=row.activated_at,
        retired_at=row.retired_at,
        remove_after=row.remove_after,
        removed_at=row.removed_at,
    )


def load_keys(conn: sa.Connection) -> list[KeyRecord]:
    return [_key(r) for r in conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at))]


_LOCKS = {"declared-clients": 7261173303, "declared-issuers": 7261173304}


def serialize(conn: sa.Connection, what: str) -> None:
    """Hold a transaction-scoped lock named ``what`` until commit (PostgreSQL; SQLite writers are serial)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCKS[what]})


def lock_keys(conn: sa.Connection) -> list[KeyRecord]:
    """Load the keys with a row lock (PostgreSQL), for a lifecycle change made by one process at a time."""
    q = sa.select(signing_keys).order_by(signing_keys.c.created_at)
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7261173302)"))
        q = q.with_for_update()
    return [_key(r) for r in conn.execute(q)]


def insert_key(conn: sa.Connection, k: KeyRecord) -> None:
    conn.execute(
        sa.insert(signing_keys).values(
            kid=k.kid,
            alg=k.alg,
            state=k.state.value,
            public_jwk=k.public_jwk,
            sealed_private=k.sealed_private,
            created_at=k.created_at,
            activated_at=k.activated_at,
            retired_at=k.retired_at,
            remove_after=k.remove_after,
            removed_at=k.removed_at,
        )
    )


def update_key(conn: sa.Connection, k: KeyRecord) -> None:
    conn.execute(
        sa.update(signing_keys)
        .where(signing_keys.c.kid == k.kid)
        .values(
            state=k.state.value,
            sealed_private=k.sealed_private,
            activated_at=k.activated_at,
            retired_at=k.retired_at,
            remove_after=k.remove_after,
            removed_at=k.removed_at,
        )
    )


def consume_assertion(conn: sa.Connection, use: AssertionUse) -> bool:
    """Record a client assertion's jti; False if it was recorded before (a replay)."""
    return bool(consume_assertions(conn, [use]))


# -- the issuance hot path -------------------------------------------------------------------------------
# These run once per group commit for a whole batch of token requests. They are written as plain SQL
# through ``exec_driver_sql``: building and compiling SQLAlchemy constructs cost more than the SQLite
# statements themselves (profiled: ~40 % of a token request's CPU went to the Core layer). Only
# placeholders and constant column names are put into the SQL text; values always travel as parameters.


def _ph(conn: sa.Connection) -> str:
    return "%s" if conn.dialect.name == "postgresql" else "?"


def release_assertions(conn: sa.Connection, keys: set[tuple[str, str]]) -> None:
    """Forget jtis recorded in this transaction for a request that was then refused."""
    for client_id, jti in keys:
        conn.execute(
            sa.delete(assertion_jtis).where(assertion_jtis.c.client_id == client_id, assertion_jtis.c.jti == jti)
        )


def consume_assertions(conn: sa.Connection, uses: list[AssertionUse]) -> set[tuple[str, str]]:
    """Record many assertion jtis in one statement; returns the (client_id, jti) pairs that were new."""
    p = _ph(conn)
    values = ", ".join([f"({p}, {p}, {p})"] * len(uses))
    params = tuple(v for u in uses for v in (u.client_id, u.jti, u.exp))
    result = conn.exec_driver_sql(
        f"INSERT INTO assertion_jtis (client_id, jti, exp) VALUES {values} "
        "ON CONFLICT (client_id, jti) DO NOTHING RETURNING client_id, jti",
        params,
    )
    return {(r[0], r[1]) for r in result}


def insert_token(conn: sa.Connection, t: IssuedToken) -> None:
    insert_tokens(conn, [t])


_TOKEN_COLUMNS = (
    "jti",
    "client_id",
    "sub",
    "aud",
    "scope",
    "kid",
    "grant_type",
    "iat",
    "exp",
    "status_list",
    "status_idx",
    "status",
    "parent_jti",
)


def insert_tokens(conn: sa.Connection, tokens: list[IssuedToken]) -> None:
    if tokens:
        p = _ph(conn)
        conn.exec_driver_sql(
            f"INSERT INTO issued_tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES ({', '.join([p] * len(_TOKEN_COLUMNS))})",
            [
                (
                    t.jti,
                    t.client_id,
                    t.sub,
                    json.dumps(t.aud),
                    t.scope,
                    t.kid,
                    t.grant_type,
                    t.iat,
                    t.exp,
                    t.status_list,
                    t.status_idx,
                    t.status,
                    t.parent_jti,
                )
                for t in tokens
            ],
        )


def _token(row: Any) -> IssuedToken:
    return IssuedToken(
        jti=row.jti,
        client_id=row.client_id,
        sub=row.sub,
        aud=list(row.aud),
        scope=row.scope,
        kid=row.kid,
        grant_type=row.grant_type,
        iat=int(row.iat),
        exp=int(row.exp),
        status_list=row.status_list,
        status_idx=row.status_idx,
        status=int(row.status),
        revoked_at=row.revoked_at,
        parent_jti=row.parent_jti,
    )


def get_token(conn: sa.Connection, jti: str) -> IssuedToken | None:
    row = conn.execute(sa.select(issued_tokens).where(issued_tokens.c.jti == jti)).first()
    return _token(row) if row else None


def revoke_tokens(conn: sa.Connection, selector: TokenSelector, now: int, not_expired_before: int) -> list[IssuedToken]:
    """Mark the selected tokens revoked (``revoked_at``, status INVALID); returns those this call revoked."""
    t = issued_tokens.c
    column = {"jti": t.jti, "client_id": t.client_id, "sub": t.sub, "kid": t.kid}
    name, value = next(iter(selector.describe().items()))
    where = [column[name] == value, t.revoked_at.is_(None)]
    if selector.unexpired_only:
        where.append(t.exp >= not_expired_before)
    stmt = sa.update(issued_tokens).where(*where).values(revoked_at=now, status=INVALID).returning(*issued_tokens.c)
    revoked = [_token(r) for r in conn.execute(stmt)]
    # Tokens exchanged from a revoked token (RFC 8693 down-scoping, delegation) go with it, generation by
    # generation: a stolen token laundered through token exchange before its revocation dies too.
    parents = [r.jti for r in revoked]
    for _ in range(64):
        if not parents:
            break
        children: list[IssuedToken] = []
        for i in range(0, len(parents), 500):
            stmt = (
                sa.update(issued_tokens)
                .where(t.parent_jti.in_(parents[i : i + 500]), t.revoked_at.is_(None))
                .values(revoked_at=now, status=INVALID)
                .returning(*issued_tokens.c)
            )
            children.extend(_token(r) for r in conn.execute(stmt))
        revoked.extend(children)
        parents = [c.jti for c in children]
    return revoked


# -- status lists (draft-ietf-oauth-status-list) ---------------------------------------------------------
_STATUS_LOCK = 7_261_173_303


def claim_status_segment(conn: sa.Connection, list_size: int, claimed_by: str, now: int) -> tuple[StatusSegment, bool]:
    """Claim a random unclaimed segment of the newest list that has one, or of a new list.

    Returns the segment and whether a list was created. The caller's transaction must be a write
    transaction: on SQLite ``BEGIN IMMEDIATE`` serialises claims; on PostgreSQL an advisory lock does.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _STATUS_LOCK})
    lists = status_lists.c
    row = conn.execute(
        sa.select(lists.list_id, lists.segment_size, lists.size, lists.segments_claimed)
        .where(lists.segments_claimed * lists.segment_size < lists.size)
        .order_by(lists.list_id.desc())
        .limit(1)
    ).first()
    created = row is None
    if row is None:
        list_id = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(lists.list_id), 0))).scalar_one()) + 1
        seg_size = segment_size(list_size)
        conn.execute(
            sa.insert(status_lists).values(
                list_id=list_id,
                bits=STATUS_BITS,
                size=list_size,
                segment_size=seg_size,
                segments_claimed=0,
                created_at=now,
            )
        )
        total, taken = list_size // seg_size, set()
    else:
        list_id, seg_size, total = int(row.list_id), int(row.segment_size), int(row.size) // int(row.segment_size)
        taken = set(
            conn.execute(sa.select(status_segments.c.segment).where(status_segments.c.list_id == list_id)).scalars()
        )
    segment = secrets.choice([n for n in range(total) if n not in taken])
    conn.execute(
        sa.insert(status_segments).values(list_id=list_id, segment=segment, claimed_at=now, claimed_by=claimed_by[:128])
    )
    conn.execute(
        sa.update(status_lists).where(lists.list_id == list_id).values(segments_claimed=lists.segments_claimed + 1)
    )
    return StatusSegment(list_id, segment * seg_size, seg_size), created


def get_status_list(conn: sa.Connection, list_id: int) -> StatusListState | None:
    """A list's shape and its entries that are not VALID (one index range scan)."""
    row = conn.execute(
        sa.select(status_lists.c.bits, status_lists.c.size).where(status_lists.c.list_id == list_id)
    ).first()
    if row is None:
        return None
    t = issued_tokens.c
    entries = conn.execute(sa.select(t.status_idx, t.status).where(t.status_list == list_id, t.status > VALID)).all()
    return StatusListState(list_id, int(row.bits), int(row.size), [(int(i), int(v)) for i, v in entries])


def live_status_lists(conn: sa.Connection, not_expired_before: int) -> list[int]:
    """The lists that hold an entry of a token a relying party could still accept."""
    t = issued_tokens.c
    q = sa.select(t.status_list).where(t.exp >= not_expired_before, t.status_list.is_not(None)).distinct()
    return sorted(int(v) for v in conn.execute(q).scalars())


def purge_expired(conn: sa.Connection, now: int, leeway: int) -> int:
    """Forget used assertion jtis once the assertion could no longer be accepted anyway."""
    return conn.execute(sa.delete(assertion_jtis).where(assertion_jtis.c.exp < now - leeway - 1)).rowcount


def audit_head_row(conn: sa.Connection, lock: bool = False) -> tuple[int, str]:
    lock_clause = " FOR UPDATE" if lock and conn.dialect.name == "postgresql" else ""
    row = conn.exec_driver_sql("SELECT seq, hash FROM audit_head WHERE id = 1" + lock_clause).one()
    return int(row[0]), str(row[1])


def last_event_ts(conn: sa.Connection, event: str) -> int | None:
    """The time (ms) of the newest audit record of this kind, or None (the ``event`` column is indexed)."""
    q = sa.select(audit_log.c.ts).where(audit_log.c.event == event).order_by(audit_log.c.seq.desc()).limit(1)
    ts = conn.execute(q).scalar()
    return None if ts is None else int(ts)


def append_audit(conn: sa.Connection, events: list[AuditEvent], ts: int) -> list[AuditRecord]:
    """Append events to the chain inside the caller's transaction, holding the head lock until commit."""
    if not events:
        return []
    seq, prev = audit_head_row(conn, lock=True)
    records = []
    for ev in events:
        seq += 1
        rec = seal(ev, seq, ts, prev)
        records.append(rec)
        prev = rec.hash
    p = _ph(conn)
    conn.exec_driver_sql(
        f"INSERT INTO audit_log (seq, ts, event, actor, subject, data, prev, hash) VALUES ({', '.join([p] * 8)})",
        [(r.seq, r.ts, r.event, r.actor, r.subject, canonical_json(r.data).decode(), r.prev, r.hash) for r in records],
    )
    conn.exec_driver_sql(f"UPDATE audit_head SET seq = {p}, hash = {p} WHERE id = 1", (seq, prev))
    return records


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=int(row.seq),
        ts=int(row.ts),
        event=row.event,
        actor=row.actor,
        subject=row.subject,
        data=json.loads(row.data),
        prev=row.prev,
        hash=row.hash,
    )


def iter_audit(
    conn: sa.Connection, after: int = 0, limit: int | None = None, batch: int = 5000
) -> Iterator[AuditRecord]:
    """Records in seq order, fetched in batches (constant memory for `audit verify` and `export`)."""
    seen = 0
    while True:
        n = batch if limit is None else min(batch, limit - seen)
        if n <= 0:
            return
        rows = conn.execute(
            sa.select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(n)
        ).all()
        if not rows:
            return
        for row in rows:
            yield _record(row)
        seen += len(rows)
        after = int(rows[-1].seq)


# -- trusted issuers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredIssuer:
    name: str
    config: dict[str, Any]
    source: str
    created_at: int
    updated_at: int


def list_trusted_issuers(conn: sa.Connection) -> list[StoredIssuer]:
    rows = conn.execute(sa.select(trusted_issuers).order_by(trusted_issuers.c.name))
    return [StoredIssuer(r.name, dict(r.config), r.source, r.created_at, r.updated_at) for r in rows]


def put_trusted_issuer(conn: sa.Connection, name: str, config: dict[str, Any], source: str, now: int) -> bool:
    """Insert or replace; True if it was created."""
    res = conn.execute(
        sa.update(trusted_issuers)
        .where(trusted_issuers.c.name == name)
        .values(config=config, source=source, updated_at=now)
    )
    if res.rowcount == 1:
        return False
    conn.execute(
        sa.insert(trusted_issuers).values(name=name, config=config, source=source, created_at=now, updated_at=now)
    )
    return True


def delete_trusted_issuer(conn: sa.Connection, name: str) -> bool:
    return conn.execute(sa.delete(trusted_issuers).where(trusted_issuers.c.name == name)).rowcount == 1
