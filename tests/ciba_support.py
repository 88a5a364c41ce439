"""Helpers for the CIBA tests (OpenID Connect CIBA Core 1.0): a live server with the file channel and a
short poll interval, people who enrol a passkey through their enrolment link, CIBA clients registered
through RFC 7591, and a loopback HTTP receiver standing in for a ping client's notification endpoint.

Everything runs against a real ``tessera serve`` on 127.0.0.1; nothing of the code under test is used
to build requests or to check answers.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import pathlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from approval_support import Mailbox, PageClient, approval_server
from support import LiveServer
from webauthn_support import SoftAuthenticator

__all__ = [
    "CIBA",
    "Ciba",
    "PingReceiver",
    "Received",
    "ciba_world",
    "claims_of",
]

CIBA = "urn:openid:params:grant-type:ciba"


def claims_of(jwt: str) -> dict[str, Any]:
    """A JWT's payload, unverified (for looking only; verification is done with a JOSE library)."""
    import base64

    part = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


# -- a ping client's notification endpoint ----------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class PingReceiver:
    """An HTTP server on 127.0.0.1 that records every request and answers each path as told.

    ``plan(path, [500, 204])`` answers the first request on ``path`` with 500, the next with 204; when
    the plan runs out the last status is repeated (204 without a plan). A 3xx carries a ``Location``
    pointing at ``/redirected`` on the same receiver, so a followed redirect would be recorded there.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._plans: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.command,
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    plan = receiver._plans.get(self.path, [204])
                    status = plan.pop(0) if len(plan) > 1 else plan[0]
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url("/redirected"))
                payload = b"" if status == 204 else b'{"ok":true}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if payload:
                    self.wfile.write(payload)

            do_POST = _answer
            do_GET = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, statuses: list[int]) -> None:
        with self._lock:
            self._plans[path] = list(statuses)

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.on(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{len(self.on(path))} request(s) on {path} within {timeout}s, expected {count}")

    def start(self) -> PingReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the server, its people and its clients ----------------------------------------------------------------


@dataclass
class Person:
    pid: str
    page: PageClient
    auth: SoftAuthenticator | None = None
    #: approval links received so far (the Mailbox count to wait for next)
    seen: int = 0


@dataclass
class Ciba:
    """A live server and the helpers to drive CIBA flows on it."""

    srv: LiveServer
    mb: Mailbox
    admin: httpx.Client
    people: dict[str, Person] = field(default_factory=dict)

    @property
    def db(self) -> pathlib.Path:
        return self.srv.data_dir / "tessera.db"

    @property
    def bc_endpoint(self) -> str:
        return self.srv.issuer + "/oauth/bc-authorize"

    # -- people ------------------------------------------------------------------------------------------
    def person(self, pid: str, *, enrol: bool = True, **fields: Any) -> Person:
        """A person with the file channel; with ``enrol`` they enrol a passkey through their link."""
        r = self.admin.put(f"/people/{pid}", json={"name": pid.title(), "channels": ["file"], **fields})
        assert r.status_code in (200, 201), r.text
        p = self.people.setdefault(pid, Person(pid, PageClient(self.srv.issuer)))
        if enrol:
            before = len([m for m in self.mb.all() if m["kind"] == "enrolment.link" and m["data"]["person_id"] == pid])
            r = self.admin.post(f"/people/{pid}/enrolment")
            assert r.status_code == 202, r.text
            p.auth = SoftAuthenticator()
            p.page.enrol_passkey(self.mb.link("enrolment.link", pid, before + 1), p.auth)
        return p

    def next_link(self, pid: str) -> str:
        """The next approval link ``pid`` receives (one per CIBA request for them)."""
        p = self.people[pid]
        p.seen += 1
        return self.mb.link("approval.requested", pid, p.seen)

    def decide(self, pid: str, decision: str = "approve") -> None:
        """``pid`` answers their next approval link with their passkey."""
        p = self.people[pid]
        assert p.auth is not None
        link = self.next_link(pid)
        r = p.page.decide_with_passkey(link, decision, p.auth)
        assert r.status_code == 200 and 'id="outcome"' in r.text, r.text

    # -- clients -----------------------------------------------------------------------------------------
    def client(self, **metadata: Any) -> dict[str, Any]:
        """A confidential client registered for the CIBA grant (poll mode unless told otherwise)."""
        md: dict[str, Any] = {
            "grant_types": [CIBA],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "read write",
            "backchannel_token_delivery_mode": "poll",
            "client_name": "CIBA test client",
        }
        md.update(metadata)
        return self.srv.register(**md)

    def register_raw(self, **metadata: Any) -> httpx.Response:
        return httpx.post(
            self.srv.issuer + "/oauth/register",
            json=metadata,
            timeout=10,
            headers={"Authorization": f"Bearer {self.srv.reg_token}"},
        )

    def bc(self, client: dict[str, Any] | None, **params: Any) -> httpx.Response:
        """A backchannel authentication request, authenticated with the client's secret (HTTP Basic)."""
        data = {"scope": "openid", **params}
        data = {k: v for k, v in data.items() if v is not None}
        auth = (client["client_id"], client["client_secret"]) if client else None
        return httpx.post(self.bc_endpoint, data=data, auth=auth, timeout=15)

    def start(self, client: dict[str, Any], pid: str, **params: Any) -> str:
        """An accepted backchannel request for ``pid``; its ``auth_req_id``."""
        r = self.bc(client, login_hint=pid, **params)
        assert r.status_code == 200, r.text
        return str(r.json()["auth_req_id"])

    def token(self, client: dict[str, Any], auth_req_id: str | None, **extra: str) -> httpx.Response:
        data = {"grant_type": CIBA, **extra}
        if auth_req_id is not None:
            data["auth_req_id"] = auth_req_id
        return httpx.post(
            self.srv.token_endpoint, data=data, auth=(client["client_id"], client["client_secret"]), timeout=15
        )

    def approved(self, client: dict[str, Any], pid: str, **params: Any) -> tuple[str, dict[str, Any]]:
        """A whole flow: request, approval, first poll (no slow_down: it is the first). The id and the
        token response."""
        auth_req_id = self.start(client, pid, **params)
        self.decide(pid)
        r = self.token(client, auth_req_id)
        assert r.status_code == 200, r.text
        return auth_req_id, r.json()

    def introspect(self, client: dict[str, Any], token: str) -> dict[str, Any]:
        r = httpx.post(
            self.srv.issuer + "/oauth/introspect",
            data={"token": token},
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    # -- admin views -------------------------------------------------------------------------------------
    def audit(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(100):
            page = self.admin.get("/audit", params={"after": out[-1]["seq"] if out else 0, "limit": 1000}).json()
            out += page
            if len(page) < 1000:
                break
        return out

    def outbox(self, **params: Any) -> list[dict[str, Any]]:
        r = self.admin.get("/outbox", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["messages"])


@contextlib.contextmanager
def ciba_world(data_dir: pathlib.Path, **env: str) -> Iterator[Ciba]:
    """A live server (file channel, poll interval 1 s) for the block; the audit chain is verified after."""
    srv = approval_server(data_dir, **{"TESSERA_CIBA_INTERVAL": "1", **env}).start()
    try:
        with srv.admin() as admin:
            yield Ciba(srv, Mailbox(srv.outbox_file), admin)  # type: ignore[attr-defined]
    finally:
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr
