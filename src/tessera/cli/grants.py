"""``tessera grants``: the consents people gave to agents in the authorization code flow
(docs/authorization-code.md) — list them, revoke one (its refresh tokens and what they issued go too)."""

from __future__ import annotations

import click

from tessera.cli.common import echo_json, fail, runtime


@click.group()
def grants() -> None:
    """Consent grants of the authorization code flow: which person allowed which client what."""


@grants.command("list")
@click.option("--person", help="Only this person's grants.")
@click.option("--client", "client_id", help="Only this client's grants.")
def grants_list(person: str | None, client_id: str | None) -> None:
    """Print the grants as JSON (newest first)."""
    from tessera.store.sql.authcode import list_grants

    rt = runtime()
    try:
        echo_json([g.view() for g in rt.store.read(lambda c: list_grants(c, person, client_id))])
    finally:
        rt.close()


@grants.command("revoke")
@click.argument("grant_id")
def grants_revoke(grant_id: str) -> None:
    """Revoke a grant; prints {"grant_id", "revoked_tokens"}."""
    from tessera.store.sql.authcode import revoke_grant_now

    rt = runtime()
    try:
        revoked = revoke_grant_now(rt.store, grant_id, "cli")
        if revoked is None:
            fail(f"no grant {grant_id}")
        echo_json({"grant_id": grant_id, "revoked_tokens": len(revoked or [])})
    finally:
        rt.close()
