"""Who may vote on a request, and when the votes decide it.

Quorum is N-of-M over distinct people. The requester, whoever owns it or any principal of its
delegation chain, and agents are never eligible (separation of duties). A person's second vote is
the same vote (counted once). By default any deny is final; with ``deny_is_final`` off, a request is
denied once the approvals still possible can no longer reach the quorum. Timeout means deny.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .assurance import parse_aal
from .errors import InvalidApprovalRequest
from .people import Person

__all__ = ["Outcome", "Policy", "eligible_people", "ineligibility", "make_policy", "outcome"]

Outcome = Literal["pending", "approved", "denied"]


@dataclass(frozen=True)
class Policy:
    quorum: int
    assurance: str
    deny_is_final: bool
    #: the people who may vote, resolved at creation (person ids, sorted)
    eligible: tuple[str, ...]
    #: the person approves for themselves (CIBA: the user the client acts for): owning the client is
    #: not a conflict then; being the requester, an agent or disabled still is
    self_service: bool = False
    #: a message sent once the request is decided (CIBA ping), sealed: {id, channel, kind, recipient, sealed}
    on_decision: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "quorum": self.quorum,
            "assurance": self.assurance,
            "deny_is_final": self.deny_is_final,
            "eligible": list(self.eligible),
        }
        if self.self_service:
            out["self_service"] = True
        if self.on_decision is not None:
            out["on_decision"] = dict(self.on_decision)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Policy:
        return cls(
            raw["quorum"],
            raw["assurance"],
            raw["deny_is_final"],
            tuple(raw["eligible"]),
            bool(raw.get("self_service", False)),
            raw.get("on_decision"),
        )


def ineligibility(
    person: Person, requester: str, delegation: Sequence[str], *, self_service: bool = False
) -> str | None:
    """Why ``person`` may not approve a request by ``requester`` (None: they may)."""
    chain = {requester, *delegation}
    folded = {c.lower() for c in chain}  # e-mail addresses compare without case
    if person.agent:
        return "agents never approve"
    if person.disabled:
        return "the person is disabled"
    if person.person_id in chain or f"person:{person.person_id}" in chain:
        return "the requester cannot approve its own request"
    if person.email is not None and person.email.lower() in folded:
        return "the requester cannot approve its own request"
    owned = chain.intersection(person.owns)
    if owned and not self_service:
        return f"the person owns {sorted(owned)[0]}, which is in the request's delegation chain"
    return None


def eligible_people(
    people: Iterable[Person],
    *,
    approvers: Sequence[str],
    groups: Sequence[str],
    requester: str,
    delegation: Sequence[str],
    self_service: bool = False,
) -> tuple[list[Person], dict[str, str]]:
    """The named people and the members of the named groups who may vote, and why the others may not."""
    named, wanted = set(approvers), set(groups)
    eligible: list[Person] = []
    excluded: dict[str, str] = {}
    for p in people:
        if p.person_id not in named and not wanted.intersection(p.groups):
            continue
        why = ineligibility(p, requester, delegation, self_service=self_service)
        if why is None:
            eligible.append(p)
        else:
            excluded[p.person_id] = why
    return eligible, excluded


def make_policy(body: Mapping[str, Any], eligible: Sequence[Person]) -> Policy:
    quorum = body.get("quorum", 1)
    if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= 16:
        raise InvalidApprovalRequest("quorum: an integer from 1 to 16")
    assurance = body.get("assurance", "aal2")
    try:
        aal = parse_aal(assurance if isinstance(assurance, str) else "")
    except ValueError as e:
        raise InvalidApprovalRequest(f"assurance: {e}") from None
    deny_is_final = body.get("deny_is_final", True)
    if not isinstance(deny_is_final, bool):
        raise InvalidApprovalRequest("deny_is_final: true or false")
    if len(eligible) < quorum:
        raise InvalidApprovalRequest(
            f"quorum {quorum} cannot be reached: {len(eligible)} eligible approver(s) "
            "(the requester, its owners and agents are never eligible)"
        )
    return Policy(quorum, aal, deny_is_final, tuple(sorted(p.person_id for p in eligible)))


def outcome(policy: Policy, votes: Mapping[str, str]) -> Outcome:
    """The request's state given each eligible person's vote (person id → "approve" | "deny")."""
    counted = {pid: v for pid, v in votes.items() if pid in policy.eligible}
    denies = sum(1 for v in counted.values() if v == "deny")
    approvals = sum(1 for v in counted.values() if v == "approve")
    if denies and policy.deny_is_final:
        return "denied"
    if approvals >= policy.quorum:
        return "approved"
    undecided = len(policy.eligible) - len(counted)
    if approvals + undecided < policy.quorum:
        return "denied"
    return "pending"
