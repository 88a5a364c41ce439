"""``AuthCodeStore`` over SQLAlchemy: sign-in sessions, consent grants, codes and refresh tokens.

Every decision that must happen once — a code redeemed, a refresh token rotated, a challenge used —
is a conditional ``UPDATE … WHERE used_at IS NULL`` in the group-commit writer: of parallel attempts
exactly one changes the row, and the others see a replay.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tessera.audit import AuditEvent
from tessera.oauth.authcode import CodeRecord, ConsentGrant, RefreshRecord, scope_key
from tessera.oauth.revocation import TokenSelector, revocation_event
from tessera.oauth.tokens import IssuedToken
from tessera.store.sql import repo
from tessera.store.sql.tables import oauth_codes, oauth_grants, oauth_refresh_tokens, oauth_sessions

if TYPE_CHECKING:
    from tessera.store.sql.store import SqlStore

__all__ = ["SqlAuthCodes", "list_grants", "revoke_grant_now"]


def _grant(row: Any) -> ConsentGrant:
    return ConsentGrant(
        grant_id=row.grant_id,
        person_id=row.person_id,
        client_id=row.client_id,
        scope=row.scope.split(" ") if row.scope else [],
        resource=row.resource.split(" ") if row.resource else [],
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _code(row: Any) -> CodeRecord:
    return CodeRecord(
        code_hash=row.code_hash,
        client_id=row.client_id,
        person_id=row.person_id,
        grant_id=row.grant_id,
        redirect_uri=row.redirect_uri,
        redirect_uri_sent=bool(row.redirect_uri_sent),
        scope=row.scope.split(" ") if row.scope else [],
        resource=list(row.resource),
        code_challenge=row.code_challenge,
        acr=row.acr,
        auth_time=row.auth_time,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        issued=list(row.issued or []),
    )


def _refresh(row: Any) -> RefreshRecord:
    return RefreshRecord(
        token_hash=row.token_hash,
        family_id=row.family_id,
        grant_id=row.grant_id,
        client_id=row.client_id,
        person_id=row.person_id,
        scope=row.scope.split(" ") if row.scope else [],
        resource=list(row.resource),
        acr=row.acr,
        auth_time=row.auth_time,
        created_at=row.created_at,
        expires_at=row.expires_at,
        family_expires_at=row.family_expires_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
        access_jti=row.access_jti,
    )


def _refresh_values(r: RefreshRecord) -> dict[str, Any]:
    return {
        "token_hash": r.token_hash,
        "family_id": r.family_id,
        "grant_id": r.grant_id,
        "client_id": r.client_id,
        "person_id": r.person_id,
        "scope": " ".join(r.scope),
        "resource": list(r.resource),
        "acr": r.acr,
        "auth_time": r.auth_time,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "family_expires_at": r.family_expires_at,
        "access_jti": r.access_jti,
    }


def _revoke_jtis(
    conn: sa.Connection, jtis: list[str], now: int, actor: str, via: str
) -> tuple[list[IssuedToken], list[AuditEvent]]:
    revoked: list[IssuedToken] = []
    events: list[AuditEvent] = []
    for jti in dict.fromkeys(j for j in jtis if j):
        selector = TokenSelector(jti=jti)
        got = repo.revoke_tokens(conn, selector, now, now)
        if got:
            revoked += got
            events.append(revocation_event(selector, got, actor=actor, via=via))
    return revoked, events


def _revoke_families(
    conn: sa.Connection, where: Any, now: int, actor: str, via: str
) -> tuple[list[IssuedToken], list[AuditEvent]]:
    """Revoke the refresh tokens selected by ``where`` and the access tokens issued with them."""
    t = oauth_refresh_tokens.c
    rows = conn.execute(sa.select(t.token_hash, t.access_jti).where(where)).all()
    conn.execute(sa.update(oauth_refresh_tokens).where(where, t.revoked_at.is_(None)).values(revoked_at=now))
    return _revoke_jtis(conn, [r.access_jti for r in rows], now, actor, via)


def _revoke_grant(
    conn: sa.Connection, grant_id: str, actor: str, now: int, person_id: str | None
) -> tuple[list[IssuedToken] | None, list[AuditEvent]]:
    g = oauth_grants.c
    where = [g.grant_id == grant_id]
    if person_id is not None:
        where.append(g.person_id == person_id)
    row = conn.execute(sa.select(oauth_grants).where(*where)).first()
    if row is None:
        return None, []
    conn.execute(sa.update(oauth_grants).where(g.grant_id == grant_id, g.revoked_at.is_(None)).values(revoked_at=now))
    revoked, events = _revoke_families(conn, oauth_refresh_tokens.c.grant_id == grant_id, now, actor, "grant_revoked")
    codes = conn.execute(sa.select(oauth_codes.c.issued).where(oauth_codes.c.grant_id == grant_id)).all()
    more, more_events = _revoke_jtis(conn, [j for c in codes for j in (c.issued or [])], now, actor, "grant_revoked")
    conn.execute(
        sa.update(oauth_codes)
        .where(oauth_codes.c.grant_id == grant_id, oauth_codes.c.used_at.is_(None))
        .values(used_at=now)
    )
    event = AuditEvent(
        "grant.revoked",
        actor=actor,
        subject=row.person_id,
        data={"grant_id": grant_id, "client_id": row.client_id, "tokens_revoked": len(revoked) + len(more)},
    )
    return revoked + more, [event, *events, *more_events]


def list_grants(conn: sa.Connection, person_id: str | None, client_id: str | None) -> list[ConsentGrant]:
    g = oauth_grants.c
    q = sa.select(oauth_grants).order_by(g.created_at.desc(), g.grant_id)
    if person_id is not None:
        q = q.where(g.person_id == person_id)
    if client_id is not None:
        q = q.where(g.client_id == client_id)
    return [_grant(r) for r in conn.execute(q.limit(1000))]


def revoke_grant_now(
    store: SqlStore, grant_id: str, actor: str, person_id: str | None = None
) -> list[IssuedToken] | None:
    """Synchronous revocation (admin API, CLI): the grant, its refresh tokens and what they issued."""
    now = int(store.clock.now())
    with store.transaction() as conn:
        revoked, events = _revoke_grant(conn, grant_id, actor, now, person_id)
        repo.append_audit(conn, events, store.now_ms())
    return revoked


class SqlAuthCodes:
    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def _read(self, fn: Any) -> Any:
        return await asyncio.to_thread(self._store.read, fn)

    async def _write(self, fn: Any) -> Any:
        return await self._store.writer.submit(fn)

    # -- sign-in sessions ------------------------------------------------------------------------------
    async def new_session(self, session_hash: str, now: int, expires_at: int) -> None:
        def work(conn: sa.Connection) -> tuple[None, list[AuditEvent]]:
            # Expired sessions go as new ones come: the table holds only live ones (and few).
            conn.execute(sa.delete(oauth_sessions).where(oauth_sessions.c.expires_at < now))
            conn.execute(
                sa.insert(oauth_sessions).values(session_hash=session_hash, created_at=now, expires_at=expires_at)
            )
            return None, []

        await self._write(work)

    async def get_session(self, session_hash: str, now: int) -> dict[str, Any] | None:
        s = oauth_sessions.c

        def work(conn: sa.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                sa.select(oauth_sessions).where(s.session_hash == session_hash, s.expires_at >= now)
            ).first()
            return dict(row._mapping) if row is not None else None

        result: dict[str, Any] | None = await self._read(work)
        return result

    async def set_challenge(self, session_hash: str, challenge: str) -> bool:
        def work(conn: sa.Connection) -> tuple[bool, list[AuditEvent]]:
            done = conn.execute(
                sa.update(oauth_sessions)
                .where(oauth_sessions.c.session_hash == session_hash)
                .values(challenge=challenge)
            )
            return done.rowcount == 1, []

        result: bool = await self._write(work)
        return result

    async def take_challenge(self, session_hash: str) -> str | None:
        """The session's WebAuthn challenge, cleared in the same transaction: each one verifies once."""

        def work(conn: sa.Connection) -> tuple[str | None, list[AuditEvent]]:
            s = oauth_sessions.c
            row = conn.execute(sa.select(s.challenge).where(s.session_hash == session_hash)).first()
            if row is None or row.challenge is None:
                return None, []
            done = conn.execute(
                sa.update(oauth_sessions)
                .where(s.session_hash == session_hash, s.challenge == row.challenge)
                .values(challenge=None)
            )
            return (row.challenge if done.rowcount == 1 else None), []

        result: str | None = await self._write(work)
        return result

    async def signed_in(
        self, session_hash: str, new_hash: str, person_id: str, acr: str, now: int, expires_at: int
    ) -> None:
        """The person signed in: the session gets a new identifier (no session fixation)."""

        def work(conn: sa.Connection) -> tuple[None, list[AuditEvent]]:
            conn.execute(sa.delete(oauth_sessions).where(oauth_sessions.c.session_hash == session_hash))
            conn.execute(
                sa.insert(oauth_sessions).values(
                    session_hash=new_hash,
                    person_id=person_id,
                    acr=acr,
                    auth_time=now,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            return None, []

        await self._write(work)

    async def end_session(self, session_hash: str) -> None:
        def work(conn: sa.Connection) -> tuple[None, list[AuditEvent]]:
            conn.execute(sa.delete(oauth_sessions).where(oauth_sessions.c.session_hash == session_hash))
            return None, []

        await self._write(work)

    # -- consent grants ----------------------------------------------------------------------------------
    async def find_grant(
        self, person_id: str, client_id: str, scope: list[str], resource: list[str]
    ) -> ConsentGrant | None:
        g = oauth_grants.c

        def work(conn: sa.Connection) -> ConsentGrant | None:
            row = conn.execute(
                sa.select(oauth_grants).where(
                    g.person_id == person_id,
                    g.client_id == client_id,
                    g.scope == scope_key(scope),
                    g.resource == scope_key(resource),
                    g.revoked_at.is_(None),
                )
            ).first()
            return _grant(row) if row is not None else None

        result: ConsentGrant | None = await self._read(work)
        return result

    async def get_grant(self, grant_id: str) -> ConsentGrant | None:
        def work(conn: sa.Connection) -> ConsentGrant | None:
            row = conn.execute(sa.select(oauth_grants).where(oauth_grants.c.grant_id == grant_id)).first()
            return _grant(row) if row is not None else None

        result: ConsentGrant | None = await self._read(work)
        return result

    async def list_grants(self, person_id: str | None, client_id: str | None) -> list[ConsentGrant]:
        result: list[ConsentGrant] = await self._read(lambda c: list_grants(c, person_id, client_id))
        return result

    async def revoke_grant(
        self, grant_id: str, actor: str, now: int, person_id: str | None = None
    ) -> list[IssuedToken] | None:
        result: list[IssuedToken] | None = await self._write(
            lambda c: _revoke_grant(c, grant_id, actor, now, person_id)
        )
        return result

    # -- codes -------------------------------------------------------------------------------------------
    async def issue_code(
        self, record: CodeRecord, grant: ConsentGrant, new_grant: bool, events: list[AuditEvent]
    ) -> None:
        def work(conn: sa.Connection) -> tuple[None, list[AuditEvent]]:
            nonlocal record
            g = oauth_grants.c
            if new_grant:
                # Two consents to the same thing at once (two tabs): one grant, so that revoking it stops both.
                same = conn.execute(
                    sa.select(g.grant_id).where(
                        g.person_id == grant.person_id,
                        g.client_id == grant.client_id,
                        g.scope == scope_key(grant.scope),
                        g.resource == scope_key(grant.resource),
                        g.revoked_at.is_(None),
                    )
                ).first()
                if same is not None:
                    record = replace(record, grant_id=same.grant_id)
            if new_grant and record.grant_id == grant.grant_id:
                conn.execute(
                    sa.insert(oauth_grants).values(
                        grant_id=grant.grant_id,
                        person_id=grant.person_id,
                        client_id=grant.client_id,
                        scope=scope_key(grant.scope),
                        resource=scope_key(grant.resource),
                        created_at=grant.created_at,
                    )
                )
            conn.execute(
                sa.delete(oauth_codes).where(oauth_codes.c.expires_at < record.created_at - 86400)
            )  # used and expired codes are kept a day, for replay detection, then go
            conn.execute(
                sa.insert(oauth_codes).values(
                    code_hash=record.code_hash,
                    client_id=record.client_id,
                    person_id=record.person_id,
                    grant_id=record.grant_id,
                    redirect_uri=record.redirect_uri,
                    redirect_uri_sent=record.redirect_uri_sent,
                    scope=" ".join(record.scope),
                    resource=list(record.resource),
                    code_challenge=record.code_challenge,
                    acr=record.acr,
                    auth_time=record.auth_time,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
            )
            return None, events

        await self._write(work)

    async def get_code(self, code_hash: str) -> CodeRecord | None:
        def work(conn: sa.Connection) -> CodeRecord | None:
            row = conn.execute(sa.select(oauth_codes).where(oauth_codes.c.code_hash == code_hash)).first()
            return _code(row) if row is not None else None

        result: CodeRecord | None = await self._read(work)
        return result

    async def redeem_code(
        self,
        code_hash: str,
        now: int,
        tokens: list[IssuedToken],
        refresh: RefreshRecord | None,
        events: list[AuditEvent],
    ) -> bool:
        """The atomic consume: True if this call used the code (and stored what it issued)."""

        def work(conn: sa.Connection) -> tuple[bool, list[AuditEvent]]:
            c = oauth_codes.c
            done = conn.execute(
                sa.update(oauth_codes)
                .where(c.code_hash == code_hash, c.used_at.is_(None))
                .values(
                    used_at=now,
                    issued=[t.jti for t in tokens],
                    family_id=refresh.family_id if refresh is not None else None,
                )
            )
            if done.rowcount != 1:
                return False, []
            g = oauth_grants.c
            grant_id = conn.execute(sa.select(c.grant_id).where(c.code_hash == code_hash)).scalar_one()
            live = conn.execute(
                sa.update(oauth_grants).where(g.grant_id == grant_id, g.revoked_at.is_(None)).values(last_used_at=now)
            )
            if live.rowcount != 1:
                return False, []
            repo.insert_tokens(conn, tokens)
            if refresh is not None:
                conn.execute(sa.insert(oauth_refresh_tokens).values(**_refresh_values(refresh)))
            return True, events

        result: bool = await self._write(work)
        return result

    async def revoke_code_family(self, code_hash: str, actor: str, now: int) -> list[IssuedToken]:
        """RFC 6749 §4.1.2: a code used twice — revoke every token issued from it (and their refresh tokens)."""

        def work(conn: sa.Connection) -> tuple[list[IssuedToken], list[AuditEvent]]:
            row = conn.execute(sa.select(oauth_codes).where(oauth_codes.c.code_hash == code_hash)).first()
            if row is None:
                return [], []
            revoked, events = _revoke_jtis(conn, list(row.issued or []), now, actor, "code_replay")
            if row.family_id:
                more, more_events = _revoke_families(
                    conn, oauth_refresh_tokens.c.family_id == row.family_id, now, actor, "code_replay"
                )
                revoked, events = revoked + more, events + more_events
            events.insert(
                0,
                AuditEvent(
                    "authorize.code_replayed",
                    actor=actor,
                    subject=row.person_id,
                    data={"client_id": row.client_id, "grant_id": row.grant_id, "tokens_revoked": len(revoked)},
                ),
            )
            return revoked, events

        result: list[IssuedToken] = await self._write(work)
        return result

    # -- refresh tokens ----------------------------------------------------------------------------------
    async def get_refresh(self, token_hash: str) -> RefreshRecord | None:
        def work(conn: sa.Connection) -> RefreshRecord | None:
            row = conn.execute(
                sa.select(oauth_refresh_tokens).where(oauth_refresh_tokens.c.token_hash == token_hash)
            ).first()
            return _refresh(row) if row is not None else None

        result: RefreshRecord | None = await self._read(work)
        return result

    async def grant_live(self, grant_id: str) -> bool:
        grant = await self.get_grant(grant_id)
        return grant is not None and grant.revoked_at is None

    async def rotate_refresh(
        self, token_hash: str, now: int, tokens: list[IssuedToken], new: RefreshRecord, events: list[AuditEvent]
    ) -> bool:
        def work(conn: sa.Connection) -> tuple[bool, list[AuditEvent]]:
            t = oauth_refresh_tokens.c
            done = conn.execute(
                sa.update(oauth_refresh_tokens)
                .where(t.token_hash == token_hash, t.used_at.is_(None), t.revoked_at.is_(None))
                .values(used_at=now)
            )
            if done.rowcount != 1:
                return False, []
            g = oauth_grants.c
            live = conn.execute(
                sa.update(oauth_grants)
                .where(g.grant_id == new.grant_id, g.revoked_at.is_(None))
                .values(last_used_at=now)
            )
            if live.rowcount != 1:
                return False, []
            repo.insert_tokens(conn, tokens)
            conn.execute(sa.insert(oauth_refresh_tokens).values(**_refresh_values(new)))
            # Dead rows go as new ones come: a day past their expiry (until then a rotated one still
            # reveals a reuse), so the table holds about one live row per family.
            conn.execute(sa.delete(oauth_refresh_tokens).where(t.expires_at < now - 86400))
            return True, events

        result: bool = await self._write(work)
        return result

    async def revoke_family(self, family_id: str, actor: str, now: int, why: str) -> list[IssuedToken]:
        def work(conn: sa.Connection) -> tuple[list[IssuedToken], list[AuditEvent]]:
            revoked, events = _revoke_families(conn, oauth_refresh_tokens.c.family_id == family_id, now, actor, why)
            return revoked, events

        result: list[IssuedToken] = await self._write(work)
        return result


def new_grant_id() -> str:
    return "grant_" + secrets.token_hex(12)
