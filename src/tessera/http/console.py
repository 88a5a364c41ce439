"""The admin console: server-rendered pages under ``/console`` for the people who run Tessera.

Sign-in is with the admin token (a form post, never echoed back) or with a passkey of a person in
the group named by ``console_admin_group`` (W3C WebAuthn Level 3 §7.2, user verification required).
Either way the browser then holds one signed session cookie: ``HttpOnly``, ``SameSite=Strict``,
``Secure`` under https, a fixed lifetime (``console_session_lifetime``) and a nonce that logout
records as ended, so a copy of the cookie stops working everywhere at logout.

Every page runs under the same strict Content Security Policy as the approval pages (no inline script
or style, forms post only here, not framable, no referrer). Every POST carries a CSRF token bound to the
session (or, before sign-in, to a per-browser cookie) and a cross-site ``Origin`` or
``Sec-Fetch-Site`` is refused before anything is read.

Reads and actions go through the admin API's own endpoint functions (``tessera.http.admin``), called in
process with the console user as the actor, so an action taken here is validated, applied and audited
exactly as the same call to ``/admin`` would be. Charts are inline SVG computed on the server from the
audit log and the store over a time window.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import inspect
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import sqlalchemy as sa
import yaml
from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tessera.approvals import webauthn as wa
from tessera.approvals.errors import ApprovalError
from tessera.approvals.records import ApprovalTx
from tessera.audit import AuditEvent, verify_chain
from tessera.flow_runtime import flow_by_version, list_versions, published_flows
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.errors import OAuthError
from tessera.store.sql import repo
from tessera.store.sql.tables import assertion_jtis, audit_log, ciba_requests, issued_tokens
from tessera.workflows.replay import replay
from tessera.workflows.versions import diff

from .body import read_body
from .pages import PAGE_HEADERS

if TYPE_CHECKING:
    from tessera.approvals.service import ApprovalService
    from tessera.federation.validator import IssuerRegistry
    from tessera.runtime import Runtime

__all__ = ["console_routes"]

UI = Path(__file__).resolve().parent.parent / "ui"
SESSION_COOKIE = "tessera_console"
LOGIN_COOKIE = "tessera_console_login"
CHALLENGE_COOKIE = "tessera_console_challenge"
#: the replay table's "client" under which used passkey challenges and ended sessions are recorded
_USED_CHALLENGE = "tessera-console:challenge"
_ENDED_SESSION = "tessera-console:logout"
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
_FORM_LIMIT = 64 * 1024
#: failed sign-ins allowed per client address (and in all) in a minute before sign-in is refused
_FAILURES_PER_ADDRESS = 10
_FAILURES_IN_ALL = 100
_CHALLENGE_TTL = 300
_WINDOWS = {"1h": (3600, 12), "24h": (86400, 24), "7d": (7 * 86400, 28)}

PAGES = [
    ("overview", "Overview", ""),
    ("clients", "Clients", "/clients"),
    ("issuers", "Trusted issuers", "/issuers"),
    ("people", "People", "/people"),
    ("approvals", "Approvals & CIBA", "/approvals"),
    ("flows", "Flows", "/flows"),
    ("revocations", "Revocations", "/revocations"),
    ("audit", "Audit log", "/audit"),
    ("outbox", "Outbox", "/outbox"),
]

_DONE = {
    "quarantined": "The client is quarantined: no new token until its quarantine is lifted.",
    "lift-requested": "An approval request to lift the quarantine was sent to the approvers.",
    "retried": "The message is queued for delivery again.",
    "cancelled": "The approval request was cancelled.",
    "unlocked": "The person is unlocked.",
}


class Refused(Exception):
    """A console request refused before it changed anything: rendered as an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Session:
    actor: str
    method: str
    issued: int
    expires: int
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_ms(ts: int | None) -> str:
    return "—" if ts is None else _when(ts / 1000)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 90:
        return f"{s} s ago"
    if s < 5400:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def _same(sent: str, expected: str) -> bool:
    """Constant-time comparison of a value from the request (any characters) with an expected one."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode())


def _endpoint(api: FastAPI, method: str, path: str) -> Callable[..., Any]:
    """The admin API's own function for ``method path`` (so an action here is the same code path)."""
    for route in api.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            return route.endpoint
    raise LookupError(f"the admin API has no {method} {path}")


async def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    return await run_in_threadpool(lambda: fn(**kwargs))


# -- charts (inline SVG, no script) ---------------------------------------------------------------------
def _esc(text: str) -> str:
    return str(Markup.escape(text))


def bar_chart(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], *, unit: str = ""
) -> Markup:
    """Grouped bars: ``series`` is (name, css class, values per label). SVG 1.1, CSS classes for colour."""
    width, height, left, bottom, top = 640, 170, 40, 28, 12
    n = max(1, len(labels))
    peak = max([1.0, *(v for _, _, vals in series for v in vals)])
    scale = 10 ** math.floor(math.log10(peak))
    peak = math.ceil(peak / scale) * scale
    plot_h = height - bottom - top
    slot = (width - left - 16) / n
    bar = max(1.0, slot / (len(series) + 1))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_esc(title)}</title>',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}"/>',
        f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:g}{_esc(unit)}</text>',
        f'<text class="tick" x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, label in enumerate(labels):
        x0 = left + i * slot
        for j, (name, css, vals) in enumerate(series):
            v = vals[i] if i < len(vals) else 0
            h = plot_h * v / peak
            parts.append(
                f'<rect class="{css}" x="{x0 + bar * (j + 0.5):.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"><title>{_esc(label)}: {v:g} {_esc(name)}</title></rect>'
            )
        if n <= 12 or i % max(1, n // 8) == 0:
            parts.append(
                f'<text class="tick" x="{x0 + slot / 2:.1f}" y="{height - 10}" '
                f'text-anchor="middle">{_esc(label)}</text>'
            )
    parts.append("</svg>")
    legend = "".join(f'<span class="key {css}">{_esc(name)}</span>' for name, css, _ in series)
    figure = f'<figure><figcaption>{_esc(title)}</figcaption>{"".join(parts)}<p class="legend">{legend}</p></figure>'
    return Markup(figure)  # noqa: S704 (every text in it went through _esc; the rest is our own markup)


def line_chart(title: str, labels: Sequence[str], values: Sequence[float], css: str = "s1") -> Markup:
    width, height, left, bottom, top = 640, 170, 40, 28, 12
    n = max(2, len(values))
    peak = max([1.0, *values])
    plot_h = height - bottom - top
    step = (width - left - 24) / (n - 1)
    points = " ".join(f"{left + i * step:.1f},{top + plot_h - plot_h * v / peak:.1f}" for i, v in enumerate(values))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_esc(title)}</title>',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}"/>',
        f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:g}</text>',
        f'<text class="tick" x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
        f'<polyline class="line {css}" points="{points}"/>',
    ]
    for i, label in enumerate(labels):
        if len(labels) <= 12 or i % max(1, len(labels) // 8) == 0:
            x = left + i * step
            parts.append(f'<text class="tick" x="{x:.1f}" y="{height - 10}" text-anchor="middle">{_esc(label)}</text>')
    for i, v in enumerate(values):
        x, y = left + i * step, top + plot_h - plot_h * v / peak
        parts.append(
            f'<circle class="dot {css}" cx="{x:.1f}" cy="{y:.1f}" r="2.5" data-value="{v:g}">'
            f"<title>{_esc(labels[i])}: {v:g}</title></circle>"
        )
    parts.append("</svg>")
    figure = f"<figure><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"
    return Markup(figure)  # noqa: S704 (every text in it went through _esc; the rest is our own markup)


def _bucket_labels(start: int, size: int, count: int) -> list[str]:
    fmt = "%H:%M" if size < 86400 else "%m-%d"
    return [datetime.fromtimestamp(start + i * size, UTC).strftime(fmt) for i in range(count)]


def _percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


# -- the routes --------------------------------------------------------------------------------------
def console_routes(
    *,
    prefix: str,
    runtime: Runtime,
    admin_api: FastAPI,
    approvals: ApprovalService,
    federation: IssuerRegistry,
    csrf_key: bytes,
    secure_cookies: bool,
) -> list[Route]:
    settings, store = runtime.settings, runtime.store
    base = prefix + "/console"
    origin = approvals.config.origin
    # Bound to the admin token too: changing TESSERA_ADMIN_TOKEN ends every console session.
    token_digest = hashlib.sha256((settings.admin_token or "").encode()).hexdigest()
    session_key = hmac.new(csrf_key, f"tessera-console-session|{token_digest}".encode(), hashlib.sha256).digest()
    env = Environment(
        loader=FileSystemLoader(UI / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    env.filters["when"] = _when
    env.filters["when_ms"] = _when_ms
    env.filters["ago"] = _ago
    env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)
    api = {
        name: _endpoint(admin_api, method, path)
        for name, method, path in (
            ("clients", "GET", "/clients"),
            ("issuers", "GET", "/issuers"),
            ("keys", "GET", "/keys"),
            ("people", "GET", "/people"),
            ("approvals", "GET", "/approvals"),
            ("outbox", "GET", "/outbox"),
            ("audit_verify", "GET", "/audit/verify"),
            ("quarantine", "POST", "/clients/{client_id}/quarantine"),
            ("lift", "POST", "/clients/{client_id}/quarantine/lift"),
            ("retry", "POST", "/outbox/{message_id}/retry"),
            ("cancel", "POST", "/approvals/{request_id}/cancel"),
            ("unlock", "POST", "/people/{person_id}/unlock"),
        )
    }

    def mac(label: str, value: str) -> str:
        return hmac.new(session_key, f"{label}|{value}".encode(), hashlib.sha256).hexdigest()

    # -- sessions ---------------------------------------------------------------------------------------
    def make_session(actor: str, method: str) -> tuple[str, Session]:
        now = int(runtime.clock.now())
        s = Session(actor, method, now, now + settings.console_session_lifetime, secrets.token_urlsafe(16))
        body = _b64(json.dumps({"a": s.actor, "m": s.method, "i": s.issued, "e": s.expires, "n": s.nonce}).encode())
        return f"{body}.{mac('session', body)}", s

    def ended(nonce: str) -> bool:
        q = sa.select(assertion_jtis.c.jti).where(
            assertion_jtis.c.client_id == _ENDED_SESSION, assertion_jtis.c.jti == nonce
        )
        return store.read(lambda c: c.execute(q).first()) is not None

    def read_session(request: Request) -> Session | None:
        raw = request.cookies.get(SESSION_COOKIE, "")
        body, _, sig = raw.partition(".")
        if not body or len(raw) > 1024 or not _same(sig, mac("session", body)):
            return None
        try:
            d = json.loads(_unb64(body))
            s = Session(str(d["a"]), str(d["m"]), int(d["i"]), int(d["e"]), str(d["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires <= runtime.clock.now() or ended(s.nonce):
            return None
        if s.method == "passkey" and not still_admin(s.actor.removeprefix("console:")):
            return None
        return s

    def still_admin(person_id: str) -> bool:
        """A passkey session lasts only while its person may sign in (in the group, not disabled or locked)."""
        try:
            rec, _ = approvals.get_person(person_id)
        except ApprovalError:
            return False
        p = rec.person
        group = settings.console_admin_group
        return bool(group) and group in p.groups and not p.disabled and not p.agent and rec.locked_at is None

    def login_cookie(request: Request) -> tuple[str, bool]:
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if len(cookie) == 43:
            return cookie, False
        return secrets.token_urlsafe(32), True

    def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
            path=base,
        )

    # -- rendering --------------------------------------------------------------------------------------
    def render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = env.get_template(name).render(
            static=base + "/static", base=base, pages=PAGES, issuer=settings.issuer, **ctx
        )
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    def page(name: str, s: Session, current: str, request: Request, **ctx: Any) -> HTMLResponse:
        done = request.query_params.get("done", "")
        return render(
            f"console/{name}.html",
            session=s,
            current=current,
            csrf=mac("csrf", s.nonce),
            done=_DONE.get(done),
            error=ctx.pop("error", None),
            **ctx,
        )

    def login_page(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
        cookie, fresh = login_cookie(request)
        response = render(
            "console/login.html",
            status,
            csrf=mac("login", cookie),
            error=error,
            passkeys=bool(settings.console_admin_group),
            token_login=bool(settings.admin_token),
        )
        if fresh:
            set_cookie(response, LOGIN_COOKIE, cookie)
        return response

    def refused(status: int, message: str) -> HTMLResponse:
        return render("console/refused.html", status, message=message, session=None, current="")

    # -- request checks ---------------------------------------------------------------------------------
    def check_origin(request: Request) -> None:
        # As on the approval pages: "Origin: null" is what Chromium sends on its own same-origin form posts
        # under Referrer-Policy no-referrer (Fetch §3.2.5), so only a named foreign origin is refused here.
        seen = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site")
        if (seen not in (None, "null") and seen != origin) or (
            site is not None and site not in ("same-origin", "none")
        ):
            raise Refused(403, "This form was sent from another site; refused.")

    async def form(request: Request) -> dict[str, str]:
        check_origin(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await read_body(request, _FORM_LIMIT)
        if ctype != "application/x-www-form-urlencoded":
            raise Refused(400, "Unexpected form encoding.")
        out: dict[str, str] = {}
        for k, v in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            if k in out:
                raise Refused(400, f"The field {k} was sent twice.")
            out[k] = v
        return out

    def check_csrf(expected: str, sent: str | None) -> None:
        if not sent or not _same(sent, expected):
            raise Refused(403, "This form expired or was not sent from this console; reload the page.")

    def address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def limited(where: str) -> bool:
        since = runtime.clock.now() * 1000 - 60_000

        def work(tx: ApprovalTx) -> bool:
            return (
                tx.rate_count(f"console-login:{where}", int(since)) >= _FAILURES_PER_ADDRESS
                or tx.rate_count("console-login:*", int(since)) >= _FAILURES_IN_ALL
            )

        return bool(approvals.store.read(work))

    def failed_login(where: str, method: str, reason: str, who: str | None = None) -> None:
        now_ms = int(runtime.clock.now() * 1000)

        def work(tx: ApprovalTx) -> None:
            tx.rate_add([f"console-login:{where}", "console-login:*"], now_ms)
            tx.audit(
                AuditEvent(
                    "console.login_failed",
                    actor=who,
                    subject="console",
                    data={"method": method, "reason": reason, "address": where[:64]},
                )
            )

        approvals.store.run(work)

    def logged_in(s: Session, where: str, cookie: str) -> Response:
        approvals.store.run(
            lambda tx: tx.audit(
                AuditEvent(
                    "console.login",
                    actor=s.actor,
                    subject="console",
                    data={"method": s.method, "address": where[:64], "expires": s.expires},
                )
            )
        )
        response = RedirectResponse(base, status_code=303, headers=PAGE_HEADERS)
        set_cookie(response, SESSION_COOKIE, cookie, settings.console_session_lifetime)
        response.delete_cookie(CHALLENGE_COOKIE, path=base, secure=secure_cookies, httponly=True, samesite="strict")
        return response

    # -- sign-in ----------------------------------------------------------------------------------------
    async def login_get(request: Request) -> Response:
        if await run_in_threadpool(read_session, request) is not None:
            return RedirectResponse(base, status_code=303, headers=PAGE_HEADERS)
        return login_page(request)

    async def login_post(request: Request) -> Response:
        fields = await form(request)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        check_csrf(mac("login", cookie), fields.get("csrf") if cookie else None)
        where = address(request)
        if await run_in_threadpool(limited, where):
            await run_in_threadpool(failed_login, where, "token", "limited")
            return login_page(request, 429, "Too many failed sign-ins; wait a minute and try again.")
        token = fields.get("token", "")
        good = bool(settings.admin_token) and _same(token, settings.admin_token or "\0")
        if not good:
            await run_in_threadpool(failed_login, where, "token", "wrong_token")
            # The token sent is never shown back (nor logged): only that it was refused.
            return login_page(request, 401, "That is not the admin token.")
        value, s = make_session("console:admin-token", "token")
        return await run_in_threadpool(logged_in, s, where, value)

    def admins() -> list[tuple[str, list[Any]]]:
        """(person id, their passkey records) of every person who may sign in to the console."""
        group = settings.console_admin_group
        if not group:
            return []
        out = []
        for rec, auths in approvals.list_people():
            p = rec.person
            if group in p.groups and not p.disabled and not p.agent and rec.locked_at is None:
                out.append((p.person_id, [a for a in auths if a.kind == "passkey"]))
        return out

    async def passkey_options(request: Request) -> Response:
        check_origin(request)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        try:
            check_csrf(mac("login", cookie), request.headers.get("x-csrf-token") if cookie else None)
        except Refused as e:
            return JSONResponse({"error": "csrf", "error_description": e.message}, 403, headers=PAGE_HEADERS)
        if not settings.console_admin_group:
            return JSONResponse(
                {"error": "unavailable", "error_description": "passkey sign-in is not configured"},
                404,
                headers=PAGE_HEADERS,
            )
        await read_body(request, _FORM_LIMIT)
        challenge = secrets.token_bytes(32)
        # Discoverable credentials: the authenticator offers the person's passkey for this site; who it
        # belongs to is learned from the credential itself (nothing here tells a stranger who is an admin).
        options = wa.authentication_options(
            rp_id=approvals.config.rp_id, challenge=challenge, allow=[], user_verification="required"
        )
        expires = int(runtime.clock.now()) + _CHALLENGE_TTL
        value = f"{_b64(challenge)}.{expires}"
        response = JSONResponse(options, headers=PAGE_HEADERS)
        set_cookie(response, CHALLENGE_COOKIE, f"{value}.{mac('challenge|' + cookie, value)}", _CHALLENGE_TTL)
        return response

    def verify_passkey(credential: str, challenge: bytes) -> Session | str:
        """The session for a verified admin passkey assertion, or the reason it was refused."""
        try:
            cred_id = str(json.loads(credential).get("id", ""))
        except (ValueError, AttributeError):
            return "malformed"
        holder = next(
            ((pid, auths) for pid, auths in admins() if any(a.public["credential_id"] == cred_id for a in auths)),
            None,
        )
        if holder is None:
            return "not_an_admin"
        pid, auths = holder
        try:
            got = wa.verify_assertion(
                credential,
                challenge=challenge,
                rp_id=approvals.config.rp_id,
                origin=origin,
                passkeys=[wa.Passkey.from_json(a.public) for a in auths],
                require_user_verification=True,
            )
        except wa.ProofFailed as e:
            return e.reason
        used = AssertionUse(_USED_CHALLENGE, hashlib.sha256(challenge).hexdigest(), int(runtime.clock.now()) + 600)
        if not store.write(lambda c: repo.consume_assertion(c, used), []):
            return "replayed"
        a = next(a for a in auths if a.public["credential_id"] == got.credential_id)
        now = int(runtime.clock.now())
        approvals.store.run(
            lambda tx: tx.use_authenticator(a.authenticator_id, {**a.public, "sign_count": got.new_sign_count}, now)
        )
        return make_session(f"console:{pid}", "passkey")[1]

    async def passkey_post(request: Request) -> Response:
        fields = await form(request)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        check_csrf(mac("login", cookie), fields.get("csrf") if cookie else None)
        where = address(request)
        if await run_in_threadpool(limited, where):
            await run_in_threadpool(failed_login, where, "passkey", "limited")
            return login_page(request, 429, "Too many failed sign-ins; wait a minute and try again.")
        raw = request.cookies.get(CHALLENGE_COOKIE, "")
        value, _, sig = raw.rpartition(".")
        chal, _, exp = value.partition(".")
        if (
            not value
            or not _same(sig, mac("challenge|" + cookie, value))
            or not exp.isdigit()
            or int(exp) <= runtime.clock.now()
        ):
            await run_in_threadpool(failed_login, where, "passkey", "no_challenge")
            return login_page(request, 403, "The passkey sign-in expired; try again.")
        result = await run_in_threadpool(verify_passkey, fields.get("credential", ""), _unb64(chal))
        if isinstance(result, str):
            await run_in_threadpool(failed_login, where, "passkey", result)
            message = (
                "This passkey does not belong to a console administrator."
                if result == "not_an_admin"
                else "The passkey could not be verified."
            )
            return login_page(request, 403, message)
        s = result
        body = _b64(json.dumps({"a": s.actor, "m": s.method, "i": s.issued, "e": s.expires, "n": s.nonce}).encode())
        return await run_in_threadpool(logged_in, s, where, f"{body}.{mac('session', body)}")

    async def logout(request: Request) -> Response:
        fields = await form(request)
        s = await run_in_threadpool(read_session, request)
        if s is not None:
            check_csrf(mac("csrf", s.nonce), fields.get("csrf"))
            ended_use = AssertionUse(_ENDED_SESSION, s.nonce, s.expires + 60)
            event = AuditEvent("console.logout", actor=s.actor, subject="console", data={"method": s.method})
            await run_in_threadpool(store.write, lambda c: repo.consume_assertion(c, ended_use), [event])
        response = RedirectResponse(base + "/login", status_code=303, headers=PAGE_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path=base, secure=secure_cookies, httponly=True, samesite="strict")
        return response

    # -- pages --------------------------------------------------------------------------------------------
    def signed_in(fn: Callable[[Request, Session], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                s = await run_in_threadpool(read_session, request)
                if s is None:
                    if request.method != "GET":
                        raise Refused(403, "Your console session ended; sign in again.")
                    return RedirectResponse(base + "/login", status_code=303, headers=PAGE_HEADERS)
                return await fn(request, s)
            except Refused as e:
                return refused(e.status, e.message)

        return wrapped

    def guarded_public(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except Refused as e:
                return refused(e.status, e.message)

        return wrapped

    def window_of(request: Request) -> tuple[str, int, int, int]:
        name = request.query_params.get("window", "24h")
        if name not in _WINDOWS:
            name = "24h"
        span, buckets = _WINDOWS[name]
        size = span // buckets
        now = int(runtime.clock.now())
        start = (now // size + 1) * size - span
        return name, start, size, buckets

    def event_counts(events: Sequence[str], start: int, size: int, buckets: int) -> dict[str, list[float]]:
        # Integers written into the SQL (never request text): with bound parameters PostgreSQL would not
        # see the GROUP BY expression as the selected one.
        bucket: sa.ColumnElement[int] = sa.literal_column(
            f"CAST((ts - {int(start) * 1000}) / {int(size) * 1000} AS INTEGER)"
        )
        q = (
            sa.select(audit_log.c.event, bucket, sa.func.count())
            .where(audit_log.c.event.in_(events), audit_log.c.ts >= start * 1000)
            .group_by(audit_log.c.event, bucket)
        )
        out = {e: [0.0] * buckets for e in events}
        for event, b, n in store.read(lambda c: c.execute(q).all()):
            if 0 <= int(b) < buckets:
                out[event][int(b)] += int(n)
        return out

    def charts(start: int, size: int, buckets: int, requests: list[dict[str, Any]]) -> dict[str, Any]:
        labels = _bucket_labels(start, size, buckets)
        counts = event_counts(["token.issued", "token.refused", "flow.decision"], start, size, buckets)
        issuance = bar_chart(
            "Tokens issued and refused",
            labels,
            [("issued", "s1", counts["token.issued"]), ("refused", "s2", counts["token.refused"])],
        )
        latencies = [
            r["decided_at"] - r["created_at"]
            for r in requests
            if r["decided_at"] is not None and r["created_at"] >= start and r["status"] in ("approved", "denied")
        ]
        edges = [(10, "<10 s"), (60, "<1 min"), (300, "<5 min"), (900, "<15 min"), (3600, "<1 h"), (math.inf, "longer")]
        hist = [0.0] * len(edges)
        for v in latencies:
            hist[next(i for i, (edge, _) in enumerate(edges) if v < edge)] += 1
        latency = bar_chart("Approval latency (decided requests)", [n for _, n in edges], [("requests", "s3", hist)])
        pending = []
        now = int(runtime.clock.now())
        for i in range(buckets):
            t = min(start + (i + 1) * size, now)  # the current bucket: pending now
            pending.append(
                float(
                    sum(
                        1
                        for r in requests
                        if r["created_at"] <= t and (r["decided_at"] or min(r["expires_at"], now + 1)) > t
                    )
                )
            )
        return {
            "issuance": issuance,
            "latency": latency,
            "pending": line_chart("Pending approval requests", labels, pending),
            "issued_total": int(sum(counts["token.issued"])),
            "refused_total": int(sum(counts["token.refused"])),
            "latency_p50": _percentile(latencies, 0.5),
            "latency_p90": _percentile(latencies, 0.9),
            "decided": len(latencies),
        }

    async def overview(request: Request, s: Session) -> Response:
        name, start, size, buckets = window_of(request)
        clients = await _call(api["clients"], _=s.actor, after=None, limit=1000)
        requests = await _call(api["approvals"], _=s.actor, status=None, limit=1000)
        box = await _call(api["outbox"], _=s.actor, status="dead", ref=None, limit=1)
        people = await _call(api["people"], _=s.actor)
        head = await run_in_threadpool(lambda: store.read(repo.audit_head_row))
        pictures = await run_in_threadpool(charts, start, size, buckets, requests)
        return page(
            "overview",
            s,
            "overview",
            request,
            window=name,
            windows=list(_WINDOWS),
            charts=pictures,
            stats={
                "clients": len(clients),
                "quarantined": sum(1 for c in clients if c.get("quarantined")),
                "people": len(people),
                "pending": sum(1 for r in requests if r["status"] == "pending"),
                "outbox": box["counts"],
                "audit_head": head[0],
                "issuers": len(federation.issuers),
            },
        )

    async def clients_page(request: Request, s: Session) -> Response:
        clients = await _call(api["clients"], _=s.actor, after=None, limit=1000)
        rows = []
        for c in clients:
            method = c.get("token_endpoint_auth_method", "")
            creds = []
            if method in ("client_secret_basic", "client_secret_post"):
                creds.append(f"client secret (hash stored; last set {_when(c.get('updated_at'))})")
            for k in (c.get("jwks") or {}).get("keys", []):
                creds.append(
                    f"public key {k.get('kid', '(no kid)')} · {k.get('kty')} {k.get('crv', '')} {k.get('alg', '')}"
                )
            if c.get("jwks_uri"):
                creds.append(f"keys at {c['jwks_uri']}")
            for key in ("workload", "federated_identity", "trusted_issuer"):
                if c.get(key):
                    creds.append(f"{key.replace('_', ' ')}: {json.dumps(c[key], sort_keys=True)[:200]}")
            rows.append({"client": c, "method": method, "credentials": creds, "quarantine": c.get("quarantined")})
        return page("clients", s, "clients", request, rows=rows)

    def key_cache(name: str) -> dict[str, Any] | None:
        """This process's key cache for a trusted issuer (the registry keeps one per issuer it has used)."""
        trust = federation.get(name)
        stores = getattr(federation, "_stores", {})
        cached = stores.get(name) if trust is not None else None
        keys = getattr(cached, "_keys", None) if cached is not None else None
        if keys is None:
            return None
        return {
            "fetched_at": keys.fetched_at,
            "refresh_after": keys.refresh_after,
            "count": len(keys.keys),
            "source": getattr(cached, "source", ""),
        }

    async def issuers_page(request: Request, s: Session) -> Response:
        stored = await _call(api["issuers"], _=s.actor)
        now = runtime.clock.now()
        rows = []
        for i in stored:
            cache = key_cache(i["name"])
            cfg = i["config"]
            rows.append(
                {
                    "issuer": i,
                    "url": cfg.get("issuer") or cfg.get("trust_domain", ""),
                    "keys_from": "pinned JWKS"
                    if cfg.get("jwks")
                    else "SPIFFE bundle"
                    if cfg.get("spiffe_bundle") or cfg.get("spiffe_bundle_uri")
                    else cfg.get("jwks_uri") or "discovery",
                    "cache": cache,
                    "age": None if cache is None else now - cache["fetched_at"],
                }
            )
        signing = await _call(api["keys"], _=s.actor)
        return page("issuers", s, "issuers", request, rows=rows, signing=signing)

    async def people_page(request: Request, s: Session) -> Response:
        people = await _call(api["people"], _=s.actor)
        return page("people", s, "people", request, people=people, admin_group=settings.console_admin_group or None)

    def ciba_rows() -> list[dict[str, Any]]:
        c = ciba_requests.c
        q = (
            sa.select(
                c.client_id, c.person_id, c.approval_id, c.mode, c.status, c.created_at, c.expires_at, c.redeemed_at
            )
            .order_by(c.created_at.desc())
            .limit(200)
        )
        return [dict(r._mapping) for r in store.read(lambda conn: conn.execute(q).all())]

    async def approvals_page(request: Request, s: Session) -> Response:
        status = request.query_params.get("status") or None
        if status not in (None, "pending", "approved", "denied", "expired", "cancelled"):
            status = None
        requests = await _call(api["approvals"], _=s.actor, status=status, limit=200)
        ciba = await run_in_threadpool(ciba_rows)
        return page(
            "approvals", s, "approvals", request, requests=requests, ciba=ciba, shown=status, now=runtime.clock.now()
        )

    def flows_view(replay_version: str | None) -> dict[str, Any]:
        versions = list_versions(store)
        in_force = published_flows(store)
        current = {f.id: f for f in in_force}
        for v in versions:
            live = current.get(v["flow"])
            v["in_force"] = live is not None and live.version == v["version"]
        diffs: list[dict[str, Any]] = []
        report = None
        if replay_version:
            candidate = flow_by_version(store, replay_version)
            if candidate is None:
                raise Refused(404, "No such flow version.")
            live = current.get(candidate.id)
            old = yaml.safe_dump(dict(live.document), sort_keys=False).splitlines() if live else []
            new = yaml.safe_dump(dict(candidate.document), sort_keys=False).splitlines()
            diffs = [
                {
                    "summary": diff(in_force, [candidate, *(f for f in in_force if f.id != candidate.id)]),
                    "lines": list(
                        difflib.unified_diff(
                            old,
                            new,
                            f"{candidate.id}@{live.version[:19] if live else 'none'} (in force)",
                            f"{candidate.id}@{candidate.version[:19]}",
                            lineterm="",
                        )
                    ),
                }
            ]

            def records(conn: sa.Connection) -> list[dict[str, Any]]:
                q = (
                    sa.select(audit_log.c.seq, audit_log.c.ts, audit_log.c.data)
                    .where(audit_log.c.event == "flow.decision")
                    .order_by(audit_log.c.seq.desc())
                    .limit(5000)
                )
                return [{"seq": r.seq, "ts": r.ts, "data": json.loads(r.data)} for r in conn.execute(q)]

            found = store.read(records)
            found.reverse()
            report = replay(found, [candidate, *(f for f in in_force if f.id != candidate.id)]).to_json()
        return {
            "versions": versions,
            "in_force": in_force,
            "diffs": diffs,
            "report": report,
            "replayed": replay_version,
        }

    async def flows_page(request: Request, s: Session) -> Response:
        version = request.query_params.get("version") or None
        if version is not None and len(version) > 100:
            raise Refused(400, "Not a flow version.")
        view = await run_in_threadpool(flows_view, version)
        return page("flows", s, "flows", request, **view)

    def revocations_view() -> dict[str, Any]:
        t = issued_tokens.c
        q = (
            sa.select(t.jti, t.client_id, t.sub, t.grant_type, t.iat, t.exp, t.revoked_at, t.status_list, t.status_idx)
            .where(t.revoked_at.is_not(None))
            .order_by(t.revoked_at.desc())
            .limit(200)
        )
        events = ("token.revoked", "key.revoked", "client.deleted", "approval.cancelled", "token.revocation_refused")
        a = audit_log.c
        eq = sa.select(audit_log).where(a.event.in_(events)).order_by(a.seq.desc()).limit(100)

        def work(conn: sa.Connection) -> dict[str, Any]:
            return {
                "tokens": [dict(r._mapping) for r in conn.execute(q)],
                "events": [repo._record(r) for r in conn.execute(eq)],
            }

        return store.read(work)

    async def revocations_page(request: Request, s: Session) -> Response:
        view = await run_in_threadpool(revocations_view)
        return page("revocations", s, "revocations", request, **view)

    #: the chain head this process verified last: later visits check only the records after it (and that
    #: it is still in place); ``?full=1``, and the first visit in each process, verify the whole chain.
    verified: dict[str, Any] = {"seq": 0, "hash": ""}

    def verify_since_last() -> dict[str, Any]:
        start = (int(verified["seq"]), str(verified["hash"]))

        def work(conn: sa.Connection) -> dict[str, Any]:
            head = repo.audit_head_row(conn)
            anchor = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == start[0])).scalar()
            if anchor != start[1]:
                return {
                    "ok": False,
                    "checked": 0,
                    "head": start[1],
                    "first_bad_seq": start[0],
                    "reason": f"record {start[0]}, verified before, was altered or removed",
                    "seq": start[0],
                }
            report = verify_chain(repo.iter_audit(conn, after=start[0], limit=head[0] - start[0]), head, after=start)
            return {**report.as_json(), "seq": head[0] if report.ok else start[0]}

        return dict(store.read(work))

    async def audit_page(request: Request, s: Session) -> Response:
        raw = request.query_params.get("before", "")
        before = int(raw) if raw.isdigit() and len(raw) < 19 else None
        event = request.query_params.get("event", "")[:64]
        a = audit_log.c
        q = sa.select(audit_log).order_by(a.seq.desc()).limit(100)
        if before is not None:
            q = q.where(a.seq < before)
        if event:
            q = q.where(a.event == event)
        records = await run_in_threadpool(lambda: store.read(lambda c: [repo._record(r) for r in c.execute(q)]))
        full = request.query_params.get("full") == "1" or verified["seq"] == 0
        since = None if full else int(verified["seq"])
        if full:
            report = await _call(api["audit_verify"], _=s.actor)
            chain = {**report, "seq": report["checked"]}
        else:
            chain = await run_in_threadpool(verify_since_last)
        if chain["ok"]:
            verified.update(seq=chain["seq"], hash=chain["head"])
        names = await run_in_threadpool(
            lambda: store.read(lambda c: [r[0] for r in c.execute(sa.select(a.event).distinct().order_by(a.event))])
        )
        return page(
            "audit",
            s,
            "audit",
            request,
            records=records,
            chain=chain,
            full=full,
            since=since,
            event=event,
            events=names,
            older=records[-1].seq if len(records) == 100 else None,
        )

    async def outbox_page(request: Request, s: Session) -> Response:
        status = request.query_params.get("status") or None
        if status not in (None, "pending", "delivered", "dead"):
            status = None
        box = await _call(api["outbox"], _=s.actor, status=status, ref=None, limit=200)
        return page("outbox", s, "outbox", request, counts=box["counts"], messages=box["messages"], shown=status)

    # -- actions: the admin API's code paths, with the console user as the actor --------------------------
    def action(
        fn: Callable[[Request, Session, dict[str, str]], Awaitable[str]], back: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request, s: Session) -> Response:
            fields = await form(request)
            check_csrf(mac("csrf", s.nonce), fields.get("csrf"))
            try:
                done = await fn(request, s, fields)
            except HTTPException as e:
                raise Refused(e.status_code, str(e.detail)) from None
            except ApprovalError as e:
                raise Refused(e.status, e.description) from None
            except OAuthError as e:
                raise Refused(400, e.description) from None
            return RedirectResponse(f"{base}{back}?done={quote(done)}", status_code=303, headers=PAGE_HEADERS)

        return signed_in(wrapped)

    async def quarantine(request: Request, s: Session, fields: dict[str, str]) -> str:
        await _call(
            api["quarantine"],
            client_id=request.path_params["client_id"],
            body={"reason": fields.get("reason", "")[:300]},
            actor=s.actor,
        )
        return "quarantined"

    async def lift(request: Request, s: Session, fields: dict[str, str]) -> str:
        def names(key: str) -> list[str]:
            return [n.strip() for n in fields.get(key, "").replace(",", " ").split() if n.strip()][:20]

        quorum = fields.get("quorum", "1")
        body = {
            "approvers": names("approvers"),
            "groups": names("groups"),
            "quorum": int(quorum) if quorum.isdigit() and len(quorum) < 3 else 1,
            "assurance": fields.get("assurance", "aal2"),
        }
        await _call(api["lift"], client_id=request.path_params["client_id"], body=body, actor=s.actor)
        return "lift-requested"

    async def retry(request: Request, s: Session, fields: dict[str, str]) -> str:
        await _call(api["retry"], message_id=request.path_params["message_id"], actor=s.actor)
        return "retried"

    async def cancel(request: Request, s: Session, fields: dict[str, str]) -> str:
        await _call(api["cancel"], request_id=request.path_params["request_id"], actor=s.actor)
        return "cancelled"

    async def unlock(request: Request, s: Session, fields: dict[str, str]) -> str:
        await _call(api["unlock"], person_id=request.path_params["person_id"], actor=s.actor)
        return "unlocked"

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response(status_code=404)
        return Response(
            (UI / "static" / name).read_bytes(),
            media_type=_STATIC[name],
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def root_redirect(request: Request) -> Response:
        return RedirectResponse(base, status_code=308)

    get = ["GET"]
    post = ["POST"]
    return [
        Route(base + "/", root_redirect, methods=get),
        Route(base + "/login", guarded_public(login_get), methods=get),
        Route(base + "/login", guarded_public(login_post), methods=post),
        Route(base + "/login/passkey/options", guarded_public(passkey_options), methods=post),
        Route(base + "/login/passkey", guarded_public(passkey_post), methods=post),
        Route(base + "/logout", guarded_public(logout), methods=post),
        Route(base, signed_in(overview), methods=get),
        Route(base + "/clients", signed_in(clients_page), methods=get),
        Route(base + "/clients/{client_id}/quarantine", action(quarantine, "/clients"), methods=post),
        Route(base + "/clients/{client_id}/lift", action(lift, "/clients"), methods=post),
        Route(base + "/issuers", signed_in(issuers_page), methods=get),
        Route(base + "/people", signed_in(people_page), methods=get),
        Route(base + "/people/{person_id}/unlock", action(unlock, "/people"), methods=post),
        Route(base + "/approvals", signed_in(approvals_page), methods=get),
        Route(base + "/approvals/{request_id}/cancel", action(cancel, "/approvals"), methods=post),
        Route(base + "/flows", signed_in(flows_page), methods=get),
        Route(base + "/revocations", signed_in(revocations_page), methods=get),
        Route(base + "/audit", signed_in(audit_page), methods=get),
        Route(base + "/outbox", signed_in(outbox_page), methods=get),
        Route(base + "/outbox/{message_id}/retry", action(retry, "/outbox"), methods=post),
        Route(base + "/static/{name}", static, methods=get),
    ]
