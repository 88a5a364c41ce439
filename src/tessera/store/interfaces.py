"""Narrow storage contracts. A handler depends on the smallest one it needs.

One contract test suite (``tests/test_store_contract.py``) runs every implementation against
SQLite and a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tessera.audit import AuditEvent
    from tessera.oauth.client_auth import AssertionUse
    from tessera.oauth.clients import Client
    from tessera.oauth.keys import KeyRecord
    from tessera.oauth.revocation import TokenSelector
    from tessera.oauth.status_entries import StatusListState, StatusSegment
    from tessera.oauth.tokens import IssuedToken

__all__ = [
    "AssertionRecorder",
    "AssertionReplayed",
    "AuditSink",
    "ClientReader",
    "ClientWriter",
    "IssuanceRecorder",
    "KeySource",
    "StatusListSource",
    "StatusSegmentSource",
    "TokenReader",
    "TokenRevoker",
]


class AssertionReplayed(Exception):
    """A single-use token's jti (a client assertion's, a replay-protected external token's) was used."""

    def __init__(self, jti: str, replayed: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(jti)
        #: the (namespace, jti) pairs that were used before (or twice in the request)
        self.replayed = replayed or (("", jti),)

    def concerns(self, use: AssertionUse | None) -> bool:
        return use is not None and any(k == (use.client_id, use.jti) for k in self.replayed)


class ClientReader(Protocol):
    async def get_client(self, client_id: str) -> Client | None: ...


class ClientWriter(Protocol):
    async def create_client(self, client: Client, event: AuditEvent) -> None: ...

    async def update_client(self, client: Client, event: AuditEvent) -> None: ...

    async def delete_client(self, client_id: str, event: AuditEvent) -> bool: ...


class IssuanceRecorder(Protocol):
    async def record_issuance(
        self, token: IssuedToken, assertion: AssertionUse | Sequence[AssertionUse] | None, event: AuditEvent
    ) -> None:
        """Atomically consume the assertion's jti (raise AssertionReplayed if it was used), store the
        token record and append the audit event. Returns only once all of it is committed."""
        ...


class AuditSink(Protocol):
    async def audit(self, event: AuditEvent) -> None: ...


class KeySource(Protocol):
    async def load_keys(self) -> list[KeyRecord]: ...


class AssertionRecorder(Protocol):
    async def consume_assertion(self, use: AssertionUse) -> None:
        """Record a client assertion's jti; raise AssertionReplayed if it was used before."""
        ...


class TokenReader(Protocol):
    async def find_token(self, jti: str) -> IssuedToken | None: ...


class TokenRevoker(Protocol):
    async def revoke(
        self,
        selector: TokenSelector,
        *,
        actor: str,
        via: str,
        assertion: AssertionUse | None = None,
        record_none: bool = False,
    ) -> list[IssuedToken]:
        """Atomically consume the assertion's jti (AssertionReplayed if used), revoke the selected tokens
        and append a ``token.revoked`` record (also when none was revoked if ``record_none``)."""
        ...


class StatusSegmentSource(Protocol):
    async def claim_status_segment(self, list_size: int, claimed_by: str) -> StatusSegment:
        """Claim a segment no other process holds (of the newest list with room, or of a new list)."""
        ...


class StatusListSource(Protocol):
    """Synchronous: called from a worker thread by the status list endpoint."""

    def status_list(self, list_id: int) -> StatusListState | None: ...

    def live_status_lists(self) -> list[int]: ...
