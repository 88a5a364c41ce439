"""The durable outbox worker: every message is a row first; delivery is at least once, under one id.

A worker claims due rows for a lease (``claim``), sends them concurrently, and records the outcome:
delivered, failed with the next attempt scheduled (exponential backoff with full jitter), or dead
(a permanent failure, an unknown channel, a body that cannot be opened, or ``max_attempts`` spent).
A worker that dies after claiming loses nothing: once the lease expires another worker claims the row
again. So a receiver may see a message twice; it deduplicates on the message id (``webhook-id``, the
e-mail Message-ID). The store (``tessera.store.sql.outbox``) shares rows between processes with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tessera.channels.message import Channel, DeliveryError, Message, Sealer

__all__ = ["OutboxItem", "OutboxStore", "OutboxWorker", "RetryPolicy"]

log = logging.getLogger("tessera.channels.outbox")


@dataclass(frozen=True)
class OutboxItem:
    """A claimed row. ``attempts`` counts this attempt (claiming starts one); ``worker`` holds the lease."""

    message_id: str
    channel: str
    kind: str
    recipient: str
    ref: str | None
    sealed_body: bytes
    attempts: int
    worker: str = ""

    def __repr__(self) -> str:
        return f"OutboxItem({self.message_id!r}, {self.channel!r}, attempts={self.attempts})"


class OutboxStore(Protocol):
    async def claim(self, worker: str, limit: int, lease_ms: int) -> list[OutboxItem]: ...

    async def delivered(self, item: OutboxItem) -> None: ...

    async def failed(self, item: OutboxItem, error: str, retry_at_ms: int | None) -> None:
        """Record a failed attempt; ``retry_at_ms`` None dead-letters the message."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**(n-1))) seconds."""

    max_attempts: int = 8
    base: float = 2.0
    cap: float = 600.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempts: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt after ``attempts`` failed ones; None when they are spent."""
        if attempts >= self.max_attempts:
            return None
        wait = self.rng.uniform(0.0, min(self.cap, self.base * 2 ** max(attempts - 1, 0)))
        if retry_after is not None:  # the receiver's Retry-After, within the cap
            wait = max(wait, min(retry_after, self.cap))
        return wait


class OutboxWorker:
    def __init__(
        self,
        store: OutboxStore,
        channels: Mapping[str, Channel],
        sealer: Sealer,
        *,
        worker_id: str,
        now: Callable[[], float],
        policy: RetryPolicy = RetryPolicy(),
        batch: int = 32,
        lease: float = 60.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.sealer = sealer
        self.worker_id = worker_id
        self.now = now
        self.policy = policy
        self.batch = batch
        self.lease = lease
        self.poll_interval = poll_interval
        # A send must end well before the lease does, or another worker would send it too.
        self.send_timeout = lease * 0.8
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due messages now (after an enqueue). Call it on the event loop's thread."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim the due messages, send them concurrently, record each outcome; how many were attempted."""
        items = await self.store.claim(self.worker_id, self.batch, int(self.lease * 1000))
        if items:
            await asyncio.gather(*(self._attempt(item) for item in items))
        return len(items)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                n = await self.run_once()
            except Exception as e:  # the database is away: try again on the next tick
                log.warning("outbox worker %s: claiming failed (%s)", self.worker_id, type(e).__name__)
                n = 0
            if n >= self.batch:
                continue  # more may be due
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await w

    async def _attempt(self, item: OutboxItem) -> None:
        try:
            message = self._open(item)
            channel = self.channels.get(message.channel)
            if channel is None:
                raise DeliveryError(f"no channel named {message.channel!r} is configured", permanent=True)
            async with asyncio.timeout(self.send_timeout):
                await channel.send(message)
        except DeliveryError as e:
            await self._failed(item, str(e), e.permanent, e.retry_after)
        except TimeoutError:
            await self._failed(item, f"the {item.channel} channel did not finish within {self.send_timeout:g} s")
        except Exception as e:  # a bug in a channel: its message may quote the body, so keep only the class
            log.warning("outbox: sending %s raised %s", item.message_id, type(e).__name__)
            await self._failed(item, f"unexpected {type(e).__name__} in the {item.channel} channel")
        else:
            try:
                await self.store.delivered(item)
            except Exception as e:
                # Sent but not recorded: after the lease it is sent again, and the receiver deduplicates.
                log.warning("outbox: recording %s as delivered failed (%s)", item.message_id, type(e).__name__)

    def _open(self, item: OutboxItem) -> Message:
        if item.attempts > self.policy.max_attempts:
            # Claimed again and again without an outcome: a worker dies on it. Stop here.
            raise DeliveryError(f"abandoned after {item.attempts - 1} attempts without an outcome", permanent=True)
        message = Message.unseal(self.sealer, item.message_id, item.sealed_body)
        # The sealed fields are authenticated; the row's columns are not. They must agree.
        if (message.channel, message.recipient, message.kind) != (item.channel, item.recipient, item.kind):
            raise DeliveryError("the row's channel, recipient or kind differ from the sealed message", permanent=True)
        return message

    async def _failed(
        self, item: OutboxItem, error: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        delay = None if permanent else self.policy.delay(item.attempts, retry_after)
        retry_at = None if delay is None else int((self.now() + delay) * 1000)
        if retry_at is None:
            log.warning("outbox: message %s (%s) dead-lettered: %s", item.message_id, item.kind, error)
        else:
            log.info("outbox: message %s attempt %d failed: %s", item.message_id, item.attempts, error)
        try:
            await self.store.failed(item, error[:500], retry_at)
        except Exception as e:
            log.warning("outbox: recording the failure of %s failed (%s)", item.message_id, type(e).__name__)
