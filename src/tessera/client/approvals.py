"""A person's approval, asked for by the agent: OpenID Connect CIBA Core 1.0 in poll mode.

``CibaApprover.approve(authorization_details, binding_message=...)`` sends the backchannel
authentication request (§7.1) naming the person (``login_hint``) and what to approve (RFC 9396
``authorization_details``, an RFC 8707 ``resource``), then polls the token endpoint (§7.3, §10.1):
``authorization_pending`` waits ``interval`` seconds, ``slow_down`` adds 5 (§11), anything else ends
it. The result is the access token carrying the approval, or a ``TokenError`` (``access_denied``,
``expired_token``, ``timeout``, …).

The client authenticates as at the token endpoint with its ``Credential`` (``ClientSecret``,
``PrivateKeyJwt``: the assertion's ``aud`` is the endpoint it is sent to).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from tessera.client.credentials import Credential
from tessera.client.errors import TokenError
from tessera.client.source import Token, _json_object, _token_from, check_url, metadata_url

__all__ = ["CIBA_GRANT", "CibaApprover"]

CIBA_GRANT = "urn:openid:params:grant-type:ciba"
#: CIBA §11: "the interval MUST be increased by at least 5 seconds" on slow_down.
SLOW_DOWN_STEP = 5.0


class CibaApprover:
    """Asks ``login_hint`` (a person id or e-mail known to Tessera) to approve, and waits for the answer."""

    def __init__(
        self,
        issuer: str,
        credential: Credential,
        *,
        login_hint: str,
        acr_values: str | None = None,
        timeout: float = 600.0,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_url(issuer, "issuer")
        self.issuer = issuer
        self.credential = credential
        self.login_hint = login_hint
        self.acr_values = acr_values
        self.timeout = timeout
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._endpoints: tuple[str, str] | None = None

    async def approve(
        self,
        authorization_details: Sequence[Mapping[str, Any]],
        *,
        binding_message: str,
        scope: str = "openid",
        resource: str | None = None,
        requested_expiry: int | None = None,
    ) -> Token:
        """The access token for what the person approved; ``TokenError`` when they did not (in time)."""
        async with self._client() as http:
            bc_endpoint, token_endpoint = await self._discover(http)
            form = {
                "scope": scope,
                "login_hint": self.login_hint,
                # CIBA §7.1: shown to the person on both devices; 64 characters at most at Tessera.
                "binding_message": binding_message[:64],
                "authorization_details": json.dumps(list(authorization_details), separators=(",", ":")),
            }
            if resource is not None:
                form["resource"] = resource
            if self.acr_values:
                form["acr_values"] = self.acr_values
            if requested_expiry is not None:
                form["requested_expiry"] = str(int(requested_expiry))
            ack = await self._post(http, bc_endpoint, form)
            body = _json_object(ack)
            if ack.status_code != 200 or body is None or not isinstance(body.get("auth_req_id"), str):
                _token_from(ack, 0.0)  # raises the RFC 6749 §5.2 / CIBA §13 error
                raise TokenError("invalid_response", "the backchannel answer has no auth_req_id")
            return await self._poll(http, token_endpoint, body)

    async def _poll(self, http: httpx.AsyncClient, token_endpoint: str, ack: dict[str, Any]) -> Token:
        interval = float(ack.get("interval") or 5)
        expires_in = float(ack.get("expires_in") or self.timeout)
        deadline = self._clock() + min(self.timeout, expires_in)
        while True:
            # §7.3: the client waits at least interval seconds between polls (the first one too).
            if self._clock() + interval > deadline:
                raise TokenError("timeout", "no answer before the request expired")
            await self._sleep(interval)
            r = await self._post(http, token_endpoint, {"grant_type": CIBA_GRANT, "auth_req_id": ack["auth_req_id"]})
            if r.status_code == 200:
                return _token_from(r, time.time())
            error = _json_object(r) or {}
            if error.get("error") == "authorization_pending":
                continue
            if error.get("error") == "slow_down":
                given = error.get("interval")
                interval = float(given) if isinstance(given, int) and given > interval else interval + SLOW_DOWN_STEP
                continue
            _token_from(r, 0.0)  # raises: access_denied, expired_token, invalid_grant, …
            raise TokenError("invalid_response", f"token endpoint answered {r.status_code}")

    async def _post(self, http: httpx.AsyncClient, url: str, form: dict[str, str]) -> httpx.Response:
        try:
            auth = self.credential.authenticate(url)
        except ValueError as e:
            raise TokenError("credential_unavailable", str(e)) from None
        try:
            return await http.post(url, data={**form, **auth.form}, headers=auth.headers)
        except httpx.HTTPError as e:
            raise TokenError("unreachable", f"{type(e).__name__}: {e}") from None

    async def _discover(self, http: httpx.AsyncClient) -> tuple[str, str]:
        if self._endpoints is None:
            try:
                r = await http.get(metadata_url(self.issuer))
            except httpx.HTTPError as e:
                raise TokenError("unreachable", f"{type(e).__name__}: {e}") from None
            body = _json_object(r) if r.status_code == 200 else None
            # RFC 8414 §3.3: the metadata's issuer MUST be identical to the issuer identifier used.
            if body is None or body.get("issuer") != self.issuer:
                raise TokenError("discovery_failed", "no metadata for this issuer")
            bc, token = body.get("backchannel_authentication_endpoint"), body.get("token_endpoint")
            if not isinstance(bc, str) or not isinstance(token, str):
                raise TokenError("discovery_failed", "the issuer offers no backchannel authentication (CIBA)")
            try:
                check_url(bc, "backchannel_authentication_endpoint")
                check_url(token, "token_endpoint")
            except ValueError as e:
                raise TokenError("discovery_failed", str(e)) from None
            self._endpoints = (bc, token)
        return self._endpoints

    def _client(self) -> Any:
        if self._http is not None:
            return _Borrowed(self._http)
        return httpx.AsyncClient(timeout=15.0, follow_redirects=False)


class _Borrowed:
    """A caller's client used as a context manager without being closed."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.http

    async def __aexit__(self, *exc: object) -> None:
        return None
