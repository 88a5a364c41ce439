"""``tessera``: run the server and operate it (clients, keys, tokens, trust bundles, audit, database).

Server-side commands import the server packages lazily, so that the base (relying-party) install
keeps a working ``tessera --help``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from tessera.runtime import Runtime

__all__ = ["main"]


def _runtime(migrate: bool = True) -> Runtime:
    from tessera.runtime import open_runtime
    from tessera.settings import load_settings

    return open_runtime(load_settings(), migrate=migrate)


def _fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {msg}", err=True)
    sys.exit(code)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _json_option(text: str, option: str, *, want_object: bool = False) -> Any:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not valid JSON ({e})", param_hint=option) from None
    if want_object and not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


class _Group(click.Group):
    """Turns configuration and storage errors into one readable line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own exits and usage errors
        except ImportError as e:
            _fail(f"{e.name or e}: the server is not installed here; pip install 'tessera[server]'")
        except Exception as e:
            try:
                from tessera.oauth.errors import OAuthError
                from tessera.oauth.keys import KekError, TooManyKeys
                from tessera.settings import SettingsError
            except ImportError:
                raise e from None  # the relying-party install: nothing of the server to translate
            if isinstance(e, SettingsError | KekError | TooManyKeys):
                _fail(str(e))
            if isinstance(e, OAuthError):
                _fail(f"{e.error}: {e.description}")
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    rt = _runtime()
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
    _runtime().close()  # migrate, bootstrap keys and sync declared clients once, before any worker starts
    uvicorn.run(
        "tessera.http.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
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
    _echo_json(load_settings().masked())


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
@main.group()
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

    md: dict[str, Any] = _json_option(metadata_json, "--metadata", want_object=True) if metadata_json else {}
    md.update({"grant_types": md.get("grant_types", ["client_credentials"]), "token_endpoint_auth_method": auth_method})
    if jwks_file:
        md["jwks"] = _json_option(Path(jwks_file).read_text(), "--jwks-file")
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
    rt = _runtime()
    try:
        client, secret = new_client(
            md, client_policy(rt.settings), int(rt.clock.now()), source="cli", client_id=client_id
        )
        if rt.store.read(lambda c: repo.get_client(c, client.client_id)):
            _fail(f"client {client.client_id} exists")
        rt.store.write(
            lambda c: repo.insert_client(c, client),
            [AuditEvent("client.created", actor="cli", subject=client.client_id, data={"metadata": client.metadata})],
        )
        out = client.public_view()
        if secret:
            out["client_secret"] = secret
        _echo_json(out)
    finally:
        rt.close()


@clients.command("list")
def clients_list() -> None:
    """List clients (one JSON object per line)."""
    from tessera.store.sql import repo

    rt = _runtime()
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

    rt = _runtime()
    try:
        c = rt.store.read(lambda conn: repo.get_client(conn, client_id))
        if c is None:
            _fail(f"no client {client_id}")
        _echo_json({**c.public_view(), "source": c.source})
    finally:
        rt.close()


@clients.command("remove")
@click.argument("client_id")
def clients_remove(client_id: str) -> None:
    """Delete a client and revoke its unexpired tokens."""
    from tessera.audit import AuditEvent

    rt = _runtime()
    try:
        # The audit records (client.deleted, token.revoked) only for a client that was there.
        event = AuditEvent("client.deleted", actor="cli", subject=client_id, data={"via": "cli"})
        if not rt.store.delete_client_now(client_id, event):
            _fail(f"no client {client_id}")
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

    rt = _runtime()
    try:
        c = rt.store.read(lambda conn: repo.get_client(conn, client_id))
        if c is None or c.secret_hash is None:
            _fail(f"no client {client_id} with a secret")
        secret = generate_secret()
        updated = replace(c, secret_hash=hash_secret(secret), updated_at=int(rt.clock.now()))
        rt.store.write(
            lambda conn: repo.update_client(conn, updated),
            [AuditEvent("client.secret_rotated", actor="cli", subject=client_id)],
        )
        _echo_json({"client_id": client_id, "client_secret": secret})
    finally:
        rt.close()


# -- keys ----------------------------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Signing keys: next → active → retired → removed."""


@keys.command("list")
def keys_list() -> None:
    """List signing keys with their state and dates (epoch seconds)."""
    from tessera.store.sql import repo

    rt = _runtime()
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

    rt = _runtime()
    try:
        s = rt.settings
        alg = alg or s.signing_algs[0]
        if alg not in s.signing_algs:
            _fail(f"--alg must be one of {s.signing_algs}", 2)
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
    rt = _runtime()
    try:
        try:
            plan, revoked = rt.store.revoke_key(kid, rt.kek, actor="cli")
        except LookupError as e:
            _fail(str(e.args[0] if e.args else e))
            return
        for event, data in plan.events:
            click.echo(json.dumps({"event": event, **data}))
        click.echo(json.dumps({"event": "token.revoked", "count": len(revoked)}))
    finally:
        rt.close()


# -- tokens --------------------------------------------------------------------------------------------
@main.group()
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
        _fail("give exactly one of --jti, --client, --subject, --token", 2)
    rt = _runtime()
    try:
        ring = KeyRing.from_records(rt.store.read(repo.load_keys), rt.kek, int(rt.clock.now()))
        selector = selector_from_request(given, ring, rt.settings.issuer)
        revoked = rt.store.revoke_now(selector, actor="cli", via="cli")
        _echo_json({"revoked": len(revoked)})
    finally:
        rt.close()


# -- bundle --------------------------------------------------------------------------------------------
@main.group()
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

    rt = _runtime()
    try:
        value = export_bundle(rt, lifetime)
    finally:
        rt.close()
    if output:
        Path(output).write_text(value + "\n")
    else:
        click.echo(value)


# -- audit ---------------------------------------------------------------------------------------------
@main.group()
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
            _fail(f"no Tessera database at {path} (check TESSERA_DATA_DIR / TESSERA_DATABASE_URL)")
    store = SqlStore(settings.database_url, SystemClock())
    if current_revision(store.read_engine) is None:
        store.close()
        _fail("the database has no Tessera schema; run `tessera db upgrade`")
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
@main.command("verify")
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
                _fail("--bundle needs --trusted-jwks", 2)
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
    _echo_json({"valid": True, "claims": dict(claims), "report": claims.report.as_dict()})
