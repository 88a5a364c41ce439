"""``tessera audit``: verify and export the hash-chained audit log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tessera.cli.common import fail


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


def _audit_store() -> Any:
    """The store, opened read-only in spirit: no KEK, no keys, no schema changes, nothing created."""
    from tessera.clock import SystemClock
    from tessera.settings import load_settings
    from tessera.store.sql.engine import current_revision
    from tessera.store.sql.store import SqlStore

    settings = load_settings()
    if settings.database_url.startswith("sqlite:///"):
        path = Path(settings.database_url[len("sqlite:///") :])
        if not path.exists():
            fail(f"no Tessera database at {path} (check TESSERA_DATA_DIR / TESSERA_DATABASE_URL)")
    store = SqlStore(settings.database_url, SystemClock())
    if current_revision(store.read_engine) is None:
        store.close()
        fail("the database has no Tessera schema; run `tessera db upgrade`")
    return store


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain; report the first broken, reordered or missing record (exit 1)."""
    store = _audit_store()
    try:
        report = store.verify_audit()
    finally:
        store.close()
    if report.ok:
        click.echo(f"audit chain ok: {report.checked} records, head {report.head}")
    else:
        click.echo(
            f"audit chain BROKEN at record {report.first_bad_seq}: {report.reason} "
            f"({report.checked} records verified before it)",
            err=True,
        )
        sys.exit(1)


@audit.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout).")
@click.option("--after", type=int, default=0, help="Only records after this sequence number.")
def audit_export(output: str | None, after: int) -> None:
    """Write audit records as JSON lines, in chain order, each with its seq, prev and hash."""
    from tessera.audit import canonical_json
    from tessera.store.sql import repo

    store = _audit_store()
    try:
        out = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
        try:
            with store.read_engine.connect() as conn:
                for rec in repo.iter_audit(conn, after=after):
                    out.write(canonical_json(rec.as_json()) + b"\n")
        finally:
            if output:
                out.close()
            else:
                out.flush()
    finally:
        store.close()


# -- verify (relying-party side: needs only the base install) -----------------------------------------


@audit.command("checkpoint")
def audit_checkpoint_command() -> None:
    """Sign the chain's head now with the active signing key (an audit.checkpoint record); print it."""
    from tessera.cli.common import echo_json, runtime
    from tessera.runtime import audit_checkpoint

    rt = runtime()
    try:
        echo_json(audit_checkpoint(rt))
    finally:
        rt.close()


@audit.command("verify-export")
@click.argument("export", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--jwks",
    "jwks_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The issuer's JWKS, obtained independently (e.g. saved from /oauth/jwks).",
)
@click.option("--issuer", required=True, help="The issuer the checkpoints must name.")
@click.option("--require-checkpoint", is_flag=True, help="Fail when the export holds no checkpoint.")
def audit_verify_export(export: str, jwks_path: str, issuer: str, require_checkpoint: bool) -> None:
    """Offline: check an exported chain and every signed checkpoint in it against the issuer's keys."""
    import json

    from tessera.audit import AuditRecord
    from tessera.audit.checkpoint import verify_export

    records = []
    with open(export, "rb") as f:
        for line in f:
            if line.strip():
                raw = json.loads(line)
                records.append(
                    AuditRecord(
                        seq=raw["seq"],
                        ts=raw["ts"],
                        event=raw["event"],
                        actor=raw.get("actor"),
                        subject=raw.get("subject"),
                        data=raw.get("data", {}),
                        prev=raw["prev"],
                        hash=raw["hash"],
                    )
                )
    with open(jwks_path) as f:
        jwks = json.load(f)
    report = verify_export(records, jwks, issuer, require_checkpoint=require_checkpoint)
    if report.ok:
        click.echo(f"export ok: {report.records} records, {report.checkpoints} signed checkpoint(s)")
    else:
        click.echo(f"export BROKEN: {report.reason}", err=True)
        sys.exit(1)
