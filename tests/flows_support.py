"""Helpers for the live flow tests: a server with people who approve on the page, clients made through
the admin API, token requests, flow publication through the CLI, the decision records, and a loopback
hook server whose answers (and delays) the test chooses."""

from __future__ import annotations

import http.server
import json
import pathlib
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml

from approval_support import Mailbox, PageClient
from support import LiveServer
from webauthn_support import SoftAuthenticator

__all__ = ["Approver", "FlowWorld", "HookServer", "approval_id", "write_flows"]

#: How long a running server takes at most to load what was published (TESSERA_KEY_REFRESH_INTERVAL=1).
RELOAD_WAIT = 1.6
_REQUEST_ID = re.compile(r"apr_[A-Za-z0-9_-]+")


def approval_id(r: httpx.Response) -> str:
    """The approval request named by an ``authorization_pending`` answer."""
    assert r.status_code == 400 and r.json()["error"] == "authorization_pending", r.text
    found = _REQUEST_ID.findall(r.json().get("error_description", ""))
    assert len(found) == 1, r.text
    return found[0]


def write_flows(directory: pathlib.Path, *flows: dict[str, Any]) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f in flows:
        (directory / f"{f['id']}.yaml").write_text(yaml.safe_dump(f, sort_keys=False))
    return directory


@dataclass
class Approver:
    pid: str
    page: PageClient
    device: SoftAuthenticator


@dataclass
class FlowWorld:
    srv: LiveServer
    mb: Mailbox
    admin: httpx.Client
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=15))
    people: dict[str, Approver] = field(default_factory=dict)
    #: who approves the onboarding of clients made here, should a client.register flow ask for it
    onboarding_approver: str | None = None

    # -- flows -------------------------------------------------------------------------------------
    def flows(self, *argv: str) -> subprocess.CompletedProcess[str]:
        r = self.srv.cli("flows", *argv)
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def publish(self, directory: pathlib.Path, *, wait: bool = True) -> str:
        """Publish a directory of flows with the CLI and wait until the server has loaded them."""
        r = self.flows("publish", str(directory), "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        if wait:
            time.sleep(RELOAD_WAIT)
        return r.stdout

    # -- people ------------------------------------------------------------------------------------
    def approver(self, pid: str, groups: list[str]) -> Approver:
        """A person in ``groups`` with a user-verifying, device-bound passkey enrolled through their link."""
        r = self.admin.put(f"/people/{pid}", json={"name": pid.title(), "channels": ["file"], "groups": groups})
        assert r.status_code == 201, r.text
        r = self.admin.post(f"/people/{pid}/enrolment")
        assert r.status_code == 202, r.text
        a = Approver(pid, PageClient(self.srv.issuer), SoftAuthenticator())
        a.page.enrol_passkey(self.mb.link("enrolment.link", pid), a.device)
        self.people[pid] = a
        return a

    def link(self, pid: str, rid: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.mb.all():
                d = m["data"]
                if m["kind"] == "approval.requested" and d.get("person_id") == pid and d.get("request_id") == rid:
                    return str(d["link"])
            assert time.monotonic() < deadline, f"{pid} got no link for {rid} within {timeout}s"
            time.sleep(0.05)

    def decide(self, pid: str, rid: str, decision: str) -> httpx.Response:
        a = self.people[pid]
        r = a.page.decide_with_passkey(self.link(pid, rid), decision, a.device)
        assert r.status_code == 200 and 'id="outcome"' in r.text, r.text
        return r

    def approval(self, rid: str) -> dict[str, Any]:
        r = self.admin.get(f"/approvals/{rid}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    # -- clients and tokens ------------------------------------------------------------------------
    def client(self, client_id: str, scope: str = "read write", **metadata: Any) -> tuple[str, str]:
        """A client made by the operator (admin API), with an owner on record; onboarding approved if asked."""
        md = {
            "client_id": client_id,
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": scope,
            "contacts": [f"owner-of-{client_id}@example.com"],
            **metadata,
        }
        r = self.admin.post("/clients", json=md)
        assert r.status_code == 201, r.text
        onboarding = r.json().get("onboarding") or {}
        for rid in onboarding.get("approvals", []):
            assert self.onboarding_approver is not None, r.text
            self.decide(self.onboarding_approver, rid, "approve")
        return client_id, str(r.json()["client_secret"])

    def register(self, **metadata: Any) -> httpx.Response:
        """RFC 7591 registration (the client.register flows apply)."""
        md = {
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "read",
            **metadata,
        }
        return self.http.post(
            self.srv.issuer + "/oauth/register", json=md, headers={"Authorization": f"Bearer {self.srv.reg_token}"}
        )

    def token(self, creds: tuple[str, str], **form: Any) -> httpx.Response:
        data = {"grant_type": "client_credentials", **{k: v for k, v in form.items() if v is not None}}
        return self.http.post(self.srv.token_endpoint, data=data, auth=creds)

    # -- audit -------------------------------------------------------------------------------------
    def audit(self, after: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.admin.get("/audit", params={"after": out[-1]["seq"] if out else after, "limit": 1000}).json()
            out += page
            if len(page) < 1000:
                return out

    def head(self) -> int:
        records = self.audit()
        return int(records[-1]["seq"]) if records else 0

    def decisions(self, actor: str, after: int = 0) -> list[dict[str, Any]]:
        """The ``flow.decision`` records of one client, oldest first."""
        return [e for e in self.audit(after) if e["event"] == "flow.decision" and e["actor"] == actor]

    def close(self) -> None:
        self.http.close()


class HookServer:
    """A loopback HTTP hook: ``POST /<name>`` answers what ``answers[name]`` says, after ``delays[name]`` s."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.delays: dict[str, float] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                name = self.path.strip("/")
                length = int(self.headers.get("Content-Length") or 0)
                hook.calls.append((name, json.loads(self.rfile.read(length) or b"{}")))
                time.sleep(hook.delays.get(name, 0))
                body = json.dumps(hook.answers.get(name, {"allow": True})).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the caller gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
