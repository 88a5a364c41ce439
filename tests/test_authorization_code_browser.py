"""The authorization code flow in a real browser: Chromium with a WebAuthn virtual authenticator signs a
person in with the passkey they enrolled, they consent, and the agent gets tokens — first driven by hand
(httpx plays the agent), then by the ``mcp`` SDK's own interactive ``OAuthClientProvider`` with Chromium
answering its redirect, against a protected resource that publishes RFC 9728 metadata.

The issuer is ``http://localhost:<port>`` (a WebAuthn relying party id must be a host name). Tokens are
checked with jwcrypto (an independent JOSE library). Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from jwcrypto import jwk, jwt
from playwright.sync_api import Browser, expect

from approval_support import Mailbox, approval_server
from authcode_support import pkce
from browser_support import TIMEOUT_MS, Device, csp_violations, skip_without_chromium
from callback_support import Callback
from support import LiveServer, free_port

pytestmark = skip_without_chromium
expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class World:
    srv: LiveServer
    admin: httpx.Client
    alice: Device


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, chromium: Browser) -> Iterator[World]:
    srv = approval_server(tmp_path_factory.mktemp("authcode-browser") / "data")
    srv.issuer = f"http://localhost:{srv.port}"
    srv.env["TESSERA_ISSUER"] = srv.issuer
    srv.start()
    admin = srv.admin()
    alice = Device(chromium, "alice", backup_eligible=False)
    try:
        box = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        r = admin.put(
            "/people/alice", json={"name": "Alice Example", "email": "alice@example.com", "channels": ["file"]}
        )
        assert r.status_code == 201, r.text
        assert admin.post("/people/alice/enrolment").status_code == 202
        alice.open(box.link("enrolment.link", "alice"))
        alice.page.fill("#passkey-label", "Laptop")
        alice.page.click("#add-passkey")
        expect(alice.page.locator("#enrolled")).to_be_visible()
        assert len(alice.credentials()) == 1
        yield World(srv, admin, alice)
    finally:
        alice.close()
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def register(world: World, redirect: str, resource: str, **extra: Any) -> dict[str, Any]:
    r = world.admin.post(
        "/clients",
        json={
            "client_name": "Travel agent",
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "redirect_uris": [redirect],
            "scope": "tools.read tools.write",
            "allowed_resources": [resource],
            **extra,
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def answer_redirects(device: Device, cb: Callback) -> None:
    """The agent's loopback redirect endpoint, reached by the browser. The test browser resolves no host
    but localhost (browser_support), so Playwright hands it the request; the Callback records it."""
    from urllib.parse import parse_qs, urlsplit

    def handle(route: Any) -> None:
        parts = urlsplit(route.request.url)
        if parts.path == "/callback":
            cb.received.append({k: v[0] for k, v in parse_qs(parts.query).items()})
        route.fulfill(
            status=200,
            content_type="text/html",
            body="<!doctype html><title>Agent</title><h1 id='done'>You can close this window.</h1>",
        )

    device.page.route(f"http://127.0.0.1:{cb.port}/**", handle)


def check_token(world: World, token: str, audience: str) -> dict[str, Any]:
    keys = jwk.JWKSet.from_json(httpx.get(world.srv.issuer + "/oauth/jwks", timeout=10).text)
    checked = jwt.JWT(
        jwt=token, key=keys, expected_type="JWS", check_claims={"iss": world.srv.issuer, "aud": audience, "exp": None}
    )
    return dict(json.loads(checked.claims))


def test_sign_in_with_a_passkey_consent_and_revoke(world: World) -> None:
    resource = "https://calendar.example.com/mcp"
    cb = Callback()
    try:
        client = register(world, cb.url, resource)
        answer_redirects(world.alice, cb)
        verifier, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": cb.url,
            "scope": "tools.read tools.write",
            "state": "trip-42",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
        }
        page = world.alice.page
        world.alice.open(world.srv.issuer + "/oauth/authorize?" + httpx.QueryParams(params).__str__())
        expect(page.locator("#signin-passkey")).to_be_visible()
        assert "Travel agent" in page.locator("main").inner_text()
        world.alice.screenshot("authcode-1-signin")
        page.click("#signin-passkey")  # a discoverable credential: no id typed
        expect(page.locator("#consent")).to_be_visible()
        text = page.locator("#consent").inner_text()
        assert "Travel agent" in text and client["client_id"] in text
        assert "tools.read" in text and "tools.write" in text and resource in text and cb.url in text
        world.alice.screenshot("authcode-2-consent")
        page.click("#consent-approve")
        expect(page.locator("#done")).to_be_visible()
        got = cb.wait()
        assert got["state"] == "trip-42" and got["iss"] == world.srv.issuer and got["code"]
        r = httpx.post(
            world.srv.token_endpoint,
            data={
                "grant_type": "authorization_code",
                "code": got["code"],
                "code_verifier": verifier,
                "redirect_uri": cb.url,
                "client_id": client["client_id"],
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        tokens = r.json()
        claims = check_token(world, tokens["access_token"], resource)
        assert claims["sub"] == "alice" and claims["act"] == {"sub": client["client_id"]}
        assert claims["acr"] == "urn:tessera:aal3"  # UV + a device-bound passkey
        assert claims["scope"] == "tools.read tools.write"

        # The person sees the grant and revokes it; the agent's refresh token stops working.
        world.alice.open(world.srv.issuer + "/account/grants")
        row = page.locator("#grants tr", has_text=client["client_id"])
        expect(row).to_be_visible()
        world.alice.screenshot("authcode-3-grants")
        row.locator("button").click()
        expect(page.locator("#grants tr", has_text=client["client_id"]).locator("text=revoked")).to_be_visible()
        world.alice.screenshot("authcode-4-revoked")
        r = httpx.post(
            world.srv.token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": client["client_id"],
            },
            timeout=10,
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        assert csp_violations(world.alice.console) == [], world.alice.console
    finally:
        cb.close()


# -- the mcp SDK's own interactive provider ----------------------------------------------------------------


class ProtectedResource:
    """A minimal resource server in the MCP style: 401 with ``resource_metadata`` (RFC 9728 §5.1), its
    protected resource metadata, and 200 for a token of Tessera's minted for exactly this resource."""

    def __init__(self, issuer: str) -> None:
        import http.server

        self.port = free_port()
        self.resource = f"http://127.0.0.1:{self.port}/mcp"
        self.issuer = issuer
        self.seen: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                if self.path == "/.well-known/oauth-protected-resource/mcp":
                    self._send(
                        200,
                        {
                            "resource": outer.resource,
                            "authorization_servers": [outer.issuer],
                            "scopes_supported": ["tools.read"],
                            "bearer_methods_supported": ["header"],
                        },
                    )
                    return
                if self.path != "/mcp":
                    self._send(404, {"error": "not_found"})
                    return
                auth = self.headers.get("Authorization", "")
                claims = outer.verify(auth[7:]) if auth.startswith("Bearer ") else None
                if claims is None:
                    meta = f"http://127.0.0.1:{outer.port}/.well-known/oauth-protected-resource/mcp"
                    self._send(
                        401,
                        {"error": "invalid_token"},
                        {"WWW-Authenticate": f'Bearer resource_metadata="{meta}", scope="tools.read"'},
                    )
                    return
                outer.seen.append(claims)
                self._send(200, {"tools": ["list_events"], "for": claims["sub"], "via": claims["act"]["sub"]})

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verify(self, token: str) -> dict[str, Any] | None:
        keys = jwk.JWKSet.from_json(httpx.get(self.issuer + "/oauth/jwks", timeout=10).text)
        try:
            checked = jwt.JWT(jwt=token, key=keys, check_claims={"iss": self.issuer, "aud": self.resource, "exp": None})
        except Exception:
            return None
        return dict(json.loads(checked.claims))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_mcp_sdk_interactive_provider_with_chromium_answering(world: World) -> None:
    import httpx2
    from mcp.client.auth.oauth2 import OAuthClientProvider
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

    rs = ProtectedResource(world.srv.issuer)
    cb = Callback()
    try:
        client = register(world, cb.url, rs.resource, client_name="MCP SDK agent")
        answer_redirects(world.alice, cb)

        class Storage:
            def __init__(self) -> None:
                self.tokens: OAuthToken | None = None
                self.info = OAuthClientInformationFull.model_validate(
                    {
                        "client_id": client["client_id"],
                        "redirect_uris": [cb.url],
                        "grant_types": ["authorization_code", "refresh_token"],
                        "response_types": ["code"],
                        "token_endpoint_auth_method": "none",
                    }
                )

            async def get_tokens(self) -> OAuthToken | None:
                return self.tokens

            async def set_tokens(self, tokens: OAuthToken) -> None:
                self.tokens = tokens

            async def get_client_info(self) -> OAuthClientInformationFull | None:
                return self.info

            async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
                self.info = client_info

        urls: queue.Queue[str] = queue.Queue()
        storage = Storage()

        async def redirect_handler(url: str) -> None:
            urls.put(url)  # the person's browser (driven on the main thread) opens it

        async def callback_handler() -> AuthorizationCodeResult:
            deadline = time.monotonic() + 30
            while not cb.received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            got = cb.wait(timeout=0.1)
            return AuthorizationCodeResult(code=got["code"], state=got.get("state"), iss=got.get("iss"))

        provider = OAuthClientProvider(
            server_url=rs.resource,
            client_metadata=OAuthClientMetadata.model_validate(
                {
                    "client_name": "MCP SDK agent",
                    "redirect_uris": [cb.url],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                }
            ),
            storage=storage,
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
        )
        outcome: dict[str, Any] = {}

        def agent() -> None:
            async def main() -> None:
                async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
                    r = await http.get(rs.resource)
                    outcome["status"], outcome["body"] = r.status_code, r.json()

            try:
                asyncio.run(main())
            except BaseException as e:  # reported to the test thread
                outcome["error"] = repr(e)

        thread = threading.Thread(target=agent, daemon=True)
        thread.start()
        url = urls.get(timeout=30)
        assert "code_challenge_method=S256" in url and "resource=" in url
        page = world.alice.page
        world.alice.open(url)
        if page.locator("#signin-passkey").count():
            page.click("#signin-passkey")
        expect(page.locator("#consent")).to_be_visible()
        assert rs.resource in page.locator("#consent").inner_text()
        world.alice.screenshot("authcode-5-mcp-sdk-consent")
        page.click("#consent-approve")
        expect(page.locator("#done")).to_be_visible()  # Playwright answers the redirect while it waits here
        thread.join(timeout=30)
        assert not thread.is_alive() and "error" not in outcome, outcome
        assert outcome["status"] == 200, outcome
        assert outcome["body"] == {"tools": ["list_events"], "for": "alice", "via": client["client_id"]}
        assert storage.tokens is not None and storage.tokens.refresh_token
        assert rs.seen[-1]["aud"] == rs.resource and rs.seen[-1]["scope"] == "tools.read"
    finally:
        cb.close()
        rs.close()
