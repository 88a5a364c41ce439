"""Group commit: one writer thread per process turns many concurrent writes into few transactions.

A request submits a unit of work (a function of a connection returning a value and the audit events
it produced) and awaits its future. The writer drains what is queued (up to ``max_batch``), runs
each unit in its own SAVEPOINT (one unit's failure does not undo the others), appends every
successful unit's audit events to the hash chain, commits once, and only then resolves the futures:
a caller never sees success for a write that is not committed. If the commit fails, every unit of
the batch fails with it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa

from tessera.audit import AuditEvent
from tessera.store.sql import repo

__all__ = ["GroupCommitWriter", "Work"]

log = logging.getLogger("tessera.store.writer")
T = TypeVar("T")
Work = Callable[[sa.Connection], tuple[T, list[AuditEvent]]]


@dataclass
class _Item:
    work: Callable[[sa.Connection], tuple[Any, list[AuditEvent]]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP = object()


class GroupCommitWriter:
    def __init__(self, engine: sa.Engine, now_ms: Callable[[], int], max_batch: int = 256) -> None:
        self._engine = engine
        self._now_ms = now_ms
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tessera-writer", daemon=True)
        self._started = False
        self.batches = 0
        self.units = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._started = False

    async def submit(self, work: Callable[[sa.Connection], tuple[T, list[AuditEvent]]]) -> T:
        if not self._started:
            raise RuntimeError("the writer is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(work, loop, fut))
        return await fut

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
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Item]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._engine.begin() as conn:
                events: list[AuditEvent] = []
                for item in batch:
                    savepoint = conn.begin_nested()
                    try:
                        value, evs = item.work(conn)
                        savepoint.commit()
                        events.extend(evs)
                        outcomes.append((True, value))
                    except Exception as e:  # the unit's own failure: reported to its caller only
                        savepoint.rollback()
                        outcomes.append((False, e))
                repo.append_audit(conn, events, self._now_ms())
        except Exception as e:
            log.exception("group commit of %d writes failed", len(batch))
            outcomes = [(False, e)] * len(batch)
        self.batches += 1
        self.units += len(batch)
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            item.loop.call_soon_threadsafe(_resolve, item.future, ok, value)


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
