"""Which status list entry a token gets — draft-ietf-oauth-status-list-20 §6.2 and §13.

A Referenced Token carries ``"status": {"status_list": {"idx": N, "uri": URI}}`` (§6.2). Tessera's
lists live at ``<issuer>/oauth/status/<list_id>``.

§13.3: "The Status Issuer MUST prevent any unintended double allocation", and §12.4/§12.5 recommend
"non-sequential, pseudo-random or random indices". Without a database round trip per token and without
two processes ever handing out the same index:

- a list is cut into segments (``segment_size`` entries, at most 4096); a server process claims one
  whole segment in one transaction — the only step shared between processes — picking a random
  segment among those of the list that nobody claimed yet; a new list starts when all are claimed;
- the process puts the indices of its segment in random order (sorted by 64-bit keys from one
  ``secrets.token_bytes`` call: ``SystemRandom.shuffle`` would read the OS CSPRNG once per entry) and
  hands them out one by one; before a segment runs out, the next one is claimed in the background.

An index is used once: a segment belongs to one process, and indices a process never handed out
(it stopped) are simply never used; they stay VALID, like every unused entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SEGMENT_MAX",
    "STATUS_BITS",
    "StatusAllocator",
    "StatusEntry",
    "StatusListState",
    "StatusSegment",
    "segment_size",
    "status_list_uri",
]

#: Bits per entry in new lists: 2, so that SUSPENDED (0x02) can be expressed without a new format.
STATUS_BITS = 2
SEGMENT_MAX = 4096


def segment_size(list_size: int) -> int:
    """Entries per segment for a list of ``list_size`` entries (a multiple of 1024): 1024, 2048 or 4096."""
    return math.gcd(list_size, SEGMENT_MAX)


def status_list_uri(issuer: str, list_id: int) -> str:
    return f"{issuer}/oauth/status/{list_id}"


@dataclass(frozen=True)
class StatusEntry:
    """A token's place in a status list."""

    list_id: int
    idx: int

    def claim(self, issuer: str) -> dict[str, Any]:
        """The ``status`` claim of the token (§6.2)."""
        return {"status_list": {"idx": self.idx, "uri": status_list_uri(issuer, self.list_id)}}


@dataclass(frozen=True)
class StatusSegment:
    """Entries ``start`` … ``start + count - 1`` of list ``list_id``, claimed by one process."""

    list_id: int
    start: int
    count: int


@dataclass(frozen=True)
class StatusListState:
    """A stored status list: its shape and every entry that is not VALID, as (index, status)."""

    list_id: int
    bits: int
    size: int
    entries: list[tuple[int, int]]


class StatusAllocator:
    """Hands out status list entries in random order from segments claimed through ``claim``."""

    def __init__(self, claim: Callable[[], Awaitable[StatusSegment]], *, low_water: float = 0.25) -> None:
        self._claim = claim
        self._low_water = low_water
        self._list_id = 0
        self._free: list[int] = []
        self._threshold = 0
        self._prefetch: asyncio.Task[StatusSegment] | None = None
        self._lock: asyncio.Lock | None = None

    def _use(self, segment: StatusSegment) -> None:
        keys = secrets.token_bytes(8 * segment.count)
        order = sorted(range(segment.count), key=lambda i: keys[8 * i : 8 * i + 8])
        self._list_id, self._free = segment.list_id, [segment.start + i for i in order]
        self._threshold = int(segment.count * self._low_water)

    async def allocate(self) -> StatusEntry:
        if not self._free:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self._free:  # another request may have refilled it while this one waited
                    task, self._prefetch = self._prefetch, None
                    self._use(await task if task is not None else await self._claim())
        entry = StatusEntry(self._list_id, self._free.pop())
        if len(self._free) <= self._threshold and self._prefetch is None:
            self._prefetch = asyncio.ensure_future(self._claim())
        return entry

    async def close(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
