"""Errors of the approval core. Each names a stable code; ``http/`` renders them."""

from __future__ import annotations

__all__ = [
    "ApprovalError",
    "Conflict",
    "Ineligible",
    "InvalidApprovalRequest",
    "LinkUnusable",
    "Locked",
    "NotFound",
    "ProofRefused",
    "RateLimited",
]


class ApprovalError(Exception):
    code = "invalid_request"
    status = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidApprovalRequest(ApprovalError):
    code = "invalid_request"


class NotFound(ApprovalError):
    code = "not_found"
    status = 404


class Conflict(ApprovalError):
    code = "conflict"
    status = 409


class RateLimited(ApprovalError):
    """Too many messages to one person or from one requester (the push-bombing guard)."""

    code = "slow_down"
    status = 429


class LinkUnusable(ApprovalError):
    """A one-time link that is unknown, expired, used, superseded or locked; ``reason`` says which."""

    code = "link_unusable"
    status = 410

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason


class Ineligible(ApprovalError):
    """The person may not vote on this request (separation of duties)."""

    code = "access_denied"
    status = 403


class Locked(ApprovalError):
    """The person is locked after too many consecutive failed proofs."""

    code = "access_denied"
    status = 403


class ProofRefused(ApprovalError):
    """The authenticator's proof did not verify; ``remaining`` attempts are left on this link."""

    code = "access_denied"
    status = 403

    def __init__(self, reason: str, description: str, remaining: int) -> None:
        super().__init__(description)
        self.reason = reason
        self.remaining = remaining
