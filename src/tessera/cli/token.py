"""``tessera token``: one access token on standard output, for scripts; from the SDK-only install.

    TOKEN=$(tessera token --issuer https://tessera.example.com --client-id svc-orders \
                          --key-file key.pem --kid k1 --audience https://api.example.com)

Errors go to standard error with exit code 1 (2 for usage errors); nothing is printed on stdout then.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from tessera.cli.common import fail


@click.command("token")
@click.option("--issuer", envvar="TESSERA_ISSUER", required=True, help="The issuer identifier (or TESSERA_ISSUER).")
@click.option("--audience", "audiences", multiple=True, help="A resource the token is for (RFC 8707); repeat.")
@click.option("--scope", help="Space-separated scopes to request.")
@click.option("--client-id", envvar="TESSERA_CLIENT_ID", help="The client_id (or TESSERA_CLIENT_ID).")
@click.option(
    "--key-file", type=click.Path(exists=True, dir_okay=False), help="private_key_jwt: the client's PEM private key."
)
@click.option("--kid", help="private_key_jwt: the registered key's kid.")
@click.option("--alg", help="private_key_jwt: ES256, EdDSA, RS256 or PS256 (default: the key's).")
@click.option("--secret-env", metavar="VAR", help="client_secret_basic: the environment variable holding the secret.")
@click.option(
    "--assertion-file",
    type=click.Path(dir_okay=False),
    help="A federated assertion (projected service-account or CI OIDC token) in this file.",
)
@click.option(
    "--subject-token-file",
    type=click.Path(dir_okay=False),
    help="No client: exchange the platform's identity token in this file (RFC 8693 token exchange).",
)
@click.option("--token-endpoint", help="Skip discovery (RFC 8414) and post here.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per HTTP request.")
def token(
    issuer: str,
    audiences: tuple[str, ...],
    scope: str | None,
    client_id: str | None,
    key_file: str | None,
    kid: str | None,
    alg: str | None,
    secret_env: str | None,
    assertion_file: str | None,
    subject_token_file: str | None,
    token_endpoint: str | None,
    timeout: float,
) -> None:
    """Print an access token for this workload.

    As a client (client credentials grant), with exactly one of --key-file, --secret-env or
    --assertion-file; or with no client, exchanging the platform's token in --subject-token-file.
    """
    from tessera.client import (
        AssertionFile,
        ClientSecret,
        Credential,
        PrivateKeyJwt,
        SubjectTokenFile,
        TokenError,
        TokenSource,
    )

    options = (
        ("--key-file", key_file),
        ("--secret-env", secret_env),
        ("--assertion-file", assertion_file),
        ("--subject-token-file", subject_token_file),
    )
    chosen = [name for name, v in options if v]
    if len(chosen) != 1:
        fail("give exactly one of --key-file, --secret-env, --assertion-file, --subject-token-file", 2)
    if (key_file or secret_env) and not client_id:
        fail(f"{chosen[0]} needs --client-id (or TESSERA_CLIENT_ID)", 2)
    credential: Credential
    try:
        if key_file:
            assert client_id
            credential = PrivateKeyJwt(client_id, Path(key_file).read_bytes(), kid=kid, alg=alg)
        elif secret_env:
            assert client_id
            secret = os.environ.get(secret_env)
            if not secret:
                fail(f"the environment variable {secret_env} is not set")
            credential = ClientSecret(client_id, secret)
        elif assertion_file:
            credential = AssertionFile(assertion_file, client_id)
        else:
            assert subject_token_file
            credential = SubjectTokenFile(subject_token_file)
        with TokenSource(
            issuer, credential, audience=audiences, scope=scope, token_endpoint=token_endpoint, timeout=timeout
        ) as source:
            value = source.token()
    except TokenError as e:
        fail(str(e))
    except (ValueError, TypeError, OSError) as e:
        fail(str(e))
    click.echo(value)
