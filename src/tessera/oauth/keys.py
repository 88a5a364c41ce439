"""Signing-key lifecycle (RFC 7517 JWKS, RFC 7518 algorithms): next → active → retired → removed.

- A **next** key is published in the JWKS before it signs anything, so relying parties that cache
  the JWKS already hold it when it becomes active.
- The **active** key (one per algorithm) signs new tokens.
- A **retired** key signs nothing but stays published until every token it signed has expired:
  ``remove_after = retired_at + longest token lifetime + key refresh interval + leeway`` (another
  server process may go on signing with it until its next key reload).
- A **removed** key is gone from the JWKS and its private half is erased.
- A **revoked** key (compromised) is removed at once, whatever its state; if it was active, the
  next key is promoted first so that signing goes on. The tokens it signed are revoked by the store.

Private keys are sealed with AES-256-GCM under the key-encryption key (KEK); the ``kid`` is the
associated data, so a sealed blob cannot be swapped between key rows.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import JWKRegistry

from tessera.oauth.jws import (
    PrivateKey,
    generate_private_key,
    jwk_thumbprint,
    private_key_from_pem,
    private_key_to_pem,
    public_jwk,
)

__all__ = [
    "KEK",
    "KekError",
    "KeyPlan",
    "KeyRecord",
    "KeyRing",
    "KeyState",
    "SigningKey",
    "TooManyKeys",
    "is_revoked",
    "new_key",
    "plan_bootstrap",
    "plan_revocation",
    "plan_rotation",
    "plan_sweep",
    "removal_time",
]

MAX_PUBLISHED_KEYS_PER_ALG = 6


class TooManyKeys(Exception):
    """A rotation would push a retired key out of the JWKS before its tokens expire."""


class KekError(Exception):
    """The key-encryption key is missing, malformed or does not open the stored keys."""


class KEK:
    """A 256-bit key-encryption key."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KekError("the key-encryption key must be exactly 32 bytes")
        self._aead = AESGCM(raw)

    @classmethod
    def from_text(cls, text: str) -> KEK:
        text = text.strip()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as e:
            raise KekError("TESSERA_KEK must be 32 random bytes encoded as base64url") from e
        return cls(raw)

    @staticmethod
    def generate_text() -> str:
        return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return b"v1" + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if not blob.startswith(b"v1") or len(blob) < 2 + 12 + 16:
            raise KekError("sealed key has an unknown format")
        try:
            return self._aead.decrypt(blob[2:14], blob[14:], aad)
        except InvalidTag as e:
            raise KekError("the key-encryption key does not open the stored signing keys (wrong TESSERA_KEK?)") from e


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"
    REMOVED = "removed"


@dataclass(frozen=True)
class KeyRecord:
    """A signing key as stored; the private half stays sealed."""

    kid: str
    alg: str
    state: KeyState
    public_jwk: dict[str, str]
    sealed_private: bytes | None
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None
    remove_after: int | None = None
    removed_at: int | None = None

    def published_jwk(self) -> dict[str, str]:
        return {**self.public_jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def summary(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state.value,
            "created_at": self.created_at,
            "activated_at": self.activated_at,
            "retired_at": self.retired_at,
            "remove_after": self.remove_after,
            "removed_at": self.removed_at,
        }


def new_key(alg: str, state: KeyState, kek: KEK, now: int) -> KeyRecord:
    private = generate_private_key(alg)
    jwk = public_jwk(private, alg)
    kid = jwk_thumbprint(jwk)
    return KeyRecord(
        kid=kid,
        alg=alg,
        state=state,
        public_jwk=jwk,
        sealed_private=kek.seal(private_key_to_pem(private), kid.encode()),
        created_at=now,
        activated_at=now if state is KeyState.ACTIVE else None,
    )


def is_revoked(rec: KeyRecord) -> bool:
    """Removed before its time (``plan_revocation``), not by the sweep after its tokens expired."""
    return rec.state is KeyState.REMOVED and (
        rec.remove_after is None or (rec.removed_at is not None and rec.removed_at < rec.remove_after)
    )


def removal_time(retired_at: int, max_token_lifetime: int, refresh_interval: float, leeway: int) -> int:
    return retired_at + max_token_lifetime + int(refresh_interval) + 1 + leeway


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey


@dataclass
class KeyRing:
    """What a server process signs with and publishes, rebuilt from the stored keys."""

    active: dict[str, SigningKey] = field(default_factory=dict)
    jwks: dict[str, list[dict[str, str]]] = field(default_factory=lambda: {"keys": []})
    _verifiers: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_records(cls, records: list[KeyRecord], kek: KEK, now: int) -> KeyRing:
        ring = cls()
        published: list[KeyRecord] = []
        for rec in records:
            if rec.state is KeyState.ACTIVE and rec.sealed_private is not None:
                pem = kek.open(rec.sealed_private, rec.kid.encode())
                ring.active[rec.alg] = SigningKey(rec.kid, rec.alg, private_key_from_pem(pem))
            if rec.state in (KeyState.NEXT, KeyState.ACTIVE) or (
                rec.state is KeyState.RETIRED and (rec.remove_after is None or rec.remove_after > now)
            ):
                published.append(rec)
        order = {KeyState.ACTIVE: 0, KeyState.NEXT: 1, KeyState.RETIRED: 2}
        published.sort(key=lambda r: (order[r.state], -(r.retired_at or 0)))
        per_alg: dict[str, int] = {}
        keys = []
        for rec in published:
            per_alg[rec.alg] = per_alg.get(rec.alg, 0) + 1
            if per_alg[rec.alg] <= MAX_PUBLISHED_KEYS_PER_ALG:
                keys.append(rec.published_jwk())
        ring.jwks = {"keys": keys}
        return ring

    def signer(self, alg: str) -> SigningKey:
        key = self.active.get(alg)
        if key is None:
            raise LookupError(f"no active {alg} signing key")
        return key

    def verifier(self, kid: object) -> tuple[str, Any] | None:
        """(alg, joserfc key) of a published key, to check tokens this server signed; None if not published."""
        if not isinstance(kid, str):
            return None
        hit = self._verifiers.get(kid)
        if hit is None:
            jwk = next((k for k in self.jwks["keys"] if k["kid"] == kid), None)
            if jwk is None:
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as superseded by RFC 9864
                hit = (jwk["alg"], JWKRegistry.import_key(dict(jwk)))
            self._verifiers[kid] = hit
        return hit


@dataclass(frozen=True)
class KeyPlan:
    """Changes to the stored keys: rows to insert and rows to update, and what happened, for the audit log."""

    inserts: list[KeyRecord]
    updates: list[KeyRecord]
    events: list[tuple[str, dict[str, Any]]]


def plan_bootstrap(records: list[KeyRecord], algs: list[str], kek: KEK, now: int) -> KeyPlan:
    """Every configured algorithm gets an active key and a next key if it lacks them (first start)."""
    inserts, events = [], []
    for alg in algs:
        states = {r.state for r in records if r.alg == alg}
        if KeyState.ACTIVE not in states:
            k = new_key(alg, KeyState.ACTIVE, kek, now)
            inserts.append(k)
            events.append(("key.created", {"kid": k.kid, "alg": alg, "state": "active"}))
        if KeyState.NEXT not in states:
            k = new_key(alg, KeyState.NEXT, kek, now)
            inserts.append(k)
            events.append(("key.created", {"kid": k.kid, "alg": alg, "state": "next"}))
    return KeyPlan(inserts, [], events)


def plan_rotation(
    records: list[KeyRecord],
    alg: str,
    kek: KEK,
    now: int,
    *,
    max_token_lifetime: int,
    refresh_interval: float,
    leeway: int,
) -> KeyPlan:
    """next → active, active → retired (kept published until its tokens expire), a new next key.

    Raises ``TooManyKeys`` when the rotation would publish more than ``MAX_PUBLISHED_KEYS_PER_ALG``
    keys: a retired key must stay in the JWKS until its last token expires, so the cap is enforced
    by refusing the rotation, never by dropping a key early. (A compromised key is revoked, not rotated.)
    """
    inserts: list[KeyRecord] = []
    updates: list[KeyRecord] = []
    events: list[tuple[str, dict[str, Any]]] = []
    current = [r for r in records if r.alg == alg]
    published = [
        r
        for r in current
        if r.state in (KeyState.NEXT, KeyState.ACTIVE)
        or (r.state is KeyState.RETIRED and (r.remove_after is None or r.remove_after > now))
    ]
    if len(published) + 1 > MAX_PUBLISHED_KEYS_PER_ALG:
        soonest = min((r.remove_after or now) for r in published if r.state is KeyState.RETIRED)
        raise TooManyKeys(
            f"rotating now would publish more than {MAX_PUBLISHED_KEYS_PER_ALG} {alg} keys; the oldest retired key "
            f"leaves the JWKS at {soonest} (epoch seconds). To stop a compromised key, revoke it instead."
        )
    nxt = next((r for r in current if r.state is KeyState.NEXT), None)
    if nxt is None:
        # No pre-published key: one is created and activated at once (relying parties refetch on unknown kid).
        nxt = new_key(alg, KeyState.NEXT, kek, now)
        inserts.append(nxt)
    for r in current:
        if r.state is KeyState.ACTIVE:
            retired = replace(
                r,
                state=KeyState.RETIRED,
                retired_at=now,
                remove_after=removal_time(now, max_token_lifetime, refresh_interval, leeway),
            )
            updates.append(retired)
            events.append(("key.retired", {"kid": r.kid, "alg": alg, "remove_after": retired.remove_after}))
    promoted = replace(nxt, state=KeyState.ACTIVE, activated_at=now)
    if nxt in inserts:
        inserts[inserts.index(nxt)] = promoted
    else:
        updates.append(promoted)
    events.append(("key.activated", {"kid": promoted.kid, "alg": alg}))
    fresh = new_key(alg, KeyState.NEXT, kek, now)
    inserts.append(fresh)
    events.append(("key.created", {"kid": fresh.kid, "alg": alg, "state": "next"}))
    return KeyPlan(inserts, updates, events)


def plan_sweep(records: list[KeyRecord], now: int) -> KeyPlan:
    """Retired keys whose every token has expired are removed; their private half is erased."""
    updates, events = [], []
    for r in records:
        if r.state is KeyState.RETIRED and r.remove_after is not None and r.remove_after <= now:
            updates.append(replace(r, state=KeyState.REMOVED, removed_at=now, sealed_private=None))
            events.append(("key.removed", {"kid": r.kid, "alg": r.alg}))
    return KeyPlan([], updates, events)


def plan_revocation(records: list[KeyRecord], kid: str, kek: KEK, now: int) -> KeyPlan:
    """A compromised key is removed at once: unpublished, its private half erased, whatever its state.

    If it was the active key of its algorithm, the next key is promoted (or a new one is made) before
    it goes, so that signing continues, and a new next key is published. Raises LookupError if the key
    is unknown or already removed.
    """
    target = next((r for r in records if r.kid == kid), None)
    if target is None or target.state is KeyState.REMOVED:
        raise LookupError(f"no signing key {kid!r} that is not already removed")
    alg = target.alg
    inserts: list[KeyRecord] = []
    updates = [replace(target, state=KeyState.REMOVED, removed_at=now, sealed_private=None)]
    events: list[tuple[str, dict[str, Any]]] = [
        ("key.revoked", {"kid": kid, "alg": alg, "previous_state": target.state.value})
    ]
    nxt = next((r for r in records if r.alg == alg and r.state is KeyState.NEXT and r.kid != kid), None)
    if target.state is KeyState.ACTIVE:
        if nxt is None:
            promoted = new_key(alg, KeyState.ACTIVE, kek, now)
            inserts.append(promoted)
        else:
            promoted = replace(nxt, state=KeyState.ACTIVE, activated_at=now)
            updates.append(promoted)
        events.append(("key.activated", {"kid": promoted.kid, "alg": alg}))
        nxt = None
    if target.state in (KeyState.ACTIVE, KeyState.NEXT) and nxt is None:
        fresh = new_key(alg, KeyState.NEXT, kek, now)
        inserts.append(fresh)
        events.append(("key.created", {"kid": fresh.kid, "alg": alg, "state": "next"}))
    return KeyPlan(inserts, updates, events)
