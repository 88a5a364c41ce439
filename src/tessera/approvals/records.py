"""Stored shapes of the approval core and the narrow storage contract it runs its transactions on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .people import Person
from .quorum import Policy
from .transaction import Transaction

if TYPE_CHECKING:
    from tessera.audit import AuditEvent
    from tessera.channels.message import Message

__all__ = [
    "ApprovalStore",
    "ApprovalTx",
    "AuthenticatorRecord",
    "Commit",
    "EnrolmentRecord",
    "LinkRecord",
    "PersonRecord",
    "RequestRecord",
    "VoteRecord",
]

T = TypeVar("T")


@dataclass(frozen=True)
class PersonRecord:
    person: Person
    source: str
    failures: int
    locked_at: int | None
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class AuthenticatorRecord:
    authenticator_id: str
    person_id: str
    kind: str  # "passkey" | "totp"
    label: str
    #: passkey: Passkey.to_json(); totp: {"last_step": int | None, "digits", "period", "algorithm"}
    public: dict[str, Any]
    #: totp only: the seed, sealed under the KEK (AAD: authenticator id)
    sealed_secret: bytes | None
    created_at: int
    last_used_at: int | None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "authenticator_id": self.authenticator_id,
            "kind": self.kind,
            "label": self.label,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
        }
        if self.kind == "passkey":
            out["device_bound"] = not self.public.get("backup_eligible", False)
            out["user_verified"] = bool(self.public.get("user_verified"))
        return out


@dataclass(frozen=True)
class EnrolmentRecord:
    token_hash: str
    person_id: str
    state: dict[str, Any]
    attempts: int
    created_at: int
    expires_at: int
    used_at: int | None


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    tx: Transaction
    #: the transaction exactly as stored; its hash is recomputed at every decision
    tx_json: dict[str, Any]
    tx_hash: str
    binding_message: str
    requester: str
    policy: Policy
    status: str  # pending | approved | denied | expired | cancelled
    origin: str | None
    created_at: int
    expires_at: int
    decided_at: int | None


@dataclass(frozen=True)
class LinkRecord:
    token_hash: str
    request_id: str
    person_id: str
    challenge: dict[str, Any] | None
    attempts: int
    created_at: int
    expires_at: int
    viewed_at: int | None
    used_at: int | None
    superseded_at: int | None


@dataclass(frozen=True)
class VoteRecord:
    request_id: str
    person_id: str
    decision: str
    evidence: dict[str, Any]
    created_at: int


class ApprovalTx(Protocol):
    """One database transaction. Reads with ``lock=True`` hold the row until commit (PostgreSQL
    ``FOR UPDATE``; SQLite transactions are serial)."""

    def audit(self, event: AuditEvent) -> None: ...

    # people
    def get_person(self, person_id: str, *, lock: bool = False) -> PersonRecord | None: ...
    def list_people(self) -> list[PersonRecord]: ...
    def put_person(self, person: Person, source: str, now: int) -> bool: ...
    def delete_person(self, person_id: str) -> bool: ...
    def set_failures(self, person_id: str, failures: int, locked_at: int | None) -> None: ...

    # authenticators
    def authenticators(self, person_id: str) -> list[AuthenticatorRecord]: ...
    def add_authenticator(self, rec: AuthenticatorRecord) -> None: ...
    def delete_authenticator(self, person_id: str, authenticator_id: str) -> bool: ...
    def use_authenticator(self, authenticator_id: str, public: dict[str, Any], now: int) -> None: ...

    # enrolments
    def insert_enrolment(self, rec: EnrolmentRecord) -> None: ...
    def get_enrolment(self, token_hash: str, *, lock: bool = False) -> EnrolmentRecord | None: ...
    def update_enrolment(self, token_hash: str, **values: Any) -> None: ...
    def supersede_enrolments(self, person_id: str, now: int) -> None: ...

    # approval requests, links, votes
    def insert_request(self, rec: RequestRecord) -> None: ...
    def get_request(self, request_id: str, *, lock: bool = False) -> RequestRecord | None: ...
    def set_request_status(self, request_id: str, status: str, decided_at: int) -> None: ...
    def list_requests(self, status: str | None, limit: int) -> list[RequestRecord]: ...
    def due_requests(self, now: int, limit: int) -> list[str]: ...
    def insert_link(self, rec: LinkRecord) -> None: ...
    def get_link(self, token_hash: str, *, lock: bool = False) -> LinkRecord | None: ...
    def update_link(self, token_hash: str, **values: Any) -> None: ...
    def supersede_links(self, request_id: str, now: int, person_id: str | None = None) -> int: ...
    def insert_vote(self, vote: VoteRecord) -> bool: ...
    def votes(self, request_id: str) -> list[VoteRecord]: ...

    # a CIBA authentication request's own record, written with its approval request
    def insert_ciba(self, values: dict[str, Any]) -> None: ...

    # outbox and rate limits
    def enqueue(self, message: Message, sealed_body: bytes, now: int) -> None: ...
    def rate_count(self, key: str, since: int) -> int:
        """Events counted under ``key`` since ``since``; the key stays locked (across processes) until the
        transaction ends, so a count and the ``rate_add`` after it are one step. Count keys in sorted order."""
        ...

    def rate_add(self, keys: list[str], now: int) -> None: ...


class ApprovalStore(Protocol):
    def run(self, fn: Callable[[ApprovalTx], T]) -> T:
        """Run ``fn`` in one transaction; commit its writes and audit events together, or none of them.
        An exception raised by ``fn`` rolls back, except :class:`Commit`, which commits and re-raises
        its ``error`` (a failed proof must be counted even though the request is refused)."""
        ...

    def read(self, fn: Callable[[ApprovalTx], T]) -> T: ...


class Commit(Exception):
    """Raised inside :meth:`ApprovalStore.run`: keep what was written, then raise ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
