"""The token endpoint as a raw ASGI handler, in front of Starlette.

The token endpoint is the request path that decides throughput. Profiling showed Starlette's
routing, middleware stack and Request/Response objects costing about a third of a
``client_credentials`` request's CPU time, so ``POST /oauth/token`` is answered here directly:
the same core call (``TokenEndpoint.handle``), the same bounded body read, the same RFC 6749 §5
responses. Every other request goes to the Starlette application unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from tessera.oauth.endpoints.token import TokenEndpoint
from tessera.oauth.errors import InvalidClient, InvalidRequest, OAuthError, UseDPoPNonce
from tessera.oauth.forms import parse_form

__all__ = ["TokenFastPath"]

log = logging.getLogger("tessera.http")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_JSON = (b"content-type", b"application/json")


class _TooLarge(OAuthError):
    error = "invalid_request"
    status_code = 413


class TokenFastPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        endpoint: TokenEndpoint,
        max_body: int,
        realm: str,
        observe: Callable[[str | None, str | None], None] | None = None,
    ) -> None:
        self._app = app
        #: Told (grant_type, None) for each token issued and (grant_type, error code) for each refusal.
        self._observe = observe or (lambda grant, error: None)
        self._path = path
        self._endpoint = endpoint
        self._max_body = max_body
        self._www_basic = f'Basic realm="{realm}"'.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self._path:
            await self._app(scope, receive, send)
            return
        if scope["method"] != "POST":
            # RFC 6749 §3.2: the client MUST use the HTTP POST method at the token endpoint.
            await self._respond(
                scope, send, 405, {"error": "invalid_request", "error_description": "use POST"}, [(b"allow", b"POST")]
            )
            return
        grant: str | None = None
        try:
            headers: dict[str, str] = {}
            for name, value in scope["headers"]:
                key = name.decode("latin-1")
                if key in headers and key in ("authorization", "content-type", "content-length"):
                    raise InvalidRequest(f"the {key} header is repeated")
                if key == "dpop" and key in headers:
                    # RFC 9110 §5.3 combines repeated fields; the DPoP check refuses the result
                    # (RFC 9449 §4.3 point 1) after client authentication.
                    headers[key] += ", " + value.decode("latin-1")
                    continue
                headers[key] = value.decode("latin-1")
            body = await self._read(headers, receive)
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise InvalidRequest("the token request must be application/x-www-form-urlencoded (RFC 6749 §3.2)")
            form = parse_form(body)
            grant = form.get("grant_type")
            peer = scope.get("client")
            result = await self._endpoint.handle(headers, form, peer[0] if peer else None)
            self._observe(grant, None)
            nonce = self._endpoint.dpop_nonce() if "dpop" in headers else None
            # RFC 9449 §8: the server may supply the nonce for the next proof with a successful response.
            await self._respond(scope, send, 200, result, [(b"dpop-nonce", nonce.encode())] if nonce else [])
        except OAuthError as e:
            self._observe(grant, e.error)
            extra = [(b"www-authenticate", self._www_basic)] if isinstance(e, InvalidClient) else []
            if isinstance(e, UseDPoPNonce):
                # RFC 9449 §8: use_dpop_nonce comes with exactly one DPoP-Nonce header.
                extra.append((b"dpop-nonce", e.nonce.encode()))
            await self._respond(scope, send, e.status_code, e.body(), extra)
        except Exception:
            log.exception("token endpoint failed")
            self._observe(grant, "server_error")
            await self._respond(scope, send, 500, {"error": "server_error"}, [])

    async def _read(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidRequest("Content-Length is not a number")
            if int(declared) > self._max_body:
                raise _TooLarge(f"the request body is larger than {self._max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge(f"the request body is larger than {self._max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _respond(
        scope: Scope, send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]
    ) -> None:
        payload = orjson.dumps(body)
        headers = [_JSON, (b"content-length", str(len(payload)).encode()), *_NO_STORE, *extra]
        # The request layer in front (``telemetry.Telemetry``) hands over the X-Request-Id header and
        # reads the status here, instead of wrapping ``send`` on this hot path.
        request_id = scope.get("tessera.request_id")
        if request_id is not None:
            headers.append(request_id)
        scope["tessera.status"] = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
