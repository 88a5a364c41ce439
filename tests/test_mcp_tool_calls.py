"""The ``tool_invocation`` authorization details type and the resource server's check, without a server:
the RFC 8785 hash of the arguments, Tessera's checks of a requested entry, the order of the resource
server's refusals, used once, and the canonical resource URI (MCP authorization, RFC 8707)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tessera.verify.mcp import canonical_resource, resource_metadata_url
from tessera.verify.tool_calls import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalReplayed,
    ApprovalRequired,
    MemoryUsedApprovals,
    ToolApprovals,
    arguments_hash,
    check_entry,
    tool_invocation,
)

SERVER = "https://tools.example.com/mcp"
NOW = 1_800_000_000


def test_the_hash_is_sha256_of_the_rfc8785_form() -> None:
    # RFC 8785 §3.2.3: members sorted by UTF-16 code units; §3.2.2.3: numbers in ES6 form (2.0 → 2, 1e21 → 1e+21).
    expected = b'{"a":2,"b":[1e+21,"\\u001f"],"\xc3\xa9":true}'
    digest = base64.urlsafe_b64encode(hashlib.sha256(expected).digest()).rstrip(b"=").decode()
    assert arguments_hash({"é": True, "b": [1e21, "\x1f"], "a": 2.0}) == digest
    # Order, whitespace and number spelling do not change it; values do.
    parsed = json.loads('{ "b" : [1E21, "\\u001f"], "a": 2, "é": true }')
    assert arguments_hash(parsed) == digest
    assert arguments_hash({"a": 3, "b": [1e21, "\x1f"], "é": True}) != digest
    assert arguments_hash(None) == arguments_hash({}) == "RBNvo1WzZ4oRRq0W9-hknpT7T8If536DEMBg9hyq_4o"
    with pytest.raises(ValueError):
        arguments_hash({"x": float("nan")})


def test_tessera_checks_a_requested_entry() -> None:
    good = tool_invocation(SERVER, "transfer_funds", {"to": "ACME", "amount": 12}, expires_at=NOW + 300)
    check_entry(good, NOW)
    hidden = tool_invocation(SERVER, "transfer_funds", {"to": "ACME"}, expires_at=NOW + 300, show_arguments=False)
    assert "arguments" not in hidden
    check_entry(hidden, NOW)
    bad = [
        ({**good, "arguments": {"to": "ACME", "amount": 12000}}, "not the hash of the arguments shown"),
        ({**good, "locations": [SERVER, "https://other.example/mcp"]}, "exactly one"),
        ({**good, "locations": [SERVER + "#x"]}, "without fragment"),
        ({**good, "tool": ""}, "tool must be"),
        ({**good, "arguments_hash": "short"}, "arguments_hash"),
        ({**good, "expires_at": NOW - 1}, "in the future"),
        ({**good, "expires_at": NOW + 3601}, "at most 3600"),
        ({**good, "expires_at": float(NOW + 10)}, "integer"),
        ({**good, "amount": 5}, "unknown tool_invocation members"),
        ({**good, "arguments": [1]}, "JSON object"),
    ]
    for entry, message in bad:
        with pytest.raises(ValueError, match=message):
            check_entry(entry, NOW)


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def claims_with(*entries: dict[str, object], jti: str = "j1") -> dict[str, object]:
    return {"iss": "https://tessera.example.com", "jti": jti, "exp": NOW + 900, "authorization_details": list(entries)}


def test_the_resource_server_check_in_order() -> None:
    clock = Clock()
    approvals = ToolApprovals(SERVER, {"transfer_funds"}, clock=clock)
    args = {"to": "ACME", "amount": 12}
    assert approvals.needs_approval("transfer_funds", args) and not approvals.needs_approval("balance", {})
    entry = approvals.to_request("transfer_funds", args)[0]
    assert entry["expires_at"] == NOW + 300 and entry["locations"] == [SERVER]

    with pytest.raises(ApprovalRequired) as missing:
        approvals.check({"iss": "i", "jti": "j", "exp": NOW + 900}, "transfer_funds", args)
    assert type(missing.value) is ApprovalRequired
    assert missing.value.authorization_details[0]["tool"] == "transfer_funds"
    # Another tool's approval is no approval of this one.
    other_tool = {**entry, "tool": "delete_account"}
    with pytest.raises(ApprovalRequired) as wrong_tool:
        approvals.check(claims_with(other_tool), "transfer_funds", args)
    assert type(wrong_tool.value) is ApprovalRequired
    # Same tool, other arguments or another server.
    with pytest.raises(ApprovalMismatch):
        approvals.check(claims_with(entry), "transfer_funds", {**args, "amount": 13})
    with pytest.raises(ApprovalMismatch):
        approvals.check(claims_with({**entry, "locations": ["https://evil.example/mcp"]}), "transfer_funds", args)
    # Argument order does not matter (RFC 8785); the approval is used once.
    assert approvals.check(claims_with(entry), "transfer_funds", {"amount": 12, "to": "ACME"}) == entry
    with pytest.raises(ApprovalReplayed):
        approvals.check(claims_with(entry), "transfer_funds", args)
    # Another token with the same approved call is its own approval.
    assert approvals.check(claims_with(entry, jti="j2"), "transfer_funds", args) == entry
    # Past expires_at plus the leeway: expired (before the used-once record is consulted).
    clock.now = NOW + 300 + 31
    with pytest.raises(ApprovalExpired):
        approvals.check(claims_with(entry, jti="j3"), "transfer_funds", args)


def test_approval_by_argument_pattern() -> None:
    approvals = ToolApprovals(SERVER, lambda tool, a: tool == "transfer_funds" and a.get("amount", 0) > 100)
    assert not approvals.needs_approval("transfer_funds", {"amount": 100})
    assert approvals.needs_approval("transfer_funds", {"amount": 101})


def test_the_used_approvals_store_forgets_only_what_has_expired() -> None:
    used = MemoryUsedApprovals(max_entries=2)
    assert used.claim("a", until=10, now=0) and not used.claim("a", until=10, now=5)
    assert used.claim("b", until=20, now=5)
    # Full of live entries: a new approval is refused rather than an old one forgotten.
    assert not used.claim("c", until=30, now=6)
    # Once "a" has expired there is room again.
    assert used.claim("c", until=30, now=11)
    assert not used.claim("d", until=40, now=12)  # "b" and "c" are live: full again
    # Past its validity a key may be recorded again (the expiry check refuses such an approval anyway).
    assert used.claim("b", until=40, now=21)


def test_canonical_resource_uri() -> None:
    assert canonical_resource("HTTPS://Tools.Example.COM:443/mcp") == "https://tools.example.com/mcp"
    assert canonical_resource("http://127.0.0.1:8000/mcp") == "http://127.0.0.1:8000/mcp"
    assert canonical_resource("https://tools.example.com") == "https://tools.example.com"
    for bad in ("https://tools.example.com/mcp#frag", "ftp://x/mcp", "/mcp", "https:///mcp"):
        with pytest.raises(ValueError):
            canonical_resource(bad)
    assert (
        resource_metadata_url("https://t.example/mcp") == "https://t.example/.well-known/oauth-protected-resource/mcp"
    )
    assert resource_metadata_url("https://t.example") == "https://t.example/.well-known/oauth-protected-resource"
