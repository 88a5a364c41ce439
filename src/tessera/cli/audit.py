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
