"""The authorization endpoint and its pages: passkey sign-in, consent, and the person's grants.

``GET``/``POST /oauth/authorize`` (RFC 6749 §3.1: GET MUST be supported, POST MAY) checks the request
(``tessera.oauth.endpoints.authorize``), then: not signed in → the sign-in page; signed in and this
exact consent remembered → a code straight back; else → the consent page. ``POST
/oauth/authorize/consent`` records the person's answer. Every authorization response carries ``iss``
(RFC 9207) and the client's ``state``.

The sign-in session is a cookie (``tessera_session``: 256 bits, stored hashed, HttpOnly, SameSite=Lax
so that it comes back on the top-level navigation from the client, Secure under https) that lasts
``SESSION_TTL`` and is replaced at sign-in (no session fixation). Every POST carries a CSRF token
(HMAC of the session under a key derived from the KEK) and a cross-site ``Origin`` is refused. Pages
run under the same strict CSP as the approval pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tessera.approvals.service import ApprovalService
from tessera.approvals.signin import SignInRefused, passkey_signin_options, verify_signin
from tessera.audit import AuditEvent
from tessera.oauth.authcode import CODE_TTL, SESSION_TTL, AuthCodeStore, CodeRecord, ConsentGrant, digest, new_secret
from tessera.oauth.ciba import acr_of
from tessera.oauth.clients import Client
from tessera.oauth.endpoints.authorize import (
    AuthorizationRequest,
    PageError,
    RedirectError,
    check_authorization_request,
    redirect_to,
)
from tessera.store.interfaces import AuditSink
from tessera.store.sql.authcode import new_grant_id

from .body import read_body
from .pages import CSP, PAGE_HEADERS, UI, _when

__all__ = ["SESSION_COOKIE", "authorize_routes"]

log = logging.getLogger("tessera.authorize")
SESSION_COOKIE = "tessera_session"
_FORM_LIMIT = 64 * 1024


def _csp_source(uri: str) -> str:
    """The CSP source expression of a redirect URI's origin (CSP3 §2.3.1): scheme://host[:port], or the
    scheme alone for a native app's private-use scheme (RFC 8252 §7.1)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


def authorize_routes(
    *,
    service: ApprovalService,
    codes: AuthCodeStore,
    audit: AuditSink,
    lookup: Callable[[str], Awaitable[Client | None]],
    issuer: str,
    prefix: str,
    csrf_key: bytes,
    secure_cookies: bool,
    default_audience: str,
    now: Callable[[], float],
) -> list[Route]:
    env = Environment(
        loader=FileSystemLoader(UI / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    env.filters["when"] = _when
    origin = service.config.origin
    authorize_path = prefix + "/oauth/authorize"
    grants_path = prefix + "/account/grants"

    def render(
        name: str, status: int = 200, cookie: str | None = None, form_target: str | None = None, **ctx: Any
    ) -> HTMLResponse:
        body = env.get_template(name).render(static=prefix + "/ui/static", **ctx)
        headers = PAGE_HEADERS
        if form_target is not None:
            # CSP form-action also governs where the form's response redirects (CSP3 §6.4.1): the
            # consent form ends at the client's redirect URI, so exactly that origin is allowed too.
            headers = {
                **PAGE_HEADERS,
                "Content-Security-Policy": CSP.replace("form-action 'self'", f"form-action 'self' {form_target}"),
            }
        response = HTMLResponse(body, status_code=status, headers=headers)
        if cookie is not None:
            set_cookie(response, cookie)
        return response

    def set_cookie(response: Response, value: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_TTL,
            httponly=True,
            samesite="lax",
            secure=secure_cookies,
            path=prefix + "/",
        )

    def csrf_for(session_hash: str) -> str:
        return hmac.new(csrf_key, f"authorize|{session_hash}".encode(), hashlib.sha256).hexdigest()

    async def session(request: Request) -> tuple[str, dict[str, Any] | None, str | None]:
        """(session hash, the session row if live, a new cookie value to set if one was made)."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        t = int(now())
        if len(cookie) == 43:
            row = await codes.get_session(digest(cookie), t)
            if row is not None:
                return digest(cookie), row, None
        fresh = new_secret()
        await codes.new_session(digest(fresh), t, t + SESSION_TTL)
        return digest(fresh), None, fresh

    def check_post(request: Request, session_hash: str, sent: str | None) -> str | None:
        # As on the approval pages: Fetch metadata and Origin first (Origin "null" is what a browser
        # sends on its own form posts under no-referrer; the CSRF token decides then).
        seen = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site")
        if (seen not in (None, "null") and seen != origin) or (
            site is not None and site not in ("same-origin", "none")
        ):
            return "This form was sent from another site; refused."
        if not sent or not hmac.compare_digest(sent, csrf_for(session_hash)):
            return "This form expired or was not sent from this page; reload the page."
        return None

    async def form(request: Request) -> dict[str, list[str]] | None:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await read_body(request, _FORM_LIMIT)
        if ctype != "application/x-www-form-urlencoded":
            return None
        try:
            return parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return None

    def refused(error: str, message: str, status: int = 400) -> HTMLResponse:
        return render("authorize_error.html", status, error=error, message=message)

    def back(redirect_uri: str, params: dict[str, str | None]) -> Response:
        # RFC 9207 §2: iss in every authorization response. RFC 6749 §4.1.2: state exactly as received.
        url = redirect_to(redirect_uri, {**params, "iss": issuer})
        return RedirectResponse(
            url, status_code=303, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        )

    def error_back(e: RedirectError) -> Response:
        return back(e.redirect_uri, {"error": e.error, "error_description": e.description, "state": e.state})

    def signin_page(
        next_url: str, session_hash: str, cookie: str | None, client: Client | None = None, error: str | None = None
    ) -> HTMLResponse:
        return render(
            "signin.html",
            403 if error else 200,
            cookie,
            client_name=(client.metadata.get("client_name") or client.client_id) if client else None,
            next=next_url,
            csrf=csrf_for(session_hash),
            action=prefix + "/oauth/signin",
            options=prefix + "/oauth/signin/options",
            error=error,
        )

    async def issue(req: AuthorizationRequest, row: dict[str, Any], grant: ConsentGrant | None) -> Response:
        t = int(now())
        new = grant is None
        if grant is None:
            grant = ConsentGrant(new_grant_id(), row["person_id"], req.client_id, req.scope, req.resource, t)
        code = new_secret()
        record = CodeRecord(
            code_hash=digest(code),
            client_id=req.client_id,
            person_id=row["person_id"],
            grant_id=grant.grant_id,
            redirect_uri=req.redirect_uri,
            redirect_uri_sent=req.redirect_uri_sent,
            scope=req.scope,
            resource=req.resource,
            code_challenge=req.code_challenge,
            acr=row["acr"],
            auth_time=row["auth_time"],
            created_at=t,
            expires_at=t + CODE_TTL,
        )
        events = []
        if new:
            events.append(
                AuditEvent(
                    "grant.consented",
                    actor=row["person_id"],
                    subject=row["person_id"],
                    data={
                        "grant_id": grant.grant_id,
                        "client_id": req.client_id,
                        "scope": req.scope,
                        "resource": req.resource,
                    },
                )
            )
        events.append(
            AuditEvent(
                "authorize.code_issued",
                actor=req.client_id,
                subject=row["person_id"],
                data={
                    "grant_id": grant.grant_id,
                    "client_id": req.client_id,
                    "scope": req.scope,
                    "resource": req.resource,
                    "redirect_uri": req.redirect_uri,
                    "remembered": not new,
                },
            )
        )
        await codes.issue_code(record, grant, new, events)
        return back(req.redirect_uri, {"code": code, "state": req.state})

    def consent_page(
        req: AuthorizationRequest, params: dict[str, list[str]], session_hash: str, row: dict[str, Any], person: Any
    ) -> HTMLResponse:
        md = req.client.metadata
        return render(
            "consent.html",
            form_target=_csp_source(req.redirect_uri),
            person=person,
            acr=row["acr"],
            client_name=md.get("client_name") or req.client_id,
            client_id=req.client_id,
            client_uri=md.get("client_uri"),
            scope=req.scope,
            resource=req.resource,
            redirect_uri=req.redirect_uri,
            request_params=urlencode(params, doseq=True),
            csrf=csrf_for(session_hash),
            action=authorize_path + "/consent",
            grants_url=grants_path,
        )

    async def person_of(row: dict[str, Any]) -> Any | None:
        try:
            rec, _ = await run_in_threadpool(service.get_person, row["person_id"])
        except Exception:
            return None
        if rec.person.disabled or rec.person.agent or rec.locked_at is not None:
            return None
        return rec.person

    async def authorize(request: Request) -> Response:
        if request.method == "POST":
            parsed = await form(request)
            if parsed is None:
                return refused("invalid_request", "The authorization request must be a form post or a GET.")
            params = parsed
        else:
            params = parse_qs(request.url.query, keep_blank_values=True)
        try:
            req = await check_authorization_request(params, lookup=lookup, default_audience=default_audience)
        except PageError as e:
            return refused(e.error, e.description)
        except RedirectError as e:
            return error_back(e)
        session_hash, row, cookie = await session(request)
        person = await person_of(row) if row is not None and row.get("person_id") else None
        prompt = (req.prompt or "").split(" ")
        if "login" in prompt:
            # The person signs in again whatever their session; the request then goes on without "login".
            again = {k: v for k, v in params.items() if k != "prompt"}
            rest = " ".join(p for p in prompt if p != "login")
            if rest:
                again["prompt"] = [rest]
            return signin_page(authorize_path + "?" + urlencode(again, doseq=True), session_hash, cookie, req.client)
        if person is None or row is None:
            if "none" in prompt:
                return error_back(
                    RedirectError("login_required", "the person is not signed in", req.redirect_uri, req.state)
                )
            return signin_page(authorize_path + "?" + urlencode(params, doseq=True), session_hash, cookie, req.client)
        grant = await codes.find_grant(row["person_id"], req.client_id, req.scope, req.resource)
        if grant is not None and "consent" not in prompt:
            return await issue(req, row, grant)
        if "none" in prompt:
            return error_back(
                RedirectError("consent_required", "the person has not consented", req.redirect_uri, req.state)
            )
        return consent_page(req, params, session_hash, row, person)

    async def consent(request: Request) -> Response:
        fields = await form(request)
        if fields is None or any(len(v) != 1 for v in fields.values()):
            return refused("invalid_request", "Unexpected form.", 403)
        session_hash, row, cookie = await session(request)
        problem = check_post(request, session_hash, fields.get("csrf", [""])[0])
        if problem:
            return refused("invalid_request", problem, 403)
        params = parse_qs(fields.get("request", [""])[0], keep_blank_values=True)
        try:
            req = await check_authorization_request(params, lookup=lookup, default_audience=default_audience)
        except PageError as e:
            return refused(e.error, e.description)
        except RedirectError as e:
            return error_back(e)
        person = await person_of(row) if row is not None and row.get("person_id") else None
        if person is None or row is None:
            return signin_page(authorize_path + "?" + urlencode(params, doseq=True), session_hash, cookie, req.client)
        decision = fields.get("decision", [""])[0]
        if decision == "deny":
            await audit.audit(
                AuditEvent(
                    "grant.refused",
                    actor=row["person_id"],
                    subject=row["person_id"],
                    data={"client_id": req.client_id, "scope": req.scope, "resource": req.resource},
                )
            )
            return back(
                req.redirect_uri,
                {"error": "access_denied", "error_description": "the person refused", "state": req.state},
            )
        if decision != "approve":
            return refused("invalid_request", "Unknown decision.", 403)
        grant = await codes.find_grant(row["person_id"], req.client_id, req.scope, req.resource)
        return await issue(req, row, grant)

    # -- sign-in ------------------------------------------------------------------------------------------
    async def signin_options(request: Request) -> Response:
        session_hash, _row, _ = await session(request)
        problem = check_post(request, session_hash, request.headers.get("x-csrf-token"))
        if problem:
            return JSONResponse({"error": "invalid_request", "error_description": problem}, 403, headers=PAGE_HEADERS)
        try:
            body = json.loads(await read_body(request, _FORM_LIMIT) or b"{}")
            hint = str(body.get("hint") or "")[:320] or None
        except (ValueError, AttributeError):
            return JSONResponse({"error": "invalid_request"}, 400, headers=PAGE_HEADERS)
        challenge = secrets.token_bytes(32)
        await codes.set_challenge(session_hash, base64.urlsafe_b64encode(challenge).decode())
        options = await run_in_threadpool(passkey_signin_options, service, challenge, hint, csrf_key)
        return JSONResponse(options, headers=PAGE_HEADERS)

    def safe_next(value: str) -> str:
        # Only our own pages: never an open redirector.
        if value.startswith(authorize_path + "?") or value == grants_path:
            return value
        return grants_path

    async def signin(request: Request) -> Response:
        fields = await form(request)
        if fields is None or any(len(v) != 1 for v in fields.values()):
            return refused("invalid_request", "Unexpected form.", 403)
        session_hash, _row, cookie = await session(request)
        got = {k: v[0] for k, v in fields.items()}
        next_url = safe_next(got.get("next", ""))
        problem = check_post(request, session_hash, got.get("csrf"))
        if problem:
            return refused("invalid_request", problem, 403)
        stored = await codes.take_challenge(session_hash)
        if stored is None:
            return signin_page(next_url, session_hash, cookie, error="The sign-in expired; try again.")
        try:
            who = await run_in_threadpool(
                verify_signin,
                service,
                got.get("credential", ""),
                base64.urlsafe_b64decode(stored),
                got.get("hint") or None,
            )
        except SignInRefused as e:
            return signin_page(next_url, session_hash, cookie, error=e.message)
        t = int(now())
        fresh = new_secret()
        await codes.signed_in(session_hash, digest(fresh), who.person_id, acr_of(who.aal), t, t + SESSION_TTL)
        response = RedirectResponse(origin + next_url, status_code=303, headers={"Cache-Control": "no-store"})
        set_cookie(response, fresh)
        return response

    # -- the person's grants ----------------------------------------------------------------------------
    async def grants_page(request: Request) -> Response:
        session_hash, row, cookie = await session(request)
        person = await person_of(row) if row is not None and row.get("person_id") else None
        if person is None or row is None:
            return signin_page(grants_path, session_hash, cookie)
        grants = await codes.list_grants(row["person_id"], None)
        names = {}
        for g in grants:
            if g.client_id not in names:
                c = await lookup(g.client_id)
                names[g.client_id] = (c.metadata.get("client_name") if c else None) or g.client_id
        return render(
            "grants.html",
            person=person,
            grants=grants,
            names=names,
            csrf=csrf_for(session_hash),
            action=grants_path,
            signout=prefix + "/oauth/signout",
        )

    async def revoke_grant(request: Request) -> Response:
        fields = await form(request)
        session_hash, row, _ = await session(request)
        problem = check_post(request, session_hash, (fields or {}).get("csrf", [""])[0])
        if problem:
            return refused("invalid_request", problem, 403)
        if row is None or not row.get("person_id"):
            return RedirectResponse(origin + grants_path, status_code=303)
        gid = request.path_params["grant_id"][:64]
        revoked = await codes.revoke_grant(gid, row["person_id"], int(now()), person_id=row["person_id"])
        if revoked is None:
            return refused("invalid_request", "No such grant of yours.", 404)
        return RedirectResponse(origin + grants_path, status_code=303, headers={"Cache-Control": "no-store"})

    async def signout(request: Request) -> Response:
        fields = await form(request)
        session_hash, _row, _ = await session(request)
        problem = check_post(request, session_hash, (fields or {}).get("csrf", [""])[0])
        if problem:
            return refused("invalid_request", problem, 403)
        await codes.end_session(session_hash)
        response = RedirectResponse(origin + grants_path, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=prefix + "/")
        return response

    def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except Exception as e:  # the body reader's limits raise OAuthError; anything else is ours
                from tessera.oauth.errors import OAuthError

                if isinstance(e, OAuthError):
                    return refused(e.error, e.description, e.status_code)
                log.exception("authorization page failed")
                return refused("server_error", "Something went wrong on our side.", 500)

        return wrapped

    return [
        Route(authorize_path, guarded(authorize), methods=["GET", "POST"]),
        Route(authorize_path + "/consent", guarded(consent), methods=["POST"]),
        Route(prefix + "/oauth/signin/options", guarded(signin_options), methods=["POST"]),
        Route(prefix + "/oauth/signin", guarded(signin), methods=["POST"]),
        Route(prefix + "/oauth/signout", guarded(signout), methods=["POST"]),
        Route(grants_path, guarded(grants_page), methods=["GET"]),
        Route(grants_path + "/{grant_id}/revoke", guarded(revoke_grant), methods=["POST"]),
    ]
