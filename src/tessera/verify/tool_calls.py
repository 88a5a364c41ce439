"""Approval of one tool call: the ``tool_invocation`` authorization details type (RFC 9396).

A person approves exactly one call of one tool on one server. The agent asks for it (through CIBA,
``tessera.client.approvals``) with an entry

    {"type": "tool_invocation",
     "locations": ["https://tools.example.com/mcp"],     # RFC 9396 §2.2: the resource server
     "tool": "transfer_funds",
     "arguments_hash": "<base64url SHA-256 of the RFC 8785 (JCS) form of the arguments>",
     "arguments": {"to": "ACME", "amount": 12},          # optional: shown to the person
     "expires_at": 1800000600}                           # seconds since the epoch

Tessera checks the entry when the request arrives (``check_entry``: the hash is the hash of the
arguments shown, the expiry is ahead), the person sees server, tool and arguments on the approval
page, and the approved entry is carried into the access token's ``authorization_details`` (RFC 9396
§9.1). The resource server then checks that the call it is about to run is the approved one
(``ToolApprovals.check``): same server, same tool, same canonical arguments, not expired, and not
used before.

Used once, where the state lives: the resource server verifies tokens locally, so the record of
used approvals is local too — a ``UsedApprovals`` store, in process memory by default
(``MemoryUsedApprovals``), keyed by the token's ``jti`` and the entry, kept until the entry can no
longer be accepted anyway (the earlier of the token's ``exp`` and the entry's ``expires_at``, plus
leeway). That bounds the memory by the approvals issued in one validity window and needs no call to
Tessera. A server run as several replicas passes a shared store instead (``claim`` is one atomic
"insert if absent", e.g. Redis ``SET key 1 NX EXAT until`` or an INSERT into a table with a primary
key); with the in-memory default, a replay through another replica is not detected.

``rfc8785`` is needed here (``pip install tessera[mcp]``); ``tessera.verify`` itself does not import
this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol

import rfc8785

from tessera.verify.errors import VerificationError

__all__ = [
    "MAX_APPROVAL_LIFETIME",
    "TOOL_INVOCATION",
    "ApprovalExpired",
    "ApprovalMismatch",
    "ApprovalReplayed",
    "ApprovalRequired",
    "MemoryUsedApprovals",
    "ToolApprovals",
    "UsedApprovals",
    "arguments_hash",
    "check_entry",
    "tool_invocation",
]

#: The RFC 9396 ``type`` of a tool call approval (registered in ``TESSERA_AUTHORIZATION_DETAILS_TYPES``).
TOOL_INVOCATION = "tool_invocation"
#: The longest an approved call may stay usable, in seconds (checked by Tessera on the request).
MAX_APPROVAL_LIFETIME = 3600
_MEMBERS = frozenset({"type", "locations", "tool", "arguments_hash", "arguments", "expires_at"})


def arguments_hash(arguments: Mapping[str, Any] | None) -> str:
    """base64url (no padding) of SHA-256 over the RFC 8785 canonical JSON of the arguments (``{}`` for none).

    RFC 8785 §3.2: member order, whitespace and number spelling do not change the hash, so the agent
    and the resource server agree on it whatever JSON library each one uses."""
    try:
        canonical = rfc8785.dumps(dict(arguments or {}))
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as e:
        raise ValueError(f"the arguments have no RFC 8785 form: {e}") from None
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def tool_invocation(
    server: str,
    tool: str,
    arguments: Mapping[str, Any] | None,
    *,
    expires_at: int,
    show_arguments: bool = True,
) -> dict[str, Any]:
    """The ``authorization_details`` entry approving one call. With ``show_arguments=False`` only the
    hash travels (and the person sees the hash, not the values): for arguments that are secrets."""
    entry: dict[str, Any] = {
        "type": TOOL_INVOCATION,
        "locations": [server],
        "tool": tool,
        "arguments_hash": arguments_hash(arguments),
        "expires_at": int(expires_at),
    }
    if show_arguments:
        entry["arguments"] = dict(arguments or {})
    return entry


def check_entry(entry: Mapping[str, Any], now: float) -> None:
    """Tessera's check of a requested ``tool_invocation`` entry; ``ValueError`` naming what is wrong.

    The hash must be the hash of the arguments shown (a person must never approve arguments that are
    not the ones hashed), the server one absolute URI, the expiry ahead and at most
    ``MAX_APPROVAL_LIFETIME`` away, and nothing else in the entry."""
    extra = set(entry) - _MEMBERS
    if extra:
        raise ValueError(f"unknown tool_invocation members: {sorted(extra)[:5]}")
    locations = entry.get("locations")
    if not (
        isinstance(locations, list)
        and len(locations) == 1
        and isinstance(locations[0], str)
        and locations[0].startswith(("https://", "http://"))
        and "#" not in locations[0]
    ):
        raise ValueError("locations must be exactly one absolute http(s) URI without fragment: the tool server")
    tool = entry.get("tool")
    if not isinstance(tool, str) or not 1 <= len(tool) <= 128:
        raise ValueError("tool must be the tool's name (1-128 characters)")
    digest = entry.get("arguments_hash")
    if not isinstance(digest, str) or len(digest) != 43:
        raise ValueError("arguments_hash must be the base64url SHA-256 of the RFC 8785 arguments")
    if "arguments" in entry:
        if not isinstance(entry["arguments"], dict):
            raise ValueError("arguments must be a JSON object")
        if not hmac.compare_digest(arguments_hash(entry["arguments"]), digest):
            raise ValueError("arguments_hash is not the hash of the arguments shown")
    expires_at = entry.get("expires_at")
    if type(expires_at) is not int:
        raise ValueError("expires_at must be an integer (seconds since the epoch)")
    if not now < expires_at <= now + MAX_APPROVAL_LIFETIME:
        raise ValueError(f"expires_at must be in the future, at most {MAX_APPROVAL_LIFETIME} s away")


# -- the resource server's side ---------------------------------------------------------------------------------


class ApprovalRequired(VerificationError):
    """The call needs a person's approval that the token does not carry. ``authorization_details`` is
    what to ask Tessera for (one ``tool_invocation`` entry for exactly this call)."""

    reason: ClassVar[str] = "approval_required"

    def __init__(self, message: str, *, authorization_details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.authorization_details = authorization_details


class ApprovalMismatch(ApprovalRequired):
    """The token approves a call of this tool, with other arguments (or on another server)."""

    reason = "approval_mismatch"


class ApprovalExpired(ApprovalRequired):
    reason = "approval_expired"


class ApprovalReplayed(ApprovalRequired):
    """The approved call was made already: an approval is used once."""

    reason = "approval_replayed"


class UsedApprovals(Protocol):
    def claim(self, key: str, until: float, now: float) -> bool:
        """Record ``key`` as used until ``until``; False if it was recorded before (atomically)."""
        ...


class MemoryUsedApprovals:
    """The per-process record of used approvals (see the module docstring for replicas)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._used: dict[str, float] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def claim(self, key: str, until: float, now: float) -> bool:
        with self._lock:
            seen = self._used.get(key)
            if seen is not None and seen > now:
                return False
            if len(self._used) >= self._max:
                self._used = {k: u for k, u in self._used.items() if u > now}
                if len(self._used) >= self._max:
                    # Full of live approvals: refuse rather than forget one (fail closed).
                    return False
            self._used[key] = until
            return True


class ToolApprovals:
    """Which tools need a person's approval per call on the server ``server`` (its canonical resource
    URI), and the check that a token carries that approval.

    ``sensitive`` is a set of tool names, or a function ``(tool, arguments) -> bool`` for approval by
    argument pattern (e.g. transfers above an amount)."""

    def __init__(
        self,
        server: str,
        sensitive: Iterable[str] | Callable[[str, Mapping[str, Any]], bool],
        *,
        used: UsedApprovals | None = None,
        approval_lifetime: int = 300,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        if callable(sensitive):
            self._sensitive: Callable[[str, Mapping[str, Any]], bool] = sensitive
        else:
            names = frozenset(sensitive)
            self._sensitive = lambda tool, arguments: tool in names
        self.used = used if used is not None else MemoryUsedApprovals()
        self.approval_lifetime = min(int(approval_lifetime), MAX_APPROVAL_LIFETIME)
        self.leeway = leeway
        self._clock = clock

    def needs_approval(self, tool: str, arguments: Mapping[str, Any]) -> bool:
        return bool(self._sensitive(tool, arguments))

    def to_request(self, tool: str, arguments: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The ``authorization_details`` an agent should ask for to make this call."""
        expires_at = int(self._clock()) + self.approval_lifetime
        return [tool_invocation(self.server, tool, arguments, expires_at=expires_at)]

    def check(self, claims: Mapping[str, Any], tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The approved entry for this call, now marked used; or an ``ApprovalRequired`` naming why not.

        Order: an entry for this server and tool → same canonical arguments → not expired → not used."""
        needed = self.to_request(tool, arguments)
        details = claims.get("authorization_details")
        entries = [
            d
            for d in (details if isinstance(details, list) else ())
            if isinstance(d, dict) and d.get("type") == TOOL_INVOCATION and d.get("tool") == tool
        ]
        if not entries:
            raise ApprovalRequired(f"calling {tool} needs a person's approval", authorization_details=needed)
        digest = arguments_hash(arguments)
        match = next(
            (
                d
                for d in entries
                if d.get("locations") == [self.server]
                and isinstance(d.get("arguments_hash"), str)
                and hmac.compare_digest(d["arguments_hash"], digest)
            ),
            None,
        )
        if match is None:
            raise ApprovalMismatch(
                f"the approval for {tool} is for other arguments or another server", authorization_details=needed
            )
        now = self._clock()
        expires_at = match.get("expires_at")
        exp = claims.get("exp")
        if type(expires_at) is not int or now >= expires_at + self.leeway:
            raise ApprovalExpired(f"the approval for {tool} has expired", authorization_details=needed)
        until = min(float(expires_at), float(exp) if isinstance(exp, (int, float)) else float(expires_at))
        key = f"{claims.get('iss')} {claims.get('jti')} {tool} {digest}"
        if not self.used.claim(key, until + self.leeway, now):
            raise ApprovalReplayed(f"the approved call of {tool} was made already", authorization_details=needed)
        return dict(match)
