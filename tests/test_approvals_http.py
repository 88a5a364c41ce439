"""Human approvals over HTTP against a live server: the pages, the admin API and the audit trail.

One module server for most tests (each test uses its own people and requests); a fresh server only
where a global limit must start clean (the person lockout, the per-minute message limits). People
enrol their own authenticators through the enrolment link, as they would; links are read from the
file channel's messages, as the person would receive them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from approval_support import Mailbox, PageClient, approval_server, form_fields
from support import LiveServer
from tessera.approvals.totp import code_at
from webauthn_support import SoftAuthenticator, b64url

EVIL = "https://evil.example"


# -- a server and the people on it ---------------------------------------------------------------------------


@dataclass
class Approver:
    pid: str
    client: PageClient
    auth: SoftAuthenticator | None = None
    secret: bytes | None = None


@dataclass
class World:
    srv: LiveServer
    mb: Mailbox
    admin: httpx.Client
    totp_secrets: list[bytes] = field(default_factory=list)
    expiring: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> pathlib.Path:
        return self.srv.data_dir / "tessera.db"

    def person(self, pid: str, **fields: Any) -> None:
        r = self.admin.put(f"/people/{pid}", json={"name": pid.title(), "channels": ["file"], **fields})
        assert r.status_code == 201, r.text

    def enrolment_link(self, pid: str) -> str:
        before = len([m for m in self.mb.all() if m["kind"] == "enrolment.link" and m["data"]["person_id"] == pid])
        r = self.admin.post(f"/people/{pid}/enrolment")
        assert r.status_code == 202, r.text
        assert set(r.json()) == {"person_id", "expires_at", "messages"} and "/enrol/" not in r.text
        return self.mb.link("enrolment.link", pid, before + 1)

    def approver(
        self, pid: str, *, passkey: bool = True, totp: bool = False, backup_eligible: bool = False, **fields: Any
    ) -> Approver:
        self.person(pid, **fields)
        a = Approver(pid, PageClient(self.srv.issuer))
        if passkey:
            a.auth = SoftAuthenticator()
            a.client.enrol_passkey(self.enrolment_link(pid), a.auth, backup_eligible=backup_eligible)
        if totp:
            a.secret = a.client.enrol_totp(self.enrolment_link(pid))
            self.totp_secrets.append(a.secret)
        return a

    def request(self, **body: Any) -> dict[str, Any]:
        r = self.admin.post("/approvals", json={"requester": "ci-bot", "action": "deploy", "resource": "prod", **body})
        assert r.status_code == 201, r.text
        return r.json()

    def get(self, rid: str) -> dict[str, Any]:
        r = self.admin.get(f"/approvals/{rid}")
        assert r.status_code == 200, r.text
        return r.json()

    def count(self) -> int:
        return len(self.admin.get("/approvals", params={"limit": 1000}).json())

    def links(self, pid: str, rid: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        """The approval links ``pid`` received for ``rid``, waiting for at least ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                m["data"]["link"]
                for m in self.mb.all()
                if m["kind"] == "approval.requested"
                and m["data"]["person_id"] == pid
                and m["data"]["request_id"] == rid
            ]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{pid} got {len(found)} link(s) for {rid}, expected {count}"
                return found
            time.sleep(0.05)

    def link(self, pid: str, rid: str, count: int = 1) -> str:
        return self.links(pid, rid, count)[count - 1]

    def audit(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.admin.get("/audit", params={"after": out[-1]["seq"] if out else 0, "limit": 1000}).json()
            out += page
            if len(page) < 1000:
                return out

    def events(self, rid: str) -> list[dict[str, Any]]:
        return [e for e in self.audit() if (e.get("data") or {}).get("request_id") == rid]

    def outbox(self, rid: str) -> list[dict[str, Any]]:
        r = self.admin.get("/outbox", params={"ref": rid, "limit": 1000})
        assert r.status_code == 200, r.text
        return list(r.json()["messages"])


@contextlib.contextmanager
def running(data_dir: pathlib.Path, **env: str) -> Iterator[World]:
    srv = approval_server(data_dir, **env).start()
    try:
        with srv.admin() as admin:
            yield World(srv, Mailbox(srv.outbox_file), admin)  # type: ignore[attr-defined]
    finally:
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # "debug" logs the most (access logs included); the log is scanned for secrets at the end of the module.
    with running(tmp_path_factory.mktemp("approvals") / "data", TESSERA_LOG_LEVEL="debug") as world:
        # Opened first, decided by nobody: it times out while the other tests run.
        world.person("tim")
        world.expiring.update(world.request(approvers=["tim"], ttl=30, action="rotate-keys"))
        yield world


@pytest.fixture(scope="module")
def trio(w: World) -> list[Approver]:
    """Three people with a device-bound, user-verifying passkey each."""
    return [w.approver(f"q{i}") for i in (1, 2, 3)]


# -- page helpers --------------------------------------------------------------------------------------------


def reason(r: httpx.Response) -> str:
    m = re.search(r'data-reason="([^"]*)"', r.text)
    return m.group(1) if m else ""


def error(r: httpx.Response) -> str:
    m = re.search(r'id="error">([^<]*)<', r.text)
    return m.group(1) if m else ""


def decided(r: httpx.Response, status: str) -> None:
    assert r.status_code == 200 and 'id="outcome"' in r.text, r.text
    assert f"<strong>{status}</strong>" in r.text, r.text


def signed_form(a: Approver, link: str, decision: str, **flags: Any) -> dict[str, str]:
    """The page's form with a passkey assertion for ``decision`` (options fetched from this link)."""
    assert a.auth is not None
    page = a.client.get(link)
    assert page.status_code == 200, page.text
    opts = a.client.options(page.text, "decide", {"decision": decision})
    assert opts.status_code == 200, opts.text
    fields = form_fields(page.text, "decide")
    fields.update(credential=json.dumps(a.auth.get(opts.json(), a.client.origin, **flags)), decision=decision)
    return fields


def totp_code(a: Approver) -> str:
    """A code the server has not seen: the next time step (the enrolment used the current one)."""
    assert a.secret is not None
    return code_at(a.secret, time.time() + 30)


def wrong_code(secret: bytes) -> str:
    now = time.time()
    near = {code_at(secret, now + d) for d in range(-90, 121, 30)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in near)


def votes(w: World, rid: str) -> list[tuple[str, str]]:
    return [(v["person_id"], v["decision"]) for v in w.get(rid)["votes"]]


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


# -- the proof is bound to the transaction -------------------------------------------------------------------


def test_assertion_made_for_one_request_is_refused_on_another(w: World) -> None:
    alice = w.approver("tamper-a")
    ra = w.request(approvers=[alice.pid], action="deploy")
    rb = w.request(approvers=[alice.pid], action="delete-database")
    la, lb = w.link(alice.pid, ra["request_id"]), w.link(alice.pid, rb["request_id"])
    assert ra["tx_hash"] != rb["tx_hash"]

    for_a = signed_form(alice, la, "approve")
    page_b = alice.client.get(lb).text
    assert alice.client.options(page_b, "decide", {"decision": "approve"}).status_code == 200
    fields_b = form_fields(page_b, "decide")
    fields_b.update(credential=for_a["credential"], decision="approve")
    r = alice.client.post_form(lb, fields_b)
    assert r.status_code == 403 and "wrong_challenge" in error(r), r.text
    assert votes(w, rb["request_id"]) == [] and w.get(rb["request_id"])["status"] == "pending"
    [failed] = [e for e in w.events(rb["request_id"]) if e["event"] == "approval.proof_failed"]
    assert failed["data"]["reason"] == "wrong_challenge" and failed["subject"] == alice.pid

    # The assertion itself was sound: on the link it was made for, it counts.
    decided(alice.client.post_form(la, for_a), "approved")
    assert votes(w, ra["request_id"]) == [(alice.pid, "approve")]


def test_assertion_made_to_deny_cannot_approve(w: World) -> None:
    a = w.approver("tamper-d")
    rid = w.request(approvers=[a.pid])["request_id"]
    link = w.link(a.pid, rid)
    fields = signed_form(a, link, "deny")
    r = a.client.post_form(link, {**fields, "decision": "approve"})
    assert r.status_code == 403 and "wrong_challenge" in error(r), r.text
    assert votes(w, rid) == []


def test_transaction_altered_in_the_database_after_it_was_shown_is_refused(w: World) -> None:
    a = w.approver("tamper-db")
    req = w.request(approvers=[a.pid], action="deploy", resource="prod/web")
    rid = req["request_id"]
    link = w.link(a.pid, rid)
    fields = signed_form(a, link, "approve")  # the page showed "deploy"; the proof is made

    with contextlib.closing(sqlite3.connect(w.db, timeout=10)) as db:
        [(raw,)] = db.execute("SELECT tx FROM approval_requests WHERE request_id = ?", (rid,)).fetchall()
        tx = json.loads(raw)
        assert tx["action"] == "deploy"
        tx["action"] = "delete-everything"
        db.execute("UPDATE approval_requests SET tx = ? WHERE request_id = ?", (json.dumps(tx), rid))
        db.commit()

    r = a.client.post_form(link, fields)
    assert r.status_code == 403 and reason(r) == "tampered", r.text
    assert "no longer matches" in r.text
    assert votes(w, rid) == [] and w.get(rid)["status"] == "pending"
    integrity = [e for e in w.events(rid) if e["event"] == "approval.integrity_failed"]
    assert [e["subject"] for e in integrity] == [a.pid]
    assert "approval.approved" not in names(w.events(rid))


def test_changed_tx_hash_in_the_form_is_refused(w: World) -> None:
    a = w.approver("tamper-form")
    req = w.request(approvers=[a.pid])
    rid, link = req["request_id"], w.link(a.pid, req["request_id"])
    fields = signed_form(a, link, "approve")
    assert fields["tx_hash"] == req["tx_hash"]
    other = w.request(approvers=["tim"], action="something-else")["tx_hash"]

    r = a.client.post_form(link, {**fields, "tx_hash": other})
    assert r.status_code == 403 and reason(r) == "tampered", r.text
    assert votes(w, rid) == []
    assert "approval.integrity_failed" in names(w.events(rid))
    # A form that does not say which transaction it showed is refused as well (nothing else binds a code).
    r = a.client.post_form(link, {k: v for k, v in fields.items() if k != "tx_hash"})
    assert r.status_code == 403 and reason(r) == "tampered", r.text
    assert votes(w, rid) == []

    # The page as served, with a fresh proof, is accepted.
    decided(a.client.post_form(link, signed_form(a, link, "approve")), "approved")


# -- TOTP codes ----------------------------------------------------------------------------------------------


def test_totp_code_is_accepted_once_and_an_old_code_is_refused(w: World) -> None:
    t = w.approver("tina", passkey=False, totp=True)
    assert t.secret is not None
    r1 = w.request(approvers=[t.pid], assurance="aal1")["request_id"]
    r2 = w.request(approvers=[t.pid], assurance="aal1")["request_id"]
    code = totp_code(t)
    decided(t.client.decide_with_code(w.link(t.pid, r1), "approve", code), "approved")

    l2 = w.link(t.pid, r2)
    r = t.client.decide_with_code(l2, "approve", code)
    assert r.status_code == 403 and "(replayed_code)" in error(r), r.text
    old = code_at(t.secret, time.time() - 90)  # three steps ago: outside the ±1 step window
    assert old != code
    r = t.client.decide_with_code(l2, "approve", old)
    assert r.status_code == 403 and "(wrong_code)" in error(r) and "3 attempt(s) left" in error(r), r.text
    assert votes(w, r2) == [] and w.get(r2)["status"] == "pending"
    failed = [e["data"]["reason"] for e in w.events(r2) if e["event"] == "approval.proof_failed"]
    assert failed == ["replayed_code", "wrong_code"]


def test_wrong_codes_lock_the_link_then_the_person_until_unlocked(tmp_path: pathlib.Path) -> None:
    with running(tmp_path / "data", TESSERA_APPROVAL_MAX_FAILURES="7") as w2:
        carol = w2.approver("carol", passkey=False, totp=True)
        assert carol.secret is not None
        rid = w2.request(approvers=["carol"], assurance="aal1")["request_id"]
        link1 = w2.link("carol", rid)
        bad = wrong_code(carol.secret)
        for left in (4, 3, 2, 1):
            r = carol.client.decide_with_code(link1, "approve", bad)
            assert r.status_code == 403 and f"{left} attempt(s) left" in error(r), r.text
        r = carol.client.decide_with_code(link1, "approve", bad)  # the fifth: the link is locked
        assert r.status_code == 410 and reason(r) == "locked", r.text
        r = carol.client.get(link1)
        assert r.status_code == 410 and reason(r) == "locked"
        person = w2.admin.get("/people/carol").json()
        assert person["failures"] == 5 and person["locked"] is False

        # A new link: the person's failure count is theirs, not the link's.
        assert w2.admin.post(f"/approvals/{rid}/resend").status_code == 200
        link2 = w2.link("carol", rid, 2)
        assert reason(carol.client.get(link1)) == "superseded"
        assert w2.admin.get("/people/carol").json()["failures"] == 5
        r = carol.client.decide_with_code(link2, "approve", bad)
        assert r.status_code == 403 and "4 attempt(s) left" in error(r)
        r = carol.client.decide_with_code(link2, "approve", bad)  # the seventh in a row
        assert r.status_code == 403
        person = w2.admin.get("/people/carol").json()
        assert person["failures"] == 7 and person["locked"] is True
        locked = [e for e in w2.audit() if e["event"] == "person.locked"]
        assert [(e["subject"], e["data"]["failures"]) for e in locked] == [("carol", 7)]

        # Locked: even the right code is refused, and not counted.
        good = totp_code(carol)
        r = carol.client.decide_with_code(link2, "approve", good)
        assert r.status_code == 403 and "locked" in r.text, r.text
        assert votes(w2, rid) == [] and w2.get(rid)["status"] == "pending"

        r = w2.admin.post("/people/carol/unlock")
        assert r.status_code == 200 and r.json()["failures"] == 0 and r.json()["locked"] is False
        decided(carol.client.decide_with_code(link2, "approve", good), "approved")
        events = names(w2.audit())
        assert "person.unlocked" in events
        assert events.count("approval.proof_failed") == 7


# -- single use ----------------------------------------------------------------------------------------------


def test_a_link_works_once_and_a_voter_gets_no_new_link(w: World, trio: list[Approver]) -> None:
    q1, q2, _ = trio
    rid = w.request(approvers=[q1.pid, q2.pid], quorum=2)["request_id"]
    l1 = w.link(q1.pid, rid)
    fields = signed_form(q1, l1, "approve")
    decided(q1.client.post_form(l1, fields), "pending")

    r = q1.client.get(l1)
    assert r.status_code == 410 and reason(r) == "used"
    r = q1.client.post_form(l1, fields)  # the same form again
    assert r.status_code == 410 and reason(r) == "used"

    r = w.admin.post(f"/approvals/{rid}/resend")
    assert r.status_code == 200, r.text
    l2_new = w.link(q2.pid, rid, 2)
    recipients = sorted(m["recipient"] for m in w.outbox(rid))
    assert recipients == [q1.pid, q2.pid, q2.pid]
    assert len(w.links(q1.pid, rid)) == 1
    assert reason(q2.client.get(w.link(q2.pid, rid, 1))) == "superseded"

    decided(q2.client.decide_with_passkey(l2_new, "approve", q2.auth), "approved")
    assert sorted(votes(w, rid)) == [(q1.pid, "approve"), (q2.pid, "approve")]
    counted = [e["data"]["counted"] for e in w.events(rid) if e["event"] == "approval.approved"]
    assert counted == [True, True]


# -- quorum --------------------------------------------------------------------------------------------------


def test_two_of_three_with_passkeys(w: World, trio: list[Approver]) -> None:
    q1, q2, q3 = trio
    rid = w.request(approvers=[a.pid for a in trio], quorum=2)["request_id"]
    decided(q1.client.decide_with_passkey(w.link(q1.pid, rid), "approve", q1.auth), "pending")
    assert w.get(rid)["status"] == "pending"
    decided(q2.client.decide_with_passkey(w.link(q2.pid, rid), "approve", q2.auth), "approved")
    r = q3.client.get(w.link(q3.pid, rid))
    assert r.status_code == 410 and reason(r) == "approved"
    view = w.get(rid)
    assert view["status"] == "approved" and view["decided_at"] is not None
    [done] = [e for e in w.events(rid) if e["event"] == "approval.decided"]
    assert done["data"]["outcome"] == "approved" and done["data"]["tx_hash"] == view["tx_hash"]
    assert done["data"]["votes"] == {q1.pid: "approve", q2.pid: "approve"}


def test_any_deny_is_final(w: World, trio: list[Approver]) -> None:
    q1, q2, q3 = trio
    rid = w.request(approvers=[a.pid for a in trio], quorum=2)["request_id"]
    decided(q1.client.decide_with_passkey(w.link(q1.pid, rid), "approve", q1.auth), "pending")
    r = q2.client.decide_with_passkey(w.link(q2.pid, rid), "deny", q2.auth)
    decided(r, "denied")
    assert "Denial recorded" in r.text
    assert reason(q3.client.get(w.link(q3.pid, rid))) == "denied"
    assert w.get(rid)["status"] == "denied"
    assert "approval.denied" in names(w.events(rid))


def test_deny_not_final_one_deny_then_two_approvals_approve(w: World, trio: list[Approver]) -> None:
    q1, q2, q3 = trio
    rid = w.request(approvers=[a.pid for a in trio], quorum=2, deny_is_final=False)["request_id"]
    decided(q1.client.decide_with_passkey(w.link(q1.pid, rid), "deny", q1.auth), "pending")
    decided(q2.client.decide_with_passkey(w.link(q2.pid, rid), "approve", q2.auth), "pending")
    decided(q3.client.decide_with_passkey(w.link(q3.pid, rid), "approve", q3.auth), "approved")
    assert w.get(rid)["status"] == "approved"


def test_deny_not_final_denied_once_the_quorum_cannot_be_reached(w: World, trio: list[Approver]) -> None:
    q1, q2, q3 = trio
    rid = w.request(approvers=[a.pid for a in trio], quorum=2, deny_is_final=False)["request_id"]
    decided(q1.client.decide_with_passkey(w.link(q1.pid, rid), "deny", q1.auth), "pending")
    decided(q2.client.decide_with_passkey(w.link(q2.pid, rid), "deny", q2.auth), "denied")
    assert reason(q3.client.get(w.link(q3.pid, rid))) == "denied"


# -- assurance -----------------------------------------------------------------------------------------------


def test_aal3_refuses_a_synced_passkey_and_accepts_a_device_bound_one(w: World) -> None:
    synced = w.approver("synced", backup_eligible=True)
    bound = w.approver("bound")
    rid = w.request(approvers=[synced.pid, bound.pid], assurance="aal3")["request_id"]
    r = synced.client.decide_with_passkey(w.link(synced.pid, rid), "approve", synced.auth)
    assert r.status_code == 403 and "needs AAL3; your proof reached AAL2" in error(r), r.text
    assert votes(w, rid) == []
    refused = [e["data"] for e in w.events(rid) if e["event"] == "approval.refused"]
    assert refused == [{"request_id": rid, "reason": "insufficient_assurance", "achieved": "aal2", "required": "aal3"}]
    decided(bound.client.decide_with_passkey(w.link(bound.pid, rid), "approve", bound.auth), "approved")
    [vote] = w.get(rid)["votes"]
    assert vote["person_id"] == bound.pid and vote["aal"] == "aal3"


def test_aal2_is_not_reached_by_a_totp_code_alone(w: World) -> None:
    only = w.approver("totp-only", passkey=False, totp=True)
    both = w.approver("code-and-key", totp=True)
    rid = w.request(approvers=[only.pid, both.pid], assurance="aal2")["request_id"]
    page = only.client.get(w.link(only.pid, rid))
    assert page.status_code == 200 and 'id="cannot"' in page.text and 'id="decide"' not in page.text

    # A client that posts a code anyway (the page offers no code button at AAL2) is refused.
    r = both.client.decide_with_code(w.link(both.pid, rid), "approve", totp_code(both))
    assert r.status_code == 403 and "your proof reached AAL1" in error(r), r.text
    assert votes(w, rid) == []


def test_aal2_passkey_without_user_verification_needs_a_code_as_well(w: World) -> None:
    a = w.approver("no-uv", totp=True)
    rid = w.request(approvers=[a.pid], assurance="aal2")["request_id"]
    link = w.link(a.pid, rid)
    r = a.client.post_form(link, signed_form(a, link, "approve", uv=False))
    assert r.status_code == 403 and "your proof reached AAL1" in error(r), r.text
    assert votes(w, rid) == []

    fields = signed_form(a, link, "approve", uv=False)
    fields["code"] = totp_code(a)
    decided(a.client.post_form(link, fields), "approved")
    [vote] = w.get(rid)["votes"]
    assert vote["aal"] == "aal2"


def test_aal1_is_reached_by_a_totp_code(w: World) -> None:
    a = w.approver("aal1-code", passkey=False, totp=True)
    rid = w.request(approvers=[a.pid], assurance="aal1")["request_id"]
    decided(a.client.decide_with_code(w.link(a.pid, rid), "approve", totp_code(a)), "approved")
    assert w.get(rid)["votes"][0]["aal"] == "aal1"


# -- eligibility ---------------------------------------------------------------------------------------------


def test_requester_and_owners_are_excluded(w: World) -> None:
    w.person("elig-req")
    w.person("elig-owner", owns=["bot-o"])
    w.person("elig-ok")
    own = w.request(requester="elig-req", approvers=["elig-req", "elig-ok"])
    assert own["eligible"] == ["elig-ok"]
    assert "cannot approve its own request" in own["excluded"]["elig-req"]
    chained = w.request(requester="agent-9", delegation=["bot-o"], approvers=["elig-owner", "elig-ok"])
    assert chained["eligible"] == ["elig-ok"] and "owns bot-o" in chained["excluded"]["elig-owner"]
    for req, who in ((own, "elig-req"), (chained, "elig-owner")):
        refused = [e for e in w.events(req["request_id"]) if e["event"] == "approval.self_approval_refused"]
        assert [e["subject"] for e in refused] == [who]
        w.links("elig-ok", req["request_id"])
        assert [m["recipient"] for m in w.outbox(req["request_id"])] == ["elig-ok"]

    before = w.count()
    r = w.admin.post(
        "/approvals", json={"requester": "bot-o", "action": "deploy", "resource": "prod", "approvers": ["elig-owner"]}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert "cannot be reached" in r.json()["error_description"]
    assert w.count() == before


def test_another_persons_authenticator_does_not_work_on_a_link(w: World) -> None:
    owner = w.approver("link-owner")
    intruder = w.approver("intruder", owns=["bot-i"])
    assert intruder.auth is not None
    rid = w.request(requester="bot-i", approvers=[owner.pid, intruder.pid])["request_id"]
    assert w.get(rid)["eligible"] == [owner.pid]
    link = w.link(owner.pid, rid)

    page = intruder.client.get(link).text  # the link names its person
    assert "Link-Owner," in page
    opts = intruder.client.options(page, "decide", {"decision": "approve"}).json()
    mine = b64url(next(iter(intruder.auth.credentials)))
    assert mine not in [c["id"] for c in opts["allowCredentials"]]
    fields = form_fields(page, "decide")
    fields.update(credential=json.dumps(intruder.auth.get(opts, w.srv.issuer, credential_id=mine)), decision="approve")
    r = intruder.client.post_form(link, fields)
    assert r.status_code == 403 and "unknown_credential" in error(r), r.text
    assert votes(w, rid) == []


def test_a_person_disabled_after_the_request_cannot_decide(w: World) -> None:
    a = w.approver("later-off")
    rid = w.request(approvers=[a.pid, "tim"])["request_id"]
    link = w.link(a.pid, rid)
    page = a.client.get(link).text
    r = w.admin.put(f"/people/{a.pid}", json={"name": "Later-Off", "channels": ["file"], "disabled": True})
    assert r.status_code == 200, r.text

    opts = a.client.options(page, "decide", {"decision": "approve"})
    assert opts.status_code == 403 and opts.json()["error"] == "access_denied"
    fields = form_fields(page, "decide")
    fields.update(credential="{}", decision="approve")
    r = a.client.post_form(link, fields)
    assert r.status_code == 403 and reason(r) == "access_denied", r.text
    assert votes(w, rid) == []
    refused = [e for e in w.events(rid) if e["event"] == "approval.self_approval_refused"]
    assert refused and all(e["data"]["reason"] == "not eligible" for e in refused)


# -- limits --------------------------------------------------------------------------------------------------


def test_messages_per_person_and_per_requester_are_limited(tmp_path: pathlib.Path) -> None:
    env = {"TESSERA_MESSAGES_PER_PERSON_PER_MINUTE": "2", "TESSERA_MESSAGES_PER_REQUESTER_PER_MINUTE": "3"}
    with running(tmp_path / "data", **env) as w2:
        for pid in ("lp", "r1", "r2", "r3", "r4"):
            w2.person(pid)
        body = {"requester": "bot-p", "action": "deploy", "resource": "prod", "approvers": ["lp"]}
        assert w2.admin.post("/approvals", json=body).status_code == 201
        assert w2.admin.post("/approvals", json=body).status_code == 201
        r = w2.admin.post("/approvals", json=body)
        assert r.status_code == 429 and r.json()["error"] == "slow_down", r.text
        assert w2.count() == 2

        body = {"requester": "bot-r", "action": "deploy", "resource": "prod"}
        assert w2.admin.post("/approvals", json={**body, "approvers": ["r1", "r2"]}).status_code == 201
        r = w2.admin.post("/approvals", json={**body, "approvers": ["r3", "r4"]})
        assert r.status_code == 429 and r.json()["error"] == "slow_down", r.text
        assert w2.count() == 3

        limited = [e for e in w2.audit() if e["event"] == "approval.limited"]
        assert [(e["subject"], e["data"]["limit"]) for e in limited] == [("person:lp", 2), ("requester:bot-r", 3)]
        assert len(w2.admin.get("/outbox").json()["messages"]) == 4  # lp twice, r1, r2


# -- CSRF ----------------------------------------------------------------------------------------------------


def test_cross_site_posts_are_refused_and_record_nothing(w: World) -> None:
    a = w.approver("csrf-p")
    rid = w.request(approvers=[a.pid])["request_id"]
    link = w.link(a.pid, rid)
    fields = signed_form(a, link, "approve")
    before = names(w.events(rid))

    r = a.client.post_form(link, {k: v for k, v in fields.items() if k != "csrf"})
    assert r.status_code == 403 and reason(r) == "csrf", r.text
    r = a.client.http.post(link, data=fields, headers={"Origin": EVIL})
    assert r.status_code == 403 and reason(r) == "csrf", r.text
    r = httpx.post(link, data=fields, headers={"Origin": w.srv.issuer})  # another browser: no cookie
    assert r.status_code == 403 and reason(r) == "csrf", r.text
    r = a.client.http.post(
        link + "/options", json={"decision": "approve"}, headers={"X-CSRF-Token": fields["csrf"], "Origin": EVIL}
    )
    assert r.status_code == 403 and reason(r) == "csrf", r.text

    assert names(w.events(rid)) == before
    assert votes(w, rid) == []
    assert "5 attempt(s) left" in a.client.get(link).text
    decided(a.client.post_form(link, fields), "approved")  # the same form from its own page


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"requester": "ci-bot", "resource": "prod", "approvers": ["tim"]},
        {"requester": "ci-bot", "action": "deploy", "resource": "prod", "approvers": ["tim"], "quorum": 0},
        {"requester": "ci-bot", "action": "deploy", "resource": "prod", "approvers": ["tim"], "assurance": "aal9"},
        {"requester": "ci-bot", "action": "deploy", "resource": "prod", "approvers": ["nobody-here"]},
        {"requester": "ci-bot", "action": "deploy", "resource": "prod", "approvers": ["tim"], "ttl": 5},
        {"requester": "ci-bot", "action": "deploy", "resource": "prod", "approvers": "tim"},
        {"requester": "ci-bot", "action": "deploy", "resource": "prod"},
        [{"requester": "ci-bot"}],
        b'{"requester": "ci-bot", "action":',
    ],
    ids=[
        "no-action",
        "quorum-0",
        "aal9",
        "unknown-approver",
        "ttl",
        "approvers-string",
        "no-approvers",
        "list",
        "json",
    ],
)
def test_malformed_approval_requests_are_refused_without_a_trace(w: World, body: Any) -> None:
    before = w.count()
    outbox = w.admin.get("/outbox").json()["counts"]
    if isinstance(body, bytes):
        r = w.admin.post("/approvals", content=body, headers={"Content-Type": "application/json"})
    else:
        r = w.admin.post("/approvals", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request", r.text
    assert w.count() == before
    assert sum(w.admin.get("/outbox").json()["counts"].values()) == sum(outbox.values())


# -- timeout, audit and secrets (these run last: they read what the tests above left) ------------------------


def test_unanswered_request_expires_as_a_denial(w: World) -> None:
    rid, expires = w.expiring["request_id"], w.expiring["expires_at"]
    link = w.link("tim", rid)
    # The sweep runs every 2 s; the request was opened with the module, so little is left to wait.
    deadline = time.monotonic() + max(0.0, expires - time.time()) + 8
    while not [e for e in w.events(rid) if e["event"] == "approval.expired"]:
        assert time.monotonic() < deadline, "the request was not expired by the sweep"
        time.sleep(0.25)
    [expired] = [e for e in w.events(rid) if e["event"] == "approval.expired"]
    assert expired["data"]["outcome"] == "denied"
    assert w.get(rid)["status"] == "expired"
    assert rid in [r["request_id"] for r in w.admin.get("/approvals", params={"status": "expired"}).json()]
    r = httpx.get(link)
    assert r.status_code == 410 and reason(r) == "request_expired"


def test_audit_records_every_step_and_the_chain_verifies(w: World) -> None:
    events = w.audit()
    seen = {e["event"] for e in events}
    expected = {
        "approval.requested",
        "message.queued",
        "outbox.delivered",
        "approval.viewed",
        "approval.approved",
        "approval.denied",
        "approval.decided",
        "approval.expired",
        "approval.refused",
        "approval.self_approval_refused",
        "approval.proof_failed",
        "approval.integrity_failed",
        "person.created",
        "person.enrolment_sent",
        "person.authenticator_added",
    }
    assert expected <= seen, sorted(expected - seen)
    outcomes = {e["data"]["outcome"] for e in events if e["event"] == "approval.decided"}
    assert outcomes == {"approved", "denied"}
    requested = {e["data"]["request_id"]: e["data"]["tx_hash"] for e in events if e["event"] == "approval.requested"}
    for e in events:
        if e["event"] in ("approval.approved", "approval.denied", "approval.decided"):
            assert e["data"]["tx_hash"] == requested[e["data"]["request_id"]]
    assert w.admin.get("/audit/verify").json().get("ok") is True
    r = w.srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_secret_in_logs_audit_admin_responses_or_the_database(w: World) -> None:
    tokens = {m["data"]["link"].rsplit("/", 1)[1] for m in w.mb.all() if "link" in m["data"]}
    assert len(tokens) > 40 and all(len(t) >= 43 for t in tokens)
    assert w.totp_secrets
    needles = set(tokens)
    for s in w.totp_secrets:
        b32 = base64.b32encode(s).decode()
        needles |= {b32, b32.rstrip("="), s.hex(), s.hex().upper()}

    approvals = w.admin.get("/approvals", params={"limit": 1000}).json()
    texts = {
        "log": w.srv.log.read_text(),
        "audit": json.dumps(w.audit()),
        "outbox": w.admin.get("/outbox", params={"limit": 1000}).text,
        "people": w.admin.get("/people").text,
        "approvals": json.dumps(approvals),
        "approval": json.dumps([w.get(a["request_id"]) for a in approvals]),
    }
    assert "/approve/" not in texts["audit"] + texts["outbox"] + texts["people"] + texts["approvals"]
    assert '"POST /approve/' in texts["log"]  # the access log was on, with the token redacted
    leaks = [(where, n[:8]) for where, text in texts.items() for n in needles if n in text]
    assert leaks == []

    with contextlib.closing(sqlite3.connect(w.db, timeout=10)) as db:
        bodies = [row[0] for row in db.execute("SELECT sealed_body FROM outbox")]
    assert len(bodies) == len(w.mb.all())
    assert not [t for t in tokens for b in bodies if t.encode() in b or b"/approve/" in b or b"/enrol/" in b]
    raw = b"".join(p.read_bytes() for p in w.db.parent.glob("tessera.db*"))
    assert not [t for t in tokens if t.encode() in raw]
    assert not [s for s in w.totp_secrets if s in raw or base64.b32encode(s).rstrip(b"=") in raw]
