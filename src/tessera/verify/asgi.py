"""Resource-server glue: an ASGI middleware and a FastAPI/Starlette dependency (RFC 6750).

Neither imports a web framework at module import: the SDK stays light. A missing or refused token
gets ``401`` with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 §3.1); a token
without a required scope gets ``403`` with ``error="insufficient_scope"``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from tessera.verify.errors import VerificationError
from tessera.verify.verifier import Claims, Verifier

__all__ = ["BearerTokenMiddleware", "bearer_dependency", "bearer_token"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _Refused(Exception):
    pass


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def _challenge(error: str | None, description: str | None, realm: str, scope: str | None = None) -> str:
    parts = [f'realm="{realm}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace('"', "'").replace("\\", "/")[:200] + '"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def _has_scopes(claims: Claims, needed: Iterable[str]) -> bool:
    granted = set(str(claims.get("scope", "")).split())
    return set(needed) <= granted


class BearerTokenMiddleware:
    """Verifies the bearer token of every HTTP request; the claims land in ``scope["state"]["claims"]``
    (``request.state.claims`` in Starlette/FastAPI). Paths in ``public_paths`` pass unauthenticated."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: Verifier,
        *,
        scopes: Iterable[str] = (),
        realm: str = "api",
        public_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.scopes = tuple(scopes)
        self.realm = realm
        self.public = frozenset(public_paths)

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.public:
            await self.app(scope, receive, send)  # lifespan and public paths
            return
        authz = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, bearer_token(authz))
            return
        token = bearer_token(authz)
        if token is None:
            # RFC 6750 §3.1: a request without credentials gets no error code, just the challenge.
            await self._deny(send, 401, _challenge(None, None, self.realm), "missing bearer token")
            return
        try:
            claims = await self.verifier.averify(token)
        except VerificationError as e:
            await self._deny(send, 401, _challenge("invalid_token", e.reason, self.realm), e.reason)
            return
        if not _has_scopes(claims, self.scopes):
            needed = " ".join(self.scopes)
            await self._deny(
                send, 403, _challenge("insufficient_scope", None, self.realm, needed), "insufficient_scope"
            )
            return
        scope.setdefault("state", {})["claims"] = claims
        await self.app(scope, receive, send)

    async def _websocket(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        token: str | None,
    ) -> None:
        """WebSockets are authenticated like requests; a refused handshake is closed with 1008 (policy)."""
        try:
            if token is None:
                raise _Refused("missing bearer token")
            claims = await self.verifier.averify(token)
            if not _has_scopes(claims, self.scopes):
                raise _Refused("insufficient_scope")
        except (VerificationError, _Refused):
            message = await receive()
            if message.get("type") == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            return
        scope.setdefault("state", {})["claims"] = claims
        await self.app(scope, receive, send)

    @staticmethod
    async def _deny(send: Callable[[Any], Awaitable[None]], status: int, challenge: str, reason: str) -> None:
        # RFC 6750 §3.1: a request that carried no token gets no error code.
        error = None if reason == "missing bearer token" else "invalid_token" if status == 401 else "insufficient_scope"
        body = json.dumps({"error": error, "reason": reason} if error else {"reason": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", challenge.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def bearer_dependency(verifier: Verifier, *, scopes: Iterable[str] = (), realm: str = "api") -> Callable[..., Any]:
    """A FastAPI dependency returning the verified ``Claims`` (``claims = Depends(bearer_dependency(v))``)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    needed = tuple(scopes)

    async def dependency(request: Request) -> Claims:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise HTTPException(
                401, "missing bearer token", headers={"WWW-Authenticate": _challenge(None, None, realm)}
            )
        try:
            claims = await verifier.averify(token)
        except VerificationError as e:
            raise HTTPException(
                401, e.reason, headers={"WWW-Authenticate": _challenge("invalid_token", e.reason, realm)}
            ) from None
        if not _has_scopes(claims, needed):
            raise HTTPException(
                403,
                "insufficient_scope",
                headers={"WWW-Authenticate": _challenge("insufficient_scope", None, realm, " ".join(needed))},
            )
        return claims

    # With postponed annotations "Request" is a string naming a local import, which FastAPI cannot resolve:
    # it would take `request` for a required query parameter (422 on every call). Give it the class.
    dependency.__annotations__["request"] = Request
    return dependency
