"""No-call-home verification of Tessera tokens: the relying party's SDK.

Depends on ``cryptography`` and ``httpx`` only: ``pip install tessera`` (no server extras).

    from tessera.verify import Verifier
    verifier = Verifier("https://tessera.example.com", audiences=["https://api.example.com"])
    claims = verifier.verify(token)          # raises a VerificationError subclass naming the reason

Keys and status lists are cached and refreshed in the background; when the issuer cannot be
reached the verifier keeps working on cached data up to ``keys_max_stale`` / ``status_max_age``
and then fails closed.
"""

from tessera.verify.errors import (
    BadSignature,
    DelegationRefused,
    Expired,
    InvalidBundle,
    IssuedInFuture,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    Revoked,
    StatusUnavailable,
    Suspended,
    TokenTooLarge,
    TooOld,
    TrustDataStale,
    UnknownKey,
    UnsupportedAlgorithm,
    VerificationError,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from tessera.verify.report import Report
from tessera.verify.verifier import Claims, Verifier

__all__ = [
    "BadSignature",
    "Claims",
    "DelegationRefused",
    "Expired",
    "InvalidBundle",
    "IssuedInFuture",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "Report",
    "Revoked",
    "StatusUnavailable",
    "Suspended",
    "TokenTooLarge",
    "TooOld",
    "TrustDataStale",
    "UnknownKey",
    "UnsupportedAlgorithm",
    "VerificationError",
    "Verifier",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
]
