"""Support for the scale-out test: several ``tessera serve`` processes on one PostgreSQL, a client that
spreads requests across them as a load balancer would, and an idempotent Standard Webhooks receiver.

The receiver verifies every delivery with the reference library (``standardwebhooks``), records it on
arrival (a real receiver would have processed it even if its answer never got back), and processes
each ``webhook-id`` once. It can be told to hold its answers, so that a sender is caught mid-delivery.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from approval_support import data_attr, form_fields
from support import LiveServer

__all__ = ["Fleet", "IdempotentReceiver", "decide_across", "on_port", "sql"]


def on_port(url: str, srv: LiveServer) -> str:
    """``url`` (an issuer link) sent to ``srv`` instead: every process serves every link."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{srv.port}", parts.path, parts.query, parts.fragment))


def sql(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return list(conn.execute(query, params).fetchall())  # type: ignore[arg-type]


class IdempotentReceiver:
    """A Standard Webhooks endpoint on 127.0.0.1 that processes each message id once."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.lock = threading.Lock()
        self.arrivals: list[str] = []  # webhook-id of every verified arrival, duplicates included
        self.processed: dict[str, dict[str, Any]] = {}  # webhook-id → payload, first arrival only
        self.refused = 0
        self._release = threading.Event()
        self._release.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError:
                    with receiver.lock:
                        receiver.refused += 1
                    self.send_response(401)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.arrivals.append(headers["webhook-id"])
                    receiver.processed.setdefault(headers["webhook-id"], payload)
                receiver._release.wait(60)
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:
                    pass  # the sender died while its delivery was held

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> IdempotentReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def hold(self) -> None:
        """Receive (and process) deliveries but answer none until ``release``."""
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def duplicates(self) -> Counter[str]:
        with self.lock:
            return Counter(i for i, n in Counter(self.arrivals).items() if n > 1 for _ in range(n - 1))

    def messages(self, kind: str, person: str) -> list[dict[str, Any]]:
        with self.lock:
            found = list(self.processed.values())
        return [p for p in found if p["type"] == kind and p["data"].get("person_id") == person]

    def link(self, kind: str, person: str, where: dict[str, Any] | None = None, timeout: float = 30.0) -> str:
        """The link of the first processed ``kind`` message for ``person`` whose data includes ``where``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.messages(kind, person):
                if all(p["data"].get(k) == v for k, v in (where or {}).items()):
                    return str(p["data"]["link"])
            time.sleep(0.05)
        raise AssertionError(f"no {kind} message for {person} matching {where} within {timeout}s")


class Fleet:
    """Servers that share one database, KEK and issuer; ``pick()`` spreads requests round-robin over the
    live ones, and a request to a dead one is retried on the next (what a load balancer does)."""

    def __init__(self, servers: list[LiveServer], db_url: str) -> None:
        self.servers = servers
        self.db_url = db_url
        self.dead: set[int] = set()
        self._turn = itertools.count()
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self.servers[0].issuer

    def live(self) -> list[LiveServer]:
        return [s for s in self.servers if s.port not in self.dead]

    def pick(self) -> LiveServer:
        with self._lock:
            live = self.live()
            return live[next(self._turn) % len(live)]

    def post(
        self, http: httpx.Client, path: str, make: Callable[[], dict[str, Any]] | None = None, **kwargs: Any
    ) -> tuple[LiveServer, httpx.Response]:
        """POST ``path`` to the next live process; on a connection failure of a process that was killed,
        to the one after. ``make`` builds the request anew for each attempt (a fresh client assertion:
        the dead process may have used up the first one before dying)."""
        for _ in range(len(self.servers) + 1):
            srv = self.pick()
            try:
                return srv, http.post(srv.issuer + path, **(make() if make else kwargs))
            except httpx.TransportError:
                if srv.port not in self.dead:
                    raise
        raise AssertionError(f"no live process answered POST {path}")

    def kill(self, srv: LiveServer) -> None:
        """SIGKILL: no shutdown, no lease given back, no transaction finished."""
        assert srv.proc is not None
        with self._lock:
            self.dead.add(srv.port)
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        srv.proc = None

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return sql(self.db_url, query, *params)

    def worker_id(self, srv: LiveServer) -> str:
        """The name a process leases outbox messages under (``host:pid``)."""
        assert srv.proc is not None
        return f"{os.uname().nodename}:{srv.proc.pid}"


def decide_across(http: httpx.Client, link: str, origin: str, steps: list[LiveServer], auth: Any) -> httpx.Response:
    """Approve through the approval page with a passkey, each step on another process: the page (GET),
    the WebAuthn options, the signed decision (POST). The CSRF cookie and token and the challenge are
    checked by whichever process gets the step."""
    page = http.get(on_port(link, steps[0]))
    assert page.status_code == 200, page.text
    opts_url = data_attr(page.text, "decide", "options")
    opts = http.post(
        on_port(origin + opts_url if opts_url.startswith("/") else opts_url, steps[1]),
        json={"decision": "approve"},
        headers={"X-CSRF-Token": data_attr(page.text, "decide", "csrf"), "Origin": origin},
    )
    assert opts.status_code == 200, opts.text
    fields = form_fields(page.text, "decide")
    fields.update(credential=json.dumps(auth.get(opts.json(), origin)), decision="approve")
    return http.post(on_port(link, steps[2]), data=fields, headers={"Origin": origin})
