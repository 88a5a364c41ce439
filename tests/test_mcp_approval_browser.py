"""The passkey path of a tool-call approval, in real Chromium: the example agent (examples/mcp/agent.py)
asks to transfer money through the example tool server; the person opens the approval link in their
browser, reads the tool call (tool, server, arguments) and approves with a passkey (a CDP virtual
authenticator); the agent's call then goes through, once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from approval_support import Mailbox, approval_server
from browser_support import Device, chromium, csp_violations, skip_without_chromium
from mcp_support import EXAMPLES, McpServerThread, example_server
from support import LiveServer

__all__ = ["chromium"]  # the module-scoped browser fixture

pytestmark = skip_without_chromium


class World:
    def __init__(self, srv: LiveServer, box: Mailbox, mcp: McpServerThread, pat: Device) -> None:
        self.srv, self.box, self.mcp, self.pat = srv, box, mcp, pat


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, chromium: Browser) -> Iterator[World]:
    srv = approval_server(tmp_path_factory.mktemp("mcp-browser") / "data", TESSERA_CIBA_INTERVAL="1")
    # WebAuthn: the relying party id is the issuer's host, which must be a name, not 127.0.0.1.
    srv.issuer = f"http://localhost:{srv.port}"
    srv.env["TESSERA_ISSUER"] = srv.issuer
    srv.start()
    pat = Device(chromium, "pat")
    mcp = McpServerThread(lambda url: example_server.build(srv.issuer, url)[0]).start()
    try:
        box = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        with srv.admin() as admin:
            r = admin.put("/people/pat", json={"name": "Pat Example", "channels": ["file"]})
            assert r.status_code == 201, r.text
            assert admin.post("/people/pat/enrolment").status_code == 202
        pat.open(box.link("enrolment.link", "pat"))
        pat.page.fill("#passkey-label", "Pat's laptop")
        pat.page.click("#add-passkey")
        expect(pat.page.locator("#enrolled")).to_be_visible()
        yield World(srv, box, mcp, pat)
    finally:
        mcp.stop()
        pat.close()
        srv.stop()
    assert srv.cli("audit", "verify").returncode == 0


def test_a_person_approves_a_tool_call_with_a_passkey(world: World) -> None:
    import sys

    sys.path.insert(0, str(EXAMPLES))
    import agent  # examples/mcp/agent.py

    client = world.srv.register(
        grant_types=["client_credentials", "urn:openid:params:grant-type:ciba"],
        scope="tools",
        allowed_resources=[world.mcp.url],
        backchannel_token_delivery_mode="poll",
        client_name="ledger agent",
    )
    transfer = {"to": "Wayne Enterprises", "amount": 42.0, "currency": "EUR"}
    outcome: dict[str, Any] = {}

    def run_agent() -> None:
        # Playwright's sync API owns this thread's event loop: the agent runs its own in another thread.
        try:
            secret = client["client_secret"]
            outcome["result"] = asyncio.run(
                agent.run(world.mcp.url, world.srv.issuer, client["client_id"], secret, "pat", transfer)
            )
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run_agent, daemon=True)
    thread.start()

    link = world.box.link("approval.requested", "pat")
    page = world.pat.page
    assert world.pat.open(link).status == 200
    # The person reads exactly the call: the tool, the server, each argument.
    expect(page.locator("#tool-call-1 .tool-name")).to_have_text("transfer_funds")
    expect(page.locator("#tool-call-1 .tool-server")).to_have_text(world.mcp.url)
    args = page.locator("#tool-call-1 .tool-args").inner_text()
    assert '"Wayne Enterprises"' in args and "42.0" in args and '"EUR"' in args
    expect(page.locator("#tx-message")).to_have_text("Approve transfer_funds")
    expect(page.locator("#tx-resource")).to_have_text(world.mcp.url)  # the token's audience: the tool server
    world.pat.screenshot("mcp-tool-call-approval")
    page.click("#approve-passkey")
    expect(page.locator("#outcome")).to_have_text("Approval recorded")

    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.5)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["transfer"] == "sent 42.00 EUR to Wayne Enterprises"
    assert transfer in example_server.LEDGER
    assert csp_violations(world.pat.console) == []
