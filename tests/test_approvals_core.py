"""The pure parts of the approval core: the canonical transaction and its hash, the check code, the
WebAuthn challenge of one decision, quorum outcomes, eligibility (separation of duties) and the
validation of people's profiles. No store, no server: plain values in, plain values or errors out."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import pytest

from tessera.approvals.errors import InvalidApprovalRequest
from tessera.approvals.people import Person, PersonError, parse_people, parse_person
from tessera.approvals.quorum import Policy, eligible_people, ineligibility, make_policy, outcome
from tessera.approvals.transaction import Transaction, approval_challenge, check_code, tx_hash_of

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
NONCE = bytes(range(32))


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jcs(value: Any) -> bytes:
    """RFC 8785 for the values a transaction holds (strings, integers, null, booleans, arrays, objects
    with ASCII keys): sorted keys, no whitespace, UTF-8, no escaping beyond JSON's required ones."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


BODY: dict[str, Any] = {
    "requester": "ci-bot",
    "action": "deploy",
    "resource": "prod/api",
    "delegation": ["agent-7", "ci-bot"],
    "on_behalf_of": "alice",
    "scope": "write read write",
    "authorization_details": [{"type": "deployment", "locations": ["eu-1"]}],
    "environment": {"run": "1234", "ip": "192.0.2.1"},
    "binding_message": "Release 4.2",
}


@pytest.fixture
def tx() -> Transaction:
    return Transaction.build("apr_test", BODY, 1_800_000_600)


# -- the canonical transaction -------------------------------------------------------------------------------


def test_canonical_form_is_sorted_compact_json_of_every_field(tx: Transaction) -> None:
    raw = tx.to_json()
    assert raw == {
        "v": 1,
        "request_id": "apr_test",
        "requester": "ci-bot",
        "delegation": ["agent-7", "ci-bot"],
        "on_behalf_of": "alice",
        "action": "deploy",
        "resource": "prod/api",
        "scope": ["read", "write"],  # split, deduplicated, sorted
        "authorization_details": [{"type": "deployment", "locations": ["eu-1"]}],
        "environment": {"run": "1234", "ip": "192.0.2.1"},
        "binding_message": "Release 4.2",
        "expires_at": 1_800_000_600,
    }
    expected = b64url(hashlib.sha256(jcs(raw)).digest())
    assert tx.tx_hash == tx_hash_of(raw) == expected
    assert len(tx.tx_hash) == 43 and "=" not in tx.tx_hash


def test_hash_ignores_key_order_and_scope_order_but_not_delegation_order() -> None:
    a = Transaction.build("apr_x", BODY, 1)
    shuffled = dict(reversed(list(BODY.items())))
    shuffled["scope"] = ["read", "write"]
    shuffled["environment"] = {"ip": "192.0.2.1", "run": "1234"}
    assert Transaction.build("apr_x", shuffled, 1).tx_hash == a.tx_hash
    reordered = {**BODY, "delegation": ["ci-bot", "agent-7"]}
    assert Transaction.build("apr_x", reordered, 1).tx_hash != a.tx_hash


@pytest.mark.parametrize(
    ("details", "canonical"),
    [
        # RFC 8785 §3.2.2.3: numbers are serialised as ECMAScript does: 1.0 is 1, 1e21 is 1e+21.
        ({"type": "payment", "amount": 1.0}, b'{"amount":1,"type":"payment"}'),
        # RFC 8785 §3.2.3: keys sorted by their UTF-16 code units (the surrogate pair D83D… sorts before U+FB33).
        ({"type": "t", "\ufb33": 1, "\U0001f600": 2}, '{"type":"t","\U0001f600":2,"\ufb33":1}'.encode()),
    ],
)
def test_canonical_form_is_rfc8785_for_numbers_and_non_bmp_keys(details: dict[str, Any], canonical: bytes) -> None:
    tx = Transaction.build("apr_jcs", {**BODY, "authorization_details": [details]}, 1)
    raw = tx.to_json()
    expected = jcs({**raw, "authorization_details": []}).replace(
        b'"authorization_details":[]', b'"authorization_details":[' + canonical + b"]"
    )
    assert tx.tx_hash == b64url(hashlib.sha256(expected).digest())


def test_round_trip_through_json_keeps_the_hash(tx: Transaction) -> None:
    again = Transaction.from_json(json.loads(json.dumps(tx.to_json())))
    assert again == tx and again.tx_hash == tx.tx_hash


@pytest.mark.parametrize(
    "change",
    [
        {"request_id": "apr_other"},
        {"requester": "ci-bot2"},
        {"action": "deploy "},
        {"resource": "prod/API"},
        {"expires_at": 1_800_000_601},
        {"delegation": ("agent-7",)},
        {"on_behalf_of": None},
        {"scope": ("read",)},
        {"authorization_details": ({"type": "deployment", "locations": ["eu-2"]},)},
        {"environment": {"run": "1235", "ip": "192.0.2.1"}},
        {"binding_message": "Release 4.3"},
        {"binding_message": None},
    ],
    ids=lambda c: next(iter(c)),
)
def test_tx_hash_changes_with_any_field(tx: Transaction, change: dict[str, Any]) -> None:
    assert dataclasses.replace(tx, **change).tx_hash != tx.tx_hash


def test_identical_requests_hash_differently_by_request_id() -> None:
    assert Transaction.build("apr_1", BODY, 1).tx_hash != Transaction.build("apr_2", BODY, 1).tx_hash


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BODY, "action": None}, "action"),
        ({k: v for k, v in BODY.items() if k != "action"}, "action"),
        ({**BODY, "action": "   "}, "action"),
        ({**BODY, "resource": "prod\napi"}, "resource"),
        ({**BODY, "requester": 7}, "requester"),
        ({**BODY, "action": "x" * 129}, "action"),
        ({**BODY, "binding_message": "m" * 65}, "binding_message"),
        ({**BODY, "delegation": ["ok", ""]}, "delegation"),
        ({**BODY, "delegation": ["a"] * 17}, "delegation"),
        ({**BODY, "scope": [1]}, "scope"),
        ({**BODY, "authorization_details": [{"locations": []}]}, "authorization_details"),
        ({**BODY, "authorization_details": {"type": "x"}}, "authorization_details"),
        ({**BODY, "environment": {"run": 1}}, "environment"),
        ({**BODY, "environment": ["run"]}, "environment"),
        ({**BODY, "authorization_details": [{"type": "blob", "data": "x" * 17_000}]}, "larger than"),
    ],
)
def test_build_refuses_invalid_transactions(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidApprovalRequest) as e:
        Transaction.build("apr_bad", body, 1)
    assert field in e.value.description


# -- the check code ------------------------------------------------------------------------------------------


def test_check_code_is_the_first_40_bits_in_crockford_base32(tx: Transaction) -> None:
    code = check_code(tx.tx_hash)
    raw = base64.urlsafe_b64decode(tx.tx_hash + "=")[:5]
    n = int.from_bytes(raw, "big")
    expected = "".join(CROCKFORD[(n >> (35 - 5 * i)) & 31] for i in range(8))
    assert code == f"{expected[:4]}-{expected[4:]}"
    assert len(code) == 9 and code[4] == "-"
    assert not set(code.replace("-", "")) & set("ILOU")


def test_check_code_of_known_hashes() -> None:
    assert check_code(b64url(bytes(32))) == "0000-0000"
    assert check_code(b64url(b"\xff" * 32)) == "ZZZZ-ZZZZ"
    # 0x0842108421 = 00001 00001 ... (eight 5-bit groups of 1)
    assert check_code(b64url(bytes.fromhex("0842108421") + bytes(27))) == "1111-1111"


def test_check_code_differs_when_the_transaction_differs(tx: Transaction) -> None:
    codes = {check_code(dataclasses.replace(tx, action=f"deploy-{i}").tx_hash) for i in range(50)}
    assert len(codes) == 50


# -- the challenge of one decision ---------------------------------------------------------------------------


def _challenge_by_hand(tx_hash: str, decision: str, link: str, nonce: bytes) -> bytes:
    h = hashlib.sha256()
    for part in (b"tessera-approval-v1", tx_hash.encode(), decision.encode(), link.encode(), nonce):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def test_approval_challenge_matches_its_definition(tx: Transaction) -> None:
    got = approval_challenge(tx.tx_hash, "approve", "link-1", NONCE)
    assert got == _challenge_by_hand(tx.tx_hash, "approve", "link-1", NONCE)
    assert len(got) == 32


def test_approval_challenge_differs_per_decision_link_nonce_and_transaction(tx: Transaction) -> None:
    base = approval_challenge(tx.tx_hash, "approve", "link-1", NONCE)
    other_tx = dataclasses.replace(tx, resource="staging/api").tx_hash
    variants = [
        approval_challenge(tx.tx_hash, "deny", "link-1", NONCE),
        approval_challenge(tx.tx_hash, "approve", "link-2", NONCE),
        approval_challenge(tx.tx_hash, "approve", "link-1", NONCE[:-1] + b"\x00"),
        approval_challenge(other_tx, "approve", "link-1", NONCE),
    ]
    assert len({base, *variants}) == 5
    assert approval_challenge(tx.tx_hash, "approve", "link-1", NONCE) == base  # deterministic


def test_approval_challenge_fields_cannot_slide_into_each_other() -> None:
    # Without length prefixes, ("ab", b"c") and ("a", b"bc") would hash the same bytes.
    assert approval_challenge("h", "approve", "ab", b"c") != approval_challenge("h", "approve", "a", b"bc")


@pytest.mark.parametrize("decision", ["", "APPROVE", "abstain", "approve "])
def test_approval_challenge_refuses_other_decisions(decision: str) -> None:
    with pytest.raises(ValueError):
        approval_challenge("h", decision, "link", NONCE)


# -- quorum --------------------------------------------------------------------------------------------------

A, D = "approve", "deny"


def policy(quorum: int, deny_is_final: bool = True, eligible: tuple[str, ...] = ("a", "b", "c")) -> Policy:
    return Policy(quorum, "aal2", deny_is_final, eligible)


@pytest.mark.parametrize(
    ("quorum", "deny_is_final", "votes", "expected"),
    [
        (2, True, {}, "pending"),
        (2, True, {"a": A}, "pending"),
        (2, True, {"a": A, "b": A}, "approved"),
        (2, True, {"a": A, "b": A, "c": A}, "approved"),
        (2, True, {"a": D}, "denied"),
        (2, True, {"a": A, "b": D}, "denied"),
        (2, True, {"a": A, "b": A, "c": D}, "denied"),  # a deny is final even after the quorum
        (1, True, {"a": A}, "approved"),
        (2, False, {"a": D}, "pending"),
        (2, False, {"a": D, "b": A}, "pending"),
        (2, False, {"a": D, "b": A, "c": A}, "approved"),
        (2, False, {"a": D, "b": D}, "denied"),  # two approvals can no longer happen
        (3, False, {"a": D}, "denied"),
        (3, False, {"a": A, "b": A}, "pending"),
        (3, False, {"a": A, "b": A, "c": A}, "approved"),
    ],
)
def test_outcome_table(quorum: int, deny_is_final: bool, votes: dict[str, str], expected: str) -> None:
    assert outcome(policy(quorum, deny_is_final), votes) == expected


def test_votes_of_people_outside_the_policy_are_ignored() -> None:
    assert outcome(policy(2), {"x": A, "y": A}) == "pending"
    assert outcome(policy(2), {"x": D}) == "pending"
    assert outcome(policy(2), {"a": A, "x": A}) == "pending"
    assert outcome(policy(2, False), {"x": D, "y": D, "z": D}) == "pending"


def test_a_person_counts_once() -> None:
    # The store keeps one vote per person; a vote list with the same person twice counts them once.
    votes = [("a", A), ("a", A)]
    assert outcome(policy(2), dict(votes)) == "pending"
    assert outcome(policy(2), dict([("a", A), ("a", D)])) == "denied"


def test_policy_json_round_trip() -> None:
    p = policy(2, False)
    assert Policy.from_json(json.loads(json.dumps(p.to_json()))) == p


# -- eligibility ---------------------------------------------------------------------------------------------


def person(pid: str, **kw: Any) -> Person:
    return Person(person_id=pid, name=pid.title(), **kw)


@pytest.mark.parametrize(
    ("who", "requester", "delegation", "why"),
    [
        (person("alice"), "alice", (), "cannot approve its own"),
        (person("alice"), "person:alice", (), "cannot approve its own"),
        (person("alice", email="alice@example.com"), "alice@example.com", (), "cannot approve its own"),
        (person("alice"), "ci-bot", ("alice",), "cannot approve its own"),
        (person("alice", owns=("ci-bot",)), "ci-bot", (), "owns ci-bot"),
        (person("alice", owns=("ci-bot",)), "agent-7", ("ci-bot",), "owns ci-bot"),
        (person("alice", owns=("ci-bot",)), "agent-7", ("svc", "ci-bot"), "owns ci-bot"),
        (person("bot", agent=True), "ci-bot", (), "agents never approve"),
        (person("gone", disabled=True), "ci-bot", (), "disabled"),
    ],
)
def test_ineligible(who: Person, requester: str, delegation: tuple[str, ...], why: str) -> None:
    reason = ineligibility(who, requester, delegation)
    assert reason is not None and why in reason


def test_eligible_when_unrelated() -> None:
    assert ineligibility(person("bob", owns=("other-bot",)), "ci-bot", ("agent-7",)) is None
    assert ineligibility(person("bob", email="bob@example.com"), "bob@example.org", ()) is None


def test_requester_given_by_email_in_another_case_is_still_the_person() -> None:
    # E-mail addresses are matched case-insensitively everywhere else (login hints, uniqueness).
    who = person("alice", email="alice@example.com")
    assert ineligibility(who, "Alice@Example.com", ()) is not None


def test_eligible_people_resolves_names_and_groups_and_says_why_others_are_out() -> None:
    people = [
        person("alice", groups=("ops",)),
        person("bob", groups=("ops",), owns=("ci-bot",)),
        person("carol"),
        person("dave", groups=("ops",), agent=True),
        person("erin", groups=("dev",)),
        person("frank", disabled=True),
    ]
    eligible, excluded = eligible_people(
        people, approvers=["carol", "frank"], groups=["ops"], requester="ci-bot", delegation=()
    )
    assert [p.person_id for p in eligible] == ["alice", "carol"]
    assert set(excluded) == {"bob", "dave", "frank"}
    assert "owns ci-bot" in excluded["bob"]
    assert "agents" in excluded["dave"] and "disabled" in excluded["frank"]


def test_make_policy_keeps_only_eligible_sorted() -> None:
    p = make_policy({"quorum": 2, "assurance": "aal3", "deny_is_final": False}, [person("zed"), person("amy")])
    assert p == Policy(2, "aal3", False, ("amy", "zed"))
    assert make_policy({}, [person("amy")]) == Policy(1, "aal2", True, ("amy",))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quorum": 0}, "quorum"),
        ({"quorum": 17}, "quorum"),
        ({"quorum": True}, "quorum"),
        ({"quorum": "1"}, "quorum"),
        ({"quorum": 1.0}, "quorum"),
        ({"assurance": "aal9"}, "assurance"),
        ({"assurance": "AAL2"}, "assurance"),
        ({"assurance": 2}, "assurance"),
        ({"deny_is_final": "yes"}, "deny_is_final"),
        ({"quorum": 3}, "cannot be reached"),
    ],
)
def test_make_policy_refuses(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidApprovalRequest) as e:
        make_policy(body, [person("a"), person("b")])
    assert field in e.value.description


# -- people --------------------------------------------------------------------------------------------------


def test_parse_person_defaults_and_normalisation() -> None:
    p = parse_person({"name": " Alice ", "email": "alice@example.com", "groups": ["ops", "ops", "dev"]}, "alice")
    assert p.name == "Alice" and p.channels == ("email",) and p.groups == ("ops", "dev")
    assert parse_person({}, "bob") == Person("bob", "bob", channels=("file",))
    q = parse_person({"person_id": "carol", "channels": ["webhook:ops", "file"], "owns": ["ci-bot"], "agent": True})
    assert q.channels == ("webhook:ops", "file") and q.owns == ("ci-bot",) and q.agent


@pytest.mark.parametrize(
    ("raw", "pid", "needle"),
    [
        ({}, "Alice", "person_id"),
        ({}, "", "person_id"),
        ({}, ".alice", "person_id"),
        ({}, "a" * 65, "person_id"),
        ({}, None, "person_id"),
        ({"role": "admin"}, "alice", "people.alice: unknown field(s) role"),
        ({"person_id": "bob"}, "alice", "differs from the path"),
        ({"name": ""}, "alice", "people.alice.name"),
        ({"name": "x" * 129}, "alice", "people.alice.name"),
        ({"name": "Al\x07ice"}, "alice", "people.alice.name"),
        ({"email": "not-an-address"}, "alice", "people.alice.email"),
        ({"email": "a b@example.com"}, "alice", "people.alice.email"),
        ({"channels": ["sms"]}, "alice", "people.alice.channels"),
        ({"channels": ["webhook:"]}, "alice", "people.alice.channels"),
        ({"channels": "email"}, "alice", "people.alice.channels"),
        ({"channels": ["email"]}, "alice", "'email' needs an email address"),
        ({"groups": ["has space"]}, "alice", "people.alice.groups"),
        ({"groups": [""]}, "alice", "people.alice.groups"),
        ({"owns": [7]}, "alice", "people.alice.owns"),
        ({"agent": "yes"}, "alice", "people.alice.agent"),
        ({"disabled": 1}, "alice", "people.alice.disabled"),
    ],
)
def test_parse_person_errors_name_the_person_and_field(raw: dict[str, Any], pid: str | None, needle: str) -> None:
    with pytest.raises(PersonError) as e:
        parse_person(raw, pid)
    assert needle in str(e.value)


def test_parse_person_refuses_a_non_object() -> None:
    with pytest.raises(PersonError):
        parse_person(["alice"], "alice")  # type: ignore[arg-type]


def test_parse_people_refuses_duplicates() -> None:
    with pytest.raises(PersonError, match=r"person_id 'alice'"):
        parse_people([{"person_id": "alice"}, {"person_id": "alice"}])
    with pytest.raises(PersonError, match=r"email 'a@example\.com'"):
        parse_people([{"person_id": "a1", "email": "a@example.com"}, {"person_id": "a2", "email": "A@Example.com"}])
    assert [p.person_id for p in parse_people([{"person_id": "a"}, {"person_id": "b"}])] == ["a", "b"]
