"""The relying party's cached trust data for one issuer: signing keys and status lists.

Lessons taken from PyJWT issues #1162/#1051 and jose's ``createRemoteJWKSet``:

- keys come from the issuer's metadata (RFC 8414; its ``issuer`` must equal the configured one
  exactly) or a pinned ``jwks_uri``, and are refreshed on a soft TTL that honours ``Cache-Control``;
- an unknown ``kid`` triggers at most one refetch per cooldown, so a flood of made-up ``kid``
  values costs the issuer nothing;
- a failed refresh keeps the last good keys until ``keys_max_stale``; past that, verification
  fails closed (``TrustDataStale``) — never open;
- a refresh replaces the whole key set, so removed keys stop verifying at the next refresh;
- a status list is used until its ``ttl`` runs out, then refetched; a failed refetch keeps the old
  list until ``status_max_age`` (or the list token's ``exp``), then fails closed.

Network access is through httpx clients that the caller can inject (``transport=`` for tests).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from tessera.verify.bundle import Bundle
from tessera.verify.errors import (
    InvalidBundle,
    MalformedToken,
    StatusUnavailable,
    TrustDataStale,
    UnknownKey,
    VerificationError,
    WrongIssuer,
    WrongType,
)
from tessera.verify.jws import PublicKey, parse_compact, public_key_from_jwk, verify_signature
from tessera.verify.status_list import StatusList, decode_status_list

__all__ = ["StatusEntry", "TrustPolicy", "TrustStore"]

log = logging.getLogger("tessera.verify")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.I)
MAX_DOCUMENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TrustPolicy:
    keys_ttl: float = 300.0
    keys_min_ttl: float = 30.0
    keys_max_stale: float = 24 * 3600.0
    unknown_kid_cooldown: float = 30.0
    status_min_ttl: float = 5.0
    status_max_age: float = 3600.0
    max_status_list_bytes: int = 16 * 1024 * 1024
    leeway: float = 30.0
    background_refresh: bool = True
    algorithms: frozenset[str] = frozenset()


@dataclass
class StatusEntry:
    uri: str
    status_list: StatusList
    fetched_at: float
    ttl: float
    exp: float | None
    #: until when a lookup may skip every freshness decision (the verifier's hot path)
    fast_until: float = 0.0
    #: the list token's iat (never later than its fetch): how old the information itself is
    issued_at: float = 0.0


@dataclass
class _Keys:
    keys: list[PublicKey]
    fetched_at: float
    refresh_after: float
    #: until when a lookup may skip every freshness decision (the verifier's hot path)
    fast_until: float = 0.0
    by_kid: dict[tuple[str | None, str], list[PublicKey]] = field(default_factory=dict)


@dataclass
class TrustStore:
    issuer: str
    policy: TrustPolicy
    now: Callable[[], float]
    jwks_uri: str | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0, follow_redirects=False))
    ahttp: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=5.0, follow_redirects=False))
    source: str = "network"
    _keys: _Keys | None = None
    _kid_refetch_at: float = float("-inf")
    _lists: dict[str, StatusEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _refreshing: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    bundle_exp: float | None = None
    _retry_wait: dict[str, float] = field(default_factory=dict)
    _retry_at: dict[str, float] = field(default_factory=dict)
    #: where the issuer's metadata lives (RFC 8414 §3; OpenID issuers use openid-configuration)
    metadata_path: str = "/.well-known/oauth-authorization-server"
    #: the JWK ``use`` the keys must have: "sig", or "jwt-svid" for a SPIFFE trust bundle
    key_use: str = "sig"
    _inflight: asyncio.Future[bool] | None = None

    # -- documents ------------------------------------------------------------------------------------
    @staticmethod
    def _check_response(r: httpx.Response, what: str) -> None:
        if r.status_code != 200:
            raise TrustDataStale(f"{what} answered HTTP {r.status_code}")
        if len(r.content) > MAX_DOCUMENT_BYTES:
            raise TrustDataStale(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")

    def _ttl(self, r: httpx.Response) -> float:
        cc = r.headers.get("cache-control", "")
        m = _MAX_AGE.search(cc)
        ttl = float(m.group(1)) if m else self.policy.keys_ttl
        if "no-store" in cc or "no-cache" in cc:
            ttl = 0
        return min(max(ttl, self.policy.keys_min_ttl), max(self.policy.keys_ttl, self.policy.keys_min_ttl) * 12)

    def _metadata_url(self) -> str:
        return self.issuer + self.metadata_path

    def _jwks_from_metadata(self, meta: Any) -> str:
        # RFC 8414 §3.3: the issuer in the metadata MUST be identical to the issuer we asked for.
        if not isinstance(meta, dict) or meta.get("issuer") != self.issuer:
            raise WrongIssuer("the issuer's metadata names another issuer")
        uri = meta.get("jwks_uri")
        if not isinstance(uri, str):
            raise TrustDataStale("the issuer's metadata has no jwks_uri")
        return uri

    def _install_keys(self, jwks: Any, ttl: float) -> None:
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise TrustDataStale("the JWKS is not a JWK Set")
        keys = []
        for jwk in jwks["keys"][:100]:
            if isinstance(jwk, dict) and self.key_use != "sig":
                # SPIFFE bundles: only keys for JWT-SVIDs (not the X.509 authorities) verify tokens.
                if jwk.get("use") != self.key_use:
                    continue
                jwk = {k: v for k, v in jwk.items() if k != "use"}
            if isinstance(jwk, dict):
                try:
                    keys.append(public_key_from_jwk(jwk))
                except (ValueError, MalformedToken):  # bad base64url in a member raises MalformedToken
                    continue  # a key we cannot use is skipped, not fatal
        now = self.now()
        self._keys = _Keys(keys, now, now + ttl, min(now + ttl, now + self.policy.keys_max_stale))

    def _keys_steps(self) -> Generator[tuple[str, str], httpx.Response, None]:
        """Fetching the keys, free of I/O: yields (url, accept) and is sent each response."""
        uri = self.jwks_uri
        if uri is None:
            r = yield self._metadata_url(), "application/json"
            self._check_response(r, "issuer metadata")
            uri = self.jwks_uri = self._jwks_from_metadata(r.json())
        r = yield uri, "application/jwk-set+json, application/json"
        self._check_response(r, "JWKS")
        self._install_keys(r.json(), self._ttl(r))

    def _fetch_keys_sync(self) -> None:
        try:
            _drive(self._keys_steps(), self.http)
        except (httpx.HTTPError, ValueError) as e:
            raise TrustDataStale(f"could not fetch the issuer's keys: {e.__class__.__name__}") from None

    async def _fetch_keys_async(self) -> None:
        try:
            await _adrive(self._keys_steps(), self.ahttp)
        except (httpx.HTTPError, ValueError) as e:
            raise TrustDataStale(f"could not fetch the issuer's keys: {e.__class__.__name__}") from None

    # -- keys ---------------------------------------------------------------------------------------
    def _select(self, kid: str | None, alg: str) -> list[PublicKey]:
        k = self._keys
        assert k is not None
        found = k.by_kid.get((kid, alg))
        if found is None:
            found = [x for x in k.keys if (kid is None or x.kid == kid) and (x.alg in (None, alg))]
            if found and len(k.by_kid) < 1024:
                k.by_kid[(kid, alg)] = found
        return found

    def _keys_decision(self, kid: str | None, alg: str) -> str:
        """'ok', 'refresh' (blocking, because data is missing or too old), 'background', or 'kid'."""
        now = self.now()
        k = self._keys
        if k is None or (self.source == "network" and now - k.fetched_at > self.policy.keys_max_stale):
            if self.source != "network" or now < self._retry_at.get("keys", 0.0):
                return "stale"  # inside the back-off after a failed fetch: refuse at once, do not block
            return "refresh"
        if not self._select(kid, alg):
            return (
                "kid"
                if self.source == "network" and now - self._kid_refetch_at >= self.policy.unknown_kid_cooldown
                else "unknown"
            )
        if now >= k.refresh_after and self.source == "network":
            if self.policy.background_refresh:
                return "background"
            return "refresh" if now >= self._retry_at.get("keys", 0.0) else "ok"
        return "ok"

    def _fast_keys(self, kid: str | None, alg: str) -> tuple[list[PublicKey], float, bool] | None:
        """The hot path: fresh keys already selected for (kid, alg), with no decision to make."""
        k = self._keys
        if k is not None:
            now = self.now()
            if now < k.fast_until:
                found = k.by_kid.get((kid, alg))
                if found is not None:
                    return found, now - k.fetched_at, False
        return None

    def _plan_keys(self, kid: str | None, alg: str) -> str:
        decision = self._keys_decision(kid, alg)
        if decision == "kid":
            self._kid_refetch_at = self.now()
        return decision

    def keys_for_sync(self, kid: str | None, alg: str) -> tuple[list[PublicKey], float, bool]:
        fast = self._fast_keys(kid, alg)
        if fast is not None:
            return fast
        decision, stale = self._plan_keys(kid, alg), False
        if decision in ("refresh", "kid"):
            try:
                self._fetch_keys_sync()
                self._fetched("keys")
            except TrustDataStale:
                stale = True
                self._keys_failed()
        elif decision == "background":
            stale = True
            self._background(self._fetch_keys_sync, "keys")
        return self._finish_keys(kid, alg, stale)

    async def keys_for_async(self, kid: str | None, alg: str) -> tuple[list[PublicKey], float, bool]:
        fast = self._fast_keys(kid, alg)
        if fast is not None:
            return fast
        decision, stale = self._plan_keys(kid, alg), False
        if decision in ("refresh", "kid"):
            stale = not await self._shared_fetch_keys()
        elif decision == "background":
            stale = True
            self._abackground(self._fetch_keys_async, "keys")
        return self._finish_keys(kid, alg, stale)

    async def _shared_fetch_keys(self) -> bool:
        """One fetch at a time: concurrent callers that all find the keys missing (a cold start, a burst
        of tokens naming an unknown ``kid``) wait for the same request instead of sending one each."""
        inflight = self._inflight
        if inflight is None or inflight.done() or inflight.get_loop() is not asyncio.get_running_loop():

            async def fetch() -> bool:
                try:
                    await self._fetch_keys_async()
                    self._fetched("keys")
                    return True
                except TrustDataStale:
                    self._keys_failed()
                    return False

            inflight = self._inflight = asyncio.ensure_future(fetch())
        return await asyncio.shield(inflight)

    def _finish_keys(self, kid: str | None, alg: str, stale: bool) -> tuple[list[PublicKey], float, bool]:
        k = self._keys
        now = self.now()
        if self.bundle_exp is not None and now >= self.bundle_exp:
            raise TrustDataStale("the trust bundle has expired")
        if k is None:
            raise TrustDataStale("no signing keys of the issuer are available")
        age = now - k.fetched_at
        if self.bundle_exp is None and age > self.policy.keys_max_stale:
            raise TrustDataStale(f"the issuer's keys are {int(age)} s old (limit {int(self.policy.keys_max_stale)} s)")
        found = self._select(kid, alg)
        if not found:
            raise UnknownKey(f"no key {str(kid)[:64]!r} for {alg} among the issuer's published keys")
        return found, age, stale

    # -- background refresh -----------------------------------------------------------------------------
    def _background(self, fn: Callable[[], None], what: str) -> None:
        with self._lock:
            if what in self._refreshing:
                return
            self._refreshing.add(what)

        def run() -> None:
            try:
                fn()
            except Exception as e:  # the next due refresh tries again; limits fail closed meanwhile
                log.info("background refresh of %s failed: %s", what, e)
            finally:
                with self._lock:
                    self._refreshing.discard(what)

        threading.Thread(target=run, name=f"tessera-verify-refresh-{what}", daemon=True).start()

    def _abackground(self, fn: Callable[[], Any], what: str) -> None:
        if what in self._refreshing:
            return
        self._refreshing.add(what)

        async def run() -> None:
            try:
                await fn()
            except Exception as e:
                log.info("background refresh of %s failed: %s", what, e)
            finally:
                self._refreshing.discard(what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- status lists ---------------------------------------------------------------------------------
    def install_status_token(
        self, uri: str, token: str, keys: list[PublicKey] | None = None, fetched_at: float | None = None
    ) -> StatusEntry:
        """Verify a status list token for ``uri`` and cache it (draft-ietf-oauth-status-list §8.3)."""
        if len(token) > self.policy.max_status_list_bytes:
            raise StatusUnavailable("status list token is too large")
        try:
            header, claims, signing_input, signature = parse_compact(token)
        except MalformedToken as e:
            raise StatusUnavailable(f"status list token: {e.message}") from None
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ("statuslist+jwt", "application/statuslist+jwt"):
            raise WrongType("status list token typ must be statuslist+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or (self.policy.algorithms and alg not in self.policy.algorithms):
            raise StatusUnavailable("status list token alg is not an accepted algorithm")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        candidates = keys if keys is not None else self.keys_for_sync(kid, alg)[0]
        last: Exception | None = None
        for key in candidates[:4]:
            try:
                verify_signature(alg, key, signing_input, signature)
                break
            except Exception as e:
                last = e
        else:
            raise StatusUnavailable(f"status list token signature: {last}")
        now = self.now()
        if claims.get("sub") != uri:
            raise StatusUnavailable("status list token sub is not the referenced URI")
        if claims.get("iss", self.issuer) != self.issuer:
            raise StatusUnavailable("status list token comes from another issuer")
        iat, exp, ttl = claims.get("iat"), claims.get("exp"), claims.get("ttl")
        if iat is None or not _num(iat) or iat > now + self.policy.leeway:
            raise StatusUnavailable("status list token iat is missing or in the future")
        if exp is not None and (not _num(exp) or exp <= now - self.policy.leeway):
            raise StatusUnavailable("status list token has expired")
        if ttl is not None and (not _num(ttl) or ttl <= 0):
            raise StatusUnavailable("status list token ttl must be a positive number")
        sl = claims.get("status_list")
        if not isinstance(sl, dict):
            raise StatusUnavailable("status list token has no status_list")
        held = self._lists.get(uri)
        if held is not None and iat < held.issued_at:
            # A replayed or cached older list must never replace newer information (revocations are one-way).
            raise StatusUnavailable("status list token is older than the one already held")
        decoded = decode_status_list(sl.get("bits"), sl.get("lst"), self.policy.max_status_list_bytes)
        fetched = now if fetched_at is None else fetched_at
        entry = StatusEntry(
            uri,
            decoded,
            fetched,
            max(float(ttl) if ttl is not None else self.policy.status_min_ttl, self.policy.status_min_ttl),
            float(exp) if exp is not None else None,
            issued_at=min(float(iat), fetched),
        )
        if self.source == "network":
            due = entry.fetched_at + entry.ttl * (0.8 if self.policy.background_refresh else 1.0)
            limits = [due, entry.issued_at + self.policy.status_max_age]
        else:
            limits = [self.bundle_exp or 0.0]
        if entry.exp is not None:
            limits.append(entry.exp)
        entry.fast_until = min(limits)
        self._lists[uri] = entry
        return entry

    def _status_decision(self, uri: str) -> str:
        e = self._lists.get(uri)
        if e is None:
            return "refresh" if self.source == "network" else "missing"
        now = self.now()
        if self.source != "network":
            return "ok"
        if now >= e.fetched_at + e.ttl or (e.exp is not None and now >= e.exp):
            return "refresh" if now >= self._retry_at.get(uri, 0.0) else "ok"
        if self.policy.background_refresh and now >= e.fetched_at + 0.8 * e.ttl:
            return "background"
        return "ok"

    def _status_steps(self, uri: str) -> Generator[tuple[str, str], httpx.Response, tuple[str, str | None, str]]:
        """Fetching a status list token, free of I/O; returns (token, kid, alg) for the key lookup."""
        r = yield uri, "application/statuslist+jwt"
        if r.status_code != 200 or len(r.content) > self.policy.max_status_list_bytes:
            raise StatusUnavailable(f"status list answered HTTP {r.status_code}")
        token = r.text.strip()
        try:
            header = parse_compact(token)[0]
        except MalformedToken as e:  # the list is unavailable; the access token is not malformed
            raise StatusUnavailable(f"status list token: {e.message}") from None
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        alg = header.get("alg") if isinstance(header.get("alg"), str) else ""
        return token, kid, str(alg)

    def _fetch_status_sync(self, uri: str) -> None:
        try:
            token, kid, alg = _drive(self._status_steps(uri), self.http)
        except httpx.HTTPError as e:
            raise StatusUnavailable(f"could not fetch the status list: {e.__class__.__name__}") from None
        self.install_status_token(uri, token, keys=self.keys_for_sync(kid, alg)[0])

    async def _fetch_status_async(self, uri: str) -> None:
        try:
            token, kid, alg = await _adrive(self._status_steps(uri), self.ahttp)
        except httpx.HTTPError as e:
            raise StatusUnavailable(f"could not fetch the status list: {e.__class__.__name__}") from None
        self.install_status_token(uri, token, keys=(await self.keys_for_async(kid, alg))[0])

    def _fast_status(self, uri: str) -> StatusEntry | None:
        e = self._lists.get(uri)
        if e is not None and self.now() < e.fast_until:
            return e
        return None

    def _keys_failed(self) -> None:
        wait = min(self._retry_wait.get("keys", 2.5) * 2, 60.0)
        self._retry_wait["keys"] = wait
        self._retry_at["keys"] = self.now() + wait

    def _status_failed(self, uri: str, error: VerificationError) -> None:
        """After a failed fetch, wait before trying again (5 s, doubling to 60 s): an issuer outage must
        not turn every verification into a blocking fetch. Without a cached list the failure stands."""
        wait = min(self._retry_wait.get(uri, 2.5) * 2, 60.0)
        self._retry_wait[uri] = wait
        self._retry_at[uri] = self.now() + wait
        if uri not in self._lists:
            if isinstance(error, UnknownKey):
                raise StatusUnavailable(f"status list token: {error.message}") from None
            raise error

    def _fetched(self, uri: str) -> None:
        self._retry_wait.pop(uri, None)
        self._retry_at.pop(uri, None)

    def status_sync(self, uri: str) -> tuple[StatusEntry, bool]:
        fast = self._fast_status(uri)
        if fast is not None:
            return fast, False
        decision = self._status_decision(uri)
        if decision == "refresh":
            try:
                self._fetch_status_sync(uri)
                self._fetched(uri)
            except (StatusUnavailable, TrustDataStale, UnknownKey, WrongType) as e:
                self._status_failed(uri, e)
        elif decision == "background":
            self._background(lambda: self._fetch_status_sync(uri), "status:" + uri)
        return self._finish_status(uri)

    async def status_async(self, uri: str) -> tuple[StatusEntry, bool]:
        fast = self._fast_status(uri)
        if fast is not None:
            return fast, False
        decision = self._status_decision(uri)
        if decision == "refresh":
            try:
                await self._fetch_status_async(uri)
                self._fetched(uri)
            except (StatusUnavailable, TrustDataStale, UnknownKey, WrongType) as e:
                self._status_failed(uri, e)
        elif decision == "background":
            self._abackground(lambda: self._fetch_status_async(uri), "status:" + uri)
        return self._finish_status(uri)

    def _finish_status(self, uri: str) -> tuple[StatusEntry, bool]:
        e = self._lists.get(uri)
        if e is None:
            raise StatusUnavailable("the token's status list is not available")
        now = self.now()
        if e.exp is not None and now >= e.exp + self.policy.leeway:
            raise TrustDataStale("the cached status list has expired and could not be refreshed")
        if self.bundle_exp is None and now - e.issued_at > self.policy.status_max_age:
            raise TrustDataStale(
                f"the status list is {int(now - e.issued_at)} s old (limit {int(self.policy.status_max_age)} s)"
            )
        return e, now >= e.fetched_at + e.ttl or (e.exp is not None and now >= e.exp)

    def load_bundle(self, bundle: Bundle) -> None:
        """Serve keys and status lists from a verified trust bundle only; no network access."""
        self.source = "bundle"
        self.bundle_exp = bundle.exp
        self._install_keys(bundle.jwks, ttl=max(bundle.exp - self.now(), 0))
        self._keys = _Keys(self._keys.keys if self._keys else [], bundle.iat, bundle.exp, bundle.exp)
        for uri, token in bundle.status_lists.items():
            try:
                header = parse_compact(token)[0]
                kid = header.get("kid") if isinstance(header.get("kid"), str) else None
                keys = self._select(kid, str(header.get("alg", "")))
                self.install_status_token(uri, token, keys=keys, fetched_at=bundle.iat)
            except VerificationError as e:  # a bad list makes the whole bundle invalid, not one token
                raise InvalidBundle(f"status list {uri[:200]!r} in the bundle: {e}") from None

    @property
    def keys_fetched_at(self) -> float | None:
        return self._keys.fetched_at if self._keys else None


T = TypeVar("T")


def _drive(steps: Generator[tuple[str, str], httpx.Response, T], http: httpx.Client) -> T:
    try:
        url, accept = next(steps)
        while True:
            url, accept = steps.send(http.get(url, headers={"Accept": accept}))
    except StopIteration as done:
        return done.value


async def _adrive(steps: Generator[tuple[str, str], httpx.Response, T], http: httpx.AsyncClient) -> T:
    try:
        url, accept = next(steps)
        while True:
            url, accept = steps.send(await http.get(url, headers={"Accept": accept}))
    except StopIteration as done:
        return done.value


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e12
