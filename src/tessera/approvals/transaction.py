"""The transaction a person approves, in one canonical form, and the hash that binds every proof to it.

The canonical form is the RFC 8785 (JCS) serialization of the transaction object; ``tx_hash`` is its
SHA-256, base64url. The approval page renders the stored transaction, and every proof is checked
against the hash recomputed from it at decision time: a WebAuthn challenge is derived from
``tx_hash`` (and the decision and the link), so an assertion made for action A cannot authorise B, and
a transaction altered after it was shown no longer matches its own hash.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785

from .errors import InvalidApprovalRequest

__all__ = ["Transaction", "approval_challenge", "check_code", "tx_hash_of"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_TEXT = 512
MAX_TX_BYTES = 16_384


@dataclass(frozen=True)
class Transaction:
    """What is being approved. ``request_id`` makes two otherwise identical requests hash differently."""

    request_id: str
    requester: str
    action: str
    resource: str
    expires_at: int
    #: the requester's delegation chain (RFC 8693 ``act``), outermost (most recent) actor first
    delegation: tuple[str, ...] = ()
    #: the person or principal the requester acts for, if any
    on_behalf_of: str | None = None
    scope: tuple[str, ...] = ()
    #: RFC 9396 authorization details, as given
    authorization_details: tuple[Mapping[str, Any], ...] = ()
    #: where the request comes from (e.g. CI run, IP address, workflow): shown, hashed, not interpreted
    environment: Mapping[str, str] = field(default_factory=dict)
    binding_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "request_id": self.request_id,
            "requester": self.requester,
            "delegation": list(self.delegation),
            "on_behalf_of": self.on_behalf_of,
            "action": self.action,
            "resource": self.resource,
            "scope": list(self.scope),
            "authorization_details": [dict(d) for d in self.authorization_details],
            "environment": dict(self.environment),
            "binding_message": self.binding_message,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Transaction:
        return cls(
            request_id=raw["request_id"],
            requester=raw["requester"],
            action=raw["action"],
            resource=raw["resource"],
            expires_at=int(raw["expires_at"]),
            delegation=tuple(raw.get("delegation") or ()),
            on_behalf_of=raw.get("on_behalf_of"),
            scope=tuple(raw.get("scope") or ()),
            authorization_details=tuple(raw.get("authorization_details") or ()),
            environment=dict(raw.get("environment") or {}),
            binding_message=raw.get("binding_message"),
        )

    @property
    def tx_hash(self) -> str:
        return tx_hash_of(self.to_json())

    @classmethod
    def build(cls, request_id: str, body: Mapping[str, Any], expires_at: int) -> Transaction:
        """Validate a requester's description of the transaction (admin API, CIBA, workflows)."""

        def text(name: str, required: bool = True, limit: int = MAX_TEXT) -> str | None:
            v = body.get(name)
            if v is None and not required:
                return None
            if not isinstance(v, str) or not v.strip():
                raise InvalidApprovalRequest(f"{name}: a non-empty string is required")
            if len(v) > limit or any(ord(c) < 32 or ord(c) == 127 for c in v):
                raise InvalidApprovalRequest(f"{name}: at most {limit} printable characters")
            return v

        def strings(name: str, limit: int = 32) -> tuple[str, ...]:
            v = body.get(name) or []
            if isinstance(v, str) and name == "scope":
                v = v.split()
            if not isinstance(v, list) or not all(isinstance(x, str) and x and len(x) <= MAX_TEXT for x in v):
                raise InvalidApprovalRequest(f"{name}: a list of non-empty strings is required")
            if len(v) > limit:
                raise InvalidApprovalRequest(f"{name}: at most {limit} entries")
            return tuple(v)

        details = body.get("authorization_details") or []
        # RFC 9396 §2: an array of JSON objects, each with a string "type".
        if not isinstance(details, list) or not all(
            isinstance(d, dict) and isinstance(d.get("type"), str) and d["type"] for d in details
        ):
            raise InvalidApprovalRequest("authorization_details: an array of objects, each with a 'type' (RFC 9396 §2)")
        env = body.get("environment") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= MAX_TEXT for k, v in env.items()
        ):
            raise InvalidApprovalRequest("environment: an object of short string values")
        message = text("binding_message", required=False, limit=64)
        tx = cls(
            request_id=request_id,
            requester=text("requester", limit=256) or "",
            action=text("action", limit=128) or "",
            resource=text("resource") or "",
            expires_at=expires_at,
            delegation=strings("delegation", 16),
            on_behalf_of=text("on_behalf_of", required=False, limit=256),
            scope=tuple(sorted(set(strings("scope", 64)))),
            authorization_details=tuple(details),
            environment=env,
            binding_message=message,
        )
        if len(canonical(tx.to_json())) > MAX_TX_BYTES:
            raise InvalidApprovalRequest(f"the transaction is larger than {MAX_TX_BYTES} bytes")
        return tx


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def canonical(tx_json: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) serialization (the ``rfc8785`` library: ES6 number formatting, UTF-16 key order)."""
    try:
        return rfc8785.dumps(dict(tx_json))
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as e:
        raise InvalidApprovalRequest(f"the transaction cannot be canonicalized (RFC 8785): {e}") from None


def tx_hash_of(tx_json: Mapping[str, Any]) -> str:
    return _b64(hashlib.sha256(canonical(tx_json)).digest())


def check_code(tx_hash: str) -> str:
    """A short code derived from ``tx_hash`` (40 bits, Crockford base32, ``XXXX-XXXX``), shown to the
    requester and on the page so the person can tell that both describe the same transaction."""
    raw = base64.urlsafe_b64decode(tx_hash + "=" * (-len(tx_hash) % 4))[:5]
    n = int.from_bytes(raw, "big")
    chars = "".join(_CROCKFORD[(n >> (35 - 5 * i)) & 31] for i in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def approval_challenge(tx_hash: str, decision: str, link_id: str, nonce: bytes) -> bytes:
    """The WebAuthn challenge of one approval proof: SHA-256 over the transaction hash, the decision
    ("approve" or "deny"), the link it was issued for and a fresh nonce (W3C WebAuthn §13.4.3: at least
    16 random bytes). The server never stores the challenge; it recomputes it from the current
    transaction when the assertion comes back."""
    if decision not in ("approve", "deny"):
        raise ValueError("decision must be approve or deny")
    parts: Sequence[bytes] = (b"tessera-approval-v1", tx_hash.encode(), decision.encode(), link_id.encode(), nonce)
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.digest()
