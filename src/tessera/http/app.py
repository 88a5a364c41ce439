"""The ASGI application: routes map HTTP to core calls and core errors to RFC-shaped responses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from tessera.approval_runtime import approval_service, build_channels
from tessera.channels.ciba_ping import CibaPingChannel
from tessera.channels.outbox import OutboxWorker, RetryPolicy
from tessera.federation.validator import IssuerRegistry
from tessera.flow_gate import FlowGate
from tessera.flow_runtime import flow_by_version, published_flows
from tessera.incidents import ContextWatch, Incidents
from tessera.oauth.client_auth import ClientAuthenticator
from tessera.oauth.dpop import DPoPChecker, nonce_secret
from tessera.oauth.endpoints.backchannel import BackchannelEndpoint, CibaPolicy
from tessera.oauth.endpoints.introspection import IntrospectionEndpoint
from tessera.oauth.endpoints.registration import RegistrationEndpoint
from tessera.oauth.endpoints.revocation import RevocationEndpoint
from tessera.oauth.endpoints.status_lists import MEDIA_TYPE as STATUS_LIST_MEDIA_TYPE
from tessera.oauth.endpoints.status_lists import StatusListEndpoint
from tessera.oauth.endpoints.token import TokenEndpoint
from tessera.oauth.errors import AccessDenied, InvalidRequest, OAuthError
from tessera.oauth.forms import Form, parse_form
from tessera.oauth.grants import Grant
from tessera.oauth.grants.authorization_code import AuthorizationCodeGrant, RefreshTokenGrant
from tessera.oauth.grants.ciba import CibaGrant
from tessera.oauth.grants.client_credentials import ClientCredentialsGrant
from tessera.oauth.grants.jwt_bearer import JwtBearerGrant
from tessera.oauth.grants.token_exchange import TokenExchangeGrant
from tessera.oauth.keys import KeyRing, is_revoked
from tessera.oauth.revocation import TokenSelector
from tessera.oauth.status_entries import StatusAllocator
from tessera.runtime import Runtime, client_policy, load_trusted_issuers, open_runtime, server_metadata
from tessera.settings import load_settings
from tessera.store.sql.approvals import SqlApprovalStore
from tessera.store.sql.authcode import SqlAuthCodes
from tessera.store.sql.ciba import SqlCiba
from tessera.store.sql.outbox import SqlOutbox

from .authorize import authorize_routes
from .body import read_body, read_json
from .console import console_routes
from .fastpath import TokenFastPath
from .health import database_counts, healthz, readyz_endpoint
from .metrics import ScrapeGauges, metrics, process_gauges
from .outbound import GuardedTransport, JwksFetcher
from .pages import page_routes
from .responses import NO_STORE, json_response, oauth_error
from .telemetry import Telemetry, configure_logging, metrics_endpoint
from .tracing import tracer

__all__ = ["KeyService", "build_app", "create_app"]

log = logging.getLogger("tessera.http")


class KeyService:
    """The process's view of the signing keys, reloaded from the store on an interval."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.ring = KeyRing()
        self.jwks_body = b'{"keys":[]}'
        self.records: list[Any] = []
        #: Called when the published keys changed (cached status lists are re-signed).
        self.on_change: Callable[[], None] = lambda: None

    def current(self) -> KeyRing:
        return self.ring

    async def reload(self) -> None:
        records = await self._rt.store.load_keys()
        signed_with = {k.kid for k in self.ring.active.values()}
        self._set(records)
        # A key revoked by another process (or the CLI) went on signing here until this reload; the
        # revocation revoked the tokens it had signed by then, so those signed since are revoked now.
        for rec in records:
            if rec.kid in signed_with and is_revoked(rec):
                revoked = await self._rt.store.revoke(TokenSelector(kid=rec.kid), actor="system", via="key.revoked")
                if revoked:
                    log.warning(
                        "revoked %d token(s) signed with revoked key %s before this reload", len(revoked), rec.kid
                    )
                    self.on_change()

    def _set(self, records: list[Any]) -> None:
        ring = KeyRing.from_records(records, self._rt.kek, int(self._rt.clock.now()))
        self.records = records
        changed = ring.jwks != self.ring.jwks
        self.ring = ring
        self.jwks_body = json.dumps(ring.jwks, separators=(",", ":")).encode()
        if changed:
            self.on_change()


def _handler(fn: Callable[[Request], Awaitable[Response]], realm: str) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except OAuthError as e:
            return oauth_error(e, realm)

    return wrapped


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def _read_form(request: Request, limit: int, what: str) -> Form:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest(f"the {what} request must be application/x-www-form-urlencoded")
    return parse_form(body)


def _accepts(accept: str | None, media_type: str) -> bool:
    """RFC 9110 §12.5.1: no Accept header, or one naming the type, its range or */* with a q above 0."""
    if accept is None:
        return True
    wanted = {media_type, media_type.split("/")[0] + "/*", "*/*"}
    for item in accept.split(","):
        name, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name.lower() in wanted and q > 0:
            return True
    return False


def build_app(runtime: Runtime) -> Any:
    settings, store, clock = runtime.settings, runtime.store, runtime.clock
    issuer = settings.issuer
    keys = KeyService(runtime)
    fetch_jwks = JwksFetcher(clock, allow_private=settings.dev_mode)
    federation = IssuerRegistry(
        load_trusted_issuers(settings, store),
        now=clock.now,
        transport=GuardedTransport(lambda: federation.configured_hosts(), allow_private=settings.dev_mode),
    )
    issuers_seen = [sorted((t.name, repr(t.raw)) for t in federation.issuers)]

    async def reload_issuers() -> None:
        """Trust configurations changed by an operator (admin API, CLI, another process) apply here
        within one refresh interval."""
        loaded = await asyncio.to_thread(load_trusted_issuers, settings, store)
        seen = sorted((t.name, repr(t.raw)) for t in loaded)
        if seen != issuers_seen[0]:
            federation.replace(loaded)
            issuers_seen[0] = seen
            log.info("trusted issuers reloaded: %s", ", ".join(t.name for t in loaded) or "none")

    authenticator = ClientAuthenticator(
        issuer=issuer,
        token_endpoint=issuer + "/oauth/token",
        lookup=store.get_client,
        fetch_jwks=fetch_jwks,
        now=clock.now,
        assertion_max_lifetime=settings.assertion_max_lifetime,
        leeway=settings.leeway,
        # CIBA §7.1: the backchannel endpoint's URL is an accepted audience of a client assertion too.
        other_endpoints=(issuer + "/oauth/revoke", issuer + "/oauth/introspect", issuer + "/oauth/bc-authorize"),
        federation=federation,
    )
    process = _process_name()
    allocator = (
        StatusAllocator(lambda: store.claim_status_segment(settings.status_list_size, process))
        if settings.status_lists
        else None
    )
    # Human approvals: the service, the durable outbox and its worker, the pages.
    channels = build_channels(settings)
    ping_client = httpx.AsyncClient(
        transport=GuardedTransport(set, allow_private=settings.dev_mode), timeout=10.0, follow_redirects=False
    )
    channels["ciba-ping"] = CibaPingChannel(ping_client)
    loop_ref: list[asyncio.AbstractEventLoop] = []

    def wake_outbox() -> None:
        if loop_ref:
            loop_ref[0].call_soon_threadsafe(outbox_worker.wake)

    approvals = approval_service(runtime, channels=set(channels), on_enqueue=wake_outbox)
    m = metrics() if settings.metrics != "disabled" else None
    if m is not None and isinstance(approvals.store, SqlApprovalStore):
        approvals.store.on_commit = m.audit_events
    outbox = SqlOutbox(store.write_engine, store.now_ms)
    outbox_worker = OutboxWorker(
        outbox,
        channels,
        runtime.kek,
        worker_id=process,
        now=clock.now,
        policy=RetryPolicy(max_attempts=settings.outbox_max_attempts),
        poll_interval=settings.outbox_poll_interval,
        lease=settings.outbox_lease,
    )
    hook_client = httpx.AsyncClient(
        transport=GuardedTransport(set, allow_private=settings.dev_mode), follow_redirects=False
    )

    def status_changed() -> None:
        # The status lists show a suspension (or its end) at once in this process.
        if loop_ref:
            loop_ref[0].call_soon_threadsafe(status_lists.invalidate, None)

    incidents = Incidents(
        store,
        approvals,
        issuer=issuer,
        now=clock.now,
        link_ttl=settings.alert_link_ttl,
        assurance=settings.alert_response_assurance,
        status_changed=status_changed,
    )
    federation.quarantined = incidents.quarantined_issuers
    flows = FlowGate(
        store=store,
        approvals=approvals,
        now=clock.now,
        hooks=hook_client,
        flow_by_version=lambda v: flow_by_version(store, v),
        incidents=incidents,
        watch=ContextWatch(store, clock.now, learning_period=settings.context_learning_period),
    )
    flows.replace(published_flows(store))
    if m is not None:
        flows.on_decision = m.flow_decision
    flows_seen = [sorted(f.version for f in flows.flows)]

    async def reload_flows() -> None:
        """Flows published by an operator (CLI, another process) are in force here within one refresh."""
        loaded = await asyncio.to_thread(published_flows, store)
        seen = sorted(f.version for f in loaded)
        if seen != flows_seen[0]:
            flows.replace(loaded)
            flows_seen[0] = seen
            log.info("flows reloaded: %s", ", ".join(f"{f.id}@{f.version[:15]}" for f in loaded) or "none")

    grants: list[Grant] = [
        ClientCredentialsGrant(
            issuer=issuer,
            keys=keys.current,
            signing_alg=settings.signing_algs[0],
            recorder=store,
            now=clock.now,
            max_lifetime=settings.access_token_lifetime,
            default_audience=settings.audience_default,
            status_allocator=allocator,
            status_min_lifetime=settings.status_list_min_lifetime,
            policy=flows,
        ),
        TokenExchangeGrant(
            issuer=issuer,
            keys=keys.current,
            signing_alg=settings.signing_algs[0],
            outbound_alg=settings.outbound_signing_alg,
            registry=federation,
            recorder=store,
            tokens=store,
            clients=store.get_client,
            now=clock.now,
            max_lifetime=settings.access_token_lifetime,
            default_audience=settings.audience_default,
            max_act_depth=settings.max_act_depth,
            leeway=settings.leeway,
            status_allocator=allocator,
            status_min_lifetime=settings.status_list_min_lifetime,
            policy=flows,
        ),
        JwtBearerGrant(
            issuer=issuer,
            token_endpoint=issuer + "/oauth/token",
            keys=keys.current,
            signing_alg=settings.signing_algs[0],
            registry=federation,
            recorder=store,
            now=clock.now,
            max_lifetime=settings.access_token_lifetime,
            status_allocator=allocator,
            status_min_lifetime=settings.status_list_min_lifetime,
            policy=flows,
        ),
    ]
    ciba_store = SqlCiba(store)
    status_lists_ref: list[Any] = []
    grants.append(
        CibaGrant(
            issuer=issuer,
            keys=keys.current,
            signing_alg=settings.signing_algs[0],
            store=ciba_store,
            now=clock.now,
            max_lifetime=settings.access_token_lifetime,
            id_token_lifetime=settings.id_token_lifetime,
            status_allocator=allocator,
            status_min_lifetime=settings.status_list_min_lifetime,
            on_revoked=lambda lists: status_lists_ref[0].invalidate(lists) if status_lists_ref else None,
            person_refusal=lambda pid: person_refusal(pid),
            policy=flows,
        )
    )
    authcodes = SqlAuthCodes(store)
    for grant_class in (AuthorizationCodeGrant, RefreshTokenGrant):
        grants.append(
            grant_class(
                issuer=issuer,
                keys=keys.current,
                signing_alg=settings.signing_algs[0],
                store=authcodes,
                now=clock.now,
                max_lifetime=settings.access_token_lifetime,
                status_allocator=allocator,
                status_min_lifetime=settings.status_list_min_lifetime,
                on_revoked=lambda lists: status_lists_ref[0].invalidate(lists) if status_lists_ref else None,
                person_refusal=lambda pid: person_refusal(pid),
                policy=flows,
            )
        )
    dpop = DPoPChecker(
        token_endpoint=issuer + "/oauth/token",
        replay=store,
        now=clock.now,
        max_age=settings.dpop_max_age,
        leeway=settings.leeway,
        # Derived from the key-encryption key (as runtime.py finds it) so every worker accepts every nonce.
        nonce_secret=nonce_secret(settings.kek or (settings.data_dir / "kek").read_text())
        if settings.dpop_nonce
        else None,
    )
    token_endpoint = TokenEndpoint(grants, authenticator, store, dpop=dpop)
    status_lists = StatusListEndpoint(
        issuer=issuer,
        keys=keys.current,
        signing_alg=settings.signing_algs[0],
        source=store,
        now=clock.now,
        ttl=settings.status_list_ttl,
    )
    keys.on_change = lambda: status_lists.invalidate(None)
    status_lists_ref.append(status_lists)
    revocation = RevocationEndpoint(
        issuer=issuer,
        authenticator=authenticator,
        keys=keys.current,
        tokens=store,
        revoker=store,
        assertions=store,
        audit=store,
        refresh=authcodes,
        now=clock.now,
    )
    introspection = IntrospectionEndpoint(
        issuer=issuer, authenticator=authenticator, keys=keys.current, tokens=store, assertions=store, now=clock.now
    )
    registration = RegistrationEndpoint(
        issuer=issuer,
        initial_access_token=settings.registration_token,
        policy=client_policy(settings),
        reader=store,
        writer=store,
        now=clock.now,
        onboarding=flows.check_registration,
    )
    backchannel = BackchannelEndpoint(
        issuer=issuer,
        authenticator=authenticator,
        approvals=approvals,
        keys=keys.current,
        replay=store,
        now=clock.now,
        policy=CibaPolicy(
            max_expiry=settings.ciba_max_expiry,
            interval=settings.ciba_interval,
            default_assurance=settings.ciba_default_acr,
            authorization_details_types=tuple(settings.authorization_details_types),
            leeway=settings.leeway,
        ),
        login_hint_token=lambda value: federation.validate(value, audiences=[issuer]),
        default_audience=settings.audience_default,
    )

    async def person_refusal(person_id: str) -> str | None:
        try:
            record, _ = await asyncio.to_thread(approvals.get_person, person_id)
        except Exception:
            return "the person no longer exists"
        if record.person.disabled or record.person.agent:
            return "the person is disabled"
        if record.locked_at is not None:
            return "the person is locked"
        return None

    kek_material = settings.kek or (settings.data_dir / "kek").read_text()
    csrf_key = hashlib.sha256(b"tessera-csrf|" + kek_material.strip().encode()).digest()
    discovery = json.dumps(server_metadata(settings), separators=(",", ":")).encode()
    realm = issuer

    async def well_known(request: Request) -> Response:
        return Response(discovery, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    async def jwks(request: Request) -> Response:
        return Response(
            keys.jwks_body,
            media_type="application/jwk-set+json",
            headers={"Cache-Control": f"public, max-age={settings.jwks_max_age}"},
        )

    async def register(request: Request) -> Response:
        if not registration.enabled:
            return json_response(
                {"error": "access_denied", "error_description": "dynamic registration is disabled"}, 403, NO_STORE
            )
        authz = request.headers.get("authorization")
        registration.check_initial_token(authz)  # before reading the body: nothing parsed for strangers
        body = await read_json(request, settings.max_body_bytes)
        return json_response(await registration.register(authz, body), 201, NO_STORE)

    async def manage(request: Request) -> Response:
        cid = request.path_params["client_id"]
        authz = request.headers.get("authorization")
        if request.method == "GET":
            return json_response(await registration.read(cid, authz), 200, NO_STORE)
        if request.method == "DELETE":
            await registration.delete(cid, authz)
            status_lists.invalidate(None)  # the client's tokens were revoked with it
            await asyncio.to_thread(approvals.cancel_for_requester, cid, "registration", "client deleted")
            return Response(status_code=204, headers=NO_STORE)
        await registration.read(cid, authz)  # authenticate before parsing
        body = await read_json(request, settings.max_body_bytes)
        return json_response(await registration.update(cid, authz, body), 200, NO_STORE)

    async def revoke(request: Request) -> Response:
        form = await _read_form(request, settings.max_body_bytes, "revocation")
        revoked = await revocation.handle(request.headers, form)
        status_lists.invalidate(t.status_list for t in revoked)
        # RFC 7009 §2.2: "all necessary information is conveyed in the response code".
        return Response(status_code=200, headers=NO_STORE)

    async def introspect(request: Request) -> Response:
        form = await _read_form(request, settings.max_body_bytes, "introspection")
        return json_response(await introspection.handle(request.headers, form), 200, NO_STORE)

    async def status_list(request: Request) -> Response:
        # draft-ietf-oauth-status-list §8.4: a server without historical resolution "SHOULD return a
        # status code of 501 (Not Implemented)" to a request with the `time` parameter.
        if "time" in request.query_params:
            return json_response(
                {"error": "not_implemented", "error_description": "historical resolution (time) is not supported"},
                501,
                NO_STORE,
            )
        raw = request.path_params["list_id"]
        published = await status_lists.get(int(raw)) if raw.isdigit() and len(raw) <= 9 else None
        if published is None:
            return json_response({"error": "not_found", "error_description": "no such status list"}, 404)
        if not _accepts(request.headers.get("accept"), STATUS_LIST_MEDIA_TYPE):
            served = f"status lists are served as {STATUS_LIST_MEDIA_TYPE}"
            return json_response({"error": "not_acceptable", "error_description": served}, 406)
        headers = {
            "Cache-Control": f"public, max-age={settings.status_list_ttl}",
            "Access-Control-Allow-Origin": "*",  # §8.1: the endpoint SHOULD support CORS
            "Vary": "Accept-Encoding",
        }
        body = published.value
        # §8.2: "The HTTP response SHOULD use gzip Content-Encoding".
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            body, headers["Content-Encoding"] = published.gzipped(), "gzip"
        return Response(body, media_type=STATUS_LIST_MEDIA_TYPE, headers=headers)

    async def status_aggregation(request: Request) -> Response:
        return json_response(
            await status_lists.aggregation(),
            200,
            {"Cache-Control": f"public, max-age={settings.status_list_ttl}", "Access-Control-Allow-Origin": "*"},
        )

    async def backchannel_authenticate(request: Request) -> Response:
        form = await _read_form(request, settings.max_body_bytes, "backchannel authentication")
        try:
            body = await backchannel.handle(request.headers, form)
        except AccessDenied as e:
            # CIBA §13: access_denied is a 403 at this endpoint.
            return json_response(e.body(), 403, NO_STORE)
        return json_response(body, 200, NO_STORE)

    async def checkpoints_background() -> None:
        """Signed checkpoints of the audit chain's head (tessera.audit.checkpoint)."""
        from tessera.runtime import audit_checkpoint

        while settings.audit_checkpoint_interval:
            await asyncio.sleep(settings.audit_checkpoint_interval)
            try:
                # Every process runs this loop; of those waking within half an interval, one signs.
                await asyncio.to_thread(
                    lambda: audit_checkpoint(runtime, unless_newer_than=settings.audit_checkpoint_interval / 2)
                )
            except Exception:
                log.exception("the audit checkpoint failed; retrying at the next interval")

    async def approvals_background() -> None:
        """Unanswered approval requests expire (a timeout is a denial) within a couple of seconds."""
        while True:
            await asyncio.sleep(2.0)
            try:
                await asyncio.to_thread(approvals.expire_due)
                await asyncio.to_thread(incidents.sweep)
            except Exception:
                log.exception("expiring approval requests failed; retrying")

    async def background() -> None:
        while True:
            await asyncio.sleep(settings.key_refresh_interval)
            try:
                await asyncio.to_thread(store.sweep)
                await keys.reload()
                await reload_issuers()
                await reload_flows()
            except Exception:
                log.exception("background key refresh failed; serving with the keys loaded before")

    async def metrics_background() -> None:
        while m is not None:
            await asyncio.sleep(1.0)
            m.flush()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store.start()
        await keys.reload()
        loop_ref.append(asyncio.get_running_loop())
        stop_outbox = asyncio.Event()
        tasks = [
            asyncio.create_task(background()),
            asyncio.create_task(approvals_background()),
            asyncio.create_task(checkpoints_background()),
            asyncio.create_task(outbox_worker.run(stop_outbox)),
            asyncio.create_task(metrics_background()),
        ]
        log.info("Tessera serving issuer %s", issuer)
        try:
            yield
        finally:
            stop_outbox.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if m is not None:
                m.flush()
            if allocator is not None:
                await allocator.close()
            await fetch_jwks.close()
            await ping_client.aclose()
            await hook_client.aclose()
            store.close()

    from tessera.http.admin import AdminGate, admin_app

    h = lambda fn: _handler(fn, realm)  # noqa: E731
    admin_api = admin_app(
        runtime,
        keys,
        status_lists.invalidate,
        federation=federation,
        issuers_changed=reload_issuers,
        approvals=approvals,
        outbox=outbox,
        registration_flows=flows.check_registration,
        operation_flows=flows.check_operation,
        incidents=incidents,
    )
    prefix = _path_prefix(issuer)
    routes = [
        Route(prefix + "/.well-known/openid-configuration", well_known, methods=["GET"]),
        Route(prefix + "/.well-known/oauth-authorization-server", well_known, methods=["GET"]),
        Route(prefix + "/oauth/jwks", jwks, methods=["GET"]),
        Route(prefix + "/oauth/revoke", h(revoke), methods=["POST"]),
        Route(prefix + "/oauth/introspect", h(introspect), methods=["POST"]),
        Route(prefix + "/oauth/bc-authorize", h(backchannel_authenticate), methods=["POST"]),
        Route(prefix + "/oauth/status", status_aggregation, methods=["GET"]),
        Route(prefix + "/oauth/status/{list_id}", status_list, methods=["GET"]),
        Route(prefix + "/oauth/register", h(register), methods=["POST"]),
        Route(prefix + "/oauth/register/{client_id}", h(manage), methods=["GET", "PUT", "DELETE"]),
        Route(prefix + "/healthz", healthz, methods=["GET"]),
        Route(
            prefix + "/readyz",
            readyz_endpoint(settings, store, lambda: (keys.ring, keys.records), clock.now),
            methods=["GET"],
        ),
        Mount(prefix + "/admin", app=AdminGate(admin_api, settings.admin_token, settings.max_body_bytes)),
    ]
    routes += page_routes(
        approvals,
        prefix=prefix,
        csrf_key=csrf_key,
        secure_cookies=issuer.startswith("https://"),
        incidents=incidents,
    )
    routes += console_routes(
        prefix=prefix,
        runtime=runtime,
        admin_api=admin_api,
        approvals=approvals,
        federation=federation,
        csrf_key=csrf_key,
        secure_cookies=issuer.startswith("https://"),
    )
    routes += authorize_routes(
        service=approvals,
        codes=authcodes,
        audit=store,
        lookup=store.get_client,
        issuer=issuer,
        prefix=prefix,
        csrf_key=csrf_key,
        secure_cookies=issuer.startswith("https://"),
        default_audience=settings.audience_default,
        now=clock.now,
    )
    if prefix:
        # RFC 8414 §3: for an issuer with a path, the well-known suffix goes between host and path.
        routes.append(Route("/.well-known/oauth-authorization-server" + prefix, well_known, methods=["GET"]))
    if m is not None:
        routes.append(Route(prefix + "/metrics", metrics_endpoint(settings, m), methods=["GET"]))
        m.scrape_collectors = [
            ScrapeGauges(
                lambda: database_counts(store, store.now_ms),
                lambda: process_gauges(clock.now(), keys.records, federation.keys_fetched_at()),
            )
        ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.keys = keys
    fast = TokenFastPath(
        app,
        path=prefix + "/oauth/token",
        endpoint=token_endpoint,
        max_body=settings.max_body_bytes,
        realm=realm,
        observe=m.token if m is not None else None,
    )
    return Telemetry(fast, metrics=m, fast_paths=(prefix + "/oauth/token",), tracer=tracer(settings))


def _path_prefix(issuer: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(issuer).path.rstrip("/")


class RedactLinks(logging.Filter):
    """Access logs (debug level) never show a one-time token: ``/approve/<token>`` → ``/approve/…``."""

    _PATH = re.compile(r"/(approve|enrol|alert)/[A-Za-z0-9_-]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._PATH.sub(r"/\1/…", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._PATH.sub(r"/\1/…", record.msg)
        return True


def create_app() -> Any:
    """Factory for uvicorn (also used by each worker process): configuration from the environment."""
    settings = load_settings()
    configure_logging(settings)
    logging.getLogger("uvicorn.access").addFilter(RedactLinks())
    for warning in settings.warnings():
        log.warning("%s", warning)
    return build_app(open_runtime(settings))
