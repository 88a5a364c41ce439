"""``TokenAuth``: a token source as an ``httpx.Auth``, for calling resource servers.

Sets ``Authorization: Bearer <token>`` (RFC 6750 §2.1). When the resource server answers 401 with
``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 §3.1: expired, revoked, malformed or
otherwise invalid), the token is invalidated, one new token is requested and the request is sent
once more; a second refusal is returned to the caller as is. Other 401s and 403s
(``insufficient_scope``) are not retried: a new token would not change them.

A retried request is sent again with the same body, so it must not be a one-shot stream.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Generator

import httpx

from tessera.client.source import AsyncTokenSource, TokenSource

__all__ = ["TokenAuth"]

_INVALID_TOKEN = re.compile(r'(?:^|[\s,])error\s*=\s*"?invalid_token"?(?:$|[\s,])', re.IGNORECASE)


def invalid_token(response: httpx.Response) -> bool:
    """A 401 with a Bearer challenge whose error is ``invalid_token``."""
    if response.status_code != 401:
        return False
    for challenge in response.headers.get_list("www-authenticate"):
        if challenge.strip().lower().startswith("bearer") and _INVALID_TOKEN.search(challenge):
            return True
    return False


class TokenAuth(httpx.Auth):
    """Bearer authentication from a token source.

    ``httpx.Client(auth=TokenAuth(TokenSource(...)))`` or
    ``httpx.AsyncClient(auth=TokenAuth(AsyncTokenSource(...)))``.
    """

    def __init__(self, source: TokenSource | AsyncTokenSource) -> None:
        self.source = source

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        source = self.source
        if not isinstance(source, TokenSource):
            raise TypeError("a synchronous httpx.Client needs TokenAuth(TokenSource(...))")
        token = source.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if invalid_token(response):
            source.invalidate(token)
            request.headers["Authorization"] = f"Bearer {source.token()}"
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        source = self.source
        if not isinstance(source, AsyncTokenSource):
            raise TypeError("an httpx.AsyncClient needs TokenAuth(AsyncTokenSource(...))")
        token = await source.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if invalid_token(response):
            source.invalidate(token)
            request.headers["Authorization"] = f"Bearer {await source.token()}"
            yield request
