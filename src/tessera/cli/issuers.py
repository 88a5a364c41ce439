"""``tessera issuers``: trusted external issuers (identity federation, docs/federation.md)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import click

from tessera.cli.common import echo_json, fail, runtime


@click.group()
def issuers() -> None:
    """Trust external identity issuers (CI platforms, Kubernetes clusters, SPIFFE trust domains)."""


def _read_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        value = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise click.BadParameter(f"not valid {'TOML' if path.endswith('.toml') else 'JSON'} ({e})") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must hold one trust configuration (a table / object)")
    return value


@issuers.command("list")
def issuers_list() -> None:
    """List trusted issuers (declared in the config file or added by an operator)."""
    from tessera.store.sql import repo

    rt = runtime()
    try:
        for i in rt.store.read(repo.list_trusted_issuers):
            click.echo(f"{i.name}\t{i.source}\t{i.config.get('issuer')}")
    finally:
        rt.close()


@issuers.command("show")
@click.argument("name")
def issuers_show(name: str) -> None:
    """Print one trust configuration as JSON."""
    from tessera.store.sql import repo

    rt = runtime()
    try:
        found = [i for i in rt.store.read(repo.list_trusted_issuers) if i.name == name]
        if not found:
            fail(f"no trusted issuer named {name}")
        echo_json({"name": name, "source": found[0].source, "config": found[0].config})
    finally:
        rt.close()


@issuers.command("put")
@click.argument("name")
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False), help="JSON or TOML.")
def issuers_put(name: str, path: str) -> None:
    """Add or replace a trusted issuer from a file; validated (CEL compiled) before it is stored.
    Running servers pick the change up within TESSERA_KEY_REFRESH_INTERVAL seconds."""
    from tessera.federation.config import FederationConfigError
    from tessera.runtime import put_trusted_issuer

    config = _read_config(path)
    rt = runtime()
    try:
        created = put_trusted_issuer(rt, name, config, "cli")
    except FederationConfigError as e:
        fail(str(e))
    except PermissionError as e:
        fail(str(e))
    finally:
        rt.close()
    click.echo(f"{'added' if created else 'replaced'} trusted issuer {name}")


@issuers.command("remove")
@click.argument("name")
def issuers_remove(name: str) -> None:
    """Stop trusting an issuer. Tokens already issued stay valid until they expire (revoke them by
    subject with `tessera tokens revoke --sub` if needed)."""
    from tessera.runtime import delete_trusted_issuer

    rt = runtime()
    try:
        gone = delete_trusted_issuer(rt, name, "cli")
    except PermissionError as e:
        fail(str(e))
    finally:
        rt.close()
    if not gone:
        fail(f"no trusted issuer named {name}")
    click.echo(f"removed trusted issuer {name}")


@issuers.command("check")
@click.argument("token")
def issuers_check(token: str) -> None:
    """Dry run: would this external token be accepted, and as whom? Fetches the issuer's keys,
    checks and maps the token; consumes nothing and issues nothing. Exit code 1 if refused."""
    from tessera.federation.validator import FederationRefused, IssuerRegistry
    from tessera.runtime import load_trusted_issuers

    rt = runtime()
    try:
        registry = IssuerRegistry(load_trusted_issuers(rt.settings, rt.store), now=rt.clock.now)

        async def run() -> Any:
            try:
                return await registry.validate(token)
            finally:
                await registry.aclose()

        try:
            identity = asyncio.run(run())
        except FederationRefused as e:
            fail(f"refused{f' by {e.trust}' if e.trust else ''}: {e}")
    finally:
        rt.close()
    echo_json(identity.summary())
