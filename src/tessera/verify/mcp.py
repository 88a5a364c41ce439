"""Protect an MCP server with Tessera: the ``mcp`` SDK's ``TokenVerifier`` on ``tessera.verify``.

The MCP authorization specification makes an MCP server an OAuth 2.1 resource server: it publishes
RFC 9728 protected resource metadata naming its authorization server, answers a request without a
valid token with ``401`` and ``WWW-Authenticate: Bearer resource_metadata="..."`` (RFC 9728 §5.1),
and MUST accept only tokens issued for itself (RFC 8707 audience; the SDK's issue #1443). Here:

    from tessera.verify.mcp import McpProtection
    protection = McpProtection("https://tessera.example.com", "https://tools.example.com/mcp",
                               required_scopes=["tools"], tool_scopes={"read_file": ["files.read"]},
                               approval_required={"transfer_funds"})
    server = MCPServer("tools", token_verifier=protection.token_verifier, auth=protection.auth_settings())
    app = protection.protect(server.streamable_http_app())

- ``token_verifier`` verifies locally (signature by the issuer's published keys, ``iss``, ``aud`` =
  the server's canonical resource URI, ``exp``/``nbf``/``iat``, the token's status list entry) and
  gives the SDK the token's scopes, client, subject and claims;
- ``auth_settings()`` is the SDK's ``AuthSettings`` (issuer, resource, required scopes, and the SDK's
  own resource check on as a second line);
- ``protect(app)`` serves the protected resource metadata (with ``authorization_details_types_supported``)
  and checks each ``tools/call`` before the SDK runs it: the tool's scopes (``403
  insufficient_scope``, RFC 6750 §3.1) and, for tools that need a person's approval per call, the
  approved ``tool_invocation`` entry (``tessera.verify.tool_calls``): ``403`` with
  ``WWW-Authenticate: Bearer error="insufficient_authorization_details"`` (a step-up challenge in the
  spirit of RFC 9470 §3) and a JSON-RPC error body whose ``data.authorization_details`` is what to
  ask Tessera for.

Needs the ``mcp`` extra (``pip install tessera[mcp]``); ``tessera.verify`` does not import this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from tessera.verify.asgi import bearer_token
from tessera.verify.errors import VerificationError
from tessera.verify.tool_calls import TOOL_INVOCATION, ApprovalRequired, ToolApprovals, UsedApprovals
from tessera.verify.verifier import Claims, Verifier

__all__ = [
    "APPROVAL_ERROR",
    "McpProtection",
    "TesseraTokenVerifier",
    "canonical_resource",
    "resource_metadata_url",
]

log = logging.getLogger("tessera.verify.mcp")

#: The ``WWW-Authenticate`` error of a call that needs an approval the token does not carry.
APPROVAL_ERROR = "insufficient_authorization_details"
#: JSON-RPC 2.0 §5.1 leaves -32000..-32099 to the implementation: "approval required".
APPROVAL_RPC_CODE = -32003
_MAX_BODY = 4 * 1024 * 1024

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def canonical_resource(uri: str) -> str:
    """The canonical form of a resource URI (MCP authorization §"Canonical Server URI", RFC 8707 §2):
    absolute http(s), lowercase scheme and host, no default port, no fragment; the path kept as
    given (no trailing ``/`` is added or removed). Raises ``ValueError`` for anything else."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a resource URI is an absolute http(s) URI: {uri!r}")
    if parts.fragment or uri.endswith("#"):
        raise ValueError("RFC 8707 §2: a resource URI MUST NOT include a fragment")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: ``/.well-known/oauth-protected-resource`` inserted between host and path."""
    parts = urlsplit(resource)
    path = "" if parts.path in ("", "/") else parts.path
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


class TesseraTokenVerifier:
    """The ``mcp`` SDK's ``TokenVerifier`` protocol, verifying Tessera tokens locally for one resource.

    A refused token is ``None`` for the SDK (which answers ``401`` with the ``resource_metadata``
    challenge); the reason is logged at INFO and kept in ``last_refusal`` (for tests and metrics)."""

    def __init__(self, verifier: Verifier, resource: str) -> None:
        if resource not in verifier.audiences:
            raise ValueError("the verifier must accept the resource URI as its audience (RFC 8707)")
        self.verifier = verifier
        self.resource = resource
        self.last_refusal: str | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await self.verifier.averify(token)
        except VerificationError as e:
            self.last_refusal = e.reason
            log.info("token refused: %s", e)
            return None
        return access_token(token, claims, self.resource)


def access_token(token: str, claims: Claims, resource: str) -> AccessToken:
    """The SDK's view of verified claims: ``resource`` is the audience this server matched (so the
    SDK's own ``validate_token_resource`` check agrees), ``client_id`` the RFC 9068 §2.2 claim."""
    scope = claims.get("scope")
    act = claims.get("act")
    client_id = claims.get("client_id") or (act.get("sub") if isinstance(act, dict) else None) or claims["sub"]
    return AccessToken(
        token=token,
        client_id=str(client_id),
        scopes=scope.split() if isinstance(scope, str) else [],
        expires_at=int(claims["exp"]),
        resource=resource,
        subject=str(claims["sub"]),
        claims=dict(claims),
    )


class McpProtection:
    """Everything an MCP server needs to trust Tessera (see the module docstring).

    ``tool_scopes`` maps a tool name to the scopes a call needs; ``approval_required`` is a set of
    tool names, or ``(tool, arguments) -> bool``, for calls that need a person's approval each time.
    ``verifier`` options (``Verifier(...)`` keywords) pass through ``verifier_options``; by default the
    status list is required and one level of delegation (``act``: an agent acting for a person, as
    CIBA issues) is accepted."""

    def __init__(
        self,
        issuer: str,
        resource: str,
        *,
        required_scopes: Iterable[str] = (),
        tool_scopes: Mapping[str, Iterable[str]] | None = None,
        approval_required: Iterable[str] | Callable[[str, Mapping[str, Any]], bool] = (),
        used_approvals: UsedApprovals | None = None,
        approval_lifetime: int = 300,
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        verifier: Verifier | None = None,
        **verifier_options: Any,
    ) -> None:
        self.issuer = issuer
        self.resource = canonical_resource(resource)
        if self.resource != resource:
            raise ValueError(f"use the canonical resource URI {self.resource!r} (MCP authorization, RFC 8707)")
        self.required_scopes = tuple(required_scopes)
        self.tool_scopes = {tool: tuple(scopes) for tool, scopes in (tool_scopes or {}).items()}
        self.resource_name = resource_name
        self.resource_documentation = resource_documentation
        if verifier is None:
            verifier_options.setdefault("require_status", True)
            verifier_options.setdefault("max_act_depth", 1)
            verifier = Verifier(issuer, audiences=[self.resource], **verifier_options)
        self.verifier = verifier
        self.token_verifier = TesseraTokenVerifier(verifier, self.resource)
        clock = verifier_options.get("clock")
        self.approvals = ToolApprovals(
            self.resource,
            approval_required,
            used=used_approvals,
            approval_lifetime=approval_lifetime,
            leeway=verifier.leeway,
            **({"clock": clock} if clock is not None else {}),
        )
        self.metadata_url = resource_metadata_url(self.resource)

    # -- what the SDK and the agents read ----------------------------------------------------------------
    def scopes_supported(self) -> list[str]:
        """The scopes an agent asks for first: the required ones. The MCP client takes the metadata's
        ``scopes_supported`` as its request (MCP authorization §"Scope Selection Strategy"), and
        Tessera refuses a scope not registered for the client (``invalid_scope``) rather than
        narrowing it silently; a tool's own scopes are asked for when a call needs them (the
        ``insufficient_scope`` challenge, §"Scope Challenge Handling", names them)."""
        if self.required_scopes:
            return list(self.required_scopes)
        out: dict[str, None] = {}
        for scopes in self.tool_scopes.values():
            out.update(dict.fromkeys(scopes))
        return list(out)

    def auth_settings(self) -> AuthSettings:
        """The SDK's ``AuthSettings``: Tessera as issuer, this resource, its required scopes; the SDK's
        own check of ``AccessToken.resource`` on (``validate_token_resource``) as a second line."""
        return AuthSettings(
            issuer_url=self.issuer,  # type: ignore[arg-type]
            resource_server_url=self.resource,  # type: ignore[arg-type]
            required_scopes=list(self.required_scopes) or None,
            validate_token_resource=True,
        )

    def protected_resource_metadata(self) -> dict[str, Any]:
        """RFC 9728 §2 protected resource metadata naming Tessera as the authorization server."""
        md: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],  # RFC 6750 §2.1 only: no form or query tokens
            "scopes_supported": self.scopes_supported(),
            "authorization_details_types_supported": [TOOL_INVOCATION],
        }
        if self.resource_name:
            md["resource_name"] = self.resource_name
        if self.resource_documentation:
            md["resource_documentation"] = self.resource_documentation
        return md

    def protect(self, app: ASGIApp) -> ASGIApp:
        """``app`` (the SDK's streamable HTTP app) behind the metadata route and the per-tool checks."""
        return _ToolGuard(app, self)


class _Refusal(Exception):
    def __init__(self, status: int, challenge: str, body: dict[str, Any]) -> None:
        super().__init__(challenge)
        self.status, self.challenge, self.body = status, challenge, body


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "/").replace('"', "'")[:300] + '"'


class _ToolGuard:
    def __init__(self, app: ASGIApp, protection: McpProtection) -> None:
        self.app = app
        self.p = protection
        self.metadata_path = urlsplit(protection.metadata_url).path
        self.mcp_path = urlsplit(protection.resource).path or "/"
        self.metadata = json.dumps(protection.protected_resource_metadata()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path"), scope.get("method")
        if path == self.metadata_path and method in ("GET", "HEAD"):
            await _respond(send, 200, self.metadata, [(b"access-control-allow-origin", b"*")])
            return
        if path != self.mcp_path or method != "POST":
            await self.app(scope, receive, send)
            return
        body, more = await _read(receive)
        if more:
            await _respond(send, 413, b'{"error":"request body too large"}', [])
            return
        try:
            await self._check(scope, body)
        except _Refusal as r:
            await _respond(send, r.status, json.dumps(r.body).encode(), [(b"www-authenticate", r.challenge.encode())])
            return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _check(self, scope: Scope, body: bytes) -> None:
        calls = _tool_calls(body)
        if not calls:
            return
        claims: Claims | None = None
        for rpc_id, tool, arguments in calls:
            needed = self.p.tool_scopes.get(tool, ())
            sensitive = self.p.approvals.needs_approval(tool, arguments)
            if not needed and not sensitive:
                continue
            if claims is None:
                claims = await self._claims(scope)
                if claims is None:
                    return  # no valid token: the SDK's own middleware answers 401 with the challenge
            granted = set(str(claims.get("scope", "")).split())
            if not set(self.p.required_scopes) <= granted:
                return  # the SDK refuses it (403 insufficient_scope) before anything is consumed
            missing = [s for s in needed if s not in granted]
            if missing:
                # RFC 6750 §3.1 insufficient_scope, with the scopes this call needs (MCP "scope challenge").
                challenge = (
                    f'Bearer error="insufficient_scope", scope={_quoted(" ".join(needed))}, '
                    f"resource_metadata={_quoted(self.p.metadata_url)}, "
                    f"error_description={_quoted(f'calling {tool} needs the scopes ' + ' '.join(needed))}"
                )
                raise _Refusal(403, challenge, _rpc_error(rpc_id, f"calling {tool} needs scope {' '.join(needed)}"))
            if sensitive:
                try:
                    self.p.approvals.check(claims, tool, arguments)
                except ApprovalRequired as e:
                    challenge = (
                        f"Bearer error={_quoted(APPROVAL_ERROR)}, error_description={_quoted(e.message)}, "
                        f"resource_metadata={_quoted(self.p.metadata_url)}"
                    )
                    data = {
                        "error": APPROVAL_ERROR,
                        "reason": e.reason,
                        "authorization_server": self.p.issuer,
                        "authorization_details": e.authorization_details,
                        # the scopes the approval token needs for this call (to ask for with the approval)
                        "scope": " ".join(dict.fromkeys([*self.p.required_scopes, *needed])),
                    }
                    raise _Refusal(403, challenge, _rpc_error(rpc_id, e.message, APPROVAL_RPC_CODE, data)) from None

    async def _claims(self, scope: Scope) -> Claims | None:
        authorization = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
        token = bearer_token(authorization)
        if token is None:
            return None
        try:
            return await self.p.verifier.averify(token)
        except VerificationError:
            return None


def _tool_calls(body: bytes) -> list[tuple[Any, str, dict[str, Any]]]:
    """The ``tools/call`` requests in a JSON-RPC message or batch: (id, tool name, arguments)."""
    if b"tools/call" not in body:
        return []
    try:
        parsed = json.loads(body)
    except ValueError:
        return []  # the SDK answers a parse error
    messages = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("method") == "tools/call":
            params = m.get("params")
            if not isinstance(params, dict):
                continue  # the SDK answers an invalid request
            name = params.get("name")
            arguments = params.get("arguments")
            if isinstance(name, str):
                out.append((m.get("id"), name, arguments if isinstance(arguments, dict) else {}))
    return out


def _rpc_error(rpc_id: Any, message: str, code: int = -32001, data: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": error}


async def _read(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
