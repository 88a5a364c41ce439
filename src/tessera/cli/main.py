"""``tessera``: run the server and operate it (clients, keys, tokens, trust bundles, audit, database).

Server-side commands import the server packages lazily, so that the base (relying-party) install
keeps a working ``tessera --help``.
"""

from __future__ import annotations

import os

import click

from tessera.cli.alerts import alerts
from tessera.cli.approvals import approvals, outbox, people
from tessera.cli.audit import audit
from tessera.cli.clients import clients
from tessera.cli.common import Group, echo_json, runtime
from tessera.cli.demo import demo
from tessera.cli.flows import flows
from tessera.cli.grants import grants
from tessera.cli.issuers import issuers
from tessera.cli.keys import keys
from tessera.cli.token import token
from tessera.cli.tokens import bundle, tokens
from tessera.cli.verify import verify_token

__all__ = ["main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tessera")
def main() -> None:
    """Tessera: short-lived, issuer-backed tokens for workloads, CI jobs and AI agents.

    Configuration comes from TESSERA_* environment variables and the TOML file named by
    TESSERA_CONFIG (see docs/configuration.md). `tessera serve` needs nothing else: on first start
    it creates the data directory, the SQLite database and the signing keys.
    """


@main.command()
def init() -> None:
    """Create the data directory, database schema, key-encryption key and signing keys, then exit."""
    rt = runtime()
    try:
        from tessera.store.sql import repo

        keys = rt.store.read(repo.load_keys)
        click.echo(f"issuer:   {rt.settings.issuer}")
        click.echo(f"database: {rt.settings.masked()['database_url']}")
        for k in keys:
            if k.state.value in ("active", "next"):
                click.echo(f"key:      {k.kid} {k.alg} {k.state.value}")
    finally:
        rt.close()


@main.command()
@click.option("--host", help="Listen address (TESSERA_HOST).")
@click.option("--port", type=int, help="Listen port (TESSERA_PORT).")
@click.option("--workers", type=int, help="Server processes (TESSERA_WORKERS).")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the authorization server (HTTP) until interrupted."""
    import uvicorn

    from tessera.settings import load_settings

    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ["TESSERA_" + name] = str(value)  # worker processes read the same settings
    settings = load_settings()
    runtime().close()  # migrate, bootstrap keys and sync declared clients once, before any worker starts
    from tessera.http.metrics import prepare_multiprocess_dir
    from tessera.http.telemetry import uvicorn_log_config

    if settings.workers > 1 and settings.metrics != "disabled":
        prepare_multiprocess_dir()  # the workers' metrics summed at every scrape (docs/observability.md)
    uvicorn.run(
        "tessera.http.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings) or uvicorn.config.LOGGING_CONFIG,
        access_log=settings.log_level == "debug",
        server_header=False,
        date_header=True,
    )


@main.command("config")
@click.option("--reference", is_flag=True, help="Print the configuration reference (Markdown) instead.")
def show_config(reference: bool) -> None:
    """Print the effective configuration (secrets masked)."""
    from tessera.settings import load_settings, reference_markdown

    if reference:
        click.echo(reference_markdown(), nl=False)
        return
    echo_json(load_settings().masked())


# -- db ------------------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (also done on every start)."""
    from tessera.clock import SystemClock
    from tessera.settings import load_settings
    from tessera.store.sql.store import SqlStore

    settings = load_settings()
    store = SqlStore(settings.database_url, SystemClock())
    try:
        click.echo(f"schema at revision {store.migrate()}")
    finally:
        store.close()


# -- clients -------------------------------------------------------------------------------------------

for command in (
    clients,
    issuers,
    keys,
    tokens,
    token,
    bundle,
    audit,
    verify_token,
    people,
    approvals,
    outbox,
    flows,
    grants,
    alerts,
):
    main.add_command(command)
main.add_command(demo)
