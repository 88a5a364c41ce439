"""The authorization endpoint's request checks — RFC 6749 §3.1 and §4.1.1-4.1.2.1, RFC 7636 §4.3-4.4,
RFC 8707 §2, RFC 9207 and OAuth 2.1 / RFC 9700.

Two kinds of error, as RFC 6749 §4.1.2.1 orders them:

- before the redirect URI is trusted (client unknown, redirect_uri missing, not registered exactly,
  repeated): ``PageError`` — shown to the person on a page, never redirected (an open redirector
  otherwise, RFC 9700 §4.11);
- after: ``RedirectError`` — sent back to the client's redirect URI with ``error``, ``state`` and
  ``iss`` (RFC 9207 §2: in every authorization response, errors included).

Only ``response_type=code`` is offered: the implicit grant (``token``) is refused (OAuth 2.1 §1.6,
RFC 9700 §2.1.2), and so is every other response type, with ``unsupported_response_type``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from tessera.oauth.authcode import AUTHORIZATION_CODE, valid_challenge
from tessera.oauth.clients import Client
from tessera.oauth.errors import OAuthError
from tessera.oauth.grants.client_credentials import resolve_audience, resolve_scope

__all__ = ["AuthorizationRequest", "PageError", "RedirectError", "check_authorization_request", "redirect_to"]

#: RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
_SINGLE = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "prompt",
)


class PageError(Exception):
    """An authorization request that cannot be answered at the client's redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class RedirectError(Exception):
    """An error for the client, delivered at its (trusted) redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    redirect_uri_sent: bool
    scope: list[str]
    resource: list[str]
    state: str | None
    code_challenge: str
    prompt: str | None

    @property
    def client_id(self) -> str:
        return self.client.client_id


def redirect_to(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """The redirect URI with the response parameters added to its query (RFC 6749 §4.1.2: "adding the
    following parameters to the query component ... retaining the query component" it already has)."""
    parts = urlsplit(redirect_uri)
    added = urlencode([(k, v) for k, v in params.items() if v is not None])
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


async def check_authorization_request(
    params: Mapping[str, Sequence[str]],
    *,
    lookup: Callable[[str], Awaitable[Client | None]],
    default_audience: str,
) -> AuthorizationRequest:
    def one(name: str) -> str | None:
        values = params.get(name) or []
        return values[0] if values else None

    client_ids = params.get("client_id") or []
    if len(client_ids) != 1 or not client_ids[0]:
        raise PageError("invalid_request", "The request names no client (client_id), or names it twice.")
    client_id = client_ids[0]
    client = await lookup(client_id) if len(client_id) <= 256 else None
    if client is None:
        raise PageError("invalid_client", "The application that sent you here is not registered with this server.")
    registered: list[str] = list(client.metadata.get("redirect_uris", []))
    if AUTHORIZATION_CODE not in client.grant_types or not registered:
        raise PageError("unauthorized_client", "This application may not ask people for authorization.")
    redirects = params.get("redirect_uri") or []
    if len(redirects) > 1:
        raise PageError("invalid_request", "The request names its redirect_uri more than once.")
    if redirects:
        # RFC 9700 §4.1.3 / OAuth 2.1 §2.3.2: exact string comparison against a registered URI.
        if redirects[0] not in registered:
            raise PageError("invalid_request", "The redirect_uri is not one this application registered.")
        redirect_uri, sent = redirects[0], True
    elif len(registered) == 1:
        redirect_uri, sent = registered[0], False  # RFC 6749 §3.1.2.3: the only one registered
    else:
        raise PageError("invalid_request", "The request must name its redirect_uri (several are registered).")

    state = one("state")

    def fail(error: str, description: str) -> RedirectError:
        return RedirectError(error, description, redirect_uri, state)

    repeated = [n for n in _SINGLE if len(params.get(n) or []) > 1]
    if repeated:
        raise fail("invalid_request", f"{repeated[0]} is repeated (RFC 6749 §3.1)")
    response_type = one("response_type")
    if not response_type:
        raise fail("invalid_request", "response_type is required")
    if response_type != "code":
        raise fail("unsupported_response_type", "only response_type=code is offered (no implicit or hybrid flow)")
    mode = one("response_mode")
    if mode is not None and mode != "query":
        raise fail("invalid_request", "only response_mode=query is offered")
    if "request" in params:
        raise fail("request_not_supported", "request objects are not supported")
    if "request_uri" in params:
        raise fail("request_uri_not_supported", "request_uri is not supported")
    challenge = one("code_challenge")
    method = one("code_challenge_method")
    if not challenge:
        raise fail("invalid_request", "code_challenge is required: this server requires PKCE (RFC 7636 §4.4.1)")
    if method != "S256":
        # RFC 7636 §4.3: without a method the default is plain; RFC 9700 §2.1.1: use S256.
        raise fail("invalid_request", "code_challenge_method must be S256 (plain is not accepted)")
    if not valid_challenge(challenge):
        raise fail("invalid_request", "code_challenge must be the 43-character base64url S256 value")
    try:
        scope = resolve_scope(client, one("scope"))
        resource = resolve_audience(client, list(params.get("resource") or []), default_audience)
    except OAuthError as e:
        raise fail(e.error, e.description) from None
    prompt = one("prompt")
    if prompt is not None:
        values = prompt.split(" ")
        if any(p not in ("none", "login", "consent") for p in values):
            raise fail("invalid_request", "prompt may be none, login or consent")
        if "none" in values and len(values) > 1:
            raise fail("invalid_request", "prompt none cannot be combined with another value")
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        redirect_uri_sent=sent,
        scope=scope,
        resource=resource,
        state=state,
        code_challenge=challenge,
        prompt=prompt,
    )
