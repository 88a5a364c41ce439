"""``tessera verify``: the relying party's check, from the SDK-only install."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tessera.cli.common import echo_json, fail


@click.command("verify")
@click.argument("token")
@click.option("--issuer", envvar="TESSERA_ISSUER", required=True, help="The issuer identifier (or TESSERA_ISSUER).")
@click.option("--audience", "audiences", multiple=True, required=True, help="An accepted audience; repeat.")
@click.option(
    "--alg", "algorithms", multiple=True, default=("ES256",), show_default=True, help="An accepted algorithm; repeat."
)
@click.option("--typ", default="at+jwt", show_default=True, help="Required JOSE typ ('' to skip).")
@click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Verify offline from a trust bundle (needs --trusted-jwks).",
)
@click.option(
    "--trusted-jwks", type=click.Path(exists=True, dir_okay=False), help="JWK Set trusted to sign the bundle."
)
def verify_token(
    token: str,
    issuer: str,
    audiences: tuple[str, ...],
    algorithms: tuple[str, ...],
    typ: str,
    bundle_file: str | None,
    trusted_jwks: str | None,
) -> None:
    """Verify TOKEN ('-' reads it from standard input) as a relying party would, locally.

    Prints the claims and what the decision was based on (keys and status list ages), or the precise
    reason for refusal with exit code 1.
    """
    from tessera.verify import VerificationError, Verifier

    if token == "-":
        token = sys.stdin.read().strip()
    options: dict[str, Any] = {
        "audiences": audiences,
        "algorithms": algorithms,
        "typ": typ or None,
        "background_refresh": False,
    }
    try:
        if bundle_file:
            if not trusted_jwks:
                fail("--bundle needs --trusted-jwks", 2)
            verifier = Verifier.from_bundle(
                Path(bundle_file).read_text(),
                issuer=issuer,
                trusted_jwks=json.loads(Path(trusted_jwks).read_text()),
                **options,
            )
        else:
            verifier = Verifier(issuer, **options)
        claims = verifier.verify(token)
    except VerificationError as e:
        click.echo(json.dumps({"valid": False, "reason": e.reason, "detail": e.message}), err=False)
        sys.exit(1)
    echo_json({"valid": True, "claims": dict(claims), "report": claims.report.as_dict()})
