"""The tamper-evident audit log: every decision is a record in a SHA-256 hash chain."""

from tessera.audit.chain import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    ChainReport,
    canonical_json,
    seal,
    verify_chain,
)

__all__ = ["GENESIS", "AuditEvent", "AuditRecord", "ChainReport", "canonical_json", "seal", "verify_chain"]
