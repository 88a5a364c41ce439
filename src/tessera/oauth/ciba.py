"""OpenID Connect Client-Initiated Backchannel Authentication (CIBA) Core 1.0: the parts shared by the
backchannel authentication endpoint (``endpoints/backchannel.py``) and the CIBA grant
(``grants/ciba.py``): the stored record, the storage contract and the poll decision.

Token delivery modes: ``poll`` and ``ping``. ``push`` is not offered: FAPI-CIBA §5.2.2 forbids it, and
a token pushed to a client that fails to store it is lost (the client cannot ask again).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from tessera.oauth.errors import AccessDenied, AuthorizationPending, ExpiredToken, InvalidGrant, SlowDown

__all__ = [
    "CIBA_GRANT",
    "CibaRecord",
    "CibaStore",
    "PollDecision",
    "aal_of_acr",
    "acr_of",
    "auth_req_hash",
    "decide_poll",
]

CIBA_GRANT = "urn:openid:params:grant-type:ciba"
#: acr values Tessera asserts and accepts in ``acr_values`` (NIST SP 800-63B levels)
ACR_VALUES = ("urn:tessera:aal1", "urn:tessera:aal2", "urn:tessera:aal3")
_ACR_ALIASES = {
    **{f"urn:tessera:aal{n}": f"aal{n}" for n in (1, 2, 3)},
    **{f"aal{n}": f"aal{n}" for n in (1, 2, 3)},
    **{f"http://idmanagement.gov/ns/assurance/aal/{n}": f"aal{n}" for n in (1, 2, 3)},
}
#: slow_down adds this many seconds to the interval, for that poll and every later one (RFC 8628 §3.5)
SLOW_DOWN_STEP = 5
#: expired records are kept this long past expiry to answer expired_token rather than invalid_grant
KEEP_EXPIRED = 24 * 3600


def auth_req_hash(auth_req_id: str) -> str:
    return hashlib.sha256(auth_req_id.encode()).hexdigest()


def aal_of_acr(acr_values: str | None, default: str) -> str | None:
    """The first ``acr_values`` entry Tessera knows (OIDC Core §3.1.2.1: in order of preference), the
    default without any; None when values were given and none is known."""
    if not acr_values:
        return default
    for value in acr_values.split():
        if value in _ACR_ALIASES:
            return _ACR_ALIASES[value]
    return None


def acr_of(aal: str) -> str:
    return f"urn:tessera:{aal}"


@dataclass(frozen=True)
class CibaRecord:
    auth_req_hash: str
    client_id: str
    person_id: str
    approval_id: str
    #: what a redemption issues: scope, audience, authorization_details, assurance
    grant: dict[str, Any]
    mode: str
    interval: int
    last_poll_at: int | None
    status: str  # pending | redeemed
    created_at: int
    expires_at: int
    redeemed_at: int | None
    issued: list[str] | None
    #: the approval request's state and its votes, read in the same transaction
    approval_status: str = "pending"
    votes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PollDecision:
    """What a token request with this ``auth_req_id`` gets. ``error`` is raised after the ``updates``
    are committed (the interval grows, the poll time is kept); ``redeem`` means tokens may be issued."""

    error: Exception | None = None
    updates: dict[str, Any] = field(default_factory=dict)
    redeem: bool = False
    replay: bool = False


def decide_poll(rec: CibaRecord | None, client_id: str, now: int) -> PollDecision:
    """CIBA §11 in the order client binding → expired → too fast → pending → denied → redeem."""
    # §11: "If the auth_req_id is invalid or was issued to another Client, an invalid_grant error" — and
    # another client's attempt neither consumes nor cancels the request: no update at all.
    if rec is None or rec.client_id != client_id:
        return PollDecision(InvalidGrant("auth_req_id is unknown or was issued to another client"))
    if rec.status == "redeemed":
        # Used twice: refuse, and revoke what the first redemption issued (RFC 6749 §4.1.2 by analogy).
        return PollDecision(InvalidGrant("auth_req_id was already used; its tokens are revoked"), replay=True)
    if now >= rec.expires_at or rec.approval_status in ("expired", "cancelled"):
        return PollDecision(ExpiredToken("the authentication request expired"))
    if rec.last_poll_at is not None and now - rec.last_poll_at < rec.interval:
        interval = rec.interval + SLOW_DOWN_STEP
        return PollDecision(
            SlowDown(f"poll at most every {interval} seconds", interval=interval),
            updates={"interval": interval, "last_poll_at": now},
        )
    if rec.approval_status == "pending":
        return PollDecision(AuthorizationPending("the person has not answered yet"), updates={"last_poll_at": now})
    if rec.approval_status == "denied":
        return PollDecision(AccessDenied("the person denied the request"), updates={"last_poll_at": now})
    if rec.approval_status == "approved":
        return PollDecision(redeem=True)
    return PollDecision(InvalidGrant("the authentication request cannot be redeemed"))


class CibaStore(Protocol):
    async def load(self, auth_req_hash: str) -> CibaRecord | None: ...

    async def poll(self, auth_req_hash: str, client_id: str, now: int, assertion: Any = None) -> PollDecision:
        """Lock the record, ``decide_poll`` and apply its updates, in one transaction."""
        ...

    async def redeem(
        self, auth_req_hash: str, client_id: str, now: int, tokens: list[Any], events: list[Any], assertion: Any
    ) -> PollDecision:
        """Decide again under the lock; if still redeemable, mark it redeemed and record the tokens
        (and the client assertion's jti) in the same transaction."""
        ...

    async def revoke_issued(self, auth_req_hash: str, actor: str) -> list[Any]: ...
