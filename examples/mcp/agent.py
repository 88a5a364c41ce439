"""An agent using the tool server of server.py (docs/mcp.md): the ``mcp`` SDK's client with its own
client-credentials provider, and a person's approval through Tessera (CIBA) for the sensitive call.

    python agent.py --server http://127.0.0.1:8000/mcp --issuer https://tessera.example.com \\
        --client-id ledger-agent --client-secret ... --approver pat --to "ACME Ltd" --amount 12.50

It lists the tools, reads a balance with its own token, then asks to transfer money: the server
answers that this call needs an approval, the agent asks ``--approver`` through Tessera with a
message naming the tool, waits for the answer on their phone, and makes the call with the approval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import httpx2
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tessera.client import ClientSecret
from tessera.client.approvals import CibaApprover
from tessera.client.mcp import call_tool_with_approval


class InMemoryTokens:
    """The SDK's TokenStorage: tokens kept for the life of the process."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def run(
    server: str,
    issuer: str,
    client_id: str,
    client_secret: str,
    approver: str,
    transfer: dict[str, Any],
    *,
    acr_values: str | None = None,
) -> dict[str, Any]:
    """What the agent did: the tools it saw, the balance it read and the transfer's answer."""
    provider = ClientCredentialsOAuthProvider(
        server, InMemoryTokens(), client_id, client_secret, scope="tools", issuer=issuer
    )
    person = CibaApprover(issuer, ClientSecret(client_id, client_secret), login_hint=approver, acr_values=acr_values)
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        streamable_http_client(server, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = [t.name for t in (await session.list_tools()).tools]
        balance = await session.call_tool("balance", {"account": "operations"})
        sent = await call_tool_with_approval(session, server, "transfer_funds", transfer, approver=person)
        return {
            "tools": tools,
            "balance": balance.content[0].text,  # type: ignore[union-attr]
            "transfer": sent.content[0].text,  # type: ignore[union-attr]
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="the MCP server's URL (its resource URI)")
    p.add_argument("--issuer", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--approver", required=True, help="who approves the transfer (person id or e-mail)")
    p.add_argument("--to", required=True)
    p.add_argument("--amount", type=float, required=True)
    p.add_argument("--acr-values", help="e.g. urn:tessera:aal1 for an authenticator-app code")
    args = p.parse_args()
    transfer = {"to": args.to, "amount": args.amount, "currency": "EUR"}
    result = asyncio.run(
        run(
            args.server,
            args.issuer,
            args.client_id,
            args.client_secret,
            args.approver,
            transfer,
            acr_values=args.acr_values,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
