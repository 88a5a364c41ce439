"""``SqlStore``: the storage contracts over SQLAlchemy, for the server (async) and the CLI (sync)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from tessera.audit import AuditEvent, ChainReport, verify_chain
from tessera.clock import Clock
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.clients import Client
from tessera.oauth.keys import KEK, KeyPlan, KeyRecord, plan_bootstrap, plan_rotation, plan_sweep
from tessera.oauth.tokens import IssuedToken
from tessera.store.sql import repo
from tessera.store.sql.engine import create_engines, upgrade
from tessera.store.sql.writer import GroupCommitWriter

__all__ = ["SqlStore"]


class SqlStore:
    def __init__(self, url: str, clock: Clock, *, client_cache_ttl: float = 1.0) -> None:
        self.url = url
        self.clock = clock
        self.write_engine, self.read_engine = create_engines(url)
        self.writer = GroupCommitWriter(self.write_engine, self.now_ms)
        self._cache_ttl = client_cache_ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def migrate(self) -> str:
        return upgrade(self.write_engine)

    def start(self) -> None:
        self.writer.start()

    def close(self) -> None:
        self.writer.stop()
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.write_engine.begin() as conn:
            yield conn

    def write(self, fn: Callable[[sa.Connection], Any], events: list[AuditEvent]) -> Any:
        """Synchronous write with its audit events in one transaction (CLI, admin API)."""
        with self.transaction() as conn:
            value = fn(conn)
            repo.append_audit(conn, events, self.now_ms())
            return value

    def read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        with self.read_engine.connect() as conn:
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

    async def delete_client(self, client_id: str, event: AuditEvent) -> bool:
        def work(c: sa.Connection) -> tuple[bool, list[AuditEvent]]:
            gone = repo.delete_client(c, client_id)
            return gone, [event] if gone else []

        gone: bool = await self.writer.submit(work)
        self.forget_client(client_id)
        return gone

    # -- issuance (IssuanceRecorder, AuditSink) --------------------------------------------------------
    async def record_issuance(self, token: IssuedToken, assertion: AssertionUse | None, event: AuditEvent) -> None:
        await self.writer.submit_issuance(token, assertion, event)

    async def audit(self, event: AuditEvent) -> None:
        await self.writer.submit_events([event])

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
