"""The ``tessera`` command line: help, init, clients, keys, db, config, and configuration errors.

Every command reads the same TESSERA_* settings as the server (``LiveServer.cli`` runs it with the
server's environment), so what the CLI writes, a running server serves. Client registrations use the
RFC 7591 metadata vocabulary; secrets are printed once and never again.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import httpx
import pytest

from support import ASSERTION_TYPE, LiveServer, client_assertion, ec_jwk, ec_key


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def _failed(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """A refusal: the given exit code, a ``tessera: ...`` message on stderr, nothing on stdout, no traceback."""
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("tessera: ")]
    assert len(errors) == 1, r.stderr
    return r.stderr[r.stderr.index("tessera: ") :]


def _cli_env(tmp_path: pathlib.Path, **extra: str) -> LiveServer:
    """An environment for CLI-only tests: a LiveServer's settings, never started."""
    return LiveServer(tmp_path / "data", extra_env=extra)


def _token(server: LiveServer, client_id: str, secret: str) -> httpx.Response:
    return httpx.post(
        server.token_endpoint, data={"grant_type": "client_credentials"}, auth=(client_id, secret), timeout=10
    )


def _eventually(request: Callable[[], httpx.Response], status: int, within: float = 10.0) -> httpx.Response:
    """Repeat ``request`` until it answers ``status``: another process's change is seen within
    TESSERA_CLIENT_CACHE_TTL (1 s by default)."""
    deadline = time.monotonic() + within
    while True:
        r = request()
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def _audit_events(env: LiveServer, subject: str) -> list[dict[str, Any]]:
    out = _ok(env.cli("audit", "export"))
    return [
        rec
        for rec in map(json.loads, out.splitlines())
        if rec["subject"] == subject and rec["event"].startswith("client.")
    ]


# -- help -------------------------------------------------------------------------------------------------

HELP = {
    (): "short-lived, issuer-backed tokens",
    ("init",): "Create the data directory, database schema",
    ("serve",): "Run the authorization server",
    ("config",): "Print the effective configuration (secrets masked)",
    ("db",): "Database schema",
    ("db", "upgrade"): "Apply pending schema migrations",
    ("clients",): "Register, inspect and remove OAuth clients",
    ("clients", "add"): "printed once and stored only as a hash",
    ("clients", "list"): "List clients",
    ("clients", "show"): "Print one client's metadata",
    ("clients", "remove"): "Delete a client",
    ("clients", "rotate-secret"): "the old one stops working",
    ("keys",): "next → active → retired → removed",
    ("keys", "list"): "List signing keys with their state",
    ("keys", "rotate"): "Promote the next key to active",
    ("audit",): "tamper-evident audit log",
    ("audit", "verify"): "Check the hash chain",
    ("audit", "export"): "JSON lines",
}


@pytest.mark.parametrize("argv,phrase", HELP.items(), ids=[" ".join(a) or "tessera" for a in HELP])
def test_help(tmp_path: pathlib.Path, argv: tuple[str, ...], phrase: str) -> None:
    env = _cli_env(tmp_path)
    out = _ok(env.cli(*argv, "--help"))
    assert out.startswith("Usage: tessera" + "".join(" " + a for a in argv))
    assert phrase in " ".join(out.split())
    assert not env.data_dir.exists()  # asking for help touches nothing


def test_short_help_option_and_version(tmp_path: pathlib.Path) -> None:
    env = _cli_env(tmp_path)
    assert _ok(env.cli("-h")) == _ok(env.cli("--help"))
    assert _ok(env.cli("--version")).strip().endswith(version("tessera"))


def test_unknown_command_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    r = _cli_env(tmp_path).cli("frobnicate")
    assert r.returncode == 2
    assert "No such command" in r.stderr


# -- init ------------------------------------------------------------------------------------------------


def test_init_creates_database_kek_and_keys(tmp_path: pathlib.Path) -> None:
    env = _cli_env(tmp_path)
    assert not env.data_dir.exists()
    out = _ok(env.cli("init"))
    assert f"issuer:   {env.issuer}" in out
    db = env.data_dir / "tessera.db"
    kek = env.data_dir / "kek"
    assert db.is_file() and db.stat().st_size > 0
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n?", kek.read_text())  # 32 bytes, base64url
    printed = dict(re.findall(r"^key:\s+(\S+) ES256 (active|next)$", out, re.M))
    assert sorted(printed.values()) == ["active", "next"]

    keys = [json.loads(line) for line in _ok(env.cli("keys", "list")).splitlines()]
    assert {k["kid"]: k["state"] for k in keys} == printed

    # a second init changes nothing
    kek_text = kek.read_text()
    again = _ok(env.cli("init"))
    assert dict(re.findall(r"^key:\s+(\S+) ES256 (active|next)$", again, re.M)) == printed
    assert kek.read_text() == kek_text
    assert "audit chain ok: 2 records" in _ok(env.cli("audit", "verify"))


def test_init_with_tessera_kek_writes_no_kek_file(tmp_path: pathlib.Path) -> None:
    import base64
    import os

    env = _cli_env(tmp_path, TESSERA_KEK=base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())
    _ok(env.cli("init"))
    assert (env.data_dir / "tessera.db").is_file()
    assert not (env.data_dir / "kek").exists()
    # a different KEK does not open the stored keys: refused before anything is sealed under it
    env.env["TESSERA_KEK"] = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    assert "key-encryption key" in _failed(env.cli("keys", "rotate"))


# -- clients against a live server ----------------------------------------------------------------------------


def test_clients_add_with_a_secret(server: LiveServer) -> None:
    cid = "cli-secret-" + secrets.token_hex(4)
    out = _ok(
        server.cli(
            "clients",
            "add",
            "--client-id",
            cid,
            "--auth-method",
            "client_secret_basic",
            "--scope",
            "read write",
            "--name",
            "CLI client",
            "--resource",
            "https://api.example.com",
            "--default-resource",
            "https://api.example.com",
            "--lifetime",
            "300",
        )
    )
    shown = json.loads(out)
    secret = shown["client_secret"]
    assert len(secret) >= 32
    assert shown["client_id"] == cid
    assert shown["token_endpoint_auth_method"] == "client_secret_basic"
    assert shown["scope"] == "read write"
    assert shown["client_name"] == "CLI client"
    assert shown["allowed_resources"] == ["https://api.example.com"]
    assert shown["default_resource"] == "https://api.example.com"
    assert shown["access_token_lifetime"] == 300

    r = _token(server, cid, secret)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "read write"
    assert r.json()["expires_in"] == 300

    # the secret is shown once: never by show, list, or in the audit log
    digest = hashlib.sha256(secret.encode()).hexdigest()
    show = _ok(server.cli("clients", "show", cid))
    assert json.loads(show)["source"] == "cli"
    listed = _ok(server.cli("clients", "list"))
    rows = {row["client_id"]: row for row in map(json.loads, listed.splitlines())}
    assert rows[cid]["scope"] == "read write"
    audit = json.dumps(_audit_events(server, cid))
    assert '"client.created"' in audit
    for text in (show, listed, audit):
        assert secret not in text and digest not in text and '"client_secret"' not in text


def test_clients_add_private_key_jwt_from_a_jwks_file(server: LiveServer, tmp_path: pathlib.Path) -> None:
    key = ec_key()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [ec_jwk(key, "k1")]}))
    shown = json.loads(_ok(server.cli("clients", "add", "--jwks-file", str(jwks_file), "--scope", "deploy")))
    assert shown["token_endpoint_auth_method"] == "private_key_jwt"  # the default
    assert "client_secret" not in shown
    assert shown["jwks"]["keys"][0]["kid"] == "k1"
    cid = shown["client_id"]
    r = httpx.post(
        server.token_endpoint,
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(key, cid, server.token_endpoint),
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "deploy"
    _failed(server.cli("clients", "rotate-secret", cid))


def test_clients_rotate_secret(server: LiveServer) -> None:
    cid = json.loads(_ok(server.cli("clients", "add", "--auth-method", "client_secret_post")))["client_id"]
    old = json.loads(_ok(server.cli("clients", "show", cid)))
    assert old["client_id"] == cid
    first = json.loads(_ok(server.cli("clients", "rotate-secret", cid)))
    new = first["client_secret"]
    assert first == {"client_id": cid, "client_secret": new}

    def post(secret: str) -> Callable[[], httpx.Response]:
        return lambda: httpx.post(
            server.token_endpoint,
            timeout=10,
            data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
        )

    assert _eventually(post(new), 200).status_code == 200
    second = json.loads(_ok(server.cli("clients", "rotate-secret", cid)))["client_secret"]
    r = _eventually(post(new), 401)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert post(second)().status_code == 200
    events = [e["event"] for e in _audit_events(server, cid)]
    assert events == ["client.created", "client.secret_rotated", "client.secret_rotated"]


def test_clients_remove(server: LiveServer) -> None:
    shown = json.loads(_ok(server.cli("clients", "add", "--auth-method", "client_secret_basic")))
    cid, secret = shown["client_id"], shown["client_secret"]
    assert _token(server, cid, secret).status_code == 200
    assert _ok(server.cli("clients", "remove", cid)).strip() == f"removed {cid}"
    r = _eventually(lambda: _token(server, cid, secret), 401)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert cid not in _ok(server.cli("clients", "list"))
    assert _failed(server.cli("clients", "show", cid)).strip() == f"tessera: no client {cid}"
    assert _failed(server.cli("clients", "remove", cid)).strip() == f"tessera: no client {cid}"
    # only the removal that happened is an audit record
    assert [e["event"] for e in _audit_events(server, cid)] == ["client.created", "client.deleted"]


def test_clients_add_refusals(server: LiveServer, tmp_path: pathlib.Path) -> None:
    cid = "cli-dup-" + secrets.token_hex(4)
    _ok(server.cli("clients", "add", "--client-id", cid, "--auth-method", "client_secret_basic"))
    assert f"client {cid} exists" in _failed(
        server.cli("clients", "add", "--client-id", cid, "--auth-method", "client_secret_basic")
    )
    msg = _failed(server.cli("clients", "add", "--auth-method", "client_secret_basic", "--scope", 'a"b'))
    assert msg.startswith("tessera: invalid_client_metadata: ")
    msg = _failed(server.cli("clients", "add"))  # private_key_jwt without keys
    assert msg.startswith("tessera: invalid_client_metadata: ")
    assert "invalid_client_metadata" in _failed(
        server.cli("clients", "add", "--client-id", "has space", "--auth-method", "client_secret_basic")
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("--metadata", "{not json"),
        ("--metadata", "[1, 2]"),
        ("--jwks-file", "{file}"),
    ],
    ids=["metadata-not-json", "metadata-not-object", "jwks-file-not-json"],
)
def test_clients_add_bad_json_is_a_usage_error(tmp_path: pathlib.Path, argv: tuple[str, ...]) -> None:
    env = _cli_env(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = env.cli("clients", "add", *(str(bad) if a == "{file}" else a for a in argv))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert argv[0] in r.stderr


# -- keys ------------------------------------------------------------------------------------------------------


def test_keys_list_and_rotate(tmp_path: pathlib.Path) -> None:
    env = _cli_env(tmp_path)
    before = {k["state"]: k for k in map(json.loads, _ok(env.cli("keys", "list")).splitlines())}
    assert sorted(before) == ["active", "next"]
    for k in before.values():
        assert set(k) == {
            "kid",
            "alg",
            "state",
            "created_at",
            "activated_at",
            "retired_at",
            "remove_after",
            "removed_at",
        }
        assert k["alg"] == "ES256"
    assert before["active"]["activated_at"] is not None and before["next"]["activated_at"] is None

    events = [json.loads(line) for line in _ok(env.cli("keys", "rotate")).splitlines()]
    assert [e["event"] for e in events] == ["key.retired", "key.activated", "key.created"]
    assert events[0]["kid"] == before["active"]["kid"]
    assert events[1]["kid"] == before["next"]["kid"]
    assert events[0]["remove_after"] > before["active"]["created_at"]

    after = {k["kid"]: k for k in map(json.loads, _ok(env.cli("keys", "list")).splitlines())}
    assert after[before["active"]["kid"]]["state"] == "retired"
    assert after[before["active"]["kid"]]["remove_after"] == events[0]["remove_after"]
    assert after[before["next"]["kid"]]["state"] == "active"
    assert after[events[2]["kid"]]["state"] == "next"
    assert len(after) == 3

    r = env.cli("keys", "rotate", "--alg", "RS256")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--alg must be one of ['ES256']" in r.stderr
    assert len(_ok(env.cli("keys", "list")).splitlines()) == 3


# -- db --------------------------------------------------------------------------------------------------------


def test_db_upgrade_is_idempotent(tmp_path: pathlib.Path) -> None:
    from tessera.store.sql.engine import head_revision

    env = _cli_env(tmp_path)
    expected = f"schema at revision {head_revision()}\n"
    assert _ok(env.cli("db", "upgrade")) == expected
    assert _ok(env.cli("db", "upgrade")) == expected
    assert (env.data_dir / "tessera.db").is_file()
    _ok(env.cli("init"))
    assert _ok(env.cli("db", "upgrade")) == expected


# -- config ----------------------------------------------------------------------------------------------------


def test_config_masks_secrets(tmp_path: pathlib.Path) -> None:
    import base64
    import os

    kek = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    client_secret = "declared-" + secrets.token_hex(20)
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'access_token_lifetime = 600\n\n[[clients]]\nclient_id = "declared"\n'
        f'token_endpoint_auth_method = "client_secret_basic"\nclient_secret = "{client_secret}"\n'
    )
    env = _cli_env(
        tmp_path,
        TESSERA_KEK=kek,
        TESSERA_CONFIG=str(config),
        TESSERA_DATABASE_URL="postgresql://tessera:db-pass-9f8e7d@db.internal:5432/tessera",
    )
    r = env.cli("config")
    out = _ok(r)
    shown = json.loads(out)
    assert shown["admin_token"] == "***"
    assert shown["registration_token"] == "***"
    assert shown["kek"] == "***"
    assert shown["database_url"] == "postgresql://***@db.internal:5432/tessera"
    assert shown["issuer"] == env.issuer
    assert shown["access_token_lifetime"] == 600
    assert shown["config"] == str(config)
    assert shown["clients"][0]["client_id"] == "declared"
    for secret in (env.admin_token, env.reg_token, kek, "db-pass-9f8e7d", client_secret):
        assert secret not in r.stdout and secret not in r.stderr
    assert not env.data_dir.exists()  # config reads settings, nothing else


INVALID_SETTINGS = {
    "issuer-http-public": ({"TESSERA_ISSUER": "http://example.com"}, "config", "issuer must use https"),
    "issuer-with-fragment": ({"TESSERA_ISSUER": "https://example.com#x"}, "init", "issuer must not have"),
    "port-not-a-number": ({"TESSERA_PORT": "abc"}, "init", "TESSERA_PORT"),
    "port-serve": ({"TESSERA_PORT": "abc"}, "serve", "TESSERA_PORT"),
    "port-out-of-range": ({"TESSERA_PORT": "70000"}, "config", "TESSERA_PORT"),
    "signing-alg": ({"TESSERA_SIGNING_ALGS": "HS256"}, "keys", "TESSERA_SIGNING_ALGS"),
    "log-level": ({"TESSERA_LOG_LEVEL": "loud"}, "config", "TESSERA_LOG_LEVEL"),
    "database-url": ({"TESSERA_DATABASE_URL": "mysql://db/x"}, "db", "(TESSERA_DATABASE_URL): must start with"),
    "kek-malformed": ({"TESSERA_KEK": "not base64!"}, "init", "TESSERA_KEK"),
    "config-missing": ({"TESSERA_CONFIG": "/nonexistent/tessera.toml"}, "config", "no such file"),
}


@pytest.mark.parametrize("extra,command,fragment", INVALID_SETTINGS.values(), ids=INVALID_SETTINGS.keys())
def test_invalid_setting_is_a_short_error(
    tmp_path: pathlib.Path, extra: dict[str, str], command: str, fragment: str
) -> None:
    env = _cli_env(tmp_path, **extra)
    argv = {"keys": ("keys", "list"), "db": ("db", "upgrade")}.get(command, (command,))
    msg = _failed(env.cli(*argv))
    assert fragment in msg
    assert len(msg.splitlines()) <= 2, msg


def test_invalid_toml_config_names_the_file(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("port = \n")
    msg = _failed(_cli_env(tmp_path, TESSERA_CONFIG=str(config)).cli("config"))
    assert str(config) in msg and "not valid TOML" in msg
    config.write_text("prot = 8080\n")
    assert "prot" in _failed(_cli_env(tmp_path, TESSERA_CONFIG=str(config)).cli("config"))


def test_declared_client_with_a_short_secret_is_refused(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "tessera.toml"
    config.write_text('[[clients]]\nclient_id = "short"\nclient_secret = "too-short"\n')
    msg = _failed(_cli_env(tmp_path, TESSERA_CONFIG=str(config)).cli("init"))
    assert "clients.short: client_secret must be at least 32 characters" in msg


# -- clients declared in the config file ---------------------------------------------------------------------


def test_config_file_clients_are_synced_on_start(tmp_path: pathlib.Path) -> None:
    secret = secrets.token_urlsafe(32)
    hashed_secret = secrets.token_urlsafe(32)
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'[[clients]]\nclient_id = "svc-plain"\ntoken_endpoint_auth_method = "client_secret_basic"\n'
        f'client_secret = "{secret}"\nscope = "read"\n\n'
        f'[[clients]]\nclient_id = "svc-hashed"\ntoken_endpoint_auth_method = "client_secret_basic"\n'
        f'client_secret_sha256 = "{hashlib.sha256(hashed_secret.encode()).hexdigest()}"\n'
    )
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_CONFIG": str(config)}).start()
    try:
        r = _token(srv, "svc-plain", secret)
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "read"
        assert _token(srv, "svc-hashed", hashed_secret).status_code == 200
        assert _token(srv, "svc-plain", secret + "x").status_code == 401
        shown = json.loads(_ok(srv.cli("clients", "show", "svc-plain")))
        assert shown["source"] == "config" and "client_secret" not in shown

        srv.stop()
        config.write_text(
            f'[[clients]]\nclient_id = "svc-hashed"\ntoken_endpoint_auth_method = "client_secret_basic"\n'
            f'client_secret_sha256 = "{hashlib.sha256(hashed_secret.encode()).hexdigest()}"\nscope = "write"\n'
        )
        srv.start()
        r = _token(srv, "svc-plain", secret)
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
        r = _token(srv, "svc-hashed", hashed_secret)
        assert r.status_code == 200 and r.json()["scope"] == "write"
        listed = {row["client_id"] for row in map(json.loads, _ok(srv.cli("clients", "list")).splitlines())}
        assert listed == {"svc-hashed"}
    finally:
        srv.stop()

    export = _ok(srv.cli("audit", "export"))
    events = [
        (rec["event"], rec["subject"])
        for rec in map(json.loads, export.splitlines())
        if rec["actor"] == "config" and rec["event"].startswith("client.")
    ]
    assert events == [
        ("client.declared", "svc-plain"),
        ("client.declared", "svc-hashed"),
        ("client.updated", "svc-hashed"),
        ("client.deleted", "svc-plain"),
    ]
    assert secret not in export and hashlib.sha256(secret.encode()).hexdigest() not in export
    assert "audit chain ok" in _ok(srv.cli("audit", "verify"))
