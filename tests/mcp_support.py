"""Test support for MCP: the example tool server (examples/mcp/server.py) under uvicorn on 127.0.0.1 in
a thread, an in-memory token store for the SDK's OAuth providers, and an MCP session opened with the
SDK's own streamable HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import uvicorn
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from support import free_port

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "mcp"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import server as example_server  # noqa: E402  (examples/mcp/server.py)

__all__ = ["Clock", "McpServerThread", "MemoryTokenStorage", "example_server", "mcp_session"]


class Clock:
    """Wall time plus an offset the test moves (the tool server's view of time; Tessera keeps its own)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class McpServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread (its own event loop)."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + "/mcp"
        self.app = build(self.url)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> McpServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the MCP server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class MemoryTokenStorage:
    """The SDK's ``TokenStorage`` protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@contextlib.asynccontextmanager
async def mcp_session(
    url: str, auth: Any = None, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized MCP session over streamable HTTP, the HTTP client authenticated by ``auth`` (an
    SDK OAuth provider) or ``headers``."""
    async with (
        httpx2.AsyncClient(auth=auth, headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await asyncio.wait_for(session.initialize(), 30)
        yield session
