"""The approval service on both storage backends (SQLite and a real PostgreSQL), with the clock in
the test's hands: expiry, TOTP time steps, lockouts and concurrent decisions, without sleeping.

Links are read the way a person gets them: from the outbox, unsealed with the key-encryption key.
"""

from __future__ import annotations

import base64
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tessera.approvals.errors import Conflict, InvalidApprovalRequest, LinkUnusable, Locked, ProofRefused, RateLimited
from tessera.approvals.service import ApprovalConfig, ApprovalService
from tessera.approvals.totp import code_at
from tessera.channels.message import Message
from tessera.clock import FrozenClock
from tessera.oauth.keys import KEK
from tessera.store.sql import repo
from tessera.store.sql.approvals import SqlApprovalStore
from tessera.store.sql.store import SqlStore
from tessera.store.sql.tables import approval_requests, outbox
from webauthn_support import SoftAuthenticator

T0 = 1_800_000_010  # 10 s into a TOTP step
ORIGIN = "https://tessera.example"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tessera.db'}"
    return str(request.getfixturevalue("postgres").create_database())


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def store(url: str, clock: FrozenClock) -> Iterator[SqlStore]:
    s = SqlStore(url, clock)
    s.migrate()
    yield s
    s.close()


KEY = KEK.from_text(KEK.generate_text())


def service(store: SqlStore, clock: FrozenClock, **overrides: Any) -> ApprovalService:
    config = ApprovalConfig(
        issuer=ORIGIN,
        origin=ORIGIN,
        rp_id="tessera.example",
        channels=frozenset({"file", "email"}),
        **overrides,
    )
    return ApprovalService(SqlApprovalStore(store), KEY, config, now=clock.now)


def messages(store: SqlStore) -> list[Message]:
    rows = store.read(lambda c: list(c.execute(sa.select(outbox).order_by(outbox.c.created_at))))
    return [Message.unseal(KEY, r.message_id, r.sealed_body) for r in rows]


def token(store: SqlStore, kind: str, person: str, nth: int = -1) -> str:
    found = [m for m in messages(store) if m.kind == kind and m.data.get("person_id") == person]
    assert found, f"no {kind} for {person}"
    return str(found[nth].data["link"]).rsplit("/", 1)[1]


def events(store: SqlStore) -> list[str]:
    return store.read(lambda c: [r.event for r in repo.iter_audit(c)])


def enrol_totp(s: ApprovalService, store: SqlStore, clock: FrozenClock, person: str) -> bytes:
    s.start_enrolment(person, "test")
    t = token(store, "enrolment.link", person)
    b32, uri = s.start_totp_enrolment(t)
    assert uri.startswith("otpauth://totp/")
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    s.finish_totp_enrolment(t, code_at(secret, clock.now()), "phone")
    return secret


def enrol_passkey(s: ApprovalService, store: SqlStore, person: str, **flags: Any) -> SoftAuthenticator:
    s.start_enrolment(person, "test")
    t = token(store, "enrolment.link", person)
    device = SoftAuthenticator()
    s.finish_passkey_enrolment(t, json.dumps(device.create(s.passkey_registration_options(t), ORIGIN, **flags)), "key")
    return device


def approve_with(s: ApprovalService, t: str, device: SoftAuthenticator, decision: str = "approve") -> dict[str, Any]:
    options = s.passkey_options(t, decision)
    return s.decide(t, decision, credential=json.dumps(device.get(options, ORIGIN)))


def people(s: ApprovalService, *ids: str, **profile: Any) -> None:
    for pid in ids:
        s.put_person({"name": pid.title(), "groups": ["ops"], "channels": ["file"], **profile}, pid, "test")


def request(s: ApprovalService, **body: Any) -> dict[str, Any]:
    base = {"requester": "ci-bot", "action": "deploy", "resource": "prod", "groups": ["ops"], "assurance": "aal1"}
    return s.create_request({**base, **body}, "test")


def test_quorum_of_two_with_passkeys_and_a_totp_replay_guard(store: SqlStore, clock: FrozenClock) -> None:
    s = service(store, clock)
    people(s, "alice", "bob", "carol")
    devices = {p: enrol_passkey(s, store, p) for p in ("alice", "bob")}
    secret = enrol_totp(s, store, clock, "carol")
    r = request(s, quorum=2, assurance="aal2")
    rid = r["request_id"]
    assert r["eligible"] == ["alice", "bob", "carol"] and r["status"] == "pending"

    assert approve_with(s, token(store, "approval.requested", "alice"), devices["alice"])["status"] == "pending"
    # TOTP alone is AAL1: carol cannot carry an AAL2 request, and that is not counted as her failure.
    t_carol = token(store, "approval.requested", "carol")
    with pytest.raises(ProofRefused) as e:
        s.decide(t_carol, "approve", code=code_at(secret, clock.now() + 30))
    assert e.value.reason == "insufficient_assurance"
    done = approve_with(s, token(store, "approval.requested", "bob"), devices["bob"])
    assert done["status"] == "approved" and {v["person_id"] for v in done["votes"]} == {"alice", "bob"}
    # Decided: every other link stops working, with the reason.
    with pytest.raises(LinkUnusable) as gone:
        s.decide(t_carol, "approve", code=code_at(secret, clock.now() + 30))
    assert gone.value.reason == "approved"
    trail = events(store)
    assert trail.count("approval.decided") == 1 and trail.count("approval.approved") == 2
    assert s.get_request(rid)["status"] == "approved"


def test_totp_code_reuse_expiry_and_lockout_across_resends(store: SqlStore, clock: FrozenClock) -> None:
    s = service(store, clock, max_attempts=3, max_failures=5)
    people(s, "alice", "bob")
    secret = enrol_totp(s, store, clock, "alice")
    rid = request(s)["request_id"]
    t1 = token(store, "approval.requested", "alice")
    # The enrolment used the current step: the same code again is a replay.
    with pytest.raises(ProofRefused) as e:
        s.decide(t1, "approve", code=code_at(secret, clock.now()))
    assert e.value.reason == "replayed_code"
    # A code three steps old is expired.
    with pytest.raises(ProofRefused) as e:
        s.decide(t1, "approve", code=code_at(secret, clock.now() - 90))
    assert e.value.reason == "wrong_code"
    with pytest.raises(ProofRefused):
        s.decide(t1, "approve", code="000000")
    with pytest.raises(LinkUnusable) as locked:
        s.decide(t1, "approve", code="000000")
    assert locked.value.reason == "locked"  # 3 attempts per link

    s.resend(rid, "test")  # a new link; the person's failure count stays at 3
    t2 = token(store, "approval.requested", "alice")
    assert t2 != t1
    with pytest.raises(LinkUnusable) as old:
        s.open_link(t1).reason and s.decide(t1, "approve", code="000000")
    assert old.value.reason in ("superseded", "locked")
    for _ in range(2):
        with pytest.raises(ProofRefused):
            s.decide(t2, "approve", code="111111")
    # Five consecutive failures: the person is locked, a correct code no longer helps.
    clock.advance(30)
    with pytest.raises(Locked):
        s.decide(t2, "approve", code=code_at(secret, clock.now()))
    assert s.get_person("alice")[0].locked_at is not None
    assert "person.locked" in events(store)
    s.unlock_person("alice", "test")
    assert s.decide(t2, "approve", code=code_at(secret, clock.now()))["status"] == "approved"
    assert s.get_person("alice")[0].failures == 0


def test_timeout_is_denial_and_expired_links_say_so(store: SqlStore, clock: FrozenClock) -> None:
    s = service(store, clock)
    people(s, "alice", "bob")
    device = enrol_passkey(s, store, "alice")
    rid = request(s, ttl=120)["request_id"]
    t = token(store, "approval.requested", "alice")
    options = s.passkey_options(t, "approve")
    clock.advance(121)
    assert s.expire_due() == 1
    assert s.get_request(rid)["status"] == "expired"
    with pytest.raises(LinkUnusable) as e:
        s.decide(t, "approve", credential=json.dumps(device.get(options, ORIGIN)))
    assert e.value.reason == "request_expired"
    assert s.open_link(t).reason == "request_expired"
    assert "approval.expired" in events(store) and "approval.approved" not in events(store)


def test_an_assertion_for_one_transaction_cannot_decide_another(store: SqlStore, clock: FrozenClock) -> None:
    s = service(store, clock)
    people(s, "alice", "bob")
    device = enrol_passkey(s, store, "alice")
    rid_a = request(s, action="read logs")["request_id"]
    t_a = token(store, "approval.requested", "alice")
    rid_b = request(s, action="delete database")["request_id"]
    t_b = token(store, "approval.requested", "alice")
    signed_for_a = device.get(s.passkey_options(t_a, "approve"), ORIGIN)
    s.passkey_options(t_b, "approve")  # B has a challenge of its own
    with pytest.raises(ProofRefused) as e:
        s.decide(t_b, "approve", credential=json.dumps(signed_for_a))
    assert e.value.reason == "wrong_challenge"
    # A deny proof cannot be turned into an approval either.
    deny_for_b = device.get(s.passkey_options(t_b, "deny"), ORIGIN)
    with pytest.raises(ProofRefused):
        s.decide(t_b, "approve", credential=json.dumps(deny_for_b))
    assert s.get_request(rid_b)["votes"] == [] and s.get_request(rid_a)["votes"] == []

    # The stored transaction altered after the page was shown: its hash no longer matches; refused.
    opts = s.passkey_options(t_a, "approve")
    store.write(
        lambda c: c.execute(
            sa.update(approval_requests)
            .where(approval_requests.c.request_id == rid_a)
            .values(tx={**s.get_request(rid_a)["transaction"], "action": "delete database"})
        ),
        [],
    )
    with pytest.raises(LinkUnusable) as tampered:
        s.decide(t_a, "approve", credential=json.dumps(device.get(opts, ORIGIN)))
    assert tampered.value.reason == "tampered"
    assert "approval.integrity_failed" in events(store) and s.get_request(rid_a)["votes"] == []


def test_separation_of_duties_and_deny_policies(store: SqlStore, clock: FrozenClock) -> None:
    s = service(store, clock)
    people(s, "alice", "bob", "carol")
    people(s, "owner", owns=["ci-bot"])
    people(s, "helper-agent", agent=True)
    devices = {p: enrol_passkey(s, store, p) for p in ("alice", "bob", "carol")}
    with pytest.raises(InvalidApprovalRequest, match="cannot be reached"):
        request(s, groups=[], approvers=["owner", "helper-agent"])
    with pytest.raises(InvalidApprovalRequest, match="no person"):
        request(s, groups=[], approvers=["nobody"])
    r = request(s, requester="person:alice", quorum=2)
    assert r["eligible"] == ["bob", "carol", "owner"]
    assert set(r["excluded"]) == {"alice", "helper-agent"}
    assert request(s)["excluded"].keys() == {"owner", "helper-agent"}  # owner owns ci-bot, the requester
    # Through delegation too: the owner of an actor in the chain is not eligible.
    r2 = request(s, requester="reporting-agent", delegation=["ci-bot"])
    assert "owner" in r2["excluded"] and "owner" not in r2["eligible"]

    # Any deny is final (the default).
    assert approve_with(s, token(store, "approval.requested", "bob"), devices["bob"], "deny")["status"] == "denied"
    # Not final: one deny, then two approvals reach the quorum of two.
    r3 = request(s, quorum=2, deny_is_final=False, groups=["ops"])
    assert approve_with(s, token(store, "approval.requested", "alice"), devices["alice"], "deny")["status"] == "pending"
    assert approve_with(s, token(store, "approval.requested", "bob"), devices["bob"])["status"] == "pending"
    assert approve_with(s, token(store, "approval.requested", "carol"), devices["carol"])["status"] == "approved"
    assert s.get_request(r3["request_id"])["status"] == "approved"


def test_push_bombing_guard_and_single_use_links(store: SqlStore, clock: FrozenClock) -> None:
    s = service(store, clock, per_person_per_minute=2, per_requester_per_minute=100)
    people(s, "alice", "bob")
    device = enrol_passkey(s, store, "alice")  # one enrolment message to alice (counted)
    request(s, approvers=["alice"], groups=[])
    before = len(messages(store))
    with pytest.raises(RateLimited):
        request(s, approvers=["alice"], groups=[])
    assert len(messages(store)) == before  # refused: nothing queued, nothing stored
    assert "approval.limited" in events(store)
    assert len(s.list_requests()) == 1
    clock.advance(61)
    rid = request(s, approvers=["alice"], groups=[])["request_id"]
    t = token(store, "approval.requested", "alice")
    assert approve_with(s, t, device)["status"] == "approved"
    with pytest.raises(LinkUnusable) as e:
        approve_with(s, t, device)
    assert e.value.reason in ("used", "approved")
    with pytest.raises(Conflict):
        s.resend(rid, "test")


@pytest.mark.postgres
def test_concurrent_decisions_on_postgres_decide_once(postgres: Any, clock: FrozenClock) -> None:
    """Several server processes (here: threads with their own connections) deciding at the same moment:
    the request row lock makes the quorum count exact and the decision recorded once."""
    s_url = str(postgres.create_database())
    store = SqlStore(s_url, clock)
    store.migrate()
    try:
        s = service(store, clock)
        names = [f"p{i}" for i in range(6)]
        people(s, *names)
        devices = {p: enrol_passkey(s, store, p) for p in names}
        rid = request(s, quorum=3, assurance="aal2")["request_id"]
        prepared = []
        for p in names:
            t = token(store, "approval.requested", p)
            prepared.append((t, json.dumps(devices[p].get(s.passkey_options(t, "approve"), ORIGIN))))
        outcomes: list[str] = []
        barrier = threading.Barrier(len(prepared))

        def vote(t: str, cred: str) -> None:
            barrier.wait()
            try:
                outcomes.append(s.decide(t, "approve", credential=cred)["status"])
            except LinkUnusable as e:
                outcomes.append(e.reason)
            except Exception as e:  # a deadlock or any other failure must fail the test
                outcomes.append(type(e).__name__)

        threads = [threading.Thread(target=vote, args=p) for p in prepared]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        final = s.get_request(rid)
        assert final["status"] == "approved"
        assert len(final["votes"]) == 3  # the quorum, not one more
        # two votes pending, the third decides; the three late ones find the request already approved
        assert sorted(outcomes) == ["approved"] * 4 + ["pending"] * 2
        assert events(store).count("approval.decided") == 1
        assert store.verify_audit().ok
    finally:
        store.close()
