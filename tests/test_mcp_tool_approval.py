"""A sensitive MCP tool (``transfer_funds``) needs a person's approval of exactly that call.

The agent (the ``mcp`` SDK's client with its client-credentials provider) is refused without one
(403, ``WWW-Authenticate: Bearer error="insufficient_authorization_details"``, a JSON-RPC error naming the
``tool_invocation`` authorization details to ask for); ``tessera.client.mcp.call_tool_with_approval``
asks Tessera through CIBA, the person reads server, tool and arguments on the approval page and
approves with an authenticator-app code (the scripted TOTP path), and the call goes through. The
approved token is refused for a second call (used once), for other arguments, and once the approval
has expired. Everything runs live on 127.0.0.1: ``tessera serve``, the example tool server under
uvicorn, the SDK's streamable HTTP client.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.shared.exceptions import MCPError

from approval_support import PageClient
from ciba_support import CIBA, Ciba, ciba_world
from mcp_support import Clock, McpServerThread, MemoryTokenStorage, example_server, mcp_session
from tessera.approvals.totp import code_at
from tessera.client import ClientSecret, Token, TokenError
from tessera.client.approvals import CibaApprover
from tessera.client.mcp import approval_request, call_tool_with_approval
from tessera.verify.tool_calls import arguments_hash

ARGS = {"to": "ACME Ltd", "amount": 12.5, "currency": "EUR"}


class World:
    def __init__(self, ciba: Ciba, mcp: McpServerThread, clock: Clock, protection: Any) -> None:
        self.ciba, self.mcp, self.clock, self.protection = ciba, mcp, clock, protection
        self.secrets: dict[str, bytes] = {}
        self.agent = ciba.srv.register(
            grant_types=["client_credentials", CIBA],
            scope="tools",
            allowed_resources=[mcp.url],
            backchannel_token_delivery_mode="poll",
            client_name="ledger agent",
        )

    def person_with_totp(self, pid: str) -> None:
        r = self.ciba.admin.put(f"/people/{pid}", json={"name": pid.title(), "channels": ["file"]})
        assert r.status_code in (200, 201), r.text
        assert self.ciba.admin.post(f"/people/{pid}/enrolment").status_code == 202
        page = PageClient(self.ciba.srv.issuer)
        self.ciba.people[pid] = type("P", (), {"seen": 0})()  # type: ignore[assignment]
        self.secrets[pid] = page.enrol_totp(self.ciba.mb.link("enrolment.link", pid, 1))

    def provider(self) -> ClientCredentialsOAuthProvider:
        return ClientCredentialsOAuthProvider(
            self.mcp.url,
            MemoryTokenStorage(),
            self.agent["client_id"],
            self.agent["client_secret"],
            scope="tools",
            issuer=self.ciba.srv.issuer,
        )

    def approver(self, pid: str) -> RecordingApprover:
        return RecordingApprover(
            self.ciba.srv.issuer,
            ClientSecret(self.agent["client_id"], self.agent["client_secret"]),
            login_hint=pid,
            acr_values="urn:tessera:aal1",  # an authenticator-app code proves AAL1
            timeout=60,
        )


class RecordingApprover(CibaApprover):
    """The library's approver, keeping the token it obtained (to replay it in the tests)."""

    tokens: list[Token]

    async def approve(self, authorization_details: Sequence[Any], **kw: Any) -> Token:
        self.tokens = getattr(self, "tokens", [])
        self.requested = list(authorization_details)
        self.tokens.append(await super().approve(authorization_details, **kw))
        return self.tokens[-1]


class Person(threading.Thread):
    """The person on their phone: opens the next approval link, reads it, answers with a TOTP code."""

    def __init__(self, world: World, pid: str, decision: str = "approve") -> None:
        super().__init__(daemon=True)
        self.world, self.pid, self.decision = world, pid, decision
        self.page: str = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            link = self.world.ciba.mb.link("approval.requested", self.pid, 1)
            client = PageClient(self.world.ciba.srv.issuer)
            self.page = client.get(link).text
            # The enrolment used the current 30 s step and a code is accepted once (RFC 6238 §5.2): the next.
            code = code_at(self.world.secrets[self.pid], time.time() + 30)
            r = client.decide_with_code(link, self.decision, code)
            assert r.status_code == 200 and 'id="outcome"' in r.text, r.text
        except BaseException as e:
            self.error = e


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ciba_world(tmp_path_factory.mktemp("mcp-approval") / "data", TESSERA_DEV_MODE="true") as ciba:
        clock = Clock()
        built: dict[str, Any] = {}

        def build(url: str) -> Any:
            app, built["protection"] = example_server.build(ciba.srv.issuer, url, clock=clock)
            return app

        mcp = McpServerThread(build).start()
        try:
            yield World(ciba, mcp, clock, built["protection"])
        finally:
            mcp.stop()


def test_without_approval_the_call_is_refused_with_a_challenge(world: World) -> None:
    async def run() -> MCPError:
        async with mcp_session(world.mcp.url, auth=world.provider()) as session:
            assert not (await session.call_tool("balance", {"account": "ops"})).is_error
            with pytest.raises(MCPError) as refused:
                await session.call_tool("transfer_funds", ARGS)
            return refused.value

    error = asyncio.run(run())
    challenge = approval_request(error)
    assert challenge is not None and challenge["reason"] == "approval_required"
    assert challenge["authorization_server"] == world.ciba.srv.issuer and challenge["scope"] == "tools"
    [entry] = challenge["authorization_details"]
    assert entry["type"] == "tool_invocation" and entry["locations"] == [world.mcp.url]
    assert entry["tool"] == "transfer_funds" and entry["arguments"] == ARGS
    assert entry["arguments_hash"] == arguments_hash({"currency": "EUR", "amount": 12.5, "to": "ACME Ltd"})
    assert example_server.LEDGER == []

    # The same refusal over plain HTTP: 403 with the step-up challenge (RFC 9470 §3 style).
    token = httpx.post(
        world.ciba.srv.token_endpoint,
        data={"grant_type": "client_credentials", "resource": world.mcp.url, "scope": "tools"},
        auth=(world.agent["client_id"], world.agent["client_secret"]),
    ).json()["access_token"]
    call = {
        "jsonrpc": "2.0",
        "id": "c1",
        "method": "tools/call",
        "params": {"name": "transfer_funds", "arguments": ARGS},
    }
    r = httpx.post(
        world.mcp.url,
        json=call,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 403
    assert r.headers["www-authenticate"].startswith('Bearer error="insufficient_authorization_details"')
    assert "resource_metadata=" in r.headers["www-authenticate"]
    body = r.json()
    assert body["id"] == "c1" and body["error"]["data"]["authorization_details"][0]["tool"] == "transfer_funds"


def test_approved_call_succeeds_once_and_only_with_its_arguments(world: World) -> None:
    world.person_with_totp("pat")
    pat = Person(world, "pat")
    pat.start()
    approver = world.approver("pat")

    async def run() -> str:
        async with mcp_session(world.mcp.url, auth=world.provider()) as session:
            result = await call_tool_with_approval(session, world.mcp.url, "transfer_funds", ARGS, approver=approver)
            return result.content[0].text  # type: ignore[union-attr]

    assert asyncio.run(run()) == "sent 12.50 EUR to ACME Ltd"
    pat.join(10)
    assert pat.error is None, pat.error
    assert example_server.LEDGER == [ARGS]

    # What the person saw: the tool, the server and each argument, readably.
    page = html.unescape(pat.page)
    assert '<strong class="tool-name">transfer_funds</strong>' in page
    assert f'<code class="tool-server">{world.mcp.url}</code>' in page
    assert '<th><code>to</code></th><td><code>"ACME Ltd"</code></td>' in page
    assert "<th><code>amount</code></th><td><code>12.5</code></td>" in page
    assert "Approve transfer_funds" in page  # the binding message names the tool

    # The token carries the approval for that one call, for the person, with the agent as actor.
    token = approver.tokens[0].access_token
    claims = world.protection.verifier.verify(token)
    assert claims["sub"] == "pat" and claims["act"] == {"sub": world.agent["client_id"]}
    assert claims["aud"] == world.mcp.url or claims["aud"] == [world.mcp.url]
    assert claims["authorization_details"] == approver.requested

    async def again(arguments: dict[str, Any]) -> MCPError:
        async with mcp_session(world.mcp.url, headers={"Authorization": f"Bearer {token}"}) as session:
            with pytest.raises(MCPError) as refused:
                await session.call_tool("transfer_funds", arguments)
            return refused.value

    # Other arguments: not the approved call.
    other = asyncio.run(again({**ARGS, "amount": 1250.0}))
    assert approval_request(other)["reason"] == "approval_mismatch"  # type: ignore[index]
    # The approved call itself, a second time: used once.
    replay = asyncio.run(again(ARGS))
    assert approval_request(replay)["reason"] == "approval_replayed"  # type: ignore[index]
    assert example_server.LEDGER == [ARGS]


def test_an_expired_approval_is_refused(world: World) -> None:
    world.person_with_totp("sam")
    sam = Person(world, "sam")
    sam.start()
    approver = world.approver("sam")
    arguments = {"to": "Globex", "amount": 99.0, "currency": "EUR"}
    details = world.protection.approvals.to_request("transfer_funds", arguments)
    token = asyncio.run(
        approver.approve(details, binding_message="Approve transfer_funds", scope="openid tools")
    ).access_token
    sam.join(10)
    assert sam.error is None, sam.error
    # The approval was for 300 s; the token lives 900 s. Past the approval (and the leeway) it is refused.
    world.clock.offset = 300 + 60

    async def run() -> MCPError:
        async with mcp_session(world.mcp.url, headers={"Authorization": f"Bearer {token}"}) as session:
            with pytest.raises(MCPError) as refused:
                await session.call_tool("transfer_funds", arguments)
            return refused.value

    try:
        error = asyncio.run(run())
    finally:
        world.clock.offset = 0
    assert approval_request(error)["reason"] == "approval_expired"  # type: ignore[index]
    assert arguments not in example_server.LEDGER


def test_a_denial_is_a_token_error_and_nothing_runs(world: World) -> None:
    world.person_with_totp("kim")
    kim = Person(world, "kim", decision="deny")
    kim.start()
    approver = world.approver("kim")
    arguments = {"to": "Initech", "amount": 5.0, "currency": "EUR"}

    async def run() -> TokenError:
        async with mcp_session(world.mcp.url, auth=world.provider()) as session:
            with pytest.raises(TokenError) as denied:
                await call_tool_with_approval(session, world.mcp.url, "transfer_funds", arguments, approver=approver)
            return denied.value

    error = asyncio.run(run())
    kim.join(10)
    assert kim.error is None, kim.error
    assert error.error == "access_denied"
    assert arguments not in example_server.LEDGER


def test_tessera_refuses_a_tool_invocation_whose_hash_is_not_of_the_arguments_shown(world: World) -> None:
    world.person_with_totp("lee")
    entry = world.protection.approvals.to_request("transfer_funds", {"to": "ACME", "amount": 1})[0]
    entry["arguments"] = {"to": "ACME", "amount": 1000000}  # shown to the person: not what is hashed
    r = world.ciba.bc(
        world.agent,
        login_hint="lee",
        scope="openid tools",
        binding_message="Approve transfer_funds",
        authorization_details=json.dumps([entry]),
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_authorization_details", r.text
    # A tool server the agent may not have tokens for is refused too (RFC 8707).
    other = world.protection.approvals.to_request("transfer_funds", {"to": "ACME"})[0]
    other["locations"] = ["https://elsewhere.example/mcp"]
    r = world.ciba.bc(world.agent, login_hint="lee", binding_message="x", authorization_details=json.dumps([other]))
    assert r.status_code == 400 and r.json()["error"] == "invalid_target", r.text


def test_the_example_agent_end_to_end(world: World) -> None:
    """examples/mcp/agent.py as a process of its own, against examples/mcp/server.py (docs/mcp.md)."""
    import subprocess
    import sys

    from mcp_support import EXAMPLES

    world.person_with_totp("ana")
    ana = Person(world, "ana")
    ana.start()
    argv = [
        sys.executable,
        str(EXAMPLES / "agent.py"),
        "--server",
        world.mcp.url,
        "--issuer",
        world.ciba.srv.issuer,
        "--client-id",
        world.agent["client_id"],
        "--client-secret",
        world.agent["client_secret"],
        "--approver",
        "ana",
        "--to",
        "Umbrella plc",
        "--amount",
        "7.25",
        "--acr-values",
        "urn:tessera:aal1",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    ana.join(10)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ana.error is None, ana.error
    result = json.loads(done.stdout)
    assert result == {
        "tools": ["balance", "read_ledger", "transfer_funds"],
        "balance": "operations: 100.00 EUR",
        "transfer": "sent 7.25 EUR to Umbrella plc",
    }
    assert {"to": "Umbrella plc", "amount": 7.25, "currency": "EUR"} in example_server.LEDGER
