"""Per-request telemetry: request ids, request metrics, optional trace spans, and the log format.

``Telemetry`` is the outermost ASGI layer (in front of the token fast path), so every request,
the token endpoint's included, gets a request id (a sane inbound ``X-Request-Id`` is kept, else one
is generated; it is echoed in the response and put in every log line written while the request is
handled, threads included), is counted by route template, method and status, and has its latency
observed. It does no parsing beyond scanning the header list once.

Logs: ``log_format = "json"`` writes one JSON object per line (``ts``, ``level``, ``logger``,
``msg``, ``request_id``, and for access log lines ``method``, ``path``, ``status``). Both formats go
through ``Redact``: one-time link tokens in paths and anything shaped like a JWS/JWT are replaced
before a line is written.
"""

from __future__ import annotations

import contextvars
import hmac
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from tessera.settings import Settings, is_loopback_host

from .metrics import CONTENT_TYPE, Metrics, render_async
from .responses import json_response

__all__ = [
    "JsonFormatter",
    "Redact",
    "Telemetry",
    "configure_logging",
    "current_request_id",
    "metrics_endpoint",
    "uvicorn_log_config",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("tessera_request_id", default=None)
# What an inbound X-Request-Id may be: visible ASCII without quotes, spaces, or separators that
# could forge a log field; at most 128 characters. Anything else is replaced by a generated id.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
# Generated ids: a random per-process prefix and a counter (unique across processes and restarts
# without a random draw per request), 24 hex digits.
_ID_PREFIX = os.urandom(6).hex().encode()
_ID_COUNTER = itertools.count(1)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


class Telemetry:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None,
        fast_paths: tuple[str, ...] = (),
        tracer: Any = None,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._fast = frozenset(fast_paths)
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        start = time.perf_counter()
        rid: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _SANE_ID.fullmatch(value):
                    rid = value
                break
        if rid is None:
            rid = b"%s%012x" % (_ID_PREFIX, next(_ID_COUNTER))
        token = _REQUEST_ID.set(rid.decode())
        header = (b"x-request-id", rid)
        path = scope["path"]
        if self._tracer is None and path in self._fast:
            # The token fast path adds the header and reports its status itself: no send wrapper and
            # no closure on the hot path.
            scope["tessera.request_id"] = header
            try:
                await self._app(scope, receive, send)
            finally:
                _REQUEST_ID.reset(token)
                if self._metrics is not None:
                    method = scope["method"] if scope["method"] in _METHODS else "other"
                    status = scope.get("tessera.status", 500)
                    self._metrics.request(path, method, status, time.perf_counter() - start)
            return
        status = 500

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        root = scope.get("root_path", "")
        try:
            if self._tracer is None:
                await self._app(scope, receive, send_with_id)
            else:
                with self._tracer.start_as_current_span(
                    scope["method"],
                    kind=_server_kind(),
                    attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
                ) as span:
                    try:
                        await self._app(scope, receive, send_with_id)
                    finally:
                        # OpenTelemetry HTTP semantic conventions: the span is named by the route template.
                        route = self._route(scope, root)
                        span.update_name(f"{scope['method']} {route}")
                        span.set_attribute("http.route", route)
                        span.set_attribute("http.response.status_code", status)
        finally:
            _REQUEST_ID.reset(token)
            if self._metrics is not None:
                method = scope["method"] if scope["method"] in _METHODS else "other"
                self._metrics.request(self._route(scope, root), method, status, time.perf_counter() - start)

    def _route(self, scope: Scope, root: str) -> str:
        """The matched route's template (bounded label values), never the raw path."""
        path = scope["path"]
        if path in self._fast:
            return str(path)
        route = scope.get("route")
        if route is None:
            return "unmatched"
        if isinstance(route, Mount):
            return str(route.path) + "/…"
        mounted = str(scope.get("root_path", ""))[len(root) :]
        return mounted + str(getattr(route, "path", "unmatched"))


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


# -- /metrics -----------------------------------------------------------------------------------------


def metrics_endpoint(settings: Settings, m: Metrics) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``, guarded by the ``metrics`` setting (loopback clients, or a bearer token)."""
    expected = f"Bearer {settings.metrics_token}".encode() if settings.metrics_token else None

    async def endpoint(request: Request) -> Response:
        if settings.metrics == "token":
            given = request.headers.get("authorization", "").encode()
            if expected is None or not hmac.compare_digest(given, expected):
                return json_response(
                    {"error": "invalid_token", "error_description": "a bearer token is required"},
                    401,
                    {"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        elif not is_loopback_host(request.client.host if request.client else None):
            return json_response(
                {"error": "forbidden", "error_description": "metrics are served to loopback only"}, 403
            )
        m.flush()
        return Response(await render_async(m), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return endpoint


# -- logs ---------------------------------------------------------------------------------------------


class Redact(logging.Filter):
    """No secret in a log line: one-time link tokens in paths, query values in access log lines, and
    anything shaped like a compact JWS (access tokens, ID tokens, client and subject assertions,
    DPoP proofs) are replaced."""

    _LINK = re.compile(r"/(approve|enrol)/[A-Za-z0-9_-]{8,}")
    _QUERY = re.compile(r"([?&][^=&]*)=[^&]*")
    _JWS = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")

    def _clean(self, text: str) -> str:
        if "/" in text:
            text = self._LINK.sub(r"/\1/…", text)
        if "eyJ" in text:
            text = self._JWS.sub("[jws]", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            # (client, method, path with query, version, status): query values may be anything a
            # careless client sent (a token, a secret), so only the parameter names are kept.
            path = record.args[2]
            if isinstance(path, str) and "?" in path:
                record.args = (*record.args[:2], self._QUERY.sub(r"\1=…", path), *record.args[3:])
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._clean(record.msg)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        rid = _REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            out.update(client=client, method=method, path=path, http_version=version, status=status)
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(settings: Settings) -> None:
    """The root logger for the serving process, in the configured format, through ``Redact``."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def uvicorn_log_config(settings: Settings) -> dict[str, Any] | None:
    """For ``uvicorn.run(log_config=...)``: uvicorn's own loggers in the JSON format (None: its default)."""
    if settings.log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "tessera.http.telemetry.Redact"}},
        "formatters": {"json": {"()": "tessera.http.telemetry.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
        },
    }
