"""Signing a person in with an enrolled passkey — W3C WebAuthn §7.2, for the authorization code flow.

Two ways, as the page offers them: a discoverable credential (the browser lists the passkeys it holds
for this site; ``allowCredentials`` is empty and the assertion's ``userHandle`` names the person, §5.4.3),
or the person types their id or e-mail first and the options list that person's passkeys.

User verification is required (§5.8.6): the passkey is the only factor here, and with UV it is a
multi-factor proof (NIST SP 800-63B AAL2, AAL3 when device-bound). A failed proof counts towards the
person's lockout like a failed approval; disabled, agent and locked people cannot sign in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from tessera.audit import AuditEvent

from . import webauthn as wa
from .assurance import Proof, achieved
from .records import ApprovalTx, Commit, PersonRecord
from .service import ApprovalService

__all__ = ["SignInRefused", "SignedIn", "passkey_signin_options", "user_handle", "verify_signin"]


class SignInRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SignedIn:
    person_id: str
    aal: str
    authenticator_id: str


def user_handle(person_id: str) -> bytes:
    """The WebAuthn user handle the enrolment page registers for a person (``ApprovalService``)."""
    return hashlib.sha256(b"tessera-person:" + person_id.encode()).digest()[:16]


def _usable(rec: PersonRecord | None) -> str | None:
    if rec is None:
        return "unknown"
    if rec.person.disabled or rec.person.agent:
        return "disabled"
    if rec.locked_at is not None:
        return "locked"
    return None


def _decoy(hint: str, key: bytes) -> wa.Passkey:
    """A credential id derived from the hint (the same one every time): an id or e-mail nobody here has,
    or whose person cannot sign in, gets an answer shaped like a real one (WebAuthn §14.6.2, username
    enumeration)."""
    raw = hmac.new(key, b"signin-decoy|" + hint.lower().encode(), hashlib.sha256).digest()
    return wa.Passkey(
        credential_id=base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        public_key="",
        sign_count=0,
        alg=-7,
        transports=("hybrid", "internal"),
        user_verified=True,
        backup_eligible=False,
        aaguid="",
    )


def passkey_signin_options(
    service: ApprovalService, challenge: bytes, hint: str | None, decoy_key: bytes = b""
) -> dict[str, Any]:
    """Request options for ``navigator.credentials.get()``. Without a hint, a discoverable-credential
    request (empty ``allowCredentials``); with one, the person's passkeys — or a decoy."""

    def work(tx: ApprovalTx) -> list[wa.Passkey]:
        if not hint:
            return []
        person = next((p for p in tx.list_people() if p.person.matches_hint(hint)), None)
        if person is None or _usable(person) is not None:
            return [_decoy(hint, decoy_key)]
        pid = person.person.person_id
        found = [wa.Passkey.from_json(a.public) for a in tx.authenticators(pid) if a.kind == "passkey"]
        return found or [_decoy(hint, decoy_key)]

    passkeys = service.store.read(work)
    return wa.authentication_options(
        rp_id=service.config.rp_id, challenge=challenge, allow=passkeys, user_verification="required"
    )


def verify_signin(service: ApprovalService, credential: str, challenge: bytes, hint: str | None) -> SignedIn:
    """Verify the assertion against the person it names (its user handle, or the hint); the sign count
    is stored, failures counted. Raises ``SignInRefused``."""
    try:
        parsed = json.loads(credential)
        handle = wa._unb64url(parsed["response"]["userHandle"]) if parsed["response"].get("userHandle") else None
        raw_id = str(parsed["rawId"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SignInRefused("malformed", "The passkey response could not be read.") from None
    now = service._now()

    def work(tx: ApprovalTx) -> SignedIn:
        people = tx.list_people()
        person: PersonRecord | None = None
        if handle is not None:
            person = next((p for p in people if user_handle(p.person.person_id) == handle), None)
        elif hint:
            person = next((p for p in people if p.person.matches_hint(hint)), None)
        if person is None:
            # A passkey nobody here enrolled (or no hint): say nothing about who exists.
            tx.audit(AuditEvent("signin.failed", data={"reason": "unknown_credential"}))
            raise Commit(SignInRefused("unknown_credential", "This passkey is not enrolled here."))
        pid = person.person.person_id
        why = _usable(person)
        if why is not None:
            tx.audit(AuditEvent("signin.refused", subject=pid, data={"reason": why}))
            raise Commit(SignInRefused(why, f"You cannot sign in now ({why}); ask your administrator."))
        passkeys = {a.public["credential_id"]: a for a in tx.authenticators(pid) if a.kind == "passkey"}
        try:
            got = wa.verify_assertion(
                credential,
                challenge=challenge,
                rp_id=service.config.rp_id,
                origin=service.config.origin,
                passkeys=[wa.Passkey.from_json(a.public) for a in passkeys.values()],
                require_user_verification=True,
            )
        except wa.ProofFailed as e:
            failures = person.failures + 1
            locked = now if failures >= service.config.max_failures else None
            tx.set_failures(pid, failures, locked)
            tx.audit(
                AuditEvent(
                    "signin.failed",
                    subject=pid,
                    data={"reason": e.reason, "failures": failures, "credential": raw_id[:64]},
                )
            )
            if locked is not None:
                tx.audit(AuditEvent("person.locked", subject=pid, data={"failures": failures}))
            raise Commit(SignInRefused(e.reason, f"The passkey was not accepted ({e.reason}).")) from None
        a = passkeys[got.credential_id]
        tx.use_authenticator(a.authenticator_id, {**a.public, "sign_count": got.new_sign_count}, now)
        tx.set_failures(pid, 0, None)
        aal = achieved([Proof("passkey", got.user_verified, not a.public.get("backup_eligible", False))]) or "aal1"
        tx.audit(AuditEvent("signin.succeeded", subject=pid, data={"aal": aal, "authenticator_id": a.authenticator_id}))
        return SignedIn(pid, aal, a.authenticator_id)

    result: SignedIn = service.store.run(work)
    return result
