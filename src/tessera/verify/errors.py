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
    "DelegationRefused",
    "Expired",
    "InvalidBundle",
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
