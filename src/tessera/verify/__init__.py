"""No-call-home verification of Tessera tokens: the relying party's SDK.

Depends on ``cryptography`` and ``httpx`` only: ``pip install tessera`` (no server extras).

    from tessera.verify import Verifier
    verifier = Verifier("https://tessera.example.com", audiences=["https://api.example.com"])
    claims = verifier.verify(token)          # raises a VerificationError subclass naming the reason
    claims = verifier.verify_dpop(token, proof, htm="GET", htu=url)   # DPoP-bound tokens (RFC 9449)

Keys and status lists are cached and refreshed in the background; when the issuer cannot be
reached the verifier keeps working on cached data up to ``keys_max_stale`` / ``status_max_age``
and then fails closed.
"""

from tessera.verify.dpop import DPoPProof, JtiCache, check_proof, jwk_thumbprint
from tessera.verify.errors import (
    BadSignature,
    DelegationRefused,
    DPoPBindingMismatch,
    DPoPProofRequired,
    Expired,
    InvalidBundle,
    InvalidDPoPProof,
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
    UseDPoPNonce,
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
    "DPoPBindingMismatch",
    "DPoPProof",
    "DPoPProofRequired",
    "DelegationRefused",
    "Expired",
    "InvalidBundle",
    "InvalidDPoPProof",
    "IssuedInFuture",
    "JtiCache",
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
    "UseDPoPNonce",
    "VerificationError",
    "Verifier",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
    "check_proof",
    "jwk_thumbprint",
]
