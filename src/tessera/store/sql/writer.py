"""Group commit: one writer thread per process turns many concurrent writes into few transactions.

Callers submit writes and await their futures. The writer drains what is queued (up to
``max_batch``) and commits it as one transaction:

- token issuances (the hot path) become a handful of multi-row statements for the whole batch: one
  ``INSERT … ON CONFLICT DO NOTHING RETURNING`` consumes the client assertions' ``jti`` values (a
  ``jti`` that is not returned was used before: that issuance fails with ``AssertionReplayed``), one
  insert stores the token records;
- other writes are functions of a connection, each in its own SAVEPOINT so that one's failure does
  not undo the others;
- every successful write's audit events are appended to the hash chain, in submission order.

Futures resolve only after the commit: a caller never sees success for a write that is not durable.
If the batch transaction fails as a whole, each write is retried alone, so one bad write cannot
fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa

from tessera import spans
from tessera.audit import AuditEvent
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.tokens import IssuedToken
from tessera.store.interfaces import AssertionReplayed
from tessera.store.sql import repo

__all__ = ["GroupCommitWriter"]

log = logging.getLogger("tessera.store.writer")
T = TypeVar("T")


@dataclass
class _Item:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    work: Callable[[sa.Connection], tuple[Any, list[AuditEvent]]] | None = None
    token: IssuedToken | None = None
    #: jtis consumed with the issuance: the client assertion's and any single-use external token's
    assertions: tuple[AssertionUse, ...] = ()
    events: list[AuditEvent] | None = None


_STOP = object()


class GroupCommitWriter:
    def __init__(
        self, engine: sa.Engine, now_ms: Callable[[], int], max_batch: int = 512, *, inline: bool | None = None
    ) -> None:
        self._engine = engine
        self._now_ms = now_ms
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # SQLite (in-process, no network wait) commits on the event loop itself: a writer thread would
        # only fight the loop for the GIL, which measured as ~250 µs of lost CPU per token request.
        # PostgreSQL commits wait on the network and the disk, so they run on the writer thread.
        self._inline = engine.dialect.name == "sqlite" if inline is None else inline
        self._running = False
        self._pending: list[_Item] = []
        self._flush_scheduled = False
        self.batches = 0
        self.units = 0

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        self._running = True
        if self._engine.dialect.name == "sqlite":
            # Checkpoints are the store's checkpoint thread's job while the server runs (see SqlStore.start).
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        if not self._inline and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tessera-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._pending:
            self._flush_inline()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None

    def _put(self, item: _Item) -> asyncio.Future[Any]:
        if not self._running:
            raise RuntimeError("the writer is not running")
        if self._inline:
            self._pending.append(item)
            if not self._flush_scheduled:
                # Everything submitted before this callback runs (this loop iteration) joins the batch.
                self._flush_scheduled = True
                item.loop.call_soon(self._flush_inline)
        else:
            self._queue.put(item)
        return item.future

    def _flush_inline(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            for item, (ok, value) in zip(batch, self._commit(batch), strict=True):
                _resolve(item.future, ok, value)

    async def submit(self, work: Callable[[sa.Connection], tuple[T, list[AuditEvent]]]) -> T:
        """Run ``work`` (returning a value and its audit events) in the next group commit."""
        loop = asyncio.get_running_loop()
        result: T = await self._put(_Item(loop, loop.create_future(), work=work))
        return result

    async def submit_events(self, events: list[AuditEvent]) -> None:
        loop = asyncio.get_running_loop()
        await self._put(_Item(loop, loop.create_future(), events=events))

    async def submit_issuance(
        self, token: IssuedToken, assertion: AssertionUse | Sequence[AssertionUse] | None, event: AuditEvent
    ) -> None:
        loop = asyncio.get_running_loop()
        uses = () if assertion is None else (assertion,) if isinstance(assertion, AssertionUse) else tuple(assertion)
        await self._put(_Item(loop, loop.create_future(), token=token, assertions=uses, events=[event]))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            for item, (ok, value) in zip(batch, self._commit(batch), strict=True):
                item.loop.call_soon_threadsafe(_resolve, item.future, ok, value)
            if stop:
                return

    def _commit(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        try:
            with spans.span("store.group_commit", {"tessera.batch_size": len(batch)}):
                outcomes = self._transaction(batch)
        except Exception:
            log.warning("group commit of %d writes failed; retrying them one by one", len(batch), exc_info=True)
            outcomes = []
            for item in batch:
                try:
                    outcomes.extend(self._transaction([item]))
                except Exception as e:
                    outcomes.append((False, e))
        self.batches += 1
        self.units += len(batch)
        return outcomes

    def _transaction(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = [(True, None)] * len(batch)
        with self._engine.begin() as conn:
            for i, item in enumerate(batch):
                if item.work is None:
                    continue
                savepoint = conn.begin_nested()
                try:
                    value, evs = item.work(conn)
                    savepoint.commit()
                    outcomes[i] = (True, value)
                    item.events = evs
                except Exception as e:  # the unit's own failure: reported to its caller only
                    savepoint.rollback()
                    outcomes[i] = (False, e)
            issuing = [i for i, item in enumerate(batch) if item.token is not None]
            if issuing:
                uses = [u for i in issuing for u in batch[i].assertions]
                fresh = repo.consume_assertions(conn, uses) if uses else set()
                tokens = []
                for i in issuing:
                    keys = [(use.client_id, use.jti) for use in batch[i].assertions]
                    replayed = [k for k in keys if k not in fresh] + [k for k in set(keys) if keys.count(k) > 1]
                    if replayed:
                        outcomes[i] = (False, AssertionReplayed(replayed[0][1], tuple(replayed)))
                        continue
                    fresh.difference_update(keys)  # a second use of the same jti within this batch is a replay too
                    tokens.append(batch[i].token)
                if fresh:
                    # Recorded for requests refused above only: a refused request uses up none of its tokens.
                    repo.release_assertions(conn, fresh)
                repo.insert_tokens(conn, [t for t in tokens if t is not None])
            events = [ev for (ok, _), item in zip(outcomes, batch, strict=True) if ok for ev in (item.events or [])]
            repo.append_audit(conn, events, self._now_ms())
        return outcomes


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
