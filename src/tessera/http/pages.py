"""The approval and enrolment pages: server-rendered, JavaScript only for the WebAuthn ceremony.

Every page is ``no-store``, framed by nobody, sends no referrer (the one-time token is in the URL)
and runs under a strict Content Security Policy (scripts and styles from this origin only, forms
post only here). Every POST carries a CSRF token bound to a per-browser cookie and to the link
(HMAC under a key derived from the key-encryption key, so every server process accepts it), and a
cross-origin ``Origin`` header is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tessera.approvals.errors import ApprovalError, LinkUnusable, ProofRefused
from tessera.approvals.service import ApprovalService, LinkView, hash_token, reason_text
from tessera.incidents import AlertError, Incidents

from .body import read_body

__all__ = ["page_routes"]

UI = Path(__file__).resolve().parent.parent / "ui"
CSRF_COOKIE = "tessera_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_STATIC = {"approve.js": "text/javascript", "style.css": "text/css"}
_FORM_LIMIT = 64 * 1024


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_LABELS = {
    "acknowledge": "Acknowledge: this is expected",
    "suspend": "Suspend the client",
    "resume": "Resume (un-suspend) the client",
    "revoke": "Revoke its tokens and quarantine it",
}


def page_routes(
    service: ApprovalService,
    *,
    prefix: str,
    csrf_key: bytes,
    secure_cookies: bool,
    incidents: Incidents | None = None,
) -> list[Route]:
    env = Environment(
        loader=FileSystemLoader(UI / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    env.filters["when"] = _when
    origin = service.config.origin

    def render(name: str, status: int = 200, cookie: str | None = None, **ctx: Any) -> HTMLResponse:
        body = env.get_template(name).render(static=prefix + "/ui/static", **ctx)
        response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
        if cookie is not None:
            response.set_cookie(
                CSRF_COOKIE, cookie, httponly=True, samesite="strict", secure=secure_cookies, path=prefix + "/"
            )
        return response

    def csrf_for(cookie: str, token: str) -> str:
        return hmac.new(csrf_key, f"{cookie}|{hash_token(token)}".encode(), hashlib.sha256).hexdigest()

    def session(request: Request) -> tuple[str, bool]:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if len(cookie) == 43:
            return cookie, False
        return secrets.token_urlsafe(32), True

    def check_csrf(request: Request, token: str, sent: str | None) -> None:
        # Fetch metadata and Origin: a cross-site POST is refused before anything is read.
        # Under Referrer-Policy no-referrer a browser sends "Origin: null" on its own same-origin form
        # posts (Fetch §3.2.5), so "null" is not proof of a foreign site; the CSRF token decides then.
        seen = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site")
        if (seen not in (None, "null") and seen != origin) or (
            site is not None and site not in ("same-origin", "none")
        ):
            raise LinkUnusable("csrf", "This form was sent from another site; refused.")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not sent or not hmac.compare_digest(sent, csrf_for(cookie, token)):
            raise LinkUnusable("csrf", "This form expired or was not sent from this page; reload the page.")

    async def form(request: Request) -> dict[str, str]:
        from urllib.parse import parse_qsl

        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await read_body(request, _FORM_LIMIT)
        if ctype != "application/x-www-form-urlencoded":
            raise LinkUnusable("bad_form", "Unexpected form encoding.")
        out: dict[str, str] = {}
        for k, v in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            if k in out:
                raise LinkUnusable("bad_form", f"The field {k} was sent twice.")
            out[k] = v
        return out

    def gone(e: LinkUnusable, what: str = "approval") -> HTMLResponse:
        status = 404 if e.reason == "unknown" else 403 if e.reason in ("csrf", "tampered", "bad_form") else 410
        return render("gone.html", status, what=what, reason=e.reason, message=e.description)

    def guarded(
        fn: Callable[[Request, str], Awaitable[Response]], what: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            token = request.path_params["token"]
            if not 20 <= len(token) <= 128:
                return gone(LinkUnusable("unknown", "This link is not valid."), what)
            try:
                return await fn(request, token)
            except LinkUnusable as e:
                return gone(e, what)

        return wrapped

    # -- approval ----------------------------------------------------------------------------------------
    def approval_page(view: LinkView, token: str, cookie: str, fresh: bool, error: str | None = None) -> HTMLResponse:
        rec = view.request
        tx = rec.tx
        return render(
            "approve.html",
            403 if error else 200,
            cookie if fresh else None,
            tx=tx,
            request=rec,
            person=view.person,
            check_code=view.check_code,
            details=[json.dumps(d, indent=2, sort_keys=True) for d in tx.authorization_details if not _tool_call(d)],
            tool_calls=[_tool_call_view(d) for d in tx.authorization_details if _tool_call(d)],
            kinds=view.kinds,
            ways=view.ways,
            assurance=rec.policy.assurance,
            attempts_left=view.attempts_left,
            csrf=csrf_for(cookie, token),
            action=f"{prefix}/approve/{token}",
            error=error,
        )

    async def approve_get(request: Request, token: str) -> Response:
        view = await run_in_threadpool(service.open_link, token)
        if view.reason is not None:
            return gone(LinkUnusable(view.reason, reason_text(view.reason)))
        cookie, fresh = session(request)
        return approval_page(view, token, cookie, fresh)

    async def approve_options(request: Request, token: str) -> Response:
        check_csrf(request, token, request.headers.get("x-csrf-token"))
        body = await read_body(request, _FORM_LIMIT)
        try:
            decision = json.loads(body or b"{}").get("decision")
            options = await run_in_threadpool(service.passkey_options, token, str(decision))
        except (ValueError, AttributeError):
            return JSONResponse({"error": "invalid_request"}, 400, headers=PAGE_HEADERS)
        except ApprovalError as e:
            return JSONResponse({"error": e.code, "error_description": e.description}, e.status, headers=PAGE_HEADERS)
        return JSONResponse(options, headers=PAGE_HEADERS)

    async def approve_post(request: Request, token: str) -> Response:
        fields = await form(request)
        check_csrf(request, token, fields.get("csrf"))
        decision = fields.get("decision", "")
        if not fields.get("tx_hash"):
            # The page always sends the hash of the transaction it showed; a decision without it is
            # not bound to what the person saw (a TOTP code carries no binding of its own).
            raise LinkUnusable("tampered", "The form did not say which transaction it showed; refused.")
        try:
            result = await run_in_threadpool(
                lambda: service.decide(
                    token,
                    decision,
                    credential=fields.get("credential") or None,
                    code=fields.get("code") or None,
                    shown_tx_hash=fields["tx_hash"],
                )
            )
        except ProofRefused as e:
            view = await run_in_threadpool(service.open_link, token)
            if view.reason is not None:
                return gone(LinkUnusable(view.reason, e.description + " " + reason_text(view.reason)))
            cookie, fresh = session(request)
            return approval_page(view, token, cookie, fresh, error=e.description)
        except LinkUnusable:
            raise
        except ApprovalError as e:
            return render("gone.html", e.status, what="approval", reason=e.code, message=e.description)
        return render("decided.html", decision=decision, result=result)

    # -- alerts (tessera.incidents): the answer becomes an approval for this person alone ------------------
    async def alert_get(request: Request, token: str) -> Response:
        assert incidents is not None
        alert, _person = await run_in_threadpool(incidents.open_link, token)
        cookie, fresh = session(request)
        return render(
            "alert.html",
            200,
            cookie if fresh else None,
            alert=alert,
            labels=_LABELS,
            csrf=csrf_for(cookie, token),
            action=f"{prefix}/alert/{token}",
        )

    async def alert_post(request: Request, token: str) -> Response:
        assert incidents is not None
        fields = await form(request)
        check_csrf(request, token, fields.get("csrf"))
        try:
            url = await run_in_threadpool(incidents.start_response, token, fields.get("response", ""))
        except AlertError as e:
            return render("gone.html", 409, what="alert", reason="not_now", message=str(e))
        except LinkUnusable:
            raise
        except ApprovalError as e:
            return render("gone.html", e.status, what="alert", reason=e.code, message=e.description)
        return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)

    # -- enrolment ---------------------------------------------------------------------------------------
    def enrol_page(token: str, cookie: str, fresh: bool, error: str | None = None, **extra: Any) -> HTMLResponse:
        person, auths, expires = service.open_enrolment(token)
        return render(
            "enrol.html",
            403 if error else 200,
            cookie if fresh else None,
            person=person,
            authenticators=auths,
            expires=expires,
            csrf=csrf_for(cookie, token),
            action=f"{prefix}/enrol/{token}",
            error=error,
            **extra,
        )

    async def enrol_get(request: Request, token: str) -> Response:
        cookie, fresh = session(request)
        return await run_in_threadpool(enrol_page, token, cookie, fresh)

    async def enrol_options(request: Request, token: str) -> Response:
        check_csrf(request, token, request.headers.get("x-csrf-token"))
        try:
            options = await run_in_threadpool(service.passkey_registration_options, token)
        except ApprovalError as e:
            return JSONResponse({"error": e.code, "error_description": e.description}, e.status, headers=PAGE_HEADERS)
        return JSONResponse(options, headers=PAGE_HEADERS)

    async def enrol_post(request: Request, token: str) -> Response:
        fields = await form(request)
        check_csrf(request, token, fields.get("csrf"))
        step = fields.get("step", "")
        cookie, fresh = session(request)
        try:
            if step == "totp-start":
                secret, uri = await run_in_threadpool(service.start_totp_enrolment, token)
                return await run_in_threadpool(
                    lambda: enrol_page(token, cookie, fresh, totp_secret=secret, totp_uri=uri)
                )
            if step == "totp":
                auth = await run_in_threadpool(
                    service.finish_totp_enrolment, token, fields.get("code", ""), fields.get("label", "")
                )
            elif step == "passkey":
                auth = await run_in_threadpool(
                    service.finish_passkey_enrolment, token, fields.get("credential", ""), fields.get("label", "")
                )
            else:
                raise LinkUnusable("bad_form", "Unknown enrolment step.")
        except ProofRefused as e:
            message = e.description
            return await run_in_threadpool(lambda: enrol_page(token, cookie, fresh, error=message))
        except LinkUnusable:
            raise
        except ApprovalError as e:
            return render("gone.html", e.status, what="enrolment", reason=e.code, message=e.description)
        return render("enrolled.html", authenticator=auth)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response(status_code=404)
        return Response(
            (UI / "static" / name).read_bytes(),
            media_type=_STATIC[name],
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    alert_routes = (
        [
            Route(prefix + "/alert/{token}", guarded(alert_get, "alert"), methods=["GET"]),
            Route(prefix + "/alert/{token}", guarded(alert_post, "alert"), methods=["POST"]),
        ]
        if incidents is not None
        else []
    )
    return [
        *alert_routes,
        Route(prefix + "/approve/{token}", guarded(approve_get, "approval"), methods=["GET"]),
        Route(prefix + "/approve/{token}", guarded(approve_post, "approval"), methods=["POST"]),
        Route(prefix + "/approve/{token}/options", guarded(approve_options, "approval"), methods=["POST"]),
        Route(prefix + "/enrol/{token}", guarded(enrol_get, "enrolment"), methods=["GET"]),
        Route(prefix + "/enrol/{token}", guarded(enrol_post, "enrolment"), methods=["POST"]),
        Route(prefix + "/enrol/{token}/options", guarded(enrol_options, "enrolment"), methods=["POST"]),
        Route(prefix + "/ui/static/{name}", static, methods=["GET"]),
    ]


def _tool_call(d: Any) -> bool:
    return isinstance(d, dict) and d.get("type") == "tool_invocation"


def _tool_call_view(d: Any) -> dict[str, Any]:
    """A ``tool_invocation`` entry (tessera.verify.tool_calls) as the person reads it: the server, the
    tool, each argument as JSON, and the hash alone when the agent did not show the arguments."""
    arguments = d.get("arguments")
    locations = d.get("locations") or ["?"]
    return {
        "server": str(locations[0]),
        "tool": str(d.get("tool")),
        "arguments": None
        if not isinstance(arguments, dict)
        else [(str(k), json.dumps(v, ensure_ascii=False, sort_keys=True)) for k, v in sorted(arguments.items())],
        "arguments_hash": str(d.get("arguments_hash")),
        "expires_at": d.get("expires_at"),
    }
