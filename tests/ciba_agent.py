"""A CIBA client as an AI agent would run it: a separate process that only speaks HTTP to Tessera.

OpenID Connect CIBA Core 1.0: it registers itself (RFC 7591, with the registration token), asks the
backchannel authentication endpoint (§7.1) to have a person approve what it wants to do, then gets
its tokens at the token endpoint (§10.1) — by polling (§7.3: no faster than ``interval``; §11:
``slow_down`` adds 5 seconds) or, in ping mode, once after the callback on its own loopback
notification endpoint (§10.2: ``Authorization: Bearer <client_notification_token>``, body
``{"auth_req_id"}``).

Every step is one JSON line on stdout (``{"event": ...}``) so the test can follow it::

    python tests/ciba_agent.py --issuer http://localhost:8080 --registration-token T \\
        --login-hint pat --binding-message "Pay ACME 12.00 EUR" \\
        --authorization-details '[{"type": "payment_initiation", ...}]'

Nothing of Tessera is imported: only ``httpx`` and the standard library.
"""

from __future__ import annotations

import argparse
import http.server
import json
import secrets
import sys
import threading
import time
from typing import Any

import httpx

CIBA_GRANT = "urn:openid:params:grant-type:ciba"


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


class Notifications:
    """The client notification endpoint (§10.2) on 127.0.0.1: keeps the pings that carry our token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.received: list[str] = []
        self.refused = 0
        self.arrived = threading.Event()
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                ok = (
                    self.headers.get("authorization") == f"Bearer {agent.token}"
                    and isinstance(parsed, dict)
                    and set(parsed) == {"auth_req_id"}
                    and isinstance(parsed["auth_req_id"], str)
                )
                if ok:
                    agent.received.append(parsed["auth_req_id"])
                    agent.arrived.set()
                else:
                    agent.refused += 1
                # §10.2: the client responds with 204 No Content (any 2xx is a delivery).
                self.send_response(204 if ok else 401)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ciba/notify"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def register(http: httpx.Client, metadata: dict[str, Any], token: str, mode: str, notify: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_name": "payments agent",
        "grant_types": [CIBA_GRANT],
        "token_endpoint_auth_method": "client_secret_basic",
        "backchannel_token_delivery_mode": mode,
        "scope": "payments",
        "allowed_resources": ["https://payments.example"],
        "default_resource": "https://payments.example",
    }
    if notify:
        body["backchannel_client_notification_endpoint"] = notify
    r = http.post(metadata["registration_endpoint"], json=body, headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    return dict(r.json())


def token_request(http: httpx.Client, url: str, client: dict[str, Any], auth_req_id: str) -> httpx.Response:
    return http.post(
        url,
        data={"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id},
        auth=(client["client_id"], client["client_secret"]),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--issuer", required=True)
    p.add_argument("--registration-token", required=True)
    p.add_argument("--mode", choices=("poll", "ping"), default="poll")
    p.add_argument("--login-hint", required=True)
    p.add_argument("--scope", default="openid payments")
    p.add_argument("--binding-message")
    p.add_argument("--authorization-details", help="RFC 9396 JSON array")
    p.add_argument("--acr-values")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    args = p.parse_args(argv)

    with httpx.Client(timeout=10) as http:
        metadata = http.get(args.issuer + "/.well-known/openid-configuration").json()
        notifications = Notifications(secrets.token_urlsafe(32)) if args.mode == "ping" else None
        client = register(
            http, metadata, args.registration_token, args.mode, notifications.url if notifications else None
        )
        emit("registered", client_id=client["client_id"], mode=args.mode)

        form = {"scope": args.scope, "login_hint": args.login_hint}
        if args.binding_message:
            form["binding_message"] = args.binding_message
        if args.authorization_details:
            form["authorization_details"] = args.authorization_details
        if args.acr_values:
            form["acr_values"] = args.acr_values
        if notifications:
            form["client_notification_token"] = notifications.token
        r = http.post(
            metadata["backchannel_authentication_endpoint"],
            data=form,
            auth=(client["client_id"], client["client_secret"]),
        )
        if r.status_code != 200:
            emit("result", ok=False, status=r.status_code, body=r.json())
            return 1
        ack = r.json()
        auth_req_id, interval = ack["auth_req_id"], int(ack.get("interval", 5))
        emit("auth_req_id", auth_req_id=auth_req_id, expires_in=ack["expires_in"], interval=interval)

        deadline = time.monotonic() + min(args.timeout, ack["expires_in"])
        polls: list[str] = []
        if notifications:
            # Ping mode: wait for the callback, then redeem exactly once.
            if not notifications.arrived.wait(max(0.0, deadline - time.monotonic())):
                emit("result", ok=False, error="no ping before the deadline", refused_pings=notifications.refused)
                return 1
            emit("pinged", auth_req_ids=notifications.received, refused_pings=notifications.refused)
            r = token_request(http, metadata["token_endpoint"], client, auth_req_id)
            polls.append(str(r.status_code) if r.status_code == 200 else r.json().get("error", "?"))
        else:
            while True:
                # §7.3: "the Client MUST wait at least [interval] seconds between polling requests".
                time.sleep(interval)
                r = token_request(http, metadata["token_endpoint"], client, auth_req_id)
                error = r.json().get("error") if r.status_code != 200 else None
                polls.append(error or "200")
                if error == "authorization_pending" and time.monotonic() < deadline:
                    continue
                if error == "slow_down" and time.monotonic() < deadline:
                    # §11: the interval MUST be increased by at least 5 seconds for this and all later requests.
                    interval += 5
                    continue
                break
        emit("result", ok=r.status_code == 200, status=r.status_code, body=r.json(), polls=polls)
        return 0 if r.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
