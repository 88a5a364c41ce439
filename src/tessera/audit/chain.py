"""Hash chain over audit records.

Each record's hash is ``SHA-256(canonical JSON of {seq, ts, event, actor, subject, data, prev})``
where ``prev`` is the previous record's hash (``GENESIS`` for the first). Canonical JSON is the
RFC 8785 (JCS) form for the values Tessera writes: objects with sorted keys, no insignificant
white space, UTF-8, integers only (times are integer milliseconds). Editing, removing or reordering
any record breaks the chain at that record, which ``verify_chain`` reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["GENESIS", "AuditEvent", "AuditRecord", "ChainReport", "canonical_json", "seal", "verify_chain"]

GENESIS = "0" * 64


def canonical_json(value: Any) -> bytes:
    # orjson's compact, key-sorted, UTF-8 output is byte-identical to
    # json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) for these values (tested),
    # at a fifth of the cost; it refuses NaN, infinities and integers beyond 64 bits outright.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it has a place in the chain. ``data`` must hold no secrets."""

    event: str
    actor: str | None = None
    subject: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: int
    event: str
    actor: str | None
    subject: str | None
    data: dict[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "actor": self.actor,
            "subject": self.subject,
            "data": self.data,
            "prev": self.prev,
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def seal(event: AuditEvent, seq: int, ts: int, prev: str) -> AuditRecord:
    body = {
        "seq": seq,
        "ts": ts,
        "event": event.event,
        "actor": event.actor,
        "subject": event.subject,
        "data": event.data,
        "prev": prev,
    }
    return AuditRecord(seq, ts, event.event, event.actor, event.subject, event.data, prev, _digest(body))


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def verify_chain(
    records: Iterable[AuditRecord],
    expected_head: tuple[int, str] | None = None,
    *,
    after: tuple[int, str] | None = None,
) -> ChainReport:
    """Walk the records in ``seq`` order as stored; report the first broken, reordered or missing one.

    ``expected_head`` is the (seq, hash) the store says is last: it catches records cut off the end.
    ``after`` is a (seq, hash) verified before: the records then continue the chain from it.
    """
    prev, expected_seq, n = GENESIS, 1, 0
    if after is not None:
        expected_seq, prev = after[0] + 1, after[1]
    for rec in records:
        if rec.seq != expected_seq:
            what = "missing" if rec.seq > expected_seq else "reordered or duplicated"
            return ChainReport(False, n, prev, expected_seq, f"record {expected_seq} is {what} (found {rec.seq})")
        if rec.prev != prev:
            return ChainReport(False, n, prev, rec.seq, f"record {rec.seq} does not link to record {rec.seq - 1}")
        if _digest(rec.body()) != rec.hash:
            return ChainReport(False, n, prev, rec.seq, f"record {rec.seq} was altered (hash mismatch)")
        prev, expected_seq, n = rec.hash, expected_seq + 1, n + 1
    if expected_head is not None and expected_head != (expected_seq - 1, prev):
        seq, _ = expected_head
        if seq >= expected_seq:
            return ChainReport(False, n, prev, expected_seq, f"records {expected_seq}..{seq} are missing")
        return ChainReport(False, n, prev, seq, "the chain head does not match the last record")
    return ChainReport(True, n, prev)
