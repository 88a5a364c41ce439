"""``tessera keys``: the signing-key lifecycle."""

from __future__ import annotations

import json

import click

from tessera.cli.common import fail, runtime


@click.group()
def keys() -> None:
    """Signing keys: next → active → retired → removed."""


@keys.command("list")
def keys_list() -> None:
    """List signing keys with their state and dates (epoch seconds)."""
    from tessera.store.sql import repo

    rt = runtime()
    try:
        rt.store.sweep(actor="cli")
        for k in rt.store.read(repo.load_keys):
            click.echo(json.dumps(k.summary()))
    finally:
        rt.close()


@keys.command("rotate")
@click.option("--alg", help="Algorithm whose keys rotate (default: the first of TESSERA_SIGNING_ALGS).")
def keys_rotate(alg: str | None) -> None:
    """Promote the next key to active and retire the active one; a new next key is published.

    The retired key stays in the JWKS until every token it signed has expired. Running servers
    pick the change up within TESSERA_KEY_REFRESH_INTERVAL.
    """
    from tessera.oauth.keys import KeyState
    from tessera.store.sql import repo

    rt = runtime()
    try:
        s = rt.settings
        alg = alg or s.signing_algs[0]
        if alg not in s.signing_algs:
            fail(f"--alg must be one of {s.signing_algs}", 2)
        now = int(rt.clock.now())
        for k in rt.store.read(repo.load_keys):
            if k.alg == alg and k.state is KeyState.NEXT and now - k.created_at < s.jwks_max_age:
                click.echo(
                    f"warning: the next {alg} key was published {now - k.created_at} s ago, less than the JWKS "
                    f"cache lifetime ({s.jwks_max_age} s): relying parties that do not refetch on an unknown kid "
                    "may refuse new tokens until their cache expires",
                    err=True,
                )
        plan = rt.store.rotate_keys(
            alg,
            rt.kek,
            max_token_lifetime=s.access_token_lifetime,
            refresh_interval=s.key_refresh_interval,
            leeway=s.leeway,
            actor="cli",
        )
        for event, data in plan.events:
            click.echo(json.dumps({"event": event, **data}))
    finally:
        rt.close()


@keys.command("revoke")
@click.argument("kid")
def keys_revoke(kid: str) -> None:
    """Revoke a compromised key: it leaves the JWKS at once and its private half is erased.

    Every unexpired token it signed is revoked (status lists show them INVALID). If it was the
    active key, the next key is promoted first, so signing goes on. Running servers pick the
    change up within TESSERA_KEY_REFRESH_INTERVAL.
    """
    rt = runtime()
    try:
        try:
            plan, revoked = rt.store.revoke_key(kid, rt.kek, actor="cli")
        except LookupError as e:
            fail(str(e.args[0] if e.args else e))
            return
        for event, data in plan.events:
            click.echo(json.dumps({"event": event, **data}))
        click.echo(json.dumps({"event": "token.revoked", "count": len(revoked)}))
    finally:
        rt.close()


# -- tokens --------------------------------------------------------------------------------------------
