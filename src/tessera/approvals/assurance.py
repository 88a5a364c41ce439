"""Authentication assurance levels — NIST SP 800-63B rev. 4 §2 (https://pages.nist.gov/800-63-4/sp800-63b.html).

What the proofs collected on an approval page add up to:

- ``aal1``: any single proof (a TOTP code or any passkey);
- ``aal2``: a user-verified passkey (a multi-factor cryptographic authenticator), or a passkey plus
  a TOTP code;
- ``aal3``: a user-verified passkey that is device-bound (not backup-eligible, so its key cannot
  be synced off the device): phishing-resistant and hardware-bound.

A TOTP code alone is never above ``aal1``; its ``user_verified`` and ``device_bound`` are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["AAL", "KINDS", "Proof", "achieved", "needs", "parse_aal", "satisfies"]

AAL = Literal["aal1", "aal2", "aal3"]
_LEVELS: tuple[AAL, ...] = get_args(AAL)

#: The authenticator kinds a person can enrol.
KINDS = ("passkey", "totp")


@dataclass(frozen=True)
class Proof:
    """One verified proof. For a passkey, ``device_bound`` is ``not backup_eligible``."""

    kind: Literal["passkey", "totp"]
    user_verified: bool = False
    device_bound: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown proof kind {self.kind!r}: expected one of {', '.join(KINDS)}")


def achieved(proofs: Sequence[Proof]) -> AAL | None:
    """The highest level these proofs reach together, or ``None`` for no proof."""
    passkeys = [p for p in proofs if p.kind == "passkey"]
    has_totp = any(p.kind == "totp" for p in proofs)
    if any(p.user_verified and p.device_bound for p in passkeys):
        return "aal3"
    if any(p.user_verified for p in passkeys) or (passkeys and has_totp):
        return "aal2"
    if proofs:
        return "aal1"
    return None


def satisfies(required: AAL, proofs: Sequence[Proof]) -> bool:
    level = achieved(proofs)
    return level is not None and _LEVELS.index(level) >= _LEVELS.index(parse_aal(required))


def parse_aal(value: str) -> AAL:
    for level in _LEVELS:
        if value == level:
            return level
    raise ValueError(f"unknown assurance level {value!r}: expected one of {', '.join(_LEVELS)}")


def needs(required: AAL, enrolled_kinds: set[str]) -> list[list[str]]:
    """The combinations of authenticator kinds that can reach ``required`` with what the person enrolled.

    A ``["passkey"]`` entry at ``aal2`` means a user-verified passkey, at ``aal3`` a user-verified,
    device-bound one (the page asks for user verification). An empty list: the person cannot reach it.
    """
    level = parse_aal(required)
    unknown = enrolled_kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown authenticator kinds {sorted(unknown)}: expected {', '.join(KINDS)}")
    options: dict[AAL, list[list[str]]] = {
        "aal1": [["passkey"], ["totp"]],
        "aal2": [["passkey"], ["passkey", "totp"]],
        "aal3": [["passkey"]],
    }
    return [combo for combo in options[level] if set(combo) <= enrolled_kinds]
