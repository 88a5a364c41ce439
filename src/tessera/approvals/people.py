"""People: the humans who approve. Identifiers double as CIBA ``login_hint`` values (the person id or
the e-mail address).

A person's profile is plain data, validated here, stored by ``store/``. Authenticators (passkeys,
TOTP) are enrolled by the person through a one-time enrolment link, never set by an operator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PERSON_ID", "Person", "PersonError", "parse_people", "parse_person"]

PERSON_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_EMAIL = re.compile(
    r"^[^\s@<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{2,63}$|^[^\s@<>()\[\],;:\"\\]{1,64}@localhost$"
)
_CHANNEL = re.compile(r"^(email|file|webhook:[A-Za-z0-9][A-Za-z0-9_.-]{0,62})$")
_FIELDS = {
    "person_id",
    "name",
    "email",
    "groups",
    "channels",
    "owns",
    "agent",
    "disabled",
    "user_code",
    "user_code_sha256",
}


class PersonError(ValueError):
    """A profile that cannot be used; the message names the person and the field."""


@dataclass(frozen=True)
class Person:
    person_id: str
    name: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    #: where notices and links go: "email", "webhook:<name>", "file"
    channels: tuple[str, ...] = ()
    #: principals (client ids, federated principals) this person owns: never eligible to approve their requests
    owns: tuple[str, ...] = ()
    #: a non-human entry (a bot that receives notices): never eligible to approve
    agent: bool = False
    disabled: bool = False
    #: CIBA §7.1 user_code: a secret the person chose, known to them and the client's user; SHA-256 only
    user_code_sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "person_id": self.person_id,
            "name": self.name,
            "email": self.email,
            "groups": list(self.groups),
            "channels": list(self.channels),
            "owns": list(self.owns),
            "agent": self.agent,
            "disabled": self.disabled,
            **({"user_code_sha256": self.user_code_sha256} if self.user_code_sha256 else {}),
        }

    def user_code_matches(self, code: str) -> bool:
        import hmac

        if self.user_code_sha256 is None:
            return False
        return hmac.compare_digest(hashlib.sha256(code.encode()).hexdigest(), self.user_code_sha256)

    def matches_hint(self, hint: str) -> bool:
        return hint == self.person_id or (self.email is not None and hint.lower() == self.email.lower())


def _strings(raw: Any, where: str, pattern: re.Pattern[str] | None = None, limit: int = 64) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise PersonError(f"{where}: must be a list of non-empty strings")
    if len(raw) > limit:
        raise PersonError(f"{where}: at most {limit} entries")
    for x in raw:
        if pattern is not None and not pattern.match(x):
            raise PersonError(f"{where}: {x!r} is not a valid value")
        if len(x) > 512:
            raise PersonError(f"{where}: values are at most 512 characters")
    return tuple(dict.fromkeys(raw))


def parse_person(raw: Mapping[str, Any], person_id: str | None = None) -> Person:
    if not isinstance(raw, Mapping):
        raise PersonError("a person is a JSON object")
    pid = person_id if person_id is not None else raw.get("person_id")
    if not isinstance(pid, str) or not PERSON_ID.match(pid):
        raise PersonError(f"person_id {pid!r}: 1-64 characters of a-z, 0-9, '.', '_', '-', starting alphanumeric")
    where = f"people.{pid}"
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise PersonError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if "person_id" in raw and raw["person_id"] != pid:
        raise PersonError(f"{where}: person_id in the body differs from the path")
    name = raw.get("name", pid)
    if not isinstance(name, str) or not name.strip() or len(name) > 128 or any(ord(c) < 32 for c in name):
        raise PersonError(f"{where}.name: 1-128 printable characters")
    email = raw.get("email")
    if email is not None and (not isinstance(email, str) or not _EMAIL.match(email) or len(email) > 254):
        raise PersonError(f"{where}.email: not an e-mail address")
    channels = _strings(raw.get("channels"), f"{where}.channels", _CHANNEL, 8)
    if not channels:
        channels = ("email",) if email else ("file",)
    if "email" in channels and not email:
        raise PersonError(f"{where}.channels: 'email' needs an email address")
    code_hash = raw.get("user_code_sha256")
    if raw.get("user_code") is not None:
        code = raw["user_code"]
        if not isinstance(code, str) or not 6 <= len(code) <= 64 or any(ord(c) < 32 for c in code):
            raise PersonError(f"{where}.user_code: 6-64 printable characters")
        code_hash = hashlib.sha256(code.encode()).hexdigest()
    elif code_hash is not None and (not isinstance(code_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", code_hash)):
        raise PersonError(f"{where}.user_code_sha256: 64 lowercase hex digits")
    for flag in ("agent", "disabled"):
        if not isinstance(raw.get(flag, False), bool):
            raise PersonError(f"{where}.{flag}: must be true or false")
    return Person(
        person_id=pid,
        name=name.strip(),
        email=email,
        groups=_strings(raw.get("groups"), f"{where}.groups", _GROUP),
        channels=channels,
        owns=_strings(raw.get("owns"), f"{where}.owns", None, 256),
        agent=raw.get("agent", False),
        disabled=raw.get("disabled", False),
        user_code_sha256=code_hash,
    )


def parse_people(raw: Sequence[Mapping[str, Any]]) -> list[Person]:
    people = [parse_person(p) for p in raw]
    _unique((p.person_id for p in people), "person_id")
    _unique((p.email.lower() for p in people if p.email), "email")
    return people


def _unique(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise PersonError(f"two people share the {what} {v!r}")
        seen.add(v)
