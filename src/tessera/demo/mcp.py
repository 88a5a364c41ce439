"""The demo's MCP scenario (``tessera demo --scenario mcp``, issue 9): an AI agent calls the tools of
an MCP server that trusts Tessera, and a person approves the one sensitive call.

- **The tool server**: an ordinary ``mcp`` SDK server (``MCPServer``, streamable HTTP) under uvicorn
  on a loopback socket the demo binds first, protected by ``tessera.verify.mcp.McpProtection``: RFC
  9728 protected resource metadata naming Tessera, tokens verified locally for its own resource URI
  (RFC 8707), ``transfer_funds`` approved per call.
- **The agent**: registers itself (RFC 7591), then uses the SDK's own client with its own
  ``ClientCredentialsOAuthProvider`` (discovery from the ``401``, RFC 8414, a token with
  ``resource``), and ``tessera.client.mcp.call_tool_with_approval`` for the approval through CIBA.
- **Sam**: the main story's phone and authenticator app; the approval page shows the tool call.

Needs the ``mcp`` extra; ``tessera.demo.runner`` imports this module only when the scenario runs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import httpx
import httpx2
import uvicorn
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.exceptions import MCPError

from tessera.client import ClientSecret, Token, TokenError
from tessera.client.approvals import CibaApprover
from tessera.client.mcp import approval_request, call_tool_with_approval
from tessera.demo.agent import Agent, CibaOutcome
from tessera.demo.payments import _oauth_error, _wait_for_a_person
from tessera.demo.report import Report, StepFailed
from tessera.demo.runner import MCP_BREAKS
from tessera.demo.world import APPROVER, World
from tessera.verify.errors import VerificationError
from tessera.verify.mcp import McpProtection

__all__ = ["BREAKS", "TRANSFER", "ToolServer", "play"]

TRANSFER = {"to": "ACME Supplies", "amount": 12.0, "currency": "EUR"}
OTHER = {**TRANSFER, "amount": 1200.0}
#: CIBA acr: an authenticator-app code (AAL1) is enough for the demo's approver
AAL1 = "urn:tessera:aal1"
STEP_TIMEOUT = 60.0  # a bound on every MCP exchange of the story

BREAKS = MCP_BREAKS


class ToolServer:
    """The ledger's MCP server, protected by Tessera, under uvicorn in a daemon thread of the demo.

    The socket is bound before the app is built (no race for the port), so the canonical resource URI
    ``http://127.0.0.1:PORT/mcp`` is known when ``McpProtection`` is made."""

    def __init__(self, issuer: str) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.ledger: list[dict[str, Any]] = []
        self.protection = McpProtection(
            issuer,
            self.url,
            required_scopes=["tools"],
            approval_required={"transfer_funds"},
            resource_name="Ledger tools (tessera demo)",
            background_refresh=False,
        )
        server = MCPServer(
            "ledger",
            token_verifier=self.protection.token_verifier,
            auth=self.protection.auth_settings(),
            log_level="WARNING",  # the SDK configures logging: no line per HTTP request in the story
        )

        @server.tool()
        def balance(account: str) -> str:
            """The balance of an account."""
            return f"{account}: 1,250.00 EUR"

        @server.tool()
        def transfer_funds(to: str, amount: float, currency: str = "EUR") -> str:
            """Move money. Each call needs a person's approval of exactly this call."""
            self.ledger.append({"to": to, "amount": amount, "currency": currency})
            return f"sent {amount:.2f} {currency} to {to}"

        app = self.protection.protect(server.streamable_http_app(json_response=True))
        # An agent still waiting for an approval keeps its session's stream open: bound the shutdown.
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [self._sock]}, daemon=True, name="demo-mcp"
        )

    def start(self, timeout: float = 20) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise StepFailed("the MCP tool server did not start")
            time.sleep(0.05)

    @property
    def metadata_url(self) -> str:
        return self.protection.metadata_url

    def close(self) -> None:
        if self._thread.is_alive():
            self._uvicorn.should_exit = True
            self._thread.join(10)
        self._sock.close()
        self.protection.verifier.close()


class _Tokens:
    """The SDK's ``TokenStorage``: the agent's token, kept for the life of the demo."""

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


class _Approver(CibaApprover):
    """``tessera.client``'s CIBA approver, keeping what it asked for and the token it got (shown, replayed)."""

    requested: list[Any]
    token: Token | None = None

    async def approve(self, authorization_details: Sequence[Any], **kw: Any) -> Token:
        self.requested = list(authorization_details)
        self.token = await super().approve(authorization_details, **kw)
        return self.token


@asynccontextmanager
async def _session(url: str, *, auth: Any = None, token: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        httpx2.AsyncClient(auth=auth, headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _unwrap(error: BaseException) -> BaseException:
    """The error itself, not the ``ExceptionGroup`` the SDK's task groups (anyio) wrap it in."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _run(coro: Any) -> Any:
    """One exchange of the story, bounded by ``STEP_TIMEOUT``."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, STEP_TIMEOUT)

    try:
        return asyncio.run(bounded())
    except BaseException as e:
        error = _unwrap(e)
        if isinstance(error, TimeoutError):
            raise StepFailed(f"the MCP exchange did not finish within {STEP_TIMEOUT:.0f} s") from None
        if error is e or not isinstance(error, Exception):
            raise
        raise error from None


def _text(result: Any) -> str:
    return str(getattr(result.content[0], "text", "")) if result.content else ""


def play(world: World, report: Report, *, auto_approve: bool, timeout: float, breaks: str | None) -> None:
    """The MCP story; raises ``StepFailed`` at the first step that fails."""
    with report.step("setup", "Tessera starts on the embedded default", numbered=False) as step:
        step.details["data_dir"] = str(world.data_dir)
        world.start()
        report.say("tessera serve is up", issuer=world.issuer, data=str(world.data_dir))
        before = world.phone.count("enrolment.link")
        r = world.admin_call("POST", f"/people/{APPROVER['person_id']}/enrolment")
        if r.status_code != 202:
            raise StepFailed(f"the enrolment link could not be sent: {_oauth_error(r)}")
        world.phone.enrol_totp(world.phone.wait_for("enrolment.link", after=before)["data"]["link"])
        report.say("Sam enrolled an authenticator app through the link the phone received")
        step.details.update(issuer=world.issuer)

    with ExitStack() as stack:  # the tool server and the agent are stopped whatever happens
        tools = _tool_server(world, report, stack)
        agent = Agent(world.issuer, world.registration_token, tools.url)
        stack.callback(agent.close)
        storage = _Tokens()
        provider = _connect(world, report, agent, tools, storage)
        _challenge(report, tools, provider, storage)
        deny = breaks == "approval"
        token = _approval(world, report, agent, tools, provider, auto_approve=auto_approve, timeout=timeout, deny=deny)
        _used_once(report, tools, token)


def _tool_server(world: World, report: Report, stack: ExitStack) -> ToolServer:
    with report.step("tool-server", "An MCP tool server trusts Tessera (RFC 9728 metadata)") as step:
        tools = ToolServer(world.issuer)
        stack.callback(tools.close)
        tools.start()
        report.say("the ledger's MCP server listens (mcp SDK, streamable HTTP)", resource=tools.url)
        r = httpx.get(tools.metadata_url, timeout=10)
        md = r.json() if r.status_code == 200 else {}
        if md.get("authorization_servers") != [world.issuer] or md.get("resource") != tools.url:
            raise StepFailed(f"the protected resource metadata does not name Tessera: HTTP {r.status_code} {md}")
        report.say(
            "it publishes its protected resource metadata",
            authorization_servers=md["authorization_servers"][0],
            scopes=" ".join(md.get("scopes_supported", [])),
        )
        anonymous = httpx.post(tools.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
        challenge = anonymous.headers.get("www-authenticate", "")
        if anonymous.status_code != 401 or "resource_metadata=" not in challenge:
            raise StepFailed(
                f"a call without a token was not refused with the MCP challenge: HTTP {anonymous.status_code}"
            )
        pointer = challenge[challenge.index("resource_metadata=") :].split(",")[0]
        report.say("a call without a token gets 401 pointing to that metadata", **{"WWW-Authenticate": pointer})
        step.details.update(resource=tools.url, metadata=md, anonymous=anonymous.status_code)
        return tools


def _connect(
    world: World, report: Report, agent: Agent, tools: ToolServer, storage: _Tokens
) -> ClientCredentialsOAuthProvider:
    with report.step("connect", "An agent connects with the mcp SDK's client-credentials provider") as step:
        client_id = agent.register("ledger-agent", contacts=[str(APPROVER["email"])], scope="tools")
        report.say("the agent registered itself (RFC 7591)", client_id=client_id, resource=tools.url)
        provider = ClientCredentialsOAuthProvider(
            tools.url, storage, client_id, agent.secret, scope="tools", issuer=world.issuer
        )

        async def talk() -> tuple[list[str], str]:
            async with _session(tools.url, auth=provider) as session:
                names = [t.name for t in (await session.list_tools()).tools]
                result = await session.call_tool("balance", {"account": "operations"})
                if result.is_error:
                    raise StepFailed(f"the balance tool failed: {_text(result)}")
                return names, _text(result)

        names, balance = _run(talk())
        if storage.tokens is None:
            raise StepFailed("the SDK connected without a token")
        claims = tools.protection.verifier.verify(storage.tokens.access_token)
        report.say(
            "the SDK found Tessera from the 401 and got a token (client credentials, RFC 8707 resource)",
            aud=claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0],
            scope=claims.get("scope", ""),
        )
        report.say("it listed the tools", tools=", ".join(names))
        report.say("and called a harmless one: balance", answer=balance)
        step.details.update(client_id=client_id, tools=names, balance=balance, scope=claims.get("scope"))
        return provider


def _challenge(report: Report, tools: ToolServer, provider: ClientCredentialsOAuthProvider, storage: _Tokens) -> None:
    with report.step("challenge", "A sensitive tool is refused without a person's approval (403)") as step:

        async def call() -> MCPError | None:
            async with _session(tools.url, auth=provider) as session:
                try:
                    await session.call_tool("transfer_funds", TRANSFER)
                except MCPError as e:
                    return e
                return None

        error = _run(call())
        challenge = approval_request(error) if error is not None else None
        if challenge is None or challenge.get("reason") != "approval_required":
            raise StepFailed(f"transfer_funds was not refused with the approval challenge: {error}")
        [entry] = challenge["authorization_details"]
        report.say("the agent called transfer_funds with its own token", **TRANSFER)
        report.say("refused: the JSON-RPC error names what to ask for", reason=challenge["reason"])
        report.say(
            "authorization_details",
            type=entry["type"],
            tool=entry["tool"],
            arguments_hash=entry["arguments_hash"][:16] + "…",
        )
        # The same refusal as an HTTP client sees it: the RFC 9470-style step-up challenge.
        assert storage.tokens is not None
        r = httpx.post(
            tools.url,
            json={
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "transfer_funds", "arguments": TRANSFER},
            },
            headers={
                "Authorization": f"Bearer {storage.tokens.access_token}",
                "Accept": "application/json, text/event-stream",
            },
            timeout=10,
        )
        header = r.headers.get("www-authenticate", "")
        if r.status_code != 403 or 'error="insufficient_authorization_details"' not in header:
            raise StepFailed(f"the HTTP answer is not the 403 challenge: HTTP {r.status_code} {header}")
        report.say("over HTTP: 403", header=header.split(",")[0])
        if tools.ledger:
            raise StepFailed(f"the refused call moved money: {tools.ledger}")
        step.details.update(reason=challenge["reason"], status=r.status_code, authorization_details=entry)


def _approval(
    world: World,
    report: Report,
    agent: Agent,
    tools: ToolServer,
    provider: ClientCredentialsOAuthProvider,
    *,
    auto_approve: bool,
    timeout: float,
    deny: bool,
) -> str:
    with report.step("approval", "Sam approves exactly that call on the phone (CIBA); the call succeeds") as step:
        approver = _Approver(
            world.issuer,
            ClientSecret(agent.client_id, agent.secret),
            login_hint=str(APPROVER["person_id"]),
            acr_values=AAL1,
            timeout=timeout + 30,
        )
        outcome = CibaOutcome()  # only its ``done`` is used: set when the agent's call has ended
        box: dict[str, Any] = {}

        async def call() -> str:
            async with _session(tools.url, auth=provider) as session:
                result = await call_tool_with_approval(
                    session, tools.url, "transfer_funds", TRANSFER, approver=approver
                )
                if result.is_error:
                    raise StepFailed(f"the approved call failed: {_text(result)}")
                return _text(result)

        def agent_side() -> None:
            try:
                box["answer"] = asyncio.run(asyncio.wait_for(call(), timeout + 60))
            except BaseException as e:  # reported by the step below
                box["error"] = _unwrap(e)
            finally:
                outcome.done.set()

        before = world.phone.count("approval.requested")
        thread = threading.Thread(target=agent_side, daemon=True, name="demo-mcp-agent")
        thread.start()
        report.say("the agent asks Sam through CIBA with the challenge's authorization_details (tessera.client.mcp)")
        message = world.phone.wait_for("approval.requested", after=before, timeout=30)
        link = str(message["data"]["link"])
        report.say("a signed webhook brought Sam a one-time approval link", type=message["type"])
        report.link("Sam's approval link (open it in a browser)", link)
        if auto_approve:
            decision = "deny" if deny else "approve"
            tx, said = world.phone.decide(link, decision)
            report.say("the page showed", requester=tx.get("requester", "?"), message=tx.get("message", "?"))
            report.say(
                f"Sam read the tool, the server and the arguments, entered the app's code and chose {decision}",
                page=said,
            )
            if not outcome.done.wait(30):
                raise StepFailed("the agent's call did not end within 30 s of the decision")
        else:
            _wait_for_a_person(world, report, outcome, link, timeout)
        thread.join(5)
        error = box.get("error")
        if isinstance(error, TokenError):
            paid = f"yet the ledger shows {tools.ledger}" if tools.ledger else "nothing was paid"
            raise StepFailed(f"the agent got no approval ({error}); {paid}")
        if error is not None:
            raise StepFailed(f"the agent's call failed: {type(error).__name__}: {error}")
        if approver.token is None:
            raise StepFailed("the call went through without an approval")
        token = approver.token.access_token
        try:
            claims = tools.protection.verifier.verify(token)
        except VerificationError as e:
            raise StepFailed(f"the approval token does not verify: {e}") from None
        if claims.get("sub") != APPROVER["person_id"] or claims.get("act") != {"sub": agent.client_id}:
            raise StepFailed(
                f"the approval token is not Sam's with the agent as actor: {claims.get('sub')}, {claims.get('act')}"
            )
        if claims.get("authorization_details") != approver.requested:
            raise StepFailed("the approval token does not carry exactly the approved call")
        report.say(
            "the approval token: Sam, with the agent as actor, for that one call",
            sub=claims["sub"],
            act=claims["act"]["sub"],
        )
        report.say("the agent made the call again with it, in a new MCP session", answer=box["answer"])
        if tools.ledger != [TRANSFER]:
            raise StepFailed(f"the ledger is not the one approved transfer: {tools.ledger}")
        step.details.update(
            answer=box["answer"], sub=claims["sub"], act=claims["act"], mode="auto" if auto_approve else "interactive"
        )
        return token


def _used_once(report: Report, tools: ToolServer, token: str) -> None:
    with report.step("used-once", "The approval is used once, and only for that call") as step:

        async def again(arguments: dict[str, Any]) -> str | None:
            async with _session(tools.url, token=token) as session:
                try:
                    result = await session.call_tool("transfer_funds", arguments)
                except MCPError as e:
                    challenge = approval_request(e)
                    return str(challenge.get("reason")) if challenge else f"error {e}"
                return f"accepted: {_text(result)}"

        replay = _run(again(TRANSFER))
        if replay != "approval_replayed":
            raise StepFailed(f"the approval token replayed for a second call was not refused: {replay}")
        report.say("the same token replayed for a second, identical call: refused", reason=replay)
        other = _run(again(OTHER))
        if other != "approval_mismatch":
            raise StepFailed(f"the approval token used with other arguments was not refused: {other}")
        report.say("the same token for a call with other arguments: refused", amount=OTHER["amount"], reason=other)
        if tools.ledger != [TRANSFER]:
            raise StepFailed(f"money moved without an approval: {tools.ledger}")
        report.say("the ledger holds exactly the one approved transfer", transfers=len(tools.ledger))
        step.details.update(replay=replay, other_arguments=other, ledger=tools.ledger)
