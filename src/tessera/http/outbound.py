"""Outbound fetches on a client's behalf: its ``jwks_uri`` (RFC 7591 §2) for ``private_key_jwt``.

A URL chosen by a registrant is a server-side request forgery surface, so:

- the host must resolve to public addresses only — loopback, private, link-local, multicast and
  reserved addresses are refused unless ``TESSERA_DEV_MODE`` is on (and http:// is only accepted for
  loopback hosts in development mode, at registration);
- redirects are not followed; the body is streamed and cut at 64 KiB; 5 s total deadline;
- results are cached (success for 5 minutes, at most one refetch per 30 s for an unknown ``kid``;
  failure for 30 s), one fetch per URI at a time, and the cache is bounded;
- what went wrong is logged, never told to the caller: a token request cannot be used to probe ports
  or services.

Residual risk, documented: the address is checked when resolved, and the connection resolves again
(DNS rebinding between the two is not prevented yet).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from tessera import spans
from tessera.clock import Clock
from tessera.oauth.clients import Client

__all__ = ["GuardedTransport", "JwksFetcher", "OutboundRefused"]

log = logging.getLogger("tessera.outbound")
MAX_BYTES = 65536
MAX_CACHED = 1000


class OutboundRefused(ValueError):
    """The fetch was not made or did not succeed; the message is safe to show (generic)."""


class JwksFetcher:
    def __init__(
        self,
        clock: Clock,
        *,
        allow_private: bool = False,
        ttl: float = 300.0,
        min_refresh: float = 30.0,
        failure_ttl: float = 30.0,
    ) -> None:
        self._clock = clock
        self._allow_private = allow_private
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._failure_ttl = failure_ttl
        self._cache: dict[str, tuple[float, Mapping[str, Any] | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._client = httpx.AsyncClient(timeout=5.0, follow_redirects=False)

    async def __call__(self, client: Client, refresh: bool) -> Mapping[str, Any]:
        uri = client.metadata["jwks_uri"]
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:
            now = self._clock.now()
            hit = self._cache.get(uri)
            if hit is not None:
                at, value = hit
                if value is None and now < at + self._failure_ttl:
                    raise OutboundRefused("the client's keys could not be obtained")
                if value is not None and now < at + self._ttl and not (refresh and now >= at + self._min_refresh):
                    return value
            try:
                fetched = await asyncio.wait_for(self._fetch(uri), timeout=5.0)
            except (OutboundRefused, httpx.HTTPError, ValueError, TimeoutError) as e:
                log.warning("jwks_uri of client %s not fetched: %s", client.client_id, e)
                if hit is not None and hit[1] is not None:
                    return hit[1]  # keep serving the last good keys
                self._remember(uri, now, None)
                raise OutboundRefused("the client's keys could not be obtained") from None
            self._remember(uri, now, fetched)
            return fetched

    def _remember(self, uri: str, now: float, value: Mapping[str, Any] | None) -> None:
        if len(self._cache) >= MAX_CACHED and uri not in self._cache:
            self._cache.clear()
            self._locks = {u: lk for u, lk in self._locks.items() if lk.locked()}
        self._cache[uri] = (now, value)

    async def _check_host(self, uri: str) -> None:
        parts = urlsplit(uri)
        if not parts.hostname:
            raise OutboundRefused("no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if (not address.is_global or address.is_multicast) and not self._allow_private:
                raise OutboundRefused(f"{parts.hostname} resolves to a non-public address {address}")

    async def _fetch(self, uri: str) -> Mapping[str, Any]:
        await self._check_host(uri)
        async with self._client.stream("GET", uri, headers={"Accept": "application/json"}) as r:
            if r.status_code != 200:
                raise OutboundRefused(f"answered HTTP {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise OutboundRefused(f"larger than {MAX_BYTES} bytes")
        value = json.loads(body)
        if not isinstance(value, dict):
            raise OutboundRefused("not a JSON object")
        return value

    async def close(self) -> None:
        await self._client.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """The transport of trusted-issuer key fetches (``tessera.federation``).

    The hosts an operator configured — an issuer URL, a pinned ``jwks_uri`` or SPIFFE bundle URL — may be
    anywhere, a cluster-internal Kubernetes API server included. Any other host (one an issuer's
    discovery document names as its ``jwks_uri``) must resolve to public addresses only, unless
    ``TESSERA_DEV_MODE``: a compromised or hostile discovery document cannot point Tessera at internal
    services. Redirects are never followed (the clients using it do not follow them).
    """

    def __init__(self, configured_hosts: Callable[[], set[str]], *, allow_private: bool = False) -> None:
        self._configured = configured_hosts
        self._allow_private = allow_private
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if not self._allow_private and host not in self._configured():
            port = request.url.port or (443 if request.url.scheme == "https" else 80)
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise httpx.ConnectError(f"cannot resolve {host}", request=request) from e
            for info in infos:
                address = ipaddress.ip_address(info[4][0])
                if not address.is_global or address.is_multicast:
                    log.warning("refused a fetch of %s: %s resolves to a non-public address", request.url, host)
                    raise httpx.ConnectError(f"{host} resolves to a non-public address", request=request)
        attributes = {"http.request.method": request.method, "server.address": host}
        with spans.span(f"{request.method} {host}", attributes):
            return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
