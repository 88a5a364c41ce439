"""An MCP server protected by Tessera, used by agents built on the ``mcp`` SDK with its own OAuth
client-credentials providers (MCP "OAuth Client Credentials" extension), over streamable HTTP on
127.0.0.1: discovery through RFC 9728 protected resource metadata and RFC 8414, tokens from Tessera's
token endpoint (client secret, private_key_jwt, a workload identity token as the assertion), local
verification with the RFC 8707 audience check, and the 401 challenge the MCP specification requires.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
    static_assertion_provider,
)
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata

from federation_support import FakeIssuer, kubernetes_sa_claims
from mcp_support import Clock, McpServerThread, MemoryTokenStorage, example_server, mcp_session
from support import LiveServer, ec_jwk, ec_key

FED_AUDIENCE = "tessera-client-auth"
FED_SUBJECT = "system:serviceaccount:agents:ledger-agent"


class World:
    def __init__(self, srv: LiveServer, mcp: McpServerThread, idp: FakeIssuer, clock: Clock, protection: Any) -> None:
        self.srv, self.mcp, self.idp, self.clock, self.protection = srv, mcp, idp, clock, protection

    def secret_client(self, scope: str = "tools ledger.read", resources: list[str] | None = None) -> dict[str, Any]:
        return self.srv.register(scope=scope, allowed_resources=resources or [self.mcp.url])

    def token(self, client: dict[str, Any], resource: str, scope: str = "tools") -> str:
        r = httpx.post(
            self.srv.token_endpoint,
            data={"grant_type": "client_credentials", "resource": resource, "scope": scope},
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with FakeIssuer(algs=("RS256",)) as idp:
        trust = {
            "name": "agents",
            "issuer": idp.issuer,
            "audiences": [FED_AUDIENCE],
            "condition": "assertion['kubernetes.io'].namespace == 'agents'",
            "bindings": [{"audiences": ["https://exchange-only.example"]}],
        }
        env = {"TESSERA_DEV_MODE": "true", "TESSERA_TRUSTED_ISSUERS": json.dumps([trust])}
        srv = LiveServer(tmp_path_factory.mktemp("mcp-cc") / "data", extra_env=env).start()
        clock = Clock()

        built: dict[str, Any] = {}

        def build(url: str) -> Any:
            app, built["protection"] = example_server.build(srv.issuer, url, clock=clock)
            return app

        mcp = McpServerThread(build).start()
        try:
            yield World(srv, mcp, idp, clock, built["protection"])
        finally:
            mcp.stop()
            srv.stop()
    assert srv.cli("audit", "verify").returncode == 0


async def use_tools(url: str, provider: Any) -> tuple[list[str], str, str]:
    async with mcp_session(url, auth=provider) as session:
        tools = sorted(t.name for t in (await session.list_tools()).tools)
        balance = await session.call_tool("balance", {"account": "ops"})
        ledger = await session.call_tool("read_ledger", {})
        return tools, balance.content[0].text, ledger.content[0].text  # type: ignore[union-attr]


def test_metadata_parses_with_the_sdk_models(world: World) -> None:
    """RFC 8414 and RFC 9728 documents as the SDK's own pydantic models read them."""
    asm = OAuthMetadata.model_validate(httpx.get(world.srv.issuer + "/.well-known/oauth-authorization-server").json())
    assert str(asm.issuer) == world.srv.issuer and "client_credentials" in (asm.grant_types_supported or [])
    assert "private_key_jwt" in (asm.token_endpoint_auth_methods_supported or [])
    prm_url = world.mcp.origin + "/.well-known/oauth-protected-resource/mcp"
    raw = httpx.get(prm_url).json()
    prm = ProtectedResourceMetadata.model_validate(raw)
    assert str(prm.resource) == world.mcp.url and [str(a) for a in prm.authorization_servers] == [world.srv.issuer]
    assert raw["authorization_details_types_supported"] == ["tool_invocation"]
    assert raw["scopes_supported"] == ["tools"]  # a tool's own scope is asked for on its challenge


def test_client_secret_provider_lists_and_calls_tools(world: World) -> None:
    client = world.secret_client()
    storage = MemoryTokenStorage()
    provider = ClientCredentialsOAuthProvider(
        world.mcp.url,
        storage,
        client["client_id"],
        client["client_secret"],
        scope="tools ledger.read",
        issuer=world.srv.issuer,
    )
    tools, balance, ledger = asyncio.run(use_tools(world.mcp.url, provider))
    assert tools == ["balance", "read_ledger", "transfer_funds"]
    assert balance == "ops: 100.00 EUR" and ledger.startswith("[")
    # The token the SDK obtained is for this server only (RFC 8707), checked by an independent library.
    assert storage.tokens is not None
    token = storage.tokens.access_token
    keys = jwt.PyJWKSet.from_dict(httpx.get(world.srv.issuer + "/oauth/jwks").json())
    claims = jwt.decode(
        token,
        keys[jwt.get_unverified_header(token)["kid"]],
        algorithms=["ES256"],
        audience=world.mcp.url,
        issuer=world.srv.issuer,
    )
    # read_ledger's 403 insufficient_scope made the SDK step up to "tools ledger.read" (MCP scope challenge).
    assert claims["client_id"] == client["client_id"] and set(claims["scope"].split()) == {"tools", "ledger.read"}


def test_client_secret_post_provider(world: World) -> None:
    reg = world.srv.register(
        scope="tools", allowed_resources=[world.mcp.url], token_endpoint_auth_method="client_secret_post"
    )
    provider = ClientCredentialsOAuthProvider(
        world.mcp.url,
        MemoryTokenStorage(),
        reg["client_id"],
        reg["client_secret"],
        token_endpoint_auth_method="client_secret_post",
        scope="tools",
        issuer=world.srv.issuer,
    )

    async def run() -> str:
        async with mcp_session(world.mcp.url, auth=provider) as session:
            result = await session.call_tool("balance", {"account": "ops"})
            return result.content[0].text  # type: ignore[union-attr]

    assert asyncio.run(run()) == "ops: 100.00 EUR"


def test_a_tool_scope_missing_from_the_token_is_a_scope_challenge(world: World) -> None:
    """MCP authorization §"Scope Challenge Handling": 403 insufficient_scope naming the scopes the call needs."""
    client = world.secret_client(scope="tools")
    token = world.token(client, world.mcp.url)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "read_ledger", "arguments": {}}}
    r = httpx.post(
        world.mcp.url,
        json=call,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 403
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="ledger.read"' in challenge
    assert "resource_metadata=" in challenge
    assert r.json()["id"] == 7 and "ledger.read" in r.json()["error"]["message"]


def test_private_key_jwt_provider(world: World) -> None:
    key = ec_key()
    reg = world.srv.register(
        scope="tools",
        allowed_resources=[world.mcp.url],
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [ec_jwk(key, "agent-1")]},
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    params = SignedJWTParameters(
        issuer=reg["client_id"], subject=reg["client_id"], signing_key=pem, signing_algorithm="ES256"
    )
    provider = PrivateKeyJWTOAuthProvider(
        world.mcp.url,
        MemoryTokenStorage(),
        reg["client_id"],
        params.create_assertion_provider(),
        scope="tools",
        issuer=world.srv.issuer,
    )

    async def run() -> list[str]:
        async with mcp_session(world.mcp.url, auth=provider) as session:
            return sorted(t.name for t in (await session.list_tools()).tools)

    assert "balance" in asyncio.run(run())


def test_workload_identity_token_as_the_assertion(world: World) -> None:
    """An agent with no secret and no key: its platform's token (a Kubernetes projected service-account
    token from a trusted issuer) is the client assertion (docs/federation.md, federated credentials)."""
    # RFC 7523 §3 (2.B): the assertion's sub is the client_id, so the client is created (by an operator)
    # with the workload's subject as its id; the SDK's provider sends no client_id (RFC 7523 §2.2).
    with world.srv.admin() as admin:
        r = admin.post(
            "/clients",
            json={
                "client_id": FED_SUBJECT,
                "grant_types": ["client_credentials"],
                "scope": "tools",
                "allowed_resources": [world.mcp.url],
                "token_endpoint_auth_method": "private_key_jwt",
                "federated_credentials": [
                    {"issuer": world.idp.issuer, "subject": FED_SUBJECT, "audience": FED_AUDIENCE}
                ],
            },
        )
    assert r.status_code == 201, r.text
    reg = r.json()
    claims = kubernetes_sa_claims(FED_AUDIENCE, namespace="agents", service_account="ledger-agent")
    assert claims["sub"] == FED_SUBJECT
    provider = PrivateKeyJWTOAuthProvider(
        world.mcp.url,
        MemoryTokenStorage(),
        reg["client_id"],
        static_assertion_provider(world.idp.mint(claims)),
        scope="tools",
        issuer=world.srv.issuer,
    )

    async def run() -> str:
        async with mcp_session(world.mcp.url, auth=provider) as session:
            return (await session.call_tool("balance", {"account": "k8s"})).content[0].text  # type: ignore[union-attr]

    assert asyncio.run(run()) == "k8s: 100.00 EUR"
    # The same token from another issuer's namespace is refused (the trust's condition).
    other = world.idp.mint(kubernetes_sa_claims(FED_AUDIENCE, namespace="prod", service_account="ledger-agent"))
    r = httpx.post(
        world.srv.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": other,
        },
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def post_initialize(url: str, token: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    return httpx.post(url, json=body, headers=headers, timeout=10)


def test_missing_token_gets_the_resource_metadata_challenge(world: World) -> None:
    r = post_initialize(world.mcp.url, None)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    # MCP authorization §"Protected Resource Metadata Discovery": WWW-Authenticate with resource_metadata
    # (RFC 9728 §5.1).
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{world.mcp.origin}/.well-known/oauth-protected-resource/mcp"' in challenge


def test_a_token_for_another_resource_is_refused(world: World) -> None:
    other = "https://other-tools.example/mcp"
    client = world.secret_client(resources=[world.mcp.url, other])
    good = post_initialize(world.mcp.url, world.token(client, world.mcp.url))
    assert good.status_code == 200, good.text
    r = post_initialize(world.mcp.url, world.token(client, other))
    assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]
    assert world.protection.token_verifier.last_refusal == "wrong_audience"


def test_an_expired_token_is_refused(world: World) -> None:
    client = world.secret_client()
    token = world.token(client, world.mcp.url)
    assert post_initialize(world.mcp.url, token).status_code == 200
    world.clock.offset = 900 + 60  # past the default lifetime (900 s) and the leeway (30 s)
    try:
        r = post_initialize(world.mcp.url, token)
    finally:
        world.clock.offset = 0
    assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]
    assert world.protection.token_verifier.last_refusal == "expired"


def test_a_revoked_token_is_refused_through_the_status_list(world: World) -> None:
    client = world.secret_client()
    token = world.token(client, world.mcp.url)
    assert post_initialize(world.mcp.url, token).status_code == 200
    r = httpx.post(
        world.srv.issuer + "/oauth/revoke", data={"token": token}, auth=(client["client_id"], client["client_secret"])
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    # The status list is cached by the tool server for its ttl; move the tool server's clock past it.
    world.clock.offset = 120
    try:
        while time.monotonic() < deadline:
            r = post_initialize(world.mcp.url, token)
            if r.status_code == 401:
                break
            time.sleep(0.5)
    finally:
        world.clock.offset = 0
    assert r.status_code == 401
    assert world.protection.token_verifier.last_refusal == "revoked"


def test_tessera_verify_does_not_import_mcp(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    code = "import sys, tessera.verify, tessera.client; assert 'mcp' not in sys.modules, 'mcp imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
