"""Helpers for the revocation, introspection and status list tests: tokens, status lookups, audit records.

The status list is read here with the standard library only (base64url, zlib, the §4.1 bit layout),
independently of the server's encoder.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from typing import Any

import httpx

from support import LiveServer


def payload(jwt: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))


def header(jwt: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(jwt.split(".")[0] + "=="))


def basic(client: dict[str, Any]) -> tuple[str, str]:
    return client["client_id"], client["client_secret"]


def issue(server: LiveServer, client: dict[str, Any], **params: str) -> str:
    r = httpx.post(
        server.token_endpoint, data={"grant_type": "client_credentials", **params}, auth=basic(client), timeout=10
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def entry(token: str) -> tuple[str, int]:
    """(uri, idx) of an access token's status list entry (draft-ietf-oauth-status-list §6.2)."""
    ref = payload(token)["status"]["status_list"]
    return ref["uri"], ref["idx"]


def status_at(lst: str, bits: int, idx: int) -> int:
    data = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    per_byte = 8 // bits
    return (data[idx // per_byte] >> ((idx % per_byte) * bits)) & ((1 << bits) - 1)


def fetch_list(uri: str) -> str:
    r = httpx.get(uri, headers={"Accept": "application/statuslist+jwt"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def status_of(token: str) -> int:
    """The token's current status value, read from its status list as a relying party would."""
    uri, idx = entry(token)
    sl = payload(fetch_list(uri))["status_list"]
    return status_at(sl["lst"], sl["bits"], idx)


def wait_for_status(token: str, value: int, within: float = 10.0) -> int:
    """Poll the status list until the token shows ``value`` (a change made by another process shows
    within the server's one-second list cache) or the time is up; returns the last value seen."""
    deadline = time.monotonic() + within
    while True:
        seen = status_of(token)
        if seen == value or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def introspect(server: LiveServer, client: dict[str, Any], token: str) -> dict[str, Any]:
    r = httpx.post(server.issuer + "/oauth/introspect", data={"token": token}, auth=basic(client), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def audit(server: LiveServer, event: str | None = None) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with server.admin() as admin:
        while page := admin.get("/audit", params={"after": records[-1]["seq"] if records else 0, "limit": 1000}).json():
            records += page
    return [r for r in records if event is None or r["event"] == event]
