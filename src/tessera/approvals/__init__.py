"""Human approvals: people and their authenticators (passkeys per W3C WebAuthn, TOTP per RFC 6238),
approval requests bound to a canonical transaction (``tx_hash``), quorum and separation of duties,
limits, and the notices that reach people (never the approval itself: NIST SP 800-63B rev. 4).

The core takes and returns plain values; ``store/`` persists it, ``http/`` renders it.
"""

from .errors import ApprovalError, InvalidApprovalRequest, LinkUnusable, ProofRefused, RateLimited
from .people import Person, PersonError, parse_people, parse_person
from .service import ApprovalConfig, ApprovalService
from .transaction import Transaction, approval_challenge, check_code, tx_hash_of

__all__ = [
    "ApprovalConfig",
    "ApprovalError",
    "ApprovalService",
    "InvalidApprovalRequest",
    "LinkUnusable",
    "Person",
    "PersonError",
    "ProofRefused",
    "RateLimited",
    "Transaction",
    "approval_challenge",
    "check_code",
    "parse_people",
    "parse_person",
    "tx_hash_of",
]
