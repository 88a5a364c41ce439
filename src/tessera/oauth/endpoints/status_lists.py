"""Status List Tokens — draft-ietf-oauth-status-list-20 §5.1 (JWT format), §8 (request and response)
and §9 (Status List Aggregation).

``GET /oauth/status/{list_id}`` answers a Status List Token:

- header: ``typ`` "MUST be ``statuslist+jwt``" (§5.1), ``alg`` and ``kid`` of the active signing key
  (the key that signs access tokens, so relying parties resolve it from the same JWKS, §11.3);
- claims: ``sub`` "MUST specify the URI of the Status List Token" — equal to the ``uri`` in the
  tokens' ``status`` claim —, ``iat``, ``exp`` (RECOMMENDED: ``iat`` + 10 ``ttl``: a relying party
  that cannot refetch may use a list that long, then fails closed), ``ttl`` (RECOMMENDED: how long a
  relying party may cache it), ``iss`` (this issuer; the JWT "MAY contain other claims") and
  ``status_list`` {``bits``, ``lst``, ``aggregation_uri``} (§4.2);
- media type ``application/statuslist+jwt`` (§8.2), ``Cache-Control: public, max-age=<ttl>``.

A list is built from the stored entries that are not VALID, signed, and kept per process for at most
``cache_seconds`` (1 s): a revocation made in another process shows within that time, one made in
this process at once (``invalidate``). ``GET /oauth/status`` is the aggregation (§9.3): the URIs of
the lists that hold entries of unexpired tokens.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tessera.oauth.jws import sign_compact
from tessera.oauth.keys import KeyRing, SigningKey
from tessera.oauth.status_entries import StatusListState, status_list_uri
from tessera.oauth.status_list import encode
from tessera.store.interfaces import StatusListSource

__all__ = [
    "EXP_TTLS",
    "MEDIA_TYPE",
    "TYP",
    "PublishedList",
    "StatusListEndpoint",
    "aggregation_uri",
    "status_list_token",
]

TYP = "statuslist+jwt"
MEDIA_TYPE = "application/" + TYP
#: A served list token expires this many ``ttl`` after it was signed.
EXP_TTLS = 10


def aggregation_uri(issuer: str) -> str:
    return issuer + "/oauth/status"


def status_list_token(*, key: SigningKey, issuer: str, state: StatusListState, now: int, ttl: int, exp: int) -> str:
    """The signed Status List Token (§5.1) of a stored list."""
    header = {"alg": key.alg, "kid": key.kid, "typ": TYP}
    claims = {
        "iss": issuer,
        "sub": status_list_uri(issuer, state.list_id),
        "iat": now,
        "exp": exp,
        "ttl": ttl,
        "status_list": {
            "bits": state.bits,
            "lst": encode(state.entries, bits=state.bits, size=state.size),
            "aggregation_uri": aggregation_uri(issuer),
        },
    }
    return sign_compact(header, claims, key.private)


@dataclass
class PublishedList:
    """A signed list as served; ``gzipped`` is made on first use (§8.2: responses SHOULD use gzip)."""

    value: bytes
    _gzipped: bytes | None = field(default=None, repr=False)

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.value, 6, mtime=0)
        return self._gzipped


@dataclass
class _Cached:
    at: float
    generation: tuple[int, int]
    kid: str
    published: PublishedList | None


class StatusListEndpoint:
    def __init__(
        self,
        *,
        issuer: str,
        keys: Callable[[], KeyRing],
        signing_alg: str,
        source: StatusListSource,
        now: Callable[[], float],
        ttl: int,
        cache_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._keys = keys
        self._alg = signing_alg
        self._source = source
        self._now = now
        self.ttl = ttl
        self._cache_seconds = cache_seconds
        self._mono = monotonic
        self._cache: dict[int, _Cached] = {}
        self._generations: dict[int, int] = {}
        self._epoch = 0
        self._locks: dict[int, asyncio.Lock] = {}
        self._aggregation: tuple[float, int, dict[str, Any]] | None = None

    def _generation(self, list_id: int) -> tuple[int, int]:
        return self._epoch, self._generations.get(list_id, 0)

    def invalidate(self, list_ids: Iterable[int | None] | None = None) -> None:
        """Forget cached lists (all of them when ``list_ids`` is None): the next request rebuilds them."""
        if list_ids is None:
            self._epoch += 1
            self._cache.clear()
            self._aggregation = None
            return
        for list_id in {i for i in list_ids if i is not None}:
            self._generations[list_id] = self._generations.get(list_id, 0) + 1
            self._cache.pop(list_id, None)

    def _fresh(self, list_id: int, kid: str) -> _Cached | None:
        hit = self._cache.get(list_id)
        if (
            hit is not None
            and hit.kid == kid
            and hit.generation == self._generation(list_id)
            and self._mono() - hit.at < self._cache_seconds
        ):
            return hit
        return None

    def _build(self, list_id: int, key: SigningKey) -> PublishedList | None:
        state = self._source.status_list(list_id)
        if state is None:
            return None
        now = int(self._now())
        value = status_list_token(
            key=key, issuer=self._issuer, state=state, now=now, ttl=self.ttl, exp=now + EXP_TTLS * self.ttl
        )
        return PublishedList(value.encode("ascii"))

    async def get(self, list_id: int) -> PublishedList | None:
        """The current Status List Token of ``list_id``; None if there is no such list."""
        key = self._keys().signer(self._alg)
        hit = self._fresh(list_id, key.kid)
        if hit is not None:
            return hit.published
        lock = self._locks.setdefault(list_id, asyncio.Lock())
        async with lock:  # one build per list at a time; requests arriving meanwhile share its result
            hit = self._fresh(list_id, key.kid)
            if hit is not None:
                return hit.published
            generation, started = self._generation(list_id), self._mono()
            published = await asyncio.to_thread(self._build, list_id, key)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[list_id] = _Cached(started, generation, key.kid, published)
        if not lock.locked() and len(self._locks) > 10_000:
            self._locks.clear()
        return published

    async def aggregation(self) -> dict[str, Any]:
        """§9.3: ``{"status_lists": [URI, ...]}``, kept for ``ttl`` seconds."""
        hit = self._aggregation
        if hit is not None and hit[1] == self._epoch and self._mono() - hit[0] < self.ttl:
            return hit[2]
        started, epoch = self._mono(), self._epoch
        ids = await asyncio.to_thread(self._source.live_status_lists)
        body = {"status_lists": [status_list_uri(self._issuer, i) for i in ids]}
        self._aggregation = (started, epoch, body)
        return body
