"""``tessera clients``: the client registry (RFC 7591 metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tessera.cli.common import echo_json, fail, json_option, runtime


@click.group()
def clients() -> None:
    """Register, inspect and remove OAuth clients (RFC 7591 metadata)."""


@clients.command("add")
@click.option("--client-id", help="Choose the client_id (default: random).")
@click.option(
    "--auth-method",
    default="private_key_jwt",
    show_default=True,
    type=click.Choice(["private_key_jwt", "client_secret_basic", "client_secret_post"]),
)
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False), help="Public JWK Set (private_key_jwt).")
@click.option("--jwks-uri", help="URL of the client's public JWK Set (private_key_jwt).")
@click.option("--scope", default="", help="Space-separated scopes the client may request.")
@click.option("--resource", "resources", multiple=True, help="A resource (audience) the client may request; repeat.")
@click.option("--default-resource", help="Audience when the client asks for none.")
@click.option("--lifetime", type=int, help="The client's cap on access token lifetime, seconds.")
@click.option("--name", help="client_name")
@click.option("--metadata", "metadata_json", help="Further RFC 7591 metadata as a JSON object.")
def clients_add(
    client_id: str | None,
    auth_method: str,
    jwks_file: str | None,
    jwks_uri: str | None,
    scope: str,
    resources: tuple[str, ...],
    default_resource: str | None,
    lifetime: int | None,
    name: str | None,
    metadata_json: str | None,
) -> None:
    """Add a client. A client secret, if any, is printed once and stored only as a hash."""
    from tessera.audit import AuditEvent
    from tessera.oauth.clients import new_client
    from tessera.runtime import client_policy
    from tessera.store.sql import repo

    md: dict[str, Any] = json_option(metadata_json, "--metadata", want_object=True) if metadata_json else {}
    md.update({"grant_types": md.get("grant_types", ["client_credentials"]), "token_endpoint_auth_method": auth_method})
    if jwks_file:
        md["jwks"] = json_option(Path(jwks_file).read_text(), "--jwks-file")
    if jwks_uri:
        md["jwks_uri"] = jwks_uri
    if scope:
        md["scope"] = scope
    if resources:
        md["allowed_resources"] = list(resources)
    if default_resource:
        md["default_resource"] = default_resource
    if lifetime:
        md["access_token_lifetime"] = lifetime
    if name:
        md["client_name"] = name
    rt = runtime()
    try:
        client, secret = new_client(
            md, client_policy(rt.settings), int(rt.clock.now()), source="cli", client_id=client_id
        )
        if rt.store.read(lambda c: repo.get_client(c, client.client_id)):
            fail(f"client {client.client_id} exists")
        client = _registration_flows(rt, client)
        rt.store.write(
            lambda c: repo.insert_client(c, client),
            [AuditEvent("client.created", actor="cli", subject=client.client_id, data={"metadata": client.metadata})],
        )
        out = client.public_view()
        if secret:
            out["client_secret"] = secret
        echo_json(out)
    finally:
        rt.close()


def _registration_flows(rt: Any, client: Any) -> Any:
    """The client.register flows in force decide here as at RFC 7591 registration (docs/flows.md)."""
    import asyncio
    from dataclasses import replace

    import httpx

    from tessera.approval_runtime import approval_service
    from tessera.flow_gate import FlowGate
    from tessera.flow_runtime import flow_by_version, published_flows

    async def decide() -> Any:
        async with httpx.AsyncClient() as hooks:
            gate = FlowGate(
                store=rt.store,
                approvals=approval_service(rt),
                now=rt.clock.now,
                hooks=hooks,
                flow_by_version=lambda v: flow_by_version(rt.store, v),
            )
            gate.replace(published_flows(rt.store))
            return await gate.check_registration(client.client_id, client.metadata)

    marker = asyncio.run(decide())
    return replace(client, metadata={**client.metadata, "onboarding": marker}) if marker else client


@clients.command("list")
def clients_list() -> None:
    """List clients (one JSON object per line)."""
    from tessera.store.sql import repo

    rt = runtime()
    try:
        for c in rt.store.read(lambda conn: repo.list_clients(conn, limit=1_000_000)):
            click.echo(json.dumps({**c.public_view(), "source": c.source}))
    finally:
        rt.close()


@clients.command("show")
@click.argument("client_id")
def clients_show(client_id: str) -> None:
    """Print one client's metadata."""
    from tessera.store.sql import repo

    rt = runtime()
    try:
        c = rt.store.read(lambda conn: repo.get_client(conn, client_id))
        if c is None:
            fail(f"no client {client_id}")
        echo_json({**c.public_view(), "source": c.source})
    finally:
        rt.close()


@clients.command("remove")
@click.argument("client_id")
def clients_remove(client_id: str) -> None:
    """Delete a client and revoke its unexpired tokens."""
    from tessera.audit import AuditEvent

    rt = runtime()
    try:
        # The audit records (client.deleted, token.revoked) only for a client that was there.
        event = AuditEvent("client.deleted", actor="cli", subject=client_id, data={"via": "cli"})
        if not rt.store.delete_client_now(client_id, event):
            fail(f"no client {client_id}")
        click.echo(f"removed {client_id}")
    finally:
        rt.close()


@clients.command("rotate-secret")
@click.argument("client_id")
def clients_rotate_secret(client_id: str) -> None:
    """Issue a new client secret (printed once); the old one stops working."""
    from dataclasses import replace

    from tessera.audit import AuditEvent
    from tessera.oauth.clients import generate_secret, hash_secret
    from tessera.store.sql import repo

    rt = runtime()
    try:
        c = rt.store.read(lambda conn: repo.get_client(conn, client_id))
        if c is None or c.secret_hash is None:
            fail(f"no client {client_id} with a secret")
        secret = generate_secret()
        updated = replace(c, secret_hash=hash_secret(secret), updated_at=int(rt.clock.now()))
        rt.store.write(
            lambda conn: repo.update_client(conn, updated),
            [AuditEvent("client.secret_rotated", actor="cli", subject=client_id)],
        )
        echo_json({"client_id": client_id, "client_secret": secret})
    finally:
        rt.close()


# -- keys ----------------------------------------------------------------------------------------------
