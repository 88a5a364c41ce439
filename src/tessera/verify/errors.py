"""Typed verification failures. Verification raises; it never returns a bool.

Each error has a stable ``reason`` code for logs and metrics, and carries the trust-data report of
the decision (``report``) when there is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from tessera.verify.report import Report

__all__ = [
    "BadSignature",
    "DPoPBindingMismatch",
    "DPoPProofRequired",
    "DelegationRefused",
    "Expired",
    "InvalidBundle",
    "InvalidDPoPProof",
    "IssuedInFuture",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "Revoked",
    "StatusUnavailable",
    "Suspended",
    "TokenTooLarge",
    "TooOld",
    "TrustDataStale",
    "UnknownKey",
    "UnsupportedAlgorithm",
    "UseDPoPNonce",
    "VerificationError",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
]


class VerificationError(Exception):
    reason: ClassVar[str] = "invalid"

    def __init__(self, message: str, *, report: Report | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.report = report

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class TokenTooLarge(VerificationError):
    reason = "token_too_large"


class MalformedToken(VerificationError):
    reason = "malformed"


class UnsupportedAlgorithm(VerificationError):
    reason = "unsupported_algorithm"


class WrongType(VerificationError):
    reason = "wrong_type"


class UnknownKey(VerificationError):
    reason = "unknown_key"


class BadSignature(VerificationError):
    reason = "bad_signature"


class WrongIssuer(VerificationError):
    reason = "wrong_issuer"


class WrongAudience(VerificationError):
    reason = "wrong_audience"


class MissingClaim(VerificationError):
    reason = "missing_claim"


class Expired(VerificationError):
    reason = "expired"


class NotYetValid(VerificationError):
    reason = "not_yet_valid"


class IssuedInFuture(VerificationError):
    reason = "issued_in_future"


class TooOld(VerificationError):
    reason = "too_old"


class DelegationRefused(VerificationError):
    reason = "delegation_refused"


class Revoked(VerificationError):
    reason = "revoked"


class Suspended(VerificationError):
    reason = "suspended"


class StatusUnavailable(VerificationError):
    """The token's status cannot be established (bad reference, bad or unreachable list)."""

    reason = "status_unavailable"


class TrustDataStale(VerificationError):
    """Keys or status lists are older than the configured limit: fail closed."""

    reason = "trust_data_stale"


class InvalidBundle(VerificationError):
    reason = "invalid_bundle"


class InvalidDPoPProof(VerificationError):
    """RFC 9449 §4.3: the DPoP proof itself is not valid (rendered ``error="invalid_dpop_proof"``)."""

    reason = "invalid_dpop_proof"


class UseDPoPNonce(InvalidDPoPProof):
    """RFC 9449 §8, §9: the proof lacks the server-provided nonce, or carries a stale one."""

    reason = "use_dpop_nonce"


class DPoPProofRequired(VerificationError):
    """RFC 9449 §7.1, §7.2: a DPoP-bound token (``cnf.jkt``) was presented without a DPoP proof,
    e.g. as a bearer token."""

    reason = "dpop_proof_required"


class DPoPBindingMismatch(VerificationError):
    """RFC 9449 §4.3 point 12, §6: the proof's key is not the key the token is bound to (or the token
    presented under the DPoP scheme is not bound to any key)."""

    reason = "dpop_binding_mismatch"
