"""The agent's side of a tool call that needs a person's approval (an MCP server protected with
``tessera.verify.mcp``).

    result = await call_tool_with_approval(session, server_url, "transfer_funds", {"to": "ACME", "amount": 12},
                                           approver=CibaApprover(issuer, credential, login_hint="pat"))

The call is made as usual. When the server refuses it with ``403`` and the JSON-RPC error
``data.error == "insufficient_authorization_details"`` (the step-up challenge of
``tessera.verify.mcp``), the ``authorization_details`` it names are asked for through CIBA with a
binding message naming the tool, the agent waits for the person's answer, and the call is made once
more in a new MCP session carrying the approval token (the approval is for that one call; the
server binds a session to the principal that opened it, and the approval token's subject is the
person). Any other error is raised unchanged; a refusal by the person is a ``TokenError``.

Needs the ``mcp`` extra (``pip install tessera[mcp]``); ``tessera.client`` does not import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from tessera.client.approvals import CibaApprover

__all__ = ["APPROVAL_ERROR", "approval_request", "call_tool_with_approval"]

#: The error ``tessera.verify.mcp`` answers a call that needs an approval with.
APPROVAL_ERROR = "insufficient_authorization_details"


def approval_request(error: MCPError) -> dict[str, Any] | None:
    """The approval challenge's data (``authorization_details``, ``scope``, ``authorization_server``),
    or None when ``error`` is not one."""
    data = error.error.data
    if (
        isinstance(data, dict)
        and data.get("error") == APPROVAL_ERROR
        and isinstance(data.get("authorization_details"), list)
    ):
        return data
    return None


async def call_tool_with_approval(
    session: ClientSession,
    server_url: str,
    name: str,
    arguments: Mapping[str, Any],
    *,
    approver: CibaApprover,
    binding_message: str | None = None,
) -> CallToolResult:
    """``session.call_tool(name, arguments)``; on an approval challenge, the approval through CIBA and
    the call again with it (see the module docstring)."""
    try:
        return await session.call_tool(name, dict(arguments))
    except MCPError as e:
        challenge = approval_request(e)
        if challenge is None:
            raise
        code = e.error.code
    server = challenge.get("authorization_server")
    if isinstance(server, str) and server != approver.issuer:
        raise MCPError(code, f"the server wants an approval from {server!r}, not {approver.issuer!r}")
    scope = " ".join(["openid", *str(challenge.get("scope") or "").split()])
    token = await approver.approve(
        challenge["authorization_details"],
        binding_message=binding_message or f"Approve {name}"[:64],
        scope=scope,
        resource=server_url,
    )
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token.access_token}"}, timeout=30) as http,
        streamable_http_client(server_url, http_client=http) as (read, write),
        ClientSession(read, write) as approved,
    ):
        await approved.initialize()
        return await approved.call_tool(name, dict(arguments))
