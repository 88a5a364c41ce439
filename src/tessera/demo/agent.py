"""The demo's AI agent: a confidential OAuth client that only speaks HTTP to Tessera.

It registers itself (RFC 7591, with the registration token), asks for a token on its own authority
(RFC 6749 §4.4 client credentials), and asks a person through OpenID CIBA Core 1.0: the backchannel
authentication request (§7.1), then polls the token endpoint (§10.1) in a thread of its own, never
faster than ``interval`` and 5 s slower after each ``slow_down`` (§11).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["CIBA_GRANT", "Agent", "CibaOutcome"]

CIBA_GRANT = "urn:openid:params:grant-type:ciba"


@dataclass
class CibaOutcome:
    """How the polling ended: ``tokens`` on success, else ``error`` (``access_denied``, ``expired_token``, …)."""

    polls: list[str] = field(default_factory=list)
    tokens: dict[str, Any] | None = None
    error: str | None = None
    description: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class Agent:
    def __init__(self, issuer: str, registration_token: str, resource: str) -> None:
        self.issuer = issuer
        self.resource = resource
        self._registration_token = registration_token
        self.http = httpx.Client(timeout=10)
        self.metadata: dict[str, Any] = {}
        self.client_id = ""
        self._secret = ""
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def register(self, name: str, contacts: list[str], *, scope: str = "payments") -> str:
        self.metadata = self.http.get(self.issuer + "/.well-known/openid-configuration").raise_for_status().json()
        body = {
            "client_name": name,
            "contacts": contacts,
            "grant_types": ["client_credentials", CIBA_GRANT],
            "token_endpoint_auth_method": "client_secret_basic",
            "backchannel_token_delivery_mode": "poll",
            "scope": scope,
            "allowed_resources": [self.resource],
            "default_resource": self.resource,
        }
        r = self.http.post(
            self.metadata["registration_endpoint"],
            json=body,
            headers={"Authorization": f"Bearer {self._registration_token}"},
        )
        if r.status_code != 201:
            raise RuntimeError(f"registration refused: HTTP {r.status_code} {r.text[:200]}")
        client = r.json()
        self.client_id, self._secret = client["client_id"], client["client_secret"]
        return self.client_id

    @property
    def _auth(self) -> tuple[str, str]:
        return (self.client_id, self._secret)

    @property
    def secret(self) -> str:
        """The client secret Tessera issued at registration (for the ``mcp`` SDK's provider)."""
        return self._secret

    def client_credentials(self, scope: str) -> httpx.Response:
        """A token on the agent's own authority (RFC 6749 §4.4)."""
        return self.http.post(
            self.metadata["token_endpoint"], data={"grant_type": "client_credentials", "scope": scope}, auth=self._auth
        )

    def ask(self, person: str, *, binding_message: str, details: list[dict[str, Any]], acr: str) -> dict[str, Any]:
        """CIBA §7.1: the backchannel authentication request; returns the acknowledgement (§7.3)."""
        import json

        r = self.http.post(
            self.metadata["backchannel_authentication_endpoint"],
            data={
                "scope": "openid payments",
                "login_hint": person,
                "binding_message": binding_message,
                "authorization_details": json.dumps(details),
                "acr_values": acr,
            },
            auth=self._auth,
        )
        if r.status_code != 200:
            raise RuntimeError(f"the backchannel request was refused: HTTP {r.status_code} {r.text[:200]}")
        return dict(r.json())

    def poll(self, auth_req_id: str, interval: int, timeout: float) -> CibaOutcome:
        """Start polling in the background; the outcome's ``done`` is set when it ends."""
        outcome = CibaOutcome()

        def run() -> None:
            wait, deadline = float(interval), time.monotonic() + timeout
            try:
                while not self._stop.wait(wait):
                    if time.monotonic() > deadline:
                        outcome.error, outcome.description = "timeout", f"no decision within {timeout:.0f} s"
                        return
                    r = self.http.post(
                        self.metadata["token_endpoint"],
                        data={"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id},
                        auth=self._auth,
                    )
                    body = r.json()
                    if r.status_code == 200:
                        outcome.polls.append("200")
                        outcome.tokens = body
                        return
                    error = str(body.get("error"))
                    outcome.polls.append(error)
                    if error == "slow_down":  # §11: the interval grows by 5 s for this and every later poll
                        wait = float(body.get("interval", wait + 5))
                    elif error != "authorization_pending":
                        outcome.error, outcome.description = error, str(body.get("error_description", ""))
                        return
            except httpx.HTTPError as e:
                outcome.error, outcome.description = "unreachable", f"{type(e).__name__}: {e}"
            finally:
                outcome.done.set()

        self._poller = threading.Thread(target=run, daemon=True, name="demo-agent-poll")
        self._poller.start()
        return outcome

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(15)
        self.http.close()
