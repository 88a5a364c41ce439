"""The texts Tessera sends to people. A message carries a notice and a link, never an approval: the
approval is proven on the page with an enrolled authenticator (NIST SP 800-63B rev. 4 §5.1.3: e-mail
is not an out-of-band authenticator)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tessera.channels.message import Message, new_message_id

from .people import Person
from .transaction import Transaction, check_code

__all__ = ["approval_message", "authenticator_changed", "enrolment_message"]


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _recipient(person: Person, channel: str) -> str:
    return person.email if channel == "email" and person.email else person.person_id


def _messages(
    person: Person, kind: str, subject: str, text: str, data: dict[str, Any], ref: str, at: float
) -> list[Message]:
    return [
        Message(
            id=new_message_id(),
            channel=channel,
            kind=kind,
            recipient=_recipient(person, channel),
            subject=subject,
            text=text,
            data={**data, "person_id": person.person_id},
            ref=ref,
            created_at=at,
        )
        for channel in person.channels
    ]


def approval_message(
    person: Person, tx: Transaction, tx_hash: str, link: str, link_expires: int, now: int
) -> list[Message]:
    who = tx.requester + (f" (acting through {' → '.join(tx.delegation)})" if tx.delegation else "")
    lines = [
        f"{person.name},",
        "",
        f"{who} asks for your approval:",
        "",
        f"  Action:      {tx.action}",
        f"  Resource:    {tx.resource}",
    ]
    if tx.on_behalf_of:
        lines.append(f"  For:         {tx.on_behalf_of}")
    if tx.scope:
        lines.append(f"  Scopes:      {' '.join(tx.scope)}")
    if tx.binding_message:
        lines.append(f"  Message:     {tx.binding_message}")
    if tx.environment.get("delivery") is None:  # a CIBA client shows its binding message, not our code
        lines.append(f"  Check code:  {check_code(tx_hash)} (the requester sees the same code)")
    lines += [
        f"  Open until:  {_when(tx.expires_at)}",
        "",
        f"Review and approve or deny (you will confirm with your passkey or code; link valid until "
        f"{_when(link_expires)}, usable once):",
        link,
        "",
        "If you did not expect this, deny it or ignore it: nothing is approved without your authenticator.",
    ]
    data = {
        "request_id": tx.request_id,
        "requester": tx.requester,
        "delegation": list(tx.delegation),
        "on_behalf_of": tx.on_behalf_of,
        "action": tx.action,
        "resource": tx.resource,
        "check_code": check_code(tx_hash),
        "binding_message": tx.binding_message,
        "expires_at": tx.expires_at,
        "link": link,
        "link_expires_at": link_expires,
    }
    subject = f"Approval needed: {tx.action} on {tx.resource}"[:200]
    return _messages(person, "approval.requested", subject, "\n".join(lines), data, tx.request_id, now)


def enrolment_message(person: Person, link: str, expires: int, now: int) -> list[Message]:
    text = "\n".join(
        [
            f"{person.name},",
            "",
            "Set up a passkey or an authenticator app code for approving requests in Tessera.",
            f"This link works once, until {_when(expires)}:",
            link,
            "",
            "If you did not expect this message, do not open the link and tell your administrator.",
        ]
    )
    data = {"link": link, "expires_at": expires}
    return _messages(
        person, "enrolment.link", "Set up your Tessera approval authenticator", text, data, person.person_id, now
    )


def authenticator_changed(person: Person, change: str, label: str, kind: str, when: int) -> list[Message]:
    text = "\n".join(
        [
            f"{person.name},",
            "",
            f"An authenticator was {change} on your Tessera approver account at {_when(when)}:",
            f"  {kind}: {label}",
            "",
            "If this was not you, tell your administrator now: approvals can be made with it.",
        ]
    )
    data = {"change": change, "kind": kind, "label": label, "at": when}
    return _messages(
        person, "authenticator.changed", f"Authenticator {change}: {label}", text, data, person.person_id, when
    )
