"""``tessera tokens`` and ``tessera bundle``: revocation and offline trust bundles."""

from __future__ import annotations

from pathlib import Path

import click

from tessera.cli.common import echo_json, fail, runtime


@click.group()
def tokens() -> None:
    """Issued access tokens: revocation (published through the status lists)."""


@tokens.command("revoke")
@click.option("--jti", help="The token with this jti (whatever its expiry).")
@click.option("--client", "client_id", help="Every unexpired token of this client.")
@click.option("--subject", "sub", help="Every unexpired token with this sub.")
@click.option("--token", help="This access token (its signature is checked first).")
def tokens_revoke(jti: str | None, client_id: str | None, sub: str | None, token: str | None) -> None:
    """Revoke tokens; prints {"revoked": N}. Exactly one of the options."""
    from tessera.oauth.keys import KeyRing
    from tessera.oauth.revocation import selector_from_request
    from tessera.store.sql import repo

    given = {k: v for k, v in (("jti", jti), ("client_id", client_id), ("sub", sub), ("token", token)) if v}
    if len(given) != 1:
        fail("give exactly one of --jti, --client, --subject, --token", 2)
    rt = runtime()
    try:
        ring = KeyRing.from_records(rt.store.read(repo.load_keys), rt.kek, int(rt.clock.now()))
        selector = selector_from_request(given, ring, rt.settings.issuer)
        revoked = rt.store.revoke_now(selector, actor="cli", via="cli")
        echo_json({"revoked": len(revoked)})
    finally:
        rt.close()


# -- bundle --------------------------------------------------------------------------------------------
@click.group()
def bundle() -> None:
    """Trust bundles for relying parties that verify offline (docs/verification.md)."""


@bundle.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout).")
@click.option(
    "--lifetime",
    type=click.IntRange(60, 30 * 86400),
    default=86400,
    show_default=True,
    help="Seconds the bundle (and the status lists in it) stays valid.",
)
def bundle_export(output: str | None, lifetime: int) -> None:
    """Write a signed trust bundle: metadata, JWKS and the current status lists, as one compact JWS."""
    from tessera.runtime import export_bundle

    rt = runtime()
    try:
        value = export_bundle(rt, lifetime)
    finally:
        rt.close()
    if output:
        Path(output).write_text(value + "\n")
    else:
        click.echo(value)


# -- audit ---------------------------------------------------------------------------------------------
