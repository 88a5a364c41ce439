"""The admin API: JSON over HTTP, bearer admin token, OpenAPI document at ``/admin/openapi.json``.

Errors use the same ``{"error", "error_description"}`` shape as the protocol endpoints.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tessera.audit import AuditEvent
from tessera.federation.config import FederationConfigError
from tessera.federation.validator import FederationRefused, IssuerRegistry
from tessera.oauth.clients import Client, generate_secret, hash_secret, new_client, validate_metadata
from tessera.oauth.errors import OAuthError
from tessera.oauth.keys import TooManyKeys
from tessera.oauth.revocation import selector_from_request
from tessera.runtime import Runtime, client_policy, delete_trusted_issuer, put_trusted_issuer
from tessera.store.sql import repo

from .admin_approvals import add_approval_routes
from .admin_incidents import add_incident_routes

if TYPE_CHECKING:
    from tessera.approvals.service import ApprovalService
    from tessera.http.app import KeyService
    from tessera.incidents import Incidents
    from tessera.store.sql.outbox import SqlOutbox

__all__ = ["admin_app"]


def admin_app(
    runtime: Runtime,
    keys: KeyService,
    invalidate_status_lists: Callable[[Iterable[int | None] | None], None] = lambda _: None,
    *,
    federation: IssuerRegistry | None = None,
    issuers_changed: Callable[[], Awaitable[None]] | None = None,
    approvals: ApprovalService | None = None,
    outbox: SqlOutbox | None = None,
    registration_flows: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None,
    operation_flows: Callable[..., Awaitable[None]] | None = None,
    incidents: Incidents | None = None,
) -> FastAPI:
    """``invalidate_status_lists`` is told which status lists a revocation changed (None: all of them)."""
    settings, store = runtime.settings, runtime.store
    app = FastAPI(
        title="Tessera admin API",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        description="Clients, trusted issuers, signing keys, token revocation, people and approvals, the outbox "
        "and the audit log. Bearer admin token.",
    )

    bearer = HTTPBearer(auto_error=False, scheme_name="adminToken", description="TESSERA_ADMIN_TOKEN")

    def admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        if not settings.admin_token:
            raise HTTPException(403, "the admin API is disabled: set TESSERA_ADMIN_TOKEN")
        token = credentials.credentials if credentials is not None else ""
        if not token or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            raise HTTPException(
                401,
                "a valid admin bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="tessera-admin"'},
            )
        return "admin"

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        codes = {401: "invalid_token", 403: "access_denied", 404: "not_found", 409: "conflict"}
        return JSONResponse(
            {"error": codes.get(exc.status_code, "invalid_request"), "error_description": exc.detail},
            exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        return JSONResponse(
            {"error": "invalid_request", "error_description": f"{where}: {first.get('msg', 'invalid request')}"}, 400
        )

    @app.exception_handler(OAuthError)
    async def _oauth(_: Request, exc: OAuthError) -> JSONResponse:
        return JSONResponse(exc.body(), 400 if exc.status_code == 401 else exc.status_code)

    def _get(client_id: str) -> Client:
        client = store.read(lambda c: repo.get_client(c, client_id))
        if client is None:
            raise HTTPException(404, "no such client")
        return client

    def _changeable(client_id: str) -> Client:
        client = _get(client_id)
        if client.source == "config":
            # The config file is the source of truth for it: a change here would be undone at the next start.
            raise HTTPException(409, "this client is declared in the config file; change it there")
        return client

    def _view(client: Client) -> dict[str, Any]:
        return {**client.public_view(), "source": client.source, "updated_at": client.updated_at}

    @app.get("/clients", summary="List clients")
    def list_clients(
        _: str = Depends(admin), after: str | None = None, limit: int = Query(100, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        return [_view(c) for c in store.read(lambda conn: repo.list_clients(conn, limit, after))]

    @app.post("/clients", status_code=201, summary="Create a client (RFC 7591 metadata; secret shown once)")
    async def create_client(metadata: dict[str, Any] = Body(...), actor: str = Depends(admin)) -> dict[str, Any]:
        cid = metadata.pop("client_id", None)
        client, secret = new_client(
            metadata, client_policy(settings), int(runtime.clock.now()), source="admin", client_id=cid
        )
        if registration_flows is not None:
            # The client.register flows cover operator-created clients too (docs/flows.md).
            marker = await registration_flows(client.client_id, client.metadata)
            if marker is not None:
                client = replace(client, metadata={**client.metadata, "onboarding": marker})
        return await asyncio.to_thread(_insert_new, client, secret, actor)

    def _insert_new(client: Client, secret: str | None, actor: str) -> dict[str, Any]:
        try:
            store.write(
                lambda c: repo.insert_client(c, client),
                [
                    AuditEvent(
                        "client.created", actor=actor, subject=client.client_id, data={"metadata": client.metadata}
                    )
                ],
            )
        except sa.exc.IntegrityError:
            raise HTTPException(409, "a client with this client_id exists") from None
        out = _view(client)
        if secret:
            out["client_secret"] = secret
        return out

    @app.get("/clients/{client_id}", summary="Read a client")
    def read_client(client_id: str, _: str = Depends(admin)) -> dict[str, Any]:
        return _view(_get(client_id))

    @app.put("/clients/{client_id}", summary="Replace a client's metadata")
    def update_client(
        client_id: str, metadata: dict[str, Any] = Body(...), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        client = _changeable(client_id)
        metadata.pop("client_id", None)
        md = validate_metadata(metadata, client_policy(settings))
        for marker in ("quarantined", "suspended"):
            # A quarantine ends only through its lift approval (POST /clients/{id}/quarantine/lift), a
            # suspension through its alert's answer (resume).
            if marker in client.metadata:
                md[marker] = client.metadata[marker]
        secret = None
        secret_hash = client.secret_hash
        if md["token_endpoint_auth_method"] in ("client_secret_basic", "client_secret_post"):
            if not secret_hash:
                secret = generate_secret()
                secret_hash = hash_secret(secret)
        else:
            secret_hash = None
        updated = replace(client, metadata=md, secret_hash=secret_hash, updated_at=int(runtime.clock.now()))
        store.write(
            lambda c: repo.update_client(c, updated),
            [AuditEvent("client.updated", actor=actor, subject=client_id, data={"metadata": md, "via": "admin"})],
        )
        store.forget_client(client_id)
        out = _view(updated)
        if secret:
            out["client_secret"] = secret
        return out

    @app.delete("/clients/{client_id}", status_code=204, summary="Delete a client and revoke its unexpired tokens")
    async def delete_client(client_id: str, actor: str = Depends(admin)) -> Response:
        await asyncio.to_thread(_changeable, client_id)
        event = AuditEvent("client.deleted", actor=actor, subject=client_id, data={"via": "admin"})
        if not await asyncio.to_thread(store.delete_client_now, client_id, event):
            raise HTTPException(404, "no such client")
        invalidate_status_lists(None)
        if approvals is not None:
            await asyncio.to_thread(approvals.cancel_for_requester, client_id, actor, "client deleted")
        if operation_flows is not None:
            await operation_flows("token.revoke", client_id, {}, actor, {"via": "admin", "selector": "client"})
        return Response(status_code=204)

    @app.post("/clients/{client_id}/secret", summary="Rotate a client's secret (shown once)")
    async def rotate_secret(client_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        client = await asyncio.to_thread(_changeable, client_id)
        if client.auth_method not in ("client_secret_basic", "client_secret_post"):
            raise HTTPException(400, "this client does not authenticate with a secret")
        if operation_flows is not None:
            # credential.rotate flows may deny the rotation or ask for an approval first (docs/flows.md).
            await operation_flows("credential.rotate", client_id, client.metadata, actor, {"kind": "client_secret"})
        return await asyncio.to_thread(_rotate, client, actor)

    def _rotate(client: Client, actor: str) -> dict[str, Any]:
        client_id = client.client_id
        secret = generate_secret()
        updated = replace(client, secret_hash=hash_secret(secret), updated_at=int(runtime.clock.now()))
        store.write(
            lambda c: repo.update_client(c, updated),
            [AuditEvent("client.secret_rotated", actor=actor, subject=client_id)],
        )
        store.forget_client(client_id)
        return {"client_id": client_id, "client_secret": secret}

    # -- trusted issuers (identity federation) -------------------------------------------------------
    def _issuer_view(stored: repo.StoredIssuer) -> dict[str, Any]:
        return {
            "name": stored.name,
            "source": stored.source,
            "config": stored.config,
            "created_at": stored.created_at,
            "updated_at": stored.updated_at,
        }

    def _stored_issuer(name: str) -> repo.StoredIssuer:
        found = [i for i in store.read(repo.list_trusted_issuers) if i.name == name]
        if not found:
            raise HTTPException(404, "no such trusted issuer")
        return found[0]

    async def _changed() -> None:
        if issuers_changed is not None:
            await issuers_changed()

    @app.get("/issuers", summary="List trusted issuers (identity federation)")
    def list_issuers(_: str = Depends(admin)) -> list[dict[str, Any]]:
        return [_issuer_view(i) for i in store.read(repo.list_trusted_issuers)]

    @app.get("/issuers/{name}", summary="Read a trusted issuer")
    def read_issuer(name: str, _: str = Depends(admin)) -> dict[str, Any]:
        return _issuer_view(_stored_issuer(name))

    @app.put("/issuers/{name}", summary="Add or replace a trusted issuer (validated; CEL compiled)")
    async def put_issuer(
        name: str, response: Response, config: dict[str, Any] = Body(...), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        if "name" in config and config["name"] != name:
            raise HTTPException(400, "the name in the body differs from the one in the path")
        try:
            created = await asyncio.to_thread(put_trusted_issuer, runtime, name, config, actor)
        except FederationConfigError as e:
            raise HTTPException(400, str(e)) from None
        except PermissionError as e:
            raise HTTPException(409, str(e)) from None
        await _changed()
        response.status_code = 201 if created else 200
        return _issuer_view(_stored_issuer(name))

    @app.delete("/issuers/{name}", status_code=204, summary="Stop trusting an issuer")
    async def delete_issuer(name: str, actor: str = Depends(admin)) -> Response:
        try:
            gone = await asyncio.to_thread(delete_trusted_issuer, runtime, name, actor)
        except PermissionError as e:
            raise HTTPException(409, str(e)) from None
        if not gone:
            raise HTTPException(404, "no such trusted issuer")
        await _changed()
        return Response(status_code=204)

    @app.post(
        "/issuers/{name}/check",
        summary="Dry run: would this external token be accepted, and as whom? Consumes nothing, issues nothing",
    )
    async def check_issuer_token(name: str, body: dict[str, Any] = Body(...), _: str = Depends(admin)) -> Any:
        token = body.get("token")
        if not isinstance(token, str):
            raise HTTPException(400, "token (a JWT string) is required")
        if federation is None or federation.get(name) is None:
            raise HTTPException(404, "no such trusted issuer in use")
        try:
            identity = await federation.validate(token)
        except FederationRefused as e:
            return {"accepted": False, "reason": str(e), "trust": e.trust}
        if identity.trust.name != name:
            return {"accepted": False, "reason": f"the token belongs to trusted issuer {identity.trust.name}"}
        return {"accepted": True, **identity.summary()}

    @app.get("/keys", summary="List signing keys and their lifecycle state")
    def list_keys(_: str = Depends(admin)) -> list[dict[str, Any]]:
        return [k.summary() for k in store.read(repo.load_keys)]

    @app.post("/keys/rotate", summary="Rotate: next → active, active → retired, new next key")
    async def rotate_keys(alg: str | None = None, actor: str = Depends(admin)) -> dict[str, Any]:
        alg = alg or settings.signing_algs[0]
        if alg not in settings.signing_algs:
            raise HTTPException(400, f"alg must be one of {settings.signing_algs}")
        try:
            plan = await asyncio.to_thread(
                store.rotate_keys,
                alg,
                runtime.kek,
                max_token_lifetime=settings.access_token_lifetime,
                refresh_interval=settings.key_refresh_interval,
                leeway=settings.leeway,
                actor=actor,
            )
        except TooManyKeys as e:
            raise HTTPException(409, str(e)) from None
        await keys.reload()
        return {"events": [{"event": e, **d} for e, d in plan.events]}

    @app.post("/keys/{kid}/revoke", summary="Revoke a compromised key: unpublished at once, its tokens revoked")
    async def revoke_key(kid: str, actor: str = Depends(admin)) -> dict[str, Any]:
        try:
            plan, revoked = await asyncio.to_thread(store.revoke_key, kid, runtime.kek, actor)
        except LookupError:
            raise HTTPException(404, "no such signing key (or it is already removed)") from None
        await keys.reload()
        invalidate_status_lists(None)
        return {"events": [{"event": e, **d} for e, d in plan.events], "revoked": len(revoked)}

    @app.post("/tokens/revoke", summary="Revoke tokens by jti, client_id, sub or the token itself")
    async def revoke_tokens(body: Any = Body(...), actor: str = Depends(admin)) -> dict[str, Any]:
        """Exactly one of ``{"jti"}``, ``{"client_id"}``, ``{"sub"}``, ``{"token"}``. A jti or token is
        revoked whatever its expiry; a client's or subject's tokens if a relying party could still accept them."""
        selector = selector_from_request(body, keys.current(), settings.issuer)
        revoked = await asyncio.to_thread(store.revoke_now, selector, actor=actor, via="admin")
        invalidate_status_lists(t.status_list for t in revoked)
        cancelled: list[str] = []
        if operation_flows is not None and selector.client_id is not None:
            found = await asyncio.to_thread(lambda: store.read(lambda c: repo.get_client(c, selector.client_id or "")))
            await operation_flows(
                "token.revoke",
                selector.client_id,
                found.metadata if found is not None else {},
                actor,
                {"via": "admin", "selector": "client"},
            )
        if approvals is not None and selector.client_id is not None:
            # Revoking a client's tokens also cancels what it is still waiting for (approvals, CIBA).
            cancelled = await asyncio.to_thread(
                approvals.cancel_for_requester, selector.client_id, actor, "client revoked"
            )
        out: dict[str, Any] = {"revoked": len(revoked)}
        if selector.client_id is not None:
            out["approvals_cancelled"] = len(cancelled)
        return out

    @app.get("/audit", summary="Audit records in chain order")
    def audit(
        _: str = Depends(admin), after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        return store.read(lambda c: [r.as_json() for r in repo.iter_audit(c, after=after, limit=limit)])

    @app.get("/audit/verify", summary="Verify the audit hash chain")
    def audit_verify(_: str = Depends(admin)) -> dict[str, Any]:
        return store.verify_audit().as_json()

    def set_quarantine(client_id: str, marker: dict[str, Any], actor: str, event: str) -> dict[str, Any]:
        client = _get(client_id)
        updated = replace(
            client, metadata={**client.metadata, "quarantined": marker}, updated_at=int(runtime.clock.now())
        )
        store.write(
            lambda c: repo.update_client(c, updated),
            [AuditEvent(event, actor=actor, subject=client_id, data={"quarantine": marker})],
        )
        store.forget_client(client_id)
        return _view(updated)

    if approvals is not None and outbox is not None:
        add_approval_routes(app, approvals, outbox, admin, _get, set_quarantine)
    if incidents is not None:
        add_incident_routes(
            app,
            incidents,
            admin,
            incidents.issuer_exists,
            issuers_changed,
        )

    def openapi() -> dict[str, Any]:
        """The generated document, told the truth about errors: 400/401/403 with the error body, never 422."""
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Error"] = {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
        }
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for item in doc.get("paths", {}).values():
            for op in item.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                responses.setdefault("400", {"description": "Invalid request", **error})
                responses.setdefault("401", {"description": "Missing or wrong admin token", **error})
                responses.setdefault("403", {"description": "The admin API is disabled", **error})
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi_alias(_: str = Depends(admin)) -> dict[str, Any]:
        """The same document under the conventional /admin/api/ path."""
        return openapi()

    return app


class AdminGate:
    """Checks the admin bearer token and the body size before the admin application reads anything.

    FastAPI parses a JSON body before running the authentication dependency, so without this gate an
    anonymous caller could make the server read and parse an arbitrarily large document.
    """

    def __init__(self, app: Any, admin_token: str | None, max_body: int) -> None:
        self._app = app
        self._token = admin_token.encode() if admin_token else None
        self._max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        authz = headers.get(b"authorization", b"")
        token = authz[7:].strip() if authz[:7].lower() == b"bearer " else b""
        if self._token is None:
            await _deny(send, 403, "access_denied", "the admin API is disabled: set TESSERA_ADMIN_TOKEN")
            return
        if not token or not hmac.compare_digest(token, self._token):
            await _deny(
                send,
                401,
                "invalid_token",
                "a valid admin bearer token is required",
                [(b"www-authenticate", b'Bearer realm="tessera-admin"')],
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_body):
            await _deny(send, 413, "invalid_request", f"the request body is larger than {self._max_body} bytes")
            return
        seen = 0

        async def bounded_receive() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self._max_body:
                raise ValueError("request body over the limit")  # ends the request; nothing was parsed
            return message

        await self._app(scope, bounded_receive, send)


async def _deny(
    send: Any, status: int, error: str, description: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    import json

    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
