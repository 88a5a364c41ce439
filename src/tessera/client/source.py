"""Token sources: an access token from Tessera's token endpoint, cached and refreshed before it expires.

RFC 6749 §4.4 (client credentials grant) with RFC 8707 ``resource`` indicators; the token endpoint
comes from RFC 8414 authorization server metadata unless it is given.

The rules, shared by ``TokenSource`` (threads) and ``AsyncTokenSource`` (asyncio tasks):

- A cached token is *fresh* while its remaining lifetime is at least
  ``min(refresh_margin, lifetime / 2)``; a fresh token is returned without any request.
- Once it is no longer fresh, one caller refreshes it: a single request in flight, however many
  callers. Callers that find a refresh in flight while the cached token is still *usable*
  (more than ``min(5 s, lifetime / 4)`` left) get the cached token without waiting; callers
  with nothing usable wait for the one refresh and share its result.
- A failed refresh is not retried before a back-off delay (1 s, doubling per consecutive failure
  up to ``max_backoff``, with jitter, and never past half the cached token's remaining life).
  Meanwhile callers get the cached token if it is usable (a warning is logged once per failure)
  or the refresh's ``TokenError`` again, without a request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson

from tessera.client.credentials import Credential
from tessera.client.errors import TokenError

__all__ = ["AsyncTokenSource", "Token", "TokenSource"]

log = logging.getLogger("tessera.client")
T = TypeVar("T")
#: Lifetime assumed when a token response has no ``expires_in`` (RFC 6749 §5.1: RECOMMENDED only).
DEFAULT_LIFETIME = 60.0
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Token:
    """An access token and when it expires, in the source's clock."""

    access_token: str
    expires_at: float
    lifetime: float
    scope: str | None = None
    token_type: str = "Bearer"

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at}, lifetime={self.lifetime}, scope={self.scope!r})"


@dataclass(frozen=True)
class _Call:
    method: str
    url: str
    data: dict[str, str | list[str]] | None = None
    headers: dict[str, str] | None = None


def check_url(url: str, what: str) -> None:
    """Credentials travel over https only; http:// is for loopback hosts (as the server allows its issuer)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute https URL, got {url!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(f"{what} must use https; http:// is allowed only for loopback hosts")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3: the well-known suffix goes between the host and the issuer's path."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path.rstrip('/')}"


class _SourceBase:
    def __init__(
        self,
        issuer: str,
        credential: Credential,
        *,
        audience: str | Iterable[str] | None = None,
        scope: str | Iterable[str] | None = None,
        token_endpoint: str | None = None,
        refresh_margin: float = 120.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or issuer.endswith("/"):
            raise ValueError("issuer must be the exact issuer identifier (no trailing '/')")
        check_url(issuer, "issuer")
        if token_endpoint is not None:
            check_url(token_endpoint, "token_endpoint")
        self.issuer = issuer
        self.credential = credential
        self.audiences = [audience] if isinstance(audience, str) else list(audience or ())
        self.scope = scope if isinstance(scope, str) or scope is None else " ".join(scope)
        self.refresh_margin = float(refresh_margin)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self._token_endpoint = token_endpoint
        self._clock = clock
        self._cached: Token | None = None
        self._failures = 0
        self._retry_at = float("-inf")
        self._last_error: TokenError | None = None
        self._state = threading.Lock()  # guards the compare-and-set of _cached against invalidate()

    @property
    def token_endpoint(self) -> str | None:
        """The token endpoint: as given, or once discovered (RFC 8414), else None."""
        return self._token_endpoint

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is ``token``, when given): the next call requests a new one.

        A resource server that refused ``token`` as ``invalid_token`` is the reason to call this;
        passing the refused token means concurrent callers that saw the same refusal cause one
        refresh, not one each.
        """
        with self._state:
            if self._cached is not None and (token is None or self._cached.access_token == token):
                self._cached = None

    # -- the refresh rule ---------------------------------------------------------------------------

    def _fresh(self, tok: Token, now: float) -> bool:
        return tok.remaining(now) >= min(self.refresh_margin, tok.lifetime / 2)

    @staticmethod
    def _usable(tok: Token, now: float) -> bool:
        return tok.remaining(now) > min(5.0, tok.lifetime / 4)

    def _before_refresh(self) -> Token | None:
        """Under the refresh lock: the token to return without a request, or None to make one."""
        now = self._clock()
        cached = self._cached
        if cached is not None and self._fresh(cached, now):
            return cached  # refreshed by the caller we waited for
        if now < self._retry_at:
            if cached is not None and self._usable(cached, now):
                return cached
            raise _copy(self._last_error)
        return None

    def _succeeded(self, tok: Token) -> Token:
        with self._state:
            self._cached = tok
        self._failures, self._retry_at, self._last_error = 0, float("-inf"), None
        return tok

    def _failed(self, error: TokenError) -> Token:
        now = self._clock()
        self._failures += 1
        self._last_error = error
        delay = min(self.max_backoff, 2.0 ** (self._failures - 1)) * (0.75 + random.random() / 4)  # noqa: S311
        cached = self._cached
        usable = cached is not None and self._usable(cached, now)
        if cached is not None and usable:
            delay = min(delay, max(1.0, cached.remaining(now) / 2))
        self._retry_at = now + delay
        if cached is not None and usable:
            log.warning(
                "token refresh failed (%s); using the cached token (%.0f s left), next attempt in %.1f s",
                error,
                cached.remaining(now),
                delay,
            )
            return cached
        raise _copy(error)

    # -- the protocol, as steps a sync or async driver performs --------------------------------------

    def _steps(self) -> Generator[_Call, httpx.Response, Token]:
        endpoint = self._token_endpoint
        if endpoint is None:
            r = yield _Call("GET", metadata_url(self.issuer), headers={"Accept": "application/json"})
            endpoint = self._token_endpoint = _token_endpoint_from(r, self.issuer)
        auth = self.credential.authenticate(endpoint)
        form: dict[str, str | list[str]] = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audiences:
            form["resource"] = list(self.audiences)  # RFC 8707 §2: one parameter per resource
        form.update(auth.form)
        r = yield _Call("POST", endpoint, data=form, headers={"Accept": "application/json", **auth.headers})
        return _token_from(r, self._clock())


class TokenSource(_SourceBase):
    """Access tokens for threads: ``source.token()`` returns a valid access token, requesting one when needed.

    ``http_client`` (not closed by the source) or ``transport`` choose how requests are sent;
    ``clock`` (seconds since the epoch) decides expiry. See the module docstring for the refresh rule.
    """

    def __init__(
        self,
        issuer: str,
        credential: Credential,
        *,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(issuer, credential, **options)
        self._lock = threading.Lock()
        self._http = http_client
        self._own_http: httpx.Client | None = None
        self._transport = transport

    def token(self) -> str:
        """A valid access token; raises ``TokenError`` when none can be had."""
        return self.get_token().access_token

    def get_token(self) -> Token:
        now = self._clock()
        cached = self._cached
        if cached is not None and self._fresh(cached, now):
            return cached
        if cached is not None and self._usable(cached, now):
            if not self._lock.acquire(blocking=False):
                return cached  # a refresh is in flight; the cached token is still good
        else:
            self._lock.acquire()
        try:
            decided = self._before_refresh()
            if decided is not None:
                return decided
            try:
                tok = _drive(self._steps(), self._client(), self.timeout)
            except TokenError as e:
                return self._failed(e)
            return self._succeeded(tok)
        finally:
            self._lock.release()

    def _client(self) -> httpx.Client:
        if self._http is not None:
            return self._http
        if self._own_http is None:
            self._own_http = httpx.Client(transport=self._transport, timeout=self.timeout, follow_redirects=False)
        return self._own_http

    def close(self) -> None:
        """Close the HTTP client the source made itself (never one it was given)."""
        if self._own_http is not None:
            self._own_http.close()
            self._own_http = None

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTokenSource(_SourceBase):
    """Access tokens for asyncio: ``await source.token()``; one event loop per source.

    The same options and refresh rule as ``TokenSource``, with ``httpx.AsyncClient`` /
    ``httpx.AsyncBaseTransport``.
    """

    def __init__(
        self,
        issuer: str,
        credential: Credential,
        *,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(issuer, credential, **options)
        self._lock = asyncio.Lock()
        self._http = http_client
        self._own_http: httpx.AsyncClient | None = None
        self._transport = transport

    async def token(self) -> str:
        """A valid access token; raises ``TokenError`` when none can be had."""
        return (await self.get_token()).access_token

    async def get_token(self) -> Token:
        now = self._clock()
        cached = self._cached
        if cached is not None and self._fresh(cached, now):
            return cached
        if cached is not None and self._usable(cached, now) and self._lock.locked():
            return cached  # a refresh is in flight; the cached token is still good
        async with self._lock:
            decided = self._before_refresh()
            if decided is not None:
                return decided
            try:
                tok = await _adrive(self._steps(), self._client(), self.timeout)
            except TokenError as e:
                return self._failed(e)
            return self._succeeded(tok)

    def _client(self) -> httpx.AsyncClient:
        if self._http is not None:
            return self._http
        if self._own_http is None:
            self._own_http = httpx.AsyncClient(transport=self._transport, timeout=self.timeout, follow_redirects=False)
        return self._own_http

    async def aclose(self) -> None:
        """Close the HTTP client the source made itself (never one it was given)."""
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    async def __aenter__(self) -> AsyncTokenSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- drivers and response parsing ------------------------------------------------------------------


def _drive(steps: Generator[_Call, httpx.Response, T], http: httpx.Client, timeout: float) -> T:
    try:
        call = next(steps)
        while True:
            try:
                r = http.request(call.method, call.url, data=call.data, headers=call.headers, timeout=timeout)
            except httpx.HTTPError as e:
                raise TokenError("unreachable", f"{call.method} {call.url}: {e or type(e).__name__}") from None
            call = steps.send(r)
    except StopIteration as done:
        return done.value


async def _adrive(steps: Generator[_Call, httpx.Response, T], http: httpx.AsyncClient, timeout: float) -> T:
    try:
        call = next(steps)
        while True:
            try:
                r = await http.request(call.method, call.url, data=call.data, headers=call.headers, timeout=timeout)
            except httpx.HTTPError as e:
                raise TokenError("unreachable", f"{call.method} {call.url}: {e or type(e).__name__}") from None
            call = steps.send(r)
    except StopIteration as done:
        return done.value


def _json_object(r: httpx.Response) -> dict[str, Any] | None:
    if len(r.content) > MAX_RESPONSE_BYTES:
        return None
    try:
        value = orjson.loads(r.content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _token_endpoint_from(r: httpx.Response, issuer: str) -> str:
    body = _json_object(r) if r.status_code == 200 else None
    if body is None:
        raise TokenError("discovery_failed", f"{r.request.url} answered {r.status_code}", status_code=r.status_code)
    # RFC 8414 §3.3: the issuer value returned MUST be identical to the issuer identifier used.
    if body.get("issuer") != issuer:
        raise TokenError("discovery_failed", f"metadata names issuer {body.get('issuer')!r}, not {issuer!r}")
    endpoint = body.get("token_endpoint")
    if not isinstance(endpoint, str):
        raise TokenError("discovery_failed", "metadata has no token_endpoint")
    try:
        check_url(endpoint, "token_endpoint")
    except ValueError as e:
        raise TokenError("discovery_failed", str(e)) from None
    return endpoint


def _token_from(r: httpx.Response, now: float) -> Token:
    body = _json_object(r)
    if r.status_code != 200:
        # RFC 6749 §5.2: error REQUIRED, error_description OPTIONAL.
        if body is not None and isinstance(body.get("error"), str):
            desc = body.get("error_description")
            raise TokenError(body["error"], desc if isinstance(desc, str) else None, status_code=r.status_code)
        raise TokenError("invalid_response", f"token endpoint answered {r.status_code}", status_code=r.status_code)
    if body is None:
        raise TokenError("invalid_response", "the token response is not a JSON object", status_code=200)
    access_token, token_type = body.get("access_token"), body.get("token_type")
    # RFC 6749 §5.1: access_token and token_type REQUIRED; §7.1 the type is case-insensitive.
    if not isinstance(access_token, str) or not access_token:
        raise TokenError("invalid_response", "the token response has no access_token", status_code=200)
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenError("invalid_response", f"token_type {token_type!r} is not Bearer", status_code=200)
    expires_in = body.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 10**8:
        raise TokenError("invalid_response", f"expires_in {expires_in!r} is not a positive number", status_code=200)
    scope = body.get("scope")
    return Token(access_token, now + expires_in, float(expires_in), scope if isinstance(scope, str) else None)


def _copy(error: TokenError | None) -> TokenError:
    """A new exception per raise: callers in other threads must not share one traceback."""
    if error is None:
        return TokenError("unreachable", "no token yet")
    return TokenError(error.error, error.error_description, status_code=error.status_code)
