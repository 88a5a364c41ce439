"""An MCP tool server protected by Tessera (docs/mcp.md): a few lines around an ordinary MCPServer.

    TESSERA_ISSUER=https://tessera.example.com MCP_RESOURCE=https://tools.example.com/mcp \\
        uvicorn --factory server:app --host 127.0.0.1 --port 8000

- every request needs a Tessera token issued for MCP_RESOURCE with the scope ``tools``;
- ``read_ledger`` needs ``ledger.read`` as well;
- ``transfer_funds`` needs, on every call, a person's approval of exactly that call (server, tool,
  arguments), which the agent obtains through CIBA (examples/mcp/agent.py).
"""

from __future__ import annotations

import os
from typing import Any

from mcp.server.mcpserver import MCPServer

from tessera.verify.mcp import McpProtection

#: what the tools did, for the tests (a real server would move money here)
LEDGER: list[dict[str, Any]] = []


def build(issuer: str, resource: str, **options: Any) -> tuple[Any, McpProtection]:
    """The protected ASGI app and its protection (``options`` go to ``McpProtection``)."""
    protection = McpProtection(
        issuer,
        resource,
        required_scopes=["tools"],
        tool_scopes={"read_ledger": ["ledger.read"]},
        approval_required={"transfer_funds"},
        resource_name="Ledger tools",
        **options,
    )
    server = MCPServer("ledger", token_verifier=protection.token_verifier, auth=protection.auth_settings())

    @server.tool()
    def balance(account: str) -> str:
        """The balance of an account."""
        return f"{account}: 100.00 EUR"

    @server.tool()
    def read_ledger() -> str:
        """Every transfer made so far."""
        return repr(LEDGER)

    @server.tool()
    def transfer_funds(to: str, amount: float, currency: str = "EUR") -> str:
        """Move money. Each call needs a person's approval of exactly this call."""
        LEDGER.append({"to": to, "amount": amount, "currency": currency})
        return f"sent {amount:.2f} {currency} to {to}"

    app = protection.protect(server.streamable_http_app(json_response=True))
    return app, protection


def app() -> Any:
    return build(os.environ["TESSERA_ISSUER"], os.environ["MCP_RESOURCE"])[0]
