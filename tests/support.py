"""Test support: a live `tessera serve` process on loopback, a real PostgreSQL, JOSE helpers.

Assertions are built with `cryptography` alone, so nothing of the code under test helps forge them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TESSERA = str(pathlib.Path(sys.executable).parent / "tessera")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`tessera serve` in a subprocess, configured only through TESSERA_ environment variables."""

    def __init__(
        self, data_dir: pathlib.Path, *, extra_env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_urlsafe(24)
        self.reg_token = secrets.token_urlsafe(24)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        self.env.update(
            {
                "TESSERA_ISSUER": self.issuer,
                "TESSERA_DATA_DIR": str(data_dir),
                "TESSERA_HOST": "127.0.0.1",
                "TESSERA_PORT": str(self.port),
                "TESSERA_ADMIN_TOKEN": self.admin_token,
                "TESSERA_REGISTRATION_TOKEN": self.reg_token,
                "TESSERA_LOG_LEVEL": "warning",
            }
        )
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/oauth/token"

    def cli(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TESSERA, *argv], env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, wait: float = 40) -> LiveServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [TESSERA, "serve"],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("tessera serve exited: " + self.log.read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("tessera serve did not answer in time: " + self.log.read_text()[-2000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.issuer + "/admin", timeout=10, headers={"Authorization": f"Bearer {self.admin_token}"}
        )

    def register(self, **metadata: Any) -> dict[str, Any]:
        md = {
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "read write",
        }
        md.update(metadata)
        r = httpx.post(
            self.issuer + "/oauth/register", json=md, timeout=10, headers={"Authorization": f"Bearer {self.reg_token}"}
        )
        assert r.status_code == 201, r.text
        return r.json()


# -- JOSE helpers built on cryptography only ------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str | None = None) -> dict[str, str]:
    n = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}
    if kid:
        jwk["kid"] = kid
    return jwk


def sign_es256(header: dict[str, Any], claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    si = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(si.encode(), ec.ECDSA(hashes.SHA256())))
    return si + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def client_assertion(
    key: ec.EllipticCurvePrivateKey,
    client_id: str,
    aud: str,
    *,
    kid: str | None = "k1",
    lifetime: int = 60,
    now: float | None = None,
    **overrides: Any,
) -> str:
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": int(now),
        "exp": int(now) + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": "ES256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return sign_es256(header, claims, key)


# -- PostgreSQL ------------------------------------------------------------------------------------


class Postgres:
    """A throwaway PostgreSQL cluster (Debian's binaries), or the one named by TESSERA_TEST_POSTGRES_URL."""

    def __init__(self) -> None:
        self.url = os.environ.get("TESSERA_TEST_POSTGRES_URL")
        self.dir: pathlib.Path | None = None
        self.port = 0
        self._as: list[str] = []

    def _bin(self, name: str) -> str:
        for cand in sorted(pathlib.Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
            return str(cand)
        found = shutil.which(name)
        if not found:
            raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
        return found

    def start(self) -> str:
        if self.url:
            return self.url
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tessera-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        subprocess.run(
            [
                *self._as,
                self._bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *self._as,
                self._bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.dir / "log"),
                "-w",
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self.url

    def create_database(self) -> str:
        import psycopg

        base = self.start()
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return base.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.dir is not None:
            subprocess.run(
                [*self._as, self._bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
                capture_output=True,
            )
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# -- shared assertions and admin look-ups ---------------------------------------------------------


def assert_oauth_error(r: httpx.Response, status: int, error: str) -> None:
    """An RFC 6749 §5.2 error response: status, error code, no-store, and the Basic challenge for invalid_client."""
    assert r.status_code == status, r.text
    assert r.json()["error"] == error, r.text
    assert r.headers["cache-control"] == "no-store"
    if error == "invalid_client":
        assert r.headers["www-authenticate"].startswith("Basic realm=")


def keys_by_state(srv: LiveServer) -> dict[str, list[dict[str, Any]]]:
    """The server's signing keys (admin API), grouped by lifecycle state."""
    with srv.admin() as admin:
        r = admin.get("/keys")
    assert r.status_code == 200, r.text
    out: dict[str, list[dict[str, Any]]] = {}
    for k in r.json():
        out.setdefault(k["state"], []).append(k)
    return out
