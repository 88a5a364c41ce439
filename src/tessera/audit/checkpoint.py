"""Signed checkpoints of the audit chain: the head (seq, hash) at a moment, signed with the issuer's
active signing key and appended to the chain as an ``audit.checkpoint`` record.

The hash chain alone shows that records were altered, removed or reordered — unless whoever altered
them also recomputed every hash after the change. A checkpoint closes that gap: rewriting history
before a checkpoint would need the issuer's private key. Checkpoints are verifiable offline from an
export (``tessera audit export``) and the issuer's published JWKS: ``tessera audit verify-export``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .chain import AuditRecord, verify_chain

__all__ = ["CHECKPOINT_TYP", "CheckpointReport", "checkpoint_claims", "verify_export"]

CHECKPOINT_TYP = "tessera-audit-checkpoint+jwt"


def checkpoint_claims(issuer: str, seq: int, head_hash: str, now: int) -> dict[str, Any]:
    return {"iss": issuer, "iat": now, "seq": seq, "hash": head_hash}


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    records: int
    checkpoints: int
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "checkpoints": self.checkpoints, "reason": self.reason}


def _claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")

    def seg(s: str) -> dict[str, Any]:
        value = json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value

    return seg(head), seg(body)


def verify_export(
    records: Iterable[AuditRecord], jwks: Mapping[str, Any], issuer: str, *, require_checkpoint: bool = False
) -> CheckpointReport:
    """The chain of an export, and every checkpoint in it: signed by a key of ``jwks`` (the issuer's
    published keys, obtained independently), naming this issuer, and matching the record it names."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    records = list(records)
    chain = verify_chain(records)
    if not chain.ok:
        return CheckpointReport(False, chain.checked, 0, chain.reason)
    by_seq = {r.seq: r for r in records}
    keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    count = 0
    for rec in records:
        if rec.event != "audit.checkpoint":
            continue
        token = str(rec.data.get("jws", ""))
        try:
            header, _ = _claims(token)
            if header.get("typ") != CHECKPOINT_TYP:
                raise ValueError("not a checkpoint")
            claims = dict(jwt.decode(token, keys, algorithms=[str(header.get("alg"))]).claims)
        except (ValueError, JoseError, TypeError) as e:
            return CheckpointReport(False, len(records), count, f"checkpoint at record {rec.seq}: bad signature ({e})")
        seq, signed_hash = claims.get("seq"), claims.get("hash")
        target = by_seq.get(seq) if isinstance(seq, int) else None
        if claims.get("iss") != issuer or target is None or target.hash != signed_hash:
            return CheckpointReport(
                False, len(records), count, f"checkpoint at record {rec.seq} does not match record {seq}"
            )
        if rec.data.get("seq") != seq or rec.data.get("hash") != signed_hash:
            return CheckpointReport(False, len(records), count, f"checkpoint at record {rec.seq} was altered")
        count += 1
    if require_checkpoint and count == 0:
        return CheckpointReport(False, len(records), 0, "the export holds no checkpoint")
    return CheckpointReport(True, len(records), count)
