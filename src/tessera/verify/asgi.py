"""Resource-server glue: an ASGI middleware and a FastAPI/Starlette dependency (RFC 6750, RFC 9449).

Neither imports a web framework at module import: the SDK stays light. A missing or refused token
gets ``401`` with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 §3.1); a token
without a required scope gets ``403`` with ``error="insufficient_scope"``.

``Authorization: DPoP <token>`` with exactly one ``DPoP`` header is checked with
``Verifier.averify_dpop`` against the request's method and URL (RFC 9449 §7.1); a refused proof gets
``401`` with ``WWW-Authenticate: DPoP error="invalid_dpop_proof", algs="..."`` (§7.1, §12.2), a refused
DPoP token ``error="invalid_token"``. A DPoP-bound token sent as a bearer token is refused (§7.2).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from tessera.verify.errors import InvalidDPoPProof, UseDPoPNonce, VerificationError
from tessera.verify.verifier import Claims, Verifier

__all__ = ["BearerTokenMiddleware", "bearer_dependency", "bearer_token", "dpop_token", "request_url"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

_MISSING = "missing bearer token"


class _Refused(Exception):
    def __init__(self, status: int, challenge: str, error: str | None, reason: str) -> None:
        super().__init__(reason)
        self.status, self.challenge, self.error, self.reason = status, challenge, error, reason


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def dpop_token(authorization: str | None) -> str | None:
    """The access token of ``Authorization: DPoP <token>`` (RFC 9449 §7.1)."""
    if authorization and authorization[:5].lower() == "dpop ":
        return authorization[5:].strip() or None
    return None


def request_url(scope: Scope, public_origin: str | None = None) -> str:
    """The request's URI without query, as the client addressed it: the DPoP ``htu`` to compare with.

    Scheme and host come from the ASGI scope and the ``Host`` header (run the server with proxy headers
    trusted behind a TLS-terminating proxy), or from ``public_origin`` (``https://api.example.com``)."""
    if public_origin is None:
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if host is None:
            server = scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        public_origin = f"{scheme}://{host}"
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(scope.get("root_path", "") + scope["path"])
    return public_origin.rstrip("/") + path.split("?", 1)[0]


def _challenge(
    error: str | None,
    description: str | None,
    realm: str,
    scope: str | None = None,
    *,
    scheme: str = "Bearer",
    algs: Iterable[str] = (),
) -> str:
    parts = [f'realm="{realm}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace('"', "'").replace("\\", "/")[:200] + '"')
    if scope:
        parts.append(f'scope="{scope}"')
    if algs:
        # RFC 9449 §7.1: "An algs parameter SHOULD be included" (the acceptable proof algorithms).
        parts.append('algs="' + " ".join(sorted(algs)) + '"')
    return scheme + " " + ", ".join(parts)


def _has_scopes(claims: Claims, needed: Iterable[str]) -> bool:
    granted = set(str(claims.get("scope", "")).split())
    return set(needed) <= granted


async def _authenticate(
    verifier: Verifier, scope: Scope, scopes: tuple[str, ...], realm: str, public_origin: str | None
) -> Claims:
    """The verified claims of the request's credentials, or ``_Refused`` with the answer to send."""
    authorization: str | None = None
    proofs: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"dpop":
            proofs.append(value.decode("latin-1"))
    token = bearer_token(authorization)
    if token is not None:
        scheme, algs = "Bearer", frozenset[str]()
        try:
            claims = await verifier.averify(token)
        except VerificationError as e:
            raise _Refused(401, _challenge("invalid_token", e.reason, realm), "invalid_token", e.reason) from None
    else:
        token = dpop_token(authorization)
        if token is None:
            # RFC 6750 §3.1: a request without credentials gets no error code, just the challenge.
            raise _Refused(401, _challenge(None, None, realm), None, _MISSING)
        scheme, algs = "DPoP", verifier.dpop_algorithms
        if len(proofs) != 1:
            # RFC 9449 §4.3 point 1 and §7.1: exactly one DPoP header with the DPoP scheme.
            reason = "one DPoP header is required" if not proofs else "more than one DPoP header"
            challenge = _challenge("invalid_dpop_proof", reason, realm, scheme=scheme, algs=algs)
            raise _Refused(401, challenge, "invalid_dpop_proof", InvalidDPoPProof.reason)
        htu = request_url(scope, public_origin)
        try:
            claims = await verifier.averify_dpop(token, proofs[0], htm=scope.get("method", "GET"), htu=htu)
        except VerificationError as e:
            error = (
                "use_dpop_nonce"
                if isinstance(e, UseDPoPNonce)
                else "invalid_dpop_proof"
                if isinstance(e, InvalidDPoPProof)
                else "invalid_token"
            )
            challenge = _challenge(error, e.reason, realm, scheme=scheme, algs=algs)
            raise _Refused(401, challenge, error, e.reason) from None
    if not _has_scopes(claims, scopes):
        challenge = _challenge("insufficient_scope", None, realm, " ".join(scopes), scheme=scheme, algs=algs)
        raise _Refused(403, challenge, "insufficient_scope", "insufficient_scope")
    return claims


class BearerTokenMiddleware:
    """Verifies the access token of every HTTP request (``Bearer``, or ``DPoP`` with its proof); the claims
    land in ``scope["state"]["claims"]`` (``request.state.claims`` in Starlette/FastAPI). Paths in
    ``public_paths`` pass unauthenticated. ``public_origin`` fixes the scheme and host of DPoP's ``htu``
    when the application cannot see them (e.g. behind a proxy)."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: Verifier,
        *,
        scopes: Iterable[str] = (),
        realm: str = "api",
        public_paths: Iterable[str] = (),
        public_origin: str | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.scopes = tuple(scopes)
        self.realm = realm
        self.public = frozenset(public_paths)
        self.public_origin = public_origin

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.public:
            await self.app(scope, receive, send)  # lifespan and public paths
            return
        try:
            claims = await _authenticate(self.verifier, scope, self.scopes, self.realm, self.public_origin)
        except _Refused as refused:
            if scope["type"] == "websocket":
                # WebSockets are authenticated like requests; a refused handshake is closed with 1008 (policy).
                message = await receive()
                if message.get("type") == "websocket.connect":
                    await send({"type": "websocket.close", "code": 1008})
            else:
                await self._deny(send, refused)
            return
        scope.setdefault("state", {})["claims"] = claims
        await self.app(scope, receive, send)

    @staticmethod
    async def _deny(send: Callable[[Any], Awaitable[None]], refused: _Refused) -> None:
        # RFC 6750 §3.1: a request that carried no token gets no error code.
        error, reason = refused.error, refused.reason
        body = json.dumps({"error": error, "reason": reason} if error else {"reason": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", refused.challenge.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def bearer_dependency(
    verifier: Verifier, *, scopes: Iterable[str] = (), realm: str = "api", public_origin: str | None = None
) -> Callable[..., Any]:
    """A FastAPI dependency returning the verified ``Claims`` (``claims = Depends(bearer_dependency(v))``).
    Accepts ``Bearer`` tokens and ``DPoP`` tokens with their proof, as ``BearerTokenMiddleware`` does."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    needed = tuple(scopes)

    async def dependency(request: Request) -> Claims:
        try:
            return await _authenticate(verifier, request.scope, needed, realm, public_origin)
        except _Refused as refused:
            raise HTTPException(
                refused.status, refused.reason, headers={"WWW-Authenticate": refused.challenge}
            ) from None

    # With postponed annotations "Request" is a string naming a local import, which FastAPI cannot resolve:
    # it would take `request` for a required query parameter (422 on every call). Give it the class.
    dependency.__annotations__["request"] = Request
    return dependency
