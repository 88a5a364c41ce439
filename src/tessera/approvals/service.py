"""Approval requests from creation to decision, and the enrolment of people's authenticators.

Every operation is one storage transaction (``ApprovalStore.run``) holding the rows it decides on,
with its audit records and outgoing messages written in the same commit (the durable outbox): a
crash between "decided" and "sent" loses nothing. One-time tokens (approval and enrolment links)
carry 256 random bits and are stored as SHA-256 hashes only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tessera.audit import AuditEvent
from tessera.channels.message import Message, Sealer, new_message_id

from . import totp
from . import webauthn as wa
from .assurance import Proof, achieved, needs, satisfies
from .errors import (
    Conflict,
    Ineligible,
    InvalidApprovalRequest,
    LinkUnusable,
    Locked,
    NotFound,
    ProofRefused,
    RateLimited,
)
from .notices import approval_message, authenticator_changed, enrolment_message
from .people import Person, PersonError, parse_person
from .quorum import eligible_people, ineligibility, make_policy, outcome
from .records import (
    ApprovalStore,
    ApprovalTx,
    AuthenticatorRecord,
    Commit,
    EnrolmentRecord,
    LinkRecord,
    PersonRecord,
    RequestRecord,
    VoteRecord,
)
from .transaction import Transaction, approval_challenge, check_code, tx_hash_of

__all__ = ["ApprovalConfig", "ApprovalService", "LinkView", "hash_token", "reason_text"]

log = logging.getLogger("tessera.approvals")

WINDOW_MS = 60_000


@dataclass(frozen=True)
class ApprovalConfig:
    issuer: str
    origin: str
    rp_id: str
    rp_name: str = "Tessera"
    link_ttl: int = 600
    max_ttl: int = 3600
    enrol_ttl: int = 86400
    max_attempts: int = 5
    max_failures: int = 20
    per_person_per_minute: int = 5
    per_requester_per_minute: int = 20
    #: channel names messages can be sent on ("email", "file", "webhook:<name>")
    channels: frozenset[str] = field(default_factory=frozenset)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkView:
    """What the approval page shows. ``reason`` is set when the link can no longer be used."""

    request: RequestRecord
    person: Person
    reason: str | None
    kinds: frozenset[str]
    ways: list[list[str]]
    attempts_left: int

    @property
    def check_code(self) -> str:
        return check_code(self.request.tx_hash)


_REASONS = {
    "unknown": "This link is not valid.",
    "used": "This link was already used: a decision was recorded with it.",
    "superseded": "A newer link was sent for this request; use that one.",
    "expired": "This link has expired.",
    "locked": "Too many failed attempts with this link; ask for a new one.",
    "approved": "This request was already approved.",
    "denied": "This request was denied.",
    "cancelled": "This request was cancelled by its requester.",
    "request_expired": "This request expired without enough approvals (a timeout counts as a denial).",
}


def reason_text(reason: str) -> str:
    return _REASONS.get(reason, "This link cannot be used.")


class ApprovalService:
    def __init__(
        self,
        store: ApprovalStore,
        sealer: Sealer,
        config: ApprovalConfig,
        *,
        now: Callable[[], float],
        on_enqueue: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.config = config
        self.now = now
        self.on_enqueue = on_enqueue
        #: called with (request id, outcome, origin) after a request is decided (approved or denied),
        #: outside the deciding transaction; the owners of an origin (alerts, quarantines) act on it
        self.decided_hooks: list[Callable[[str, str, str | None], None]] = []

    # -- helpers ---------------------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self.now())

    def _send(self, tx: ApprovalTx, messages: Sequence[Message], now: int) -> list[str]:
        sent = []
        for m in messages:
            if m.channel not in self.config.channels:
                tx.audit(
                    AuditEvent(
                        "message.unroutable",
                        subject=m.data.get("person_id"),
                        data={"channel": m.channel, "kind": m.kind, "ref": m.ref},
                    )
                )
                continue
            tx.enqueue(m, m.seal(self.sealer), now * 1000)
            tx.audit(
                AuditEvent(
                    "message.queued",
                    subject=m.data.get("person_id"),
                    data={"message_id": m.id, "channel": m.channel, "kind": m.kind, "ref": m.ref},
                )
            )
            sent.append(m.id)
        return sent

    def _limit(self, tx: ApprovalTx, keys: dict[str, int], now: int, actor: str, ref: str | None) -> None:
        """Refuse (and record) when sending would pass a per-minute limit; else count the messages."""
        since = (now * 1000) - WINDOW_MS
        for key, add in sorted(keys.items()):  # one lock order for the keys counted (rate_count locks each)
            limit = (
                self.config.per_person_per_minute if key.startswith("person:") else self.config.per_requester_per_minute
            )
            used = tx.rate_count(key, since)
            if used + add > limit:
                tx.audit(AuditEvent("approval.limited", actor=actor, subject=key, data={"limit": limit, "ref": ref}))
                raise Commit(
                    RateLimited(f"too many messages for {key} in the last minute (limit {limit}); try again later")
                )
        tx.rate_add([k for k, n in keys.items() for _ in range(n)], now * 1000)

    def _link_url(self, token: str) -> str:
        return f"{self.config.issuer}/approve/{token}"

    # -- people ------------------------------------------------------------------------------------------
    def put_person(self, raw: dict[str, Any], person_id: str, actor: str, source: str = "admin") -> tuple[Person, bool]:
        try:
            person = parse_person(raw, person_id)
        except PersonError as e:
            raise InvalidApprovalRequest(str(e)) from None
        unknown = [c for c in person.channels if c not in self.config.channels and c != "email"]
        if unknown:
            raise InvalidApprovalRequest(f"people.{person_id}.channels: no channel named {unknown[0]!r} is configured")

        def work(tx: ApprovalTx) -> bool:
            old = tx.get_person(person_id, lock=True)
            if old is not None and old.source == "config" and source != "config":
                raise Conflict(f"person {person_id} is declared in the config file; change it there")
            if person.email:
                for other in tx.list_people():
                    if other.person.person_id != person_id and other.person.email == person.email:
                        raise Conflict(f"the e-mail address is already used by person {other.person.person_id}")
            created = tx.put_person(person, source, self._now() * 1000)
            tx.audit(
                AuditEvent(
                    "person.created" if created else "person.updated",
                    actor=actor,
                    subject=person_id,
                    data={"groups": list(person.groups), "channels": list(person.channels), "source": source},
                )
            )
            return created

        return person, self.store.run(work)

    def get_person(self, person_id: str) -> tuple[PersonRecord, list[AuthenticatorRecord]]:
        def work(tx: ApprovalTx) -> tuple[PersonRecord, list[AuthenticatorRecord]]:
            rec = tx.get_person(person_id)
            if rec is None:
                raise NotFound(f"no person {person_id}")
            return rec, tx.authenticators(person_id)

        return self.store.read(work)

    def list_people(self) -> list[tuple[PersonRecord, list[AuthenticatorRecord]]]:
        return self.store.read(lambda tx: [(p, tx.authenticators(p.person.person_id)) for p in tx.list_people()])

    def find_person(self, hint: str) -> Person | None:
        """A CIBA ``login_hint``: the person id or e-mail address."""
        people = self.store.read(lambda tx: tx.list_people())
        return next((p.person for p in people if p.person.matches_hint(hint)), None)

    def delete_person(self, person_id: str, actor: str, *, source_ok: bool = False) -> None:
        def work(tx: ApprovalTx) -> None:
            rec = tx.get_person(person_id, lock=True)
            if rec is None:
                raise NotFound(f"no person {person_id}")
            if rec.source == "config" and not source_ok:
                raise Conflict(f"person {person_id} is declared in the config file; remove it there")
            tx.delete_person(person_id)
            tx.audit(AuditEvent("person.deleted", actor=actor, subject=person_id))

        self.store.run(work)

    def unlock_person(self, person_id: str, actor: str) -> None:
        def work(tx: ApprovalTx) -> None:
            if tx.get_person(person_id, lock=True) is None:
                raise NotFound(f"no person {person_id}")
            tx.set_failures(person_id, 0, None)
            tx.audit(AuditEvent("person.unlocked", actor=actor, subject=person_id))

        self.store.run(work)

    def remove_authenticator(self, person_id: str, authenticator_id: str, actor: str) -> None:
        now = self._now()

        def work(tx: ApprovalTx) -> None:
            rec = tx.get_person(person_id, lock=True)
            gone = next((a for a in tx.authenticators(person_id) if a.authenticator_id == authenticator_id), None)
            if rec is None or gone is None or not tx.delete_authenticator(person_id, authenticator_id):
                raise NotFound(f"person {person_id} has no authenticator {authenticator_id}")
            tx.audit(
                AuditEvent(
                    "person.authenticator_removed",
                    actor=actor,
                    subject=person_id,
                    data={"authenticator_id": authenticator_id, "kind": gone.kind},
                )
            )
            self._send(tx, authenticator_changed(rec.person, "removed", gone.label, gone.kind, now), now)

        self.store.run(work)
        self.on_enqueue()

    def notify(
        self,
        people: list[str],
        groups: list[str],
        *,
        subject: str,
        text: str,
        ref: str,
        owners_of: str | None = None,
        kind: str = "flow.notice",
        also: Callable[[ApprovalTx], None] | None = None,
        each: Callable[[ApprovalTx, Person], tuple[str, dict[str, Any]]] | None = None,
    ) -> list[str]:
        """A notice (nothing to approve) to the named people, group members and (``owners_of``) the
        owners of a principal, on their channels. ``also(tx)`` runs in the same transaction; ``each(tx,
        person)`` adds text and data of that person's own (an alert's response link)."""
        now = self._now()

        def work(tx: ApprovalTx) -> list[str]:
            wanted, groupset = set(people), set(groups)
            targets = [
                r.person
                for r in tx.list_people()
                if not r.person.disabled
                and (
                    r.person.person_id in wanted
                    or groupset.intersection(r.person.groups)
                    or (owners_of is not None and owners_of in r.person.owns)
                )
            ]
            if also is not None:
                also(tx)
            extra = {p.person_id: each(tx, p) if each is not None else ("", {}) for p in targets}
            self._limit(tx, {f"person:{p.person_id}": len(p.channels) for p in targets}, now, "flows", ref)
            messages = [
                Message(
                    id=new_message_id(),
                    channel=channel,
                    kind=kind,
                    recipient=p.email if channel == "email" and p.email else p.person_id,
                    subject=subject[:200],
                    text=f"{p.name},\n\n{text}{extra[p.person_id][0]}",
                    data={"person_id": p.person_id, "ref": ref, **extra[p.person_id][1]},
                    ref=ref,
                    created_at=now,
                )
                for p in targets
                for channel in p.channels
            ]
            return self._send(tx, messages, now)

        out = self.store.run(work)
        self.on_enqueue()
        return out

    # -- enrolment -------------------------------------------------------------------------------------------
    def start_enrolment(self, person_id: str, actor: str) -> dict[str, Any]:
        """Send the person a one-time enrolment link on their channels (never returned to the caller)."""
        now = self._now()
        token = secrets.token_urlsafe(32)

        def work(tx: ApprovalTx) -> dict[str, Any]:
            rec = tx.get_person(person_id, lock=True)
            if rec is None:
                raise NotFound(f"no person {person_id}")
            if rec.person.agent or rec.person.disabled:
                raise InvalidApprovalRequest(f"person {person_id} is an agent or disabled and cannot approve")
            self._limit(tx, {f"person:{person_id}": len(rec.person.channels)}, now, actor, person_id)
            tx.supersede_enrolments(person_id, now)
            expires = now + self.config.enrol_ttl
            tx.insert_enrolment(EnrolmentRecord(hash_token(token), person_id, {}, 0, now, expires, None))
            link = f"{self.config.issuer}/enrol/{token}"
            sent = self._send(tx, enrolment_message(rec.person, link, expires, now), now)
            tx.audit(
                AuditEvent(
                    "person.enrolment_sent",
                    actor=actor,
                    subject=person_id,
                    data={"expires_at": expires, "messages": sent},
                )
            )
            return {"person_id": person_id, "expires_at": expires, "messages": sent}

        out = self.store.run(work)
        self.on_enqueue()
        return out

    def _enrolment(self, tx: ApprovalTx, token: str, lock: bool) -> tuple[EnrolmentRecord, PersonRecord]:
        rec = tx.get_enrolment(hash_token(token))
        if rec is None:
            raise LinkUnusable("unknown", "This enrolment link is not valid.")
        if lock:  # the person first, then the enrolment (the order start_enrolment takes them in)
            tx.get_person(rec.person_id, lock=True)
            rec = tx.get_enrolment(rec.token_hash, lock=True) or rec
        if rec.used_at is not None:
            why = "superseded" if rec.state.get("superseded") else "used"
            raise LinkUnusable(why, "This enrolment link was already used or replaced by a newer one.")
        if rec.expires_at <= self._now():
            raise LinkUnusable("expired", "This enrolment link has expired; ask your administrator for a new one.")
        if rec.attempts >= self.config.max_attempts:
            raise LinkUnusable("locked", "Too many failed attempts with this link; ask for a new one.")
        person = tx.get_person(rec.person_id, lock=lock)
        if person is None:
            raise LinkUnusable("unknown", "This enrolment link is not valid.")
        return rec, person

    def open_enrolment(self, token: str) -> tuple[Person, list[AuthenticatorRecord], int]:
        def work(tx: ApprovalTx) -> tuple[Person, list[AuthenticatorRecord], int]:
            rec, person = self._enrolment(tx, token, False)
            return person.person, tx.authenticators(rec.person_id), rec.expires_at

        return self.store.read(work)

    def passkey_registration_options(self, token: str) -> dict[str, Any]:
        def work(tx: ApprovalTx) -> dict[str, Any]:
            rec, person = self._enrolment(tx, token, True)
            nonce = secrets.token_bytes(32)
            tx.update_enrolment(rec.token_hash, state={**rec.state, "passkey_challenge": _b64(nonce)})
            existing = [a.public["credential_id"] for a in tx.authenticators(rec.person_id) if a.kind == "passkey"]
            p = person.person
            return wa.registration_options(
                rp_id=self.config.rp_id,
                rp_name=self.config.rp_name,
                user_id=hashlib.sha256(b"tessera-person:" + p.person_id.encode()).digest()[:16],
                user_name=p.email or p.person_id,
                display_name=p.name,
                challenge=nonce,
                exclude=existing,
            )

        return self.store.run(work)

    def _enrolment_failed(self, tx: ApprovalTx, rec: EnrolmentRecord, reason: str) -> None:
        tx.update_enrolment(rec.token_hash, attempts=rec.attempts + 1)
        tx.audit(AuditEvent("person.enrolment_failed", subject=rec.person_id, data={"reason": reason}))
        left = max(0, self.config.max_attempts - rec.attempts - 1)
        raise Commit(ProofRefused(reason, f"The authenticator could not be registered ({reason}).", left))

    def _enrolled(self, tx: ApprovalTx, rec: EnrolmentRecord, person: Person, auth: AuthenticatorRecord) -> None:
        now = self._now()
        tx.add_authenticator(auth)
        tx.update_enrolment(rec.token_hash, used_at=now, state={"authenticator_id": auth.authenticator_id})
        tx.audit(
            AuditEvent(
                "person.authenticator_added",
                subject=person.person_id,
                data={"authenticator_id": auth.authenticator_id, "kind": auth.kind, "label": auth.label},
            )
        )
        self._send(tx, authenticator_changed(person, "added", auth.label, auth.kind, now), now)

    def finish_passkey_enrolment(self, token: str, credential: str, label: str) -> AuthenticatorRecord:
        label = _label(label, "Passkey")

        def work(tx: ApprovalTx) -> AuthenticatorRecord:
            rec, person = self._enrolment(tx, token, True)
            nonce = rec.state.get("passkey_challenge")
            if not isinstance(nonce, str):
                self._enrolment_failed(tx, rec, "no_challenge")
                raise AssertionError("unreachable")
            try:
                passkey = wa.verify_registration(
                    credential, challenge=_unb64(nonce), rp_id=self.config.rp_id, origin=self.config.origin
                )
            except wa.ProofFailed as e:
                self._enrolment_failed(tx, rec, e.reason)
                raise  # unreachable: _enrolment_failed raises
            aid = "pk_" + hashlib.sha256(passkey.credential_id.encode()).hexdigest()[:32]
            if any(a.authenticator_id == aid for a in tx.authenticators(rec.person_id)):
                raise Conflict("this passkey is already enrolled")
            now = self._now()
            auth = AuthenticatorRecord(aid, rec.person_id, "passkey", label, passkey.to_json(), None, now, None)
            self._enrolled(tx, rec, person.person, auth)
            return auth

        out = self.store.run(work)
        self.on_enqueue()
        return out

    def start_totp_enrolment(self, token: str) -> tuple[str, str]:
        """A fresh TOTP seed for the page to show (base32 and otpauth URI); kept sealed in the enrolment."""

        def work(tx: ApprovalTx) -> tuple[str, str]:
            rec, person = self._enrolment(tx, token, True)
            secret = totp.new_secret()
            sealed = self.sealer.seal(secret, rec.token_hash.encode())
            tx.update_enrolment(rec.token_hash, state={**rec.state, "totp_sealed": _b64(sealed)})
            p = person.person
            uri = totp.provisioning_uri(secret, account=p.email or p.person_id, issuer=self.config.rp_name)
            return base64.b32encode(secret).decode().rstrip("="), uri

        return self.store.run(work)

    def finish_totp_enrolment(self, token: str, code: str, label: str) -> AuthenticatorRecord:
        label = _label(label, "Authenticator app")

        def work(tx: ApprovalTx) -> AuthenticatorRecord:
            rec, person = self._enrolment(tx, token, True)
            sealed = rec.state.get("totp_sealed")
            if not isinstance(sealed, str):
                self._enrolment_failed(tx, rec, "no_totp_secret")
                raise AssertionError("unreachable")
            secret = self.sealer.open(_unb64(sealed), rec.token_hash.encode())
            try:
                step = totp.verify_code(secret, code, now=self.now(), last_step=None)
            except totp.CodeRejected as e:
                self._enrolment_failed(tx, rec, e.reason)
                raise
            aid = "totp_" + secrets.token_hex(12)
            now = self._now()
            public = {"last_step": step, "digits": 6, "period": 30, "algorithm": "SHA1"}
            auth = AuthenticatorRecord(
                aid, rec.person_id, "totp", label, public, self.sealer.seal(secret, aid.encode()), now, None
            )
            self._enrolled(tx, rec, person.person, auth)
            return auth

        out = self.store.run(work)
        self.on_enqueue()
        return out

    # -- approval requests ---------------------------------------------------------------------------------
    def create_request(
        self,
        body: dict[str, Any],
        actor: str,
        origin: str | None = None,
        *,
        self_service: bool = False,
        on_decision: Message | None = None,
        also: Callable[[ApprovalTx, str], None] | None = None,
        deliver: bool = True,
    ) -> dict[str, Any]:
        """Open a request. ``on_decision`` is sent (through the outbox) when it is approved or denied;
        ``also(tx, request_id)`` runs in the same transaction (CIBA stores its own record there).
        ``deliver=False``: the links are not sent but returned (``links``: person → URL) to a caller
        that has just authenticated that person's link of its own (an alert's response page)."""
        if not isinstance(body, dict):
            raise InvalidApprovalRequest("the approval request is a JSON object")
        now = self._now()
        ttl = body.get("ttl", min(600, self.config.max_ttl))
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 30 <= ttl <= self.config.max_ttl:
            raise InvalidApprovalRequest(f"ttl: an integer from 30 to {self.config.max_ttl} seconds")
        for name in ("approvers", "groups"):
            v = body.get(name, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidApprovalRequest(f"{name}: a list of strings")
        if not body.get("approvers") and not body.get("groups"):
            raise InvalidApprovalRequest("name the approvers (person ids) or groups who may approve")
        request_id = "apr_" + secrets.token_urlsafe(18)
        tx_ = Transaction.build(request_id, body, now + ttl)
        tx_json = tx_.to_json()
        tx_hash = tx_hash_of(tx_json)

        def work(tx: ApprovalTx) -> dict[str, Any]:
            everyone = [p.person for p in tx.list_people()]
            known = {p.person_id for p in everyone}
            missing = [a for a in body.get("approvers", []) if a not in known]
            if missing:
                raise InvalidApprovalRequest(f"approvers: no person {missing[0]}")
            eligible, excluded = eligible_people(
                everyone,
                approvers=body.get("approvers", []),
                groups=body.get("groups", []),
                requester=tx_.requester,
                delegation=tx_.delegation,
                self_service=self_service,
            )
            for pid, why in excluded.items():
                if "requester" in why or "owns" in why:
                    tx.audit(
                        AuditEvent(
                            "approval.self_approval_refused",
                            actor=actor,
                            subject=pid,
                            data={"request_id": request_id, "reason": why},
                        )
                    )
            policy = make_policy(body, eligible)
            if self_service or on_decision is not None:
                sealed = None
                if on_decision is not None:
                    sealed = {
                        "id": on_decision.id,
                        "channel": on_decision.channel,
                        "kind": on_decision.kind,
                        "recipient": on_decision.recipient,
                        "sealed": _b64(on_decision.seal(self.sealer)),
                    }
                policy = replace(policy, self_service=self_service, on_decision=sealed)
            counts = {f"person:{p.person_id}": len(p.channels) for p in eligible}
            counts[f"requester:{tx_.requester}"] = sum(counts.values())
            self._limit(tx, counts, now, actor, request_id)
            rec = RequestRecord(
                request_id,
                tx_,
                tx_json,
                tx_hash,
                tx_.binding_message or check_code(tx_hash),
                tx_.requester,
                policy,
                "pending",
                origin,
                now,
                tx_.expires_at,
                None,
            )
            tx.insert_request(rec)
            tx.audit(
                AuditEvent(
                    "approval.requested",
                    actor=actor,
                    subject=tx_.requester,
                    data={
                        "request_id": request_id,
                        "tx_hash": tx_hash,
                        "action": tx_.action,
                        "resource": tx_.resource,
                        "eligible": list(policy.eligible),
                        "quorum": policy.quorum,
                        "assurance": policy.assurance,
                        "expires_at": tx_.expires_at,
                        "origin": origin,
                    },
                )
            )
            links = self._send_links(tx, rec, eligible, now, deliver)
            if also is not None:
                also(tx, request_id)
            view = self._view(rec, [], excluded)
            if not deliver:
                view["links"] = links
            return view

        out = self.store.run(work)
        self.on_enqueue()
        return out

    def _send_links(
        self, tx: ApprovalTx, rec: RequestRecord, people: Sequence[Person], now: int, deliver: bool = True
    ) -> dict[str, str]:
        links: dict[str, str] = {}
        for person in people:
            token = secrets.token_urlsafe(32)
            expires = min(now + self.config.link_ttl, rec.expires_at)
            tx.insert_link(
                LinkRecord(hash_token(token), rec.request_id, person.person_id, None, 0, now, expires, None, None, None)
            )
            if deliver:
                self._send(tx, approval_message(person, rec.tx, rec.tx_hash, self._link_url(token), expires, now), now)
            else:
                links[person.person_id] = self._link_url(token)
        return links

    def _view(
        self, rec: RequestRecord, votes: list[VoteRecord], excluded: dict[str, str] | None = None
    ) -> dict[str, Any]:
        status = rec.status
        if status == "pending" and rec.expires_at <= self._now():
            status = "expired"
        out: dict[str, Any] = {
            "request_id": rec.request_id,
            "status": status,
            "tx_hash": rec.tx_hash,
            "check_code": check_code(rec.tx_hash),
            "binding_message": rec.binding_message,
            "transaction": rec.tx_json,
            "quorum": rec.policy.quorum,
            "assurance": rec.policy.assurance,
            "deny_is_final": rec.policy.deny_is_final,
            "eligible": list(rec.policy.eligible),
            "votes": [
                {"person_id": v.person_id, "decision": v.decision, "aal": v.evidence.get("aal"), "at": v.created_at}
                for v in votes
            ],
            "created_at": rec.created_at,
            "expires_at": rec.expires_at,
            "decided_at": rec.decided_at,
            "origin": rec.origin,
        }
        if excluded is not None:
            out["excluded"] = excluded
        return out

    def get_request(self, request_id: str) -> dict[str, Any]:
        def work(tx: ApprovalTx) -> dict[str, Any]:
            rec = tx.get_request(request_id)
            if rec is None:
                raise NotFound(f"no approval request {request_id}")
            return self._view(rec, tx.votes(request_id))

        return self.store.read(work)

    def list_requests(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.read(
            lambda tx: [self._view(r, tx.votes(r.request_id)) for r in tx.list_requests(status, limit)]
        )

    def cancel(self, request_id: str, actor: str) -> dict[str, Any]:
        now = self._now()

        def work(tx: ApprovalTx) -> dict[str, Any]:
            rec = tx.get_request(request_id, lock=True)
            if rec is None:
                raise NotFound(f"no approval request {request_id}")
            if rec.status != "pending":
                raise Conflict(f"the request is already {rec.status}")
            tx.set_request_status(request_id, "cancelled", now)
            tx.supersede_links(request_id, now)
            tx.audit(
                AuditEvent("approval.cancelled", actor=actor, subject=rec.requester, data={"request_id": request_id})
            )
            return self._view(replace(rec, status="cancelled", decided_at=now), tx.votes(request_id))

        return self.store.run(work)

    def cancel_for_requester(self, requester: str, actor: str, why: str) -> list[str]:
        """Cancel every pending request of a requester (a revoked or deleted client): its links stop
        working and a CIBA client polling for it gets ``expired_token``."""
        now = self._now()

        def work(tx: ApprovalTx) -> list[str]:
            cancelled = []
            for rec in tx.list_requests("pending", 10_000):
                if rec.requester != requester:
                    continue
                locked = tx.get_request(rec.request_id, lock=True)
                if locked is None or locked.status != "pending":
                    continue
                tx.set_request_status(rec.request_id, "cancelled", now)
                tx.supersede_links(rec.request_id, now)
                tx.audit(
                    AuditEvent(
                        "approval.cancelled",
                        actor=actor,
                        subject=requester,
                        data={"request_id": rec.request_id, "reason": why},
                    )
                )
                cancelled.append(rec.request_id)
            return cancelled

        return self.store.run(work)

    def resend(self, request_id: str, actor: str) -> dict[str, Any]:
        """New links for the eligible people who have not voted; their old links stop working. A person's
        failure count is theirs, not the link's: a resend does not reset it."""
        now = self._now()

        def work(tx: ApprovalTx) -> dict[str, Any]:
            rec = self._expire_if_due(tx, request_id, now)
            if rec.status != "pending":
                raise Conflict(f"the request is already {rec.status}")
            voted = {v.person_id for v in tx.votes(request_id)}
            people: list[Person] = []
            for pid in rec.policy.eligible:
                found = tx.get_person(pid) if pid not in voted else None
                if found is not None:
                    people.append(found.person)
            counts = {f"person:{p.person_id}": len(p.channels) for p in people}
            counts[f"requester:{rec.requester}"] = sum(counts.values())
            self._limit(tx, counts, now, actor, request_id)
            for person in people:
                tx.supersede_links(request_id, now, person.person_id)
            self._send_links(tx, rec, people, now)
            tx.audit(
                AuditEvent(
                    "approval.resent",
                    actor=actor,
                    subject=rec.requester,
                    data={"request_id": request_id, "people": [p.person_id for p in people]},
                )
            )
            return self._view(rec, tx.votes(request_id))

        out = self.store.run(work)
        self.on_enqueue()
        return out

    def _expire_if_due(self, tx: ApprovalTx, request_id: str, now: int) -> RequestRecord:
        rec = tx.get_request(request_id, lock=True)
        if rec is None:
            raise NotFound(f"no approval request {request_id}")
        if rec.status == "pending" and rec.expires_at <= now:
            tx.set_request_status(request_id, "expired", now)
            tx.supersede_links(request_id, now)
            tx.audit(
                AuditEvent(
                    "approval.expired",
                    subject=rec.requester,
                    data={"request_id": request_id, "outcome": "denied", "age_s": now - rec.created_at},
                )
            )
            rec = replace(rec, status="expired", decided_at=now)
        return rec

    def expire_due(self, limit: int = 100) -> int:
        """Mark pending requests past their expiry as expired (a timeout is a denial)."""
        now = self._now()
        due = self.store.read(lambda tx: tx.due_requests(now, limit))
        for rid in due:

            def work(tx: ApprovalTx, rid: str = rid) -> None:
                self._expire_if_due(tx, rid, now)

            self.store.run(work)
        return len(due)

    # -- the approval page -------------------------------------------------------------------------------
    def _link(
        self, tx: ApprovalTx, token: str, lock: bool
    ) -> tuple[LinkRecord, RequestRecord, PersonRecord, str | None]:
        link = tx.get_link(hash_token(token))
        if link is None:
            raise LinkUnusable("unknown", reason_text("unknown"))
        now = self._now()
        rec = tx.get_request(link.request_id)
        if lock:
            # One lock order everywhere: the request, then its links, then the person. (A decision that
            # completes the quorum updates every link of the request.)
            rec = self._expire_if_due(tx, link.request_id, now)
            link = tx.get_link(link.token_hash, lock=True) or link
        person = tx.get_person(link.person_id, lock=lock)
        if rec is None or person is None:
            raise LinkUnusable("unknown", reason_text("unknown"))
        reason: str | None = None
        status = "request_expired" if rec.status == "expired" or rec.expires_at <= now else rec.status
        if status != "pending":
            reason = status
        elif link.used_at is not None:
            reason = "used"
        elif link.superseded_at is not None:
            reason = "superseded"
        elif link.expires_at <= now:
            reason = "expired"
        elif link.attempts >= self.config.max_attempts:
            reason = "locked"
        return link, rec, person, reason

    def open_link(self, token: str) -> LinkView:
        """The page's view of a link; the first view is an audit record."""

        def work(tx: ApprovalTx) -> LinkView:
            link, rec, person, reason = self._link(tx, token, True)
            if link.viewed_at is None and reason is None:
                tx.update_link(link.token_hash, viewed_at=self._now())
                tx.audit(
                    AuditEvent("approval.viewed", subject=person.person.person_id, data={"request_id": rec.request_id})
                )
            kinds = frozenset(a.kind for a in tx.authenticators(person.person.person_id))
            return LinkView(
                request=rec,
                person=person.person,
                reason=reason,
                kinds=kinds,
                ways=needs(rec.policy.assurance, set(kinds)),  # type: ignore[arg-type]
                attempts_left=max(0, self.config.max_attempts - link.attempts),
            )

        return self.store.run(work)

    def _usable(self, tx: ApprovalTx, token: str) -> tuple[LinkRecord, RequestRecord, PersonRecord]:
        link, rec, person, reason = self._link(tx, token, True)
        if reason is not None:
            raise LinkUnusable(reason, reason_text(reason))
        p = person.person
        why = ineligibility(p, rec.requester, rec.tx.delegation, self_service=rec.policy.self_service)
        if p.person_id not in rec.policy.eligible or why is not None:
            tx.audit(
                AuditEvent(
                    "approval.self_approval_refused",
                    subject=p.person_id,
                    data={"request_id": rec.request_id, "reason": "not eligible"},
                )
            )
            raise Commit(Ineligible("You are not eligible to decide this request."))
        if person.locked_at is not None:
            tx.audit(
                AuditEvent(
                    "approval.refused",
                    subject=p.person_id,
                    data={"request_id": rec.request_id, "reason": "person_locked"},
                )
            )
            raise Commit(Locked("Too many failed attempts: your approver account is locked. Ask an administrator."))
        if tx_hash_of(rec.tx_json) != rec.tx_hash:
            tx.audit(AuditEvent("approval.integrity_failed", subject=p.person_id, data={"request_id": rec.request_id}))
            raise Commit(LinkUnusable("tampered", "The transaction no longer matches what was requested; refused."))
        return link, rec, person

    def passkey_options(self, token: str, decision: str) -> dict[str, Any]:
        """WebAuthn request options whose challenge binds this decision on this transaction."""
        if decision not in ("approve", "deny"):
            raise InvalidApprovalRequest("decision: approve or deny")

        def work(tx: ApprovalTx) -> dict[str, Any]:
            link, rec, _person = self._usable(tx, token)
            passkeys = [
                wa.Passkey.from_json(a.public) for a in tx.authenticators(link.person_id) if a.kind == "passkey"
            ]
            if not passkeys:
                raise InvalidApprovalRequest("no passkey is enrolled for you")
            nonce = secrets.token_bytes(32)
            tx.update_link(
                link.token_hash, challenge={"nonce": _b64(nonce), "decision": decision, "issued_at": self._now()}
            )
            uv = (
                "required"
                if rec.policy.assurance in ("aal2", "aal3")
                and "totp" not in {a.kind for a in tx.authenticators(link.person_id)}
                else "preferred"
            )
            if rec.policy.assurance == "aal3":
                uv = "required"
            return wa.authentication_options(
                rp_id=self.config.rp_id,
                challenge=approval_challenge(rec.tx_hash, decision, link.token_hash, nonce),
                allow=passkeys,
                user_verification=uv,  # type: ignore[arg-type]
            )

        return self.store.run(work)

    def decide(
        self,
        token: str,
        decision: str,
        *,
        credential: str | None = None,
        code: str | None = None,
        shown_tx_hash: str | None = None,
    ) -> dict[str, Any]:
        """Record the person's approve/deny once their proof verifies at the request's assurance."""
        if decision not in ("approve", "deny"):
            raise InvalidApprovalRequest("decision: approve or deny")
        now = self._now()

        def work(tx: ApprovalTx) -> dict[str, Any]:
            link, rec, person = self._usable(tx, token)
            pid = person.person.person_id
            if shown_tx_hash is not None and shown_tx_hash != rec.tx_hash:
                tx.audit(AuditEvent("approval.integrity_failed", subject=pid, data={"request_id": rec.request_id}))
                raise Commit(LinkUnusable("tampered", "The page showed a different transaction; refused."))
            auths = tx.authenticators(pid)
            proofs: list[Proof] = []
            used: list[str] = []
            failure: str | None = None
            if not credential and not code:
                failure = "no_proof"
            if credential and failure is None:
                ch = link.challenge or {}
                if ch.get("decision") != decision or not ch.get("nonce"):
                    failure = "wrong_challenge"
                else:
                    challenge = approval_challenge(rec.tx_hash, decision, link.token_hash, _unb64(ch["nonce"]))
                    passkeys = {a.public["credential_id"]: a for a in auths if a.kind == "passkey"}
                    try:
                        got = wa.verify_assertion(
                            credential,
                            challenge=challenge,
                            rp_id=self.config.rp_id,
                            origin=self.config.origin,
                            passkeys=[wa.Passkey.from_json(a.public) for a in passkeys.values()],
                            require_user_verification=False,
                        )
                    except wa.ProofFailed as e:
                        failure = e.reason
                    else:
                        a = passkeys[got.credential_id]
                        tx.use_authenticator(a.authenticator_id, {**a.public, "sign_count": got.new_sign_count}, now)
                        proofs.append(Proof("passkey", got.user_verified, not a.public.get("backup_eligible", False)))
                        used.append(a.authenticator_id)
            if code and failure is None:
                failure = "wrong_code"
                for a in (a for a in auths if a.kind == "totp"):
                    assert a.sealed_secret is not None
                    secret = self.sealer.open(a.sealed_secret, a.authenticator_id.encode())
                    try:
                        step = totp.verify_code(secret, code, now=self.now(), last_step=a.public.get("last_step"))
                    except totp.CodeRejected as e:
                        failure = "replayed_code" if e.reason == "replayed" else "wrong_code"
                        continue
                    tx.use_authenticator(a.authenticator_id, {**a.public, "last_step": step}, now)
                    proofs.append(Proof("totp"))
                    used.append(a.authenticator_id)
                    failure = None
                    break
            if failure is not None:
                self._failed(tx, link, rec, person, failure, now)
            aal = achieved(proofs)
            if not satisfies(rec.policy.assurance, proofs):  # type: ignore[arg-type]
                tx.audit(
                    AuditEvent(
                        "approval.refused",
                        subject=pid,
                        data={
                            "request_id": rec.request_id,
                            "reason": "insufficient_assurance",
                            "achieved": aal,
                            "required": rec.policy.assurance,
                        },
                    )
                )
                raise Commit(
                    ProofRefused(
                        "insufficient_assurance",
                        f"This request needs {rec.policy.assurance.upper()}; your proof reached "
                        f"{(aal or 'none').upper()}.",
                        max(0, self.config.max_attempts - link.attempts),
                    )
                )
            tx.set_failures(pid, 0, None)
            tx.update_link(link.token_hash, used_at=now, challenge=None)
            counted = tx.insert_vote(
                VoteRecord(rec.request_id, pid, decision, {"aal": aal, "authenticators": used}, now)
            )
            tx.audit(
                AuditEvent(
                    "approval.approved" if decision == "approve" else "approval.denied",
                    subject=pid,
                    data={
                        "request_id": rec.request_id,
                        "tx_hash": rec.tx_hash,
                        "aal": aal,
                        "counted": counted,
                        "authenticators": used,
                    },
                )
            )
            votes = tx.votes(rec.request_id)
            result = outcome(rec.policy, {v.person_id: v.decision for v in votes})
            if result != "pending":
                tx.set_request_status(rec.request_id, result, now)
                tx.supersede_links(rec.request_id, now)
                tx.audit(
                    AuditEvent(
                        "approval.decided",
                        subject=rec.requester,
                        data={
                            "request_id": rec.request_id,
                            "outcome": result,
                            "age_s": now - rec.created_at,
                            "tx_hash": rec.tx_hash,
                            "votes": {v.person_id: v.decision for v in votes},
                        },
                    )
                )
                rec = replace(rec, status=result, decided_at=now)
                self._notify_decision(tx, rec, now)
            view = self._view(rec, votes)
            view["counted"] = counted
            view["origin"] = rec.origin
            return view

        view = self.store.run(work)
        if view["status"] in ("approved", "denied"):
            self.run_decided_hooks(view["request_id"], view["status"], view["origin"])
        view.pop("origin")
        return view

    def run_decided_hooks(self, request_id: str, outcome: str, origin: str | None) -> None:
        for hook in self.decided_hooks:
            try:
                hook(request_id, outcome, origin)
            except Exception:
                # The decision stands (it is committed); the owner of the origin retries from its sweep.
                log.exception("acting on the decision of %s failed", request_id)

    def _notify_decision(self, tx: ApprovalTx, rec: RequestRecord, now: int) -> None:
        note = rec.policy.on_decision
        if note is None:
            return
        meta = Message(
            id=note["id"],
            channel=note["channel"],
            kind=note["kind"],
            recipient=note["recipient"],
            subject="",
            text="",
            ref=rec.request_id,
        )
        tx.enqueue(meta, _unb64(note["sealed"]), now * 1000)
        tx.audit(
            AuditEvent(
                "message.queued",
                subject=rec.requester,
                data={"message_id": meta.id, "channel": meta.channel, "kind": meta.kind, "ref": rec.request_id},
            )
        )

    def _failed(
        self, tx: ApprovalTx, link: LinkRecord, rec: RequestRecord, person: PersonRecord, reason: str, now: int
    ) -> None:
        pid = person.person.person_id
        failures = person.failures + 1
        locked = now if failures >= self.config.max_failures else None
        tx.set_failures(pid, failures, locked)
        tx.update_link(link.token_hash, attempts=link.attempts + 1)
        left = max(0, self.config.max_attempts - link.attempts - 1)
        tx.audit(
            AuditEvent(
                "approval.proof_failed",
                subject=pid,
                data={"request_id": rec.request_id, "reason": reason, "attempts_left": left, "failures": failures},
            )
        )
        if locked is not None:
            tx.audit(AuditEvent("person.locked", subject=pid, data={"failures": failures}))
        raise Commit(ProofRefused(reason, f"The proof was not accepted ({reason}). {left} attempt(s) left.", left))


def _label(label: str, default: str) -> str:
    label = (label or "").strip()[:64]
    if any(ord(c) < 32 for c in label):
        raise InvalidApprovalRequest("label: printable characters only")
    return label or default
