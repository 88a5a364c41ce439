"""``SqlStore``: the storage contracts over SQLAlchemy, for the server (async) and the CLI (sync)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from tessera import spans
from tessera.audit import AuditEvent, ChainReport, verify_chain
from tessera.clock import Clock
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.clients import Client
from tessera.oauth.keys import KEK, KeyPlan, KeyRecord, plan_bootstrap, plan_revocation, plan_rotation, plan_sweep
from tessera.oauth.revocation import TokenSelector, revocation_event
from tessera.oauth.status_entries import StatusListState, StatusSegment
from tessera.oauth.tokens import IssuedToken
from tessera.store.interfaces import AssertionReplayed
from tessera.store.sql import repo
from tessera.store.sql.engine import create_engines, upgrade
from tessera.store.sql.writer import GroupCommitWriter

__all__ = ["SqlStore"]

log = logging.getLogger("tessera.store")


class SqlStore:
    def __init__(self, url: str, clock: Clock, *, client_cache_ttl: float = 1.0, leeway: int = 0) -> None:
        self.url = url
        self.clock = clock
        #: Revoking "unexpired" tokens includes those expired less than this long ago (relying parties' leeway).
        self.leeway = leeway
        self.write_engine, self.read_engine = create_engines(url)
        self.writer = GroupCommitWriter(self.write_engine, self.now_ms)
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._cache_ttl = client_cache_ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def migrate(self) -> str:
        return upgrade(self.write_engine)

    def start(self) -> None:
        self.writer.start()
        if self.write_engine.dialect.name == "sqlite" and self._checkpointer is None:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="tessera-checkpoint", daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """SQLite only: move WAL frames into the database file (and fsync) off the request path.

        The serving process turns off SQLite's automatic checkpoint, which would otherwise run, with its
        fsync, inside whichever commit crossed the threshold (measured: ~1.5 ms per group commit on
        average). A PASSIVE checkpoint never blocks writers; the GIL is free while it waits on the disk.
        """
        while not self._stopping.wait(1.0):
            try:
                with self.read_engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # a busy or failing checkpoint is retried on the next tick
                log.debug("WAL checkpoint failed", exc_info=True)

    def close(self) -> None:
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
            self._checkpointer = None
        self.writer.stop()
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with spans.span("store.transaction"), self.write_engine.begin() as conn:
            yield conn

    def write(self, fn: Callable[[sa.Connection], Any], events: list[AuditEvent]) -> Any:
        """Synchronous write with its audit events in one transaction (CLI, admin API)."""
        with self.transaction() as conn:
            value = fn(conn)
            repo.append_audit(conn, events, self.now_ms())
            return value

    def read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        with spans.span("store.read"), self.read_engine.connect() as conn:
            return fn(conn)

    # -- clients (ClientReader, ClientWriter) ------------------------------------------------------
    async def get_client(self, client_id: str) -> Client | None:
        hit = self._cache.get(client_id)
        mono = time.monotonic()
        if hit is not None and hit[0] > mono:
            return hit[1]
        client = await asyncio.to_thread(self.read, lambda c: repo.get_client(c, client_id))
        if self._cache_ttl > 0:
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[client_id] = (mono + self._cache_ttl, client)
        return client

    def forget_client(self, client_id: str) -> None:
        self._cache.pop(client_id, None)

    async def create_client(self, client: Client, event: AuditEvent) -> None:
        def work(c: sa.Connection) -> tuple[None, list[AuditEvent]]:
            repo.insert_client(c, client)
            return None, [event]

        await self.writer.submit(work)
        self.forget_client(client.client_id)

    async def update_client(self, client: Client, event: AuditEvent) -> None:
        def work(c: sa.Connection) -> tuple[None, list[AuditEvent]]:
            if not repo.update_client(c, client):
                raise LookupError(client.client_id)
            return None, [event]

        await self.writer.submit(work)
        self.forget_client(client.client_id)

    def _delete_client(self, c: sa.Connection, client_id: str, event: AuditEvent) -> tuple[bool, list[AuditEvent]]:
        """Delete a client and revoke its unexpired tokens; the events to record with it."""
        if not repo.delete_client(c, client_id):
            return False, []
        selector = TokenSelector(client_id=client_id)
        revoked = repo.revoke_tokens(c, selector, self._now(), self._now() - self.leeway)
        via = str(event.data.get("via", "client.deleted"))
        return True, [event, revocation_event(selector, revoked, actor=event.actor or "system", via=via)]

    async def delete_client(self, client_id: str, event: AuditEvent) -> bool:
        gone: bool = await self.writer.submit(lambda c: self._delete_client(c, client_id, event))
        self.forget_client(client_id)
        return gone

    def delete_client_now(self, client_id: str, event: AuditEvent) -> bool:
        """``delete_client`` for the CLI and the admin API (synchronous, its own transaction)."""
        with self.transaction() as conn:
            gone, events = self._delete_client(conn, client_id, event)
            repo.append_audit(conn, events, self.now_ms())
        self.forget_client(client_id)
        return gone

    # -- issuance (IssuanceRecorder, AuditSink) --------------------------------------------------------
    async def record_issuance(
        self, token: IssuedToken, assertion: AssertionUse | Sequence[AssertionUse] | None, event: AuditEvent
    ) -> None:
        await self.writer.submit_issuance(token, assertion, event)

    async def audit(self, event: AuditEvent) -> None:
        await self.writer.submit_events([event])

    async def consume_assertion(self, use: AssertionUse) -> None:
        """Record a client assertion's jti outside of an issuance (revocation, introspection)."""

        def work(c: sa.Connection) -> tuple[None, list[AuditEvent]]:
            if not repo.consume_assertion(c, use):
                raise AssertionReplayed(use.jti)
            return None, []

        await self.writer.submit(work)

    # -- revocation (RFC 7009, operator) and introspection (RFC 7662) ---------------------------------------
    def _now(self) -> int:
        return int(self.clock.now())

    async def find_token(self, jti: str) -> IssuedToken | None:
        return await asyncio.to_thread(self.read, lambda c: repo.get_token(c, jti))

    def _revoke(
        self, c: sa.Connection, selector: TokenSelector, actor: str, via: str, record_none: bool
    ) -> tuple[list[IssuedToken], list[AuditEvent]]:
        revoked = repo.revoke_tokens(c, selector, self._now(), self._now() - self.leeway)
        if not revoked and not record_none:
            return revoked, []
        return revoked, [revocation_event(selector, revoked, actor=actor, via=via)]

    async def revoke(
        self,
        selector: TokenSelector,
        *,
        actor: str,
        via: str,
        assertion: AssertionUse | None = None,
        record_none: bool = False,
    ) -> list[IssuedToken]:
        """Revoke through the group commit; the client assertion's jti (if any) is consumed with it."""

        def work(c: sa.Connection) -> tuple[list[IssuedToken], list[AuditEvent]]:
            if assertion is not None and not repo.consume_assertion(c, assertion):
                raise AssertionReplayed(assertion.jti)
            return self._revoke(c, selector, actor, via, record_none)

        revoked: list[IssuedToken] = await self.writer.submit(work)
        return revoked

    def revoke_now(self, selector: TokenSelector, *, actor: str, via: str) -> list[IssuedToken]:
        """Revoke in a transaction of its own (CLI, admin API); the action is recorded even if it revoked nothing."""
        with self.transaction() as conn:
            revoked, events = self._revoke(conn, selector, actor, via, True)
            repo.append_audit(conn, events, self.now_ms())
            return revoked

    # -- status lists (draft-ietf-oauth-status-list) ---------------------------------------------------------
    async def claim_status_segment(self, list_size: int, claimed_by: str) -> StatusSegment:
        def work(c: sa.Connection) -> tuple[StatusSegment, list[AuditEvent]]:
            segment, created = repo.claim_status_segment(c, list_size, claimed_by, self._now())
            if not created:
                return segment, []
            event = AuditEvent(
                "status_list.created",
                actor="system",
                subject=str(segment.list_id),
                data={"list_id": segment.list_id, "size": list_size, "segment_size": segment.count},
            )
            return segment, [event]

        segment: StatusSegment = await self.writer.submit(work)
        return segment

    def status_list(self, list_id: int) -> StatusListState | None:
        return self.read(lambda c: repo.get_status_list(c, list_id))

    def live_status_lists(self) -> list[int]:
        return self.read(lambda c: repo.live_status_lists(c, self._now() - self.leeway))

    # -- keys (KeySource and lifecycle) ---------------------------------------------------------------
    async def load_keys(self) -> list[KeyRecord]:
        return await asyncio.to_thread(self.read, repo.load_keys)

    def _apply(self, conn: sa.Connection, plan: KeyPlan, actor: str) -> None:
        for k in plan.inserts:
            repo.insert_key(conn, k)
        for k in plan.updates:
            repo.update_key(conn, k)
        repo.append_audit(
            conn,
            [AuditEvent(ev, actor=actor, subject=data["kid"], data=data) for ev, data in plan.events],
            self.now_ms(),
        )

    def bootstrap_keys(self, algs: list[str], kek: KEK, actor: str = "system") -> KeyPlan:
        with self.transaction() as conn:
            plan = plan_bootstrap(repo.lock_keys(conn), algs, kek, int(self.clock.now()))
            self._apply(conn, plan, actor)
            return plan

    def rotate_keys(
        self,
        alg: str,
        kek: KEK,
        *,
        max_token_lifetime: int,
        refresh_interval: float,
        leeway: int,
        actor: str = "operator",
    ) -> KeyPlan:
        with self.transaction() as conn:
            plan = plan_rotation(
                repo.lock_keys(conn),
                alg,
                kek,
                int(self.clock.now()),
                max_token_lifetime=max_token_lifetime,
                refresh_interval=refresh_interval,
                leeway=leeway,
            )
            self._apply(conn, plan, actor)
            return plan

    def revoke_key(self, kid: str, kek: KEK, actor: str = "operator") -> tuple[KeyPlan, list[IssuedToken]]:
        """A compromised key: removed at once (the next key promoted first if it was active), and every
        unexpired token it signed revoked, in one transaction. LookupError if there is no such key."""
        with self.transaction() as conn:
            plan = plan_revocation(repo.lock_keys(conn), kid, kek, self._now())
            self._apply(conn, plan, actor)
            revoked, events = self._revoke(conn, TokenSelector(kid=kid), actor, "key.revoked", True)
            repo.append_audit(conn, events, self.now_ms())
            return plan, revoked

    def sweep(self, actor: str = "system") -> KeyPlan:
        now = int(self.clock.now())
        with self.transaction() as conn:
            plan = plan_sweep(repo.lock_keys(conn), now)
            if plan.updates:
                self._apply(conn, plan, actor)
            repo.purge_expired(conn, now, leeway=300)
            return plan

    # -- audit -----------------------------------------------------------------------------------------
    def verify_audit(self) -> ChainReport:
        with self.read_engine.connect() as conn:
            head = repo.audit_head_row(conn)
            # Records past the head read here were committed after it; they are not part of this check.
            return verify_chain(repo.iter_audit(conn, limit=head[0]), expected_head=head)
