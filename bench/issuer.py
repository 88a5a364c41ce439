"""Issuer benchmark: client_credentials on one pinned core, Tessera against its peer.

For each target (Tessera, then node-oidc-provider as the peer) and each client
authentication method (client_secret_basic, private_key_jwt) this starts the
server pinned to CPU 0, creates the clients, checks one token request by hand,
warms up, and measures with wrk pinned to CPU 1. The results are printed next to
the crypto floor (bench/floor.py, the same signatures with `cryptography` on CPU 0)
and as ratios against the peer measured in the same run, and written to
bench/results/issuer.json.

Run from the repository root with the project's Python (where `tessera` is
installed): ``python bench/issuer.py [--duration 10] [--connections 32] [--repeat 3]
[--only tessera|peer] [--auth basic|pkjwt]``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer"
LUA_SCRIPT = BENCH_DIR / "wrk" / "token.lua"
RESULTS_FILE = BENCH_DIR / "results" / "issuer.json"

HOST = "127.0.0.1"
SERVER_CPU = 0
LOAD_CPU = 1
TARGET_RATIO = 1.2
AUTH_METHODS = {"basic": "client_secret_basic", "pkjwt": "private_key_jwt"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ES256 = ec.ECDSA(hashes.SHA256())
# Assertions per second of run time to pre-generate, as a multiple of the crypto
# floor for private_key_jwt (no single-core server can verify faster than that).
ASSERTION_HEADROOM = 1.5
# A run is flagged when other work (other processes, hypervisor steal) took more than
# this share of the server's core while it was measured.
INTERFERENCE_LIMIT = 0.10


class BenchError(Exception):
    """A setup step failed; the message says what to do."""


class SkipTarget(Exception):
    """A target cannot run on this machine (not installed); the others still run."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- JOSE helpers (cryptography only) ---------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }


def sign_jwt(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}"
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ES256))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _assertion_batch(pem: bytes, kid: str, client_id: str, aud: str, exp: int, count: int) -> list[str]:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    prefix = secrets.token_urlsafe(12)
    now = int(time.time())
    return [
        sign_jwt(
            key,
            header,
            {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": exp, "jti": f"{prefix}.{i}"},
        )
        for i in range(count)
    ]


@dataclass
class ClientKey:
    """The private_key_jwt client's ES256 key pair."""

    key: ec.EllipticCurvePrivateKey
    kid: str

    @classmethod
    def generate(cls) -> ClientKey:
        return cls(ec.generate_private_key(ec.SECP256R1()), f"bench-{secrets.token_hex(4)}")

    @property
    def jwk(self) -> dict[str, str]:
        return public_jwk(self.key, self.kid)

    def assertion(self, client_id: str, aud: str, lifetime: int = 300) -> str:
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        return sign_jwt(self.key, {"alg": "ES256", "typ": "JWT", "kid": self.kid}, claims)

    def write_assertions(self, path: Path, count: int, client_id: str, aud: str, lifetime: int) -> None:
        """Write `count` single-use assertions, one a line, signed on all cores."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        exp = int(time.time()) + lifetime
        workers = max(1, os.cpu_count() or 1)
        chunk = 5000
        sizes = [min(chunk, count - start) for start in range(0, count, chunk)]
        with ProcessPoolExecutor(max_workers=workers) as pool, path.open("w") as out:
            futures = [pool.submit(_assertion_batch, pem, self.kid, client_id, aud, exp, n) for n in sizes]
            for future in futures:
                out.write("\n".join(future.result()))
                out.write("\n")


def check_access_token(token: str, jwks: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for `token` as an ES256 JWT access token that verifies with `jwks`."""
    parts = token.split(".")
    if len(parts) != 3:
        return [f"access token is not a compact JWS ({len(parts)} parts)"], []
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        return [f"access token does not decode: {exc}"], []
    warnings: list[str] = []
    if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
        warnings.append(f"access token typ is {header.get('typ')!r}, not at+jwt (RFC 9068)")
    if header.get("alg") != "ES256":
        return [f"access token alg is {header.get('alg')!r}, not ES256"], warnings
    if not isinstance(claims, dict) or "exp" not in claims:
        return ["access token has no exp claim"], warnings
    if len(signature) != 64:
        return [f"ES256 signature is {len(signature)} bytes, not 64"], warnings
    keys = [
        k
        for k in jwks.get("keys", [])
        if k.get("kty") == "EC" and k.get("crv") == "P-256" and ("kid" not in header or k.get("kid") == header["kid"])
    ]
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    for jwk in keys:
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64url_decode(jwk["x"]), "big"),
            int.from_bytes(b64url_decode(jwk["y"]), "big"),
            ec.SECP256R1(),
        ).public_key()
        try:
            public.verify(der, signing_input, ES256)
            return [], warnings
        except InvalidSignature:
            continue
    if not keys:
        return [f"no P-256 key with kid {header.get('kid')!r} in the server's JWKS"], warnings
    return ["access token signature does not verify with the server's JWKS"], warnings


def basic_authorization(client_id: str, client_secret: str) -> str:
    """An RFC 6749 §2.3.1 Basic header: form-urlencode both parts, then base64."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


# --- servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Clients:
    basic_id: str
    basic_secret: str
    pkjwt_id: str


@dataclass
class Endpoints:
    issuer: str
    token: str
    jwks: dict[str, Any]


class Target(Protocol):
    name: str
    version: str | None
    endpoints: Endpoints | None
    process: Process | None

    def prepare(self) -> None: ...
    def start(self, workdir: Path, client_key: ClientKey) -> None: ...
    def clients(self) -> Clients: ...
    def stop(self) -> None: ...

    @property
    def base_url(self) -> str: ...


class Process:
    """A server subprocess pinned to SERVER_CPU, in its own process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, logfile: Path) -> None:
        self.name = name
        self.logfile = logfile
        self._log = logfile.open("wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), *argv],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.logfile.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, url: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll `url` until it answers 200 with JSON; return that JSON."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with status {self.proc.returncode} before it was ready; "
                        f"its output:\n{self.log_tail()}"
                    )
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        return dict(response.json())
                    last = f"HTTP {response.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    last = str(exc) or type(exc).__name__
                time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f}s at {url} ({last}); log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)  # the group this runner created for it
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def discover(process: Process, base_url: str) -> tuple[dict[str, Any], Endpoints]:
    metadata = process.wait_ready(f"{base_url}/.well-known/openid-configuration")
    for key in ("issuer", "token_endpoint", "jwks_uri"):
        if not metadata.get(key):
            raise BenchError(f"{process.name}: discovery document has no {key}")
    jwks = httpx.get(metadata["jwks_uri"], timeout=5.0).json()
    return metadata, Endpoints(metadata["issuer"], metadata["token_endpoint"], jwks)


class Tessera:
    """`tessera serve` from the running Python's environment; clients via RFC 7591."""

    name = "tessera"

    def __init__(self) -> None:
        self.executable = Path(sys.executable).parent / "tessera"
        self.version: str | None = None
        self.port = 0
        self.process: Process | None = None
        self.endpoints: Endpoints | None = None
        self._metadata: dict[str, Any] = {}
        self._registration_token = ""
        self._client_key: ClientKey | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def prepare(self) -> None:
        if not self.executable.exists():
            raise SkipTarget(
                f"no `tessera` command next to {sys.executable}; run this with the project's venv "
                "python after installing the project (e.g. `pip install -e .`)"
            )
        try:
            from importlib.metadata import PackageNotFoundError, version

            self.version = version("tessera")
        except PackageNotFoundError:
            self.version = None

    def start(self, workdir: Path, client_key: ClientKey) -> None:
        self.port = free_port()
        self._client_key = client_key
        self._registration_token = secrets.token_urlsafe(32)
        data_dir = workdir / "tessera-data"
        data_dir.mkdir()
        env = {
            **os.environ,
            "TESSERA_ISSUER": self.base_url,
            "TESSERA_HOST": HOST,
            "TESSERA_PORT": str(self.port),
            "TESSERA_DATA_DIR": str(data_dir),
            "TESSERA_ADMIN_TOKEN": secrets.token_urlsafe(32),
            "TESSERA_REGISTRATION_TOKEN": self._registration_token,
        }
        self.process = Process(self.name, [str(self.executable), "serve"], env, workdir, workdir / "tessera.log")
        self._metadata, self.endpoints = discover(self.process, self.base_url)

    def _register(self, http: httpx.Client, url: str, metadata: dict[str, Any]) -> dict[str, Any]:
        response = http.post(url, json=metadata, headers={"Authorization": f"Bearer {self._registration_token}"})
        if response.status_code != 201:
            raise BenchError(
                f"tessera: registering a {metadata['token_endpoint_auth_method']} client answered "
                f"{response.status_code}: {response.text[:500]}"
            )
        return dict(response.json())

    def clients(self) -> Clients:
        url = self._metadata.get("registration_endpoint")
        if not url:
            raise BenchError("tessera: discovery document has no registration_endpoint")
        assert self._client_key is not None
        common = {"grant_types": ["client_credentials"], "scope": "read"}
        with httpx.Client(timeout=10.0) as http:
            basic = self._register(http, url, {**common, "token_endpoint_auth_method": "client_secret_basic"})
            pkjwt = self._register(
                http,
                url,
                {
                    **common,
                    "token_endpoint_auth_method": "private_key_jwt",
                    "jwks": {"keys": [self._client_key.jwk]},
                },
            )
        if not basic.get("client_secret"):
            raise BenchError("tessera: the client_secret_basic registration returned no client_secret")
        return Clients(str(basic["client_id"]), str(basic["client_secret"]), str(pkjwt["client_id"]))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


class OidcProvider:
    """node-oidc-provider (bench/peer/server.mjs) with static clients and its memory adapter."""

    name = "oidc-provider"

    def __init__(self) -> None:
        self.version: str | None = None
        self.node_version: str | None = None
        self.port = 0
        self.process: Process | None = None
        self.endpoints: Endpoints | None = None
        self._clients: Clients | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def prepare(self) -> None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if not node or not npm:
            raise SkipTarget("node and npm are needed for the oidc-provider peer (Node.js 20.19 or later)")
        self.node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        package = PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
        if not package.exists():
            command = "ci" if (PEER_DIR / "package-lock.json").exists() else "install"
            log(f"installing oidc-provider: npm {command} in {PEER_DIR}")
            done = subprocess.run(
                [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=PEER_DIR,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0 or not package.exists():
                raise SkipTarget(f"npm {command} failed in {PEER_DIR}:\n{done.stdout}{done.stderr}")
        self.version = json.loads(package.read_text())["version"]

    def start(self, workdir: Path, client_key: ClientKey) -> None:
        self.port = free_port()
        self._clients = Clients(
            basic_id=f"bench-basic-{secrets.token_hex(4)}",
            basic_secret=secrets.token_urlsafe(32),
            pkjwt_id=f"bench-pkjwt-{secrets.token_hex(4)}",
        )
        config = {
            "port": self.port,
            "basic": {"client_id": self._clients.basic_id, "client_secret": self._clients.basic_secret},
            "pkjwt": {"client_id": self._clients.pkjwt_id, "jwk": client_key.jwk},
        }
        config_path = workdir / "peer-config.json"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "NODE_ENV": "production"}
        node = shutil.which("node") or "node"
        argv = [node, str(PEER_DIR / "server.mjs"), str(config_path)]
        self.process = Process(self.name, argv, env, PEER_DIR, workdir / "peer.log")
        _, self.endpoints = discover(self.process, self.base_url)

    def clients(self) -> Clients:
        assert self._clients is not None
        return self._clients

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


# --- load generation -----------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    wrapped: int

    @property
    def non_2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise BenchError(f"wrk output has no match for {pattern!r}:\n{output}")
        return match

    total = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    statuses: dict[int, int] = {}
    for pair in find(r"^BENCH statuses(.*)$").group(1).split():
        status, count = pair.split("=")
        statuses[int(status)] = int(count)
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errors:
        socket_errors = dict(zip(socket_errors, map(int, errors.groups()), strict=True))
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2) + total.group(3)) / 1e3,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_duration_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_duration_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        statuses=statuses,
        socket_errors=socket_errors,
        wrapped=int(find(r"^BENCH wrapped (\d+)").group(1)),
    )


def run_wrk(url: str, script_args: list[str], seconds: float, connections: int) -> WrkResult:
    argv = [
        "taskset", "-c", str(LOAD_CPU),
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency",
        "-s", str(LUA_SCRIPT), url, "--", *script_args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def ensure_wrk() -> str:
    """wrk's version line; installs Debian's wrk when missing and running as root."""
    if not shutil.which("wrk"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BenchError("wrk is not installed: install it (Debian/Ubuntu: `apt-get install -y wrk`) and rerun")
        log("installing wrk with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

        def apt(*args: str) -> int:
            return subprocess.run(
                ["apt-get", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ).returncode

        if apt("install", "-y", "wrk") != 0:
            apt("update")
            if apt("install", "-y", "wrk") != 0:
                raise BenchError("`apt-get install -y wrk` failed: install wrk by hand and rerun")
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).splitlines()[0].strip()


def check_machine() -> None:
    if not shutil.which("taskset"):
        raise BenchError("taskset is missing (Debian package util-linux)")
    cpus = os.sched_getaffinity(0)
    if not {SERVER_CPU, LOAD_CPU} <= cpus:
        raise BenchError(f"need CPUs {SERVER_CPU} and {LOAD_CPU} (server and load generator); have {sorted(cpus)}")


def measure_floor(seconds: float) -> dict[str, float]:
    argv = ["taskset", "-c", str(SERVER_CPU), sys.executable, str(BENCH_DIR / "floor.py"), "--json"]
    done = subprocess.run([*argv, "--seconds", str(seconds)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"bench/floor.py failed:\n{done.stderr}")
    return {name: float(value) for name, value in json.loads(done.stdout).items()}


# --- the runs ------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    auth: str
    status: str = "ok"  # ok | flagged | failed | skipped
    note: str = ""
    flags: list[str] = field(default_factory=list)  # errors | wrapped | interference
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int | None = None
    errors: int | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    server_cpu: float | None = None
    other_cpu: float | None = None
    repeats_rps: list[float] = field(default_factory=list)
    ratio_vs_peer: float | None = None
    ratio_vs_floor: float | None = None


@dataclass
class Settings:
    duration: float
    warmup: float
    connections: int
    assertions: int | None
    repeat: int
    floor: dict[str, float]


def check_token_request(target: Target, endpoints: Endpoints, clients: Clients, auth: str, key: ClientKey) -> None:
    """One token request by hand: 200 and an ES256 JWT that verifies with the JWKS."""
    data = {"grant_type": "client_credentials", "scope": "read"}
    headers = {"Accept": "application/json"}
    if auth == "basic":
        headers["Authorization"] = basic_authorization(clients.basic_id, clients.basic_secret)
    else:
        data["client_assertion_type"] = ASSERTION_TYPE
        data["client_assertion"] = key.assertion(clients.pkjwt_id, endpoints.token)
    response = httpx.post(endpoints.token, data=data, headers=headers, timeout=10.0)
    if response.status_code != 200:
        raise BenchError(f"token request answered {response.status_code}: {response.text[:500]}")
    token = response.json().get("access_token")
    if not isinstance(token, str):
        raise BenchError(f"token response has no access_token: {response.text[:500]}")
    errors, warnings = check_access_token(token, endpoints.jwks)
    for warning in warnings:
        log(f"{target.name}/{auth}: warning: {warning}")
    if errors:
        raise BenchError("; ".join(errors))


@dataclass
class CpuSample:
    """CPU seconds used so far by the server's process group and by core SERVER_CPU."""

    server: float
    core_busy: float
    core_total: float

    @classmethod
    def take(cls, pgid: int) -> CpuSample:
        ticks = os.sysconf("SC_CLK_TCK")
        server = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
                server += int(fields[11]) + int(fields[12])
        core = next(
            line for line in Path("/proc/stat").read_text().splitlines() if line.startswith(f"cpu{SERVER_CPU} ")
        )
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, core.split()[1:9])
        busy = user + nice + system + irq + softirq + steal
        return cls(server / ticks, busy / ticks, (busy + idle + iowait) / ticks)


@dataclass
class Measurement:
    wrk: WrkResult
    server_cpu: float  # share of one core the server used while measured
    other_cpu: float  # share of core SERVER_CPU used by anything else (incl. steal)


def measure_once(url: str, script_args: list[str], cfg: Settings, pgid: int) -> Measurement:
    before, t0 = CpuSample.take(pgid), time.monotonic()
    result = run_wrk(url, script_args, cfg.duration, cfg.connections)
    after, wall = CpuSample.take(pgid), time.monotonic() - t0
    server = after.server - before.server
    core_total = max(after.core_total - before.core_total, 1e-9)
    other = max(0.0, (after.core_busy - before.core_busy) - server) / core_total
    return Measurement(result, server / wall, other)


def measure_auth(
    target: Target,
    endpoints: Endpoints,
    clients: Clients,
    auth: str,
    key: ClientKey,
    workdir: Path,
    cfg: Settings,
) -> Run:
    run = Run(target.name, AUTH_METHODS[auth])
    check_token_request(target, endpoints, clients, auth, key)
    assert target.process is not None
    pgid = target.process.proc.pid  # its own session and process group (start_new_session)

    def script_args(phase: str, seconds: float) -> list[str]:
        if auth == "basic":
            return ["basic", basic_authorization(clients.basic_id, clients.basic_secret)]
        per_second = max(cfg.floor["pkjwt"], warm_rps) * ASSERTION_HEADROOM
        count = math.ceil(per_second * max(1, round(seconds))) + 1000
        if phase != "warmup" and cfg.assertions:
            count = cfg.assertions
        path = workdir / f"assertions-{target.name}-{phase}.txt"
        t0 = time.monotonic()
        lifetime = max(300, int(seconds) + 240)
        key.write_assertions(path, count, clients.pkjwt_id, endpoints.token, lifetime)
        log(f"{target.name}/pkjwt: {count} assertions for the {phase} in {time.monotonic() - t0:.1f}s")
        return ["pkjwt", str(path)]

    warm_rps = 0.0
    if cfg.warmup > 0:
        warm = run_wrk(endpoints.token, script_args("warmup", cfg.warmup), cfg.warmup, cfg.connections)
        log(f"{target.name}/{auth}: warm-up {warm.rps:,.0f} req/s, {warm.errors} errors")
        warm_rps = warm.rps
    measurements = []
    for i in range(cfg.repeat):
        m = measure_once(endpoints.token, script_args(f"run{i + 1}", cfg.duration), cfg, pgid)
        log(
            f"{target.name}/{auth}: run {i + 1}/{cfg.repeat}: {m.wrk.rps:,.0f} req/s, "
            f"p50 {m.wrk.p50_ms:.2f} ms, p99 {m.wrk.p99_ms:.2f} ms, {m.wrk.errors} errors, "
            f"server CPU {m.server_cpu:.0%}, other load on CPU {SERVER_CPU} {m.other_cpu:.0%}"
        )
        measurements.append(m)
    # The median run by req/s stands for the set (the only run when --repeat is 1),
    # taken among the runs without interference on the server's core if there are any.
    clean = [m for m in measurements if m.other_cpu <= INTERFERENCE_LIMIT]
    pool = sorted(clean or measurements, key=lambda m: m.wrk.rps)
    chosen = pool[(len(pool) - 1) // 2]
    result = chosen.wrk
    run.rps, run.p50_ms, run.p99_ms = result.rps, result.p50_ms, result.p99_ms
    run.requests, run.errors = result.requests, sum(m.wrk.errors for m in measurements)
    run.statuses, run.socket_errors = result.statuses, result.socket_errors
    run.server_cpu, run.other_cpu = chosen.server_cpu, chosen.other_cpu
    run.repeats_rps = [m.wrk.rps for m in measurements]
    notes = []
    if run.errors:
        statuses: dict[int, int] = {}
        sockets: dict[str, int] = {}
        for m in measurements:
            for status, n in m.wrk.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
            for kind, n in m.wrk.socket_errors.items():
                sockets[kind] = sockets.get(kind, 0) + n
        codes = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()) if not 200 <= s < 300)
        socket_text = ", ".join(f"{k}: {n}" for k, n in sockets.items() if n)
        notes.append("errors (" + "; ".join(filter(None, [codes, socket_text])) + ")")
        run.flags.append("errors")
    if any(m.wrk.wrapped for m in measurements):
        notes.append("ran out of pre-generated assertions (raise --assertions)")
        run.flags.append("wrapped")
    if not clean:
        run.flags.append("interference")
        notes.append(
            f"CPU {SERVER_CPU} was {run.other_cpu:.0%} busy with other work (interference: rerun on a quiet machine)"
        )
    elif len(clean) < len(measurements):
        notes.append(f"{len(measurements) - len(clean)} of {len(measurements)} runs left out (interference)")
    run.note = "; ".join(notes)
    if run.flags:
        run.status = "flagged"
    return run


@contextmanager
def started(target: Target, workdir: Path, key: ClientKey) -> Iterator[None]:
    try:
        target.start(workdir, key)
        yield
    finally:
        target.stop()


def bench_target(target: Target, auths: list[str], key: ClientKey, cfg: Settings) -> list[Run]:
    try:
        target.prepare()
    except SkipTarget as exc:
        log(f"skipping {target.name}: {exc}")
        return [Run(target.name, AUTH_METHODS[a], status="skipped", note=str(exc).splitlines()[0]) for a in auths]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{target.name}-") as tmp:
        workdir = Path(tmp)
        try:
            with started(target, workdir, key):
                endpoints = target.endpoints
                assert endpoints is not None
                log(f"{target.name} ready at {target.base_url}, token endpoint {endpoints.token}")
                clients = target.clients()
                for auth in auths:
                    try:
                        runs.append(measure_auth(target, endpoints, clients, auth, key, workdir, cfg))
                    except BenchError as exc:
                        log(f"{target.name}/{auth} failed: {exc}")
                        runs.append(Run(target.name, AUTH_METHODS[auth], status="failed", note=str(exc)[:300]))
        except BenchError as exc:
            log(f"{target.name} failed: {exc}")
            done = {r.auth for r in runs}
            runs += [
                Run(target.name, AUTH_METHODS[a], status="failed", note=str(exc).splitlines()[0][:300])
                for a in auths
                if AUTH_METHODS[a] not in done
            ]
    return runs


# --- report --------------------------------------------------------------------------


def add_ratios(runs: list[Run], floor: dict[str, float], peers: set[str]) -> None:
    for run in runs:
        if run.rps is None:
            continue
        short = next(k for k, v in AUTH_METHODS.items() if v == run.auth)
        run.ratio_vs_floor = run.rps / floor[short]
        best = max(
            (p.rps for p in runs if p.target in peers and p.auth == run.auth and p.rps and p.status == "ok"),
            default=None,
        )
        if best:
            run.ratio_vs_peer = run.rps / best


def verdict(runs: list[Run], auths: list[str], peers: set[str]) -> tuple[bool | None, str]:
    """Whether Tessera meets the target for every method: True, False, or None (not decidable)."""
    parts = []
    outcomes: list[bool | None] = []
    for auth in (AUTH_METHODS[a] for a in auths):
        ours = next((r for r in runs if r.target == "tessera" and r.auth == auth), None)
        peer_runs = [r for r in runs if r.target in peers and r.auth == auth]
        outcome: bool | None = None
        if ours is None or ours.rps is None:
            text = "Tessera " + ("not run" if ours is None else ours.status)
        elif not any(r.rps is not None for r in peer_runs):
            text = "peer " + ("not run" if not peer_runs else "/".join(sorted({r.status for r in peer_runs})))
        elif ours.ratio_vs_peer is None:
            text = "no clean peer run (interference or errors)"
        else:
            ratio = ours.ratio_vs_peer
            text = f"{ratio:.2f}x {'>=' if ratio >= TARGET_RATIO else '<'} {TARGET_RATIO}x"
            if ratio < TARGET_RATIO or {"errors", "wrapped"} & set(ours.flags):
                outcome = False
            elif ours.flags:
                outcome = None
            else:
                outcome = True
            if ours.flags:
                text += " (Tessera run flagged: " + ", ".join(ours.flags) + ")"
        parts.append(f"{auth}: {text}")
        outcomes.append(outcome)
    met: bool | None = False if False in outcomes else None if None in outcomes else True
    word = {True: "MEETS", False: "DOES NOT MEET", None: "NOT SHOWN TO MEET"}[met]
    head = f"Tessera {word} the target (>= {TARGET_RATIO}x the peer's req/s per auth method): "
    return met, head + "; ".join(parts)


def render_table(runs: list[Run]) -> str:
    header = [
        "target",
        "auth",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "vs peer",
        "vs crypto floor",
        "server cpu",
        "note",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        [
            run.target,
            run.auth,
            fmt(run.rps, ",.0f"),
            fmt(run.p50_ms, ".2f"),
            fmt(run.p99_ms, ".2f"),
            "-" if run.errors is None else str(run.errors),
            fmt(run.ratio_vs_peer, ".2f") + ("x" if run.ratio_vs_peer is not None else ""),
            fmt(run.ratio_vs_floor, ".3f") + ("x" if run.ratio_vs_floor is not None else ""),
            fmt(run.server_cpu, ".0%"),
            run.status if run.status != "ok" else "",
        ]
        for run in runs
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8}

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), "-+-".join("-" * w for w in widths), *map(line, rows)]
    notes = [f"  {r.target}/{r.auth}: {r.note}" for r in runs if r.note]
    return "\n".join(out + (["notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="client_credentials benchmark: Tessera vs node-oidc-provider")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load per run (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--only", choices=["tessera", "peer"], help="run one target only")
    parser.add_argument("--auth", choices=list(AUTH_METHODS), help="one client authentication method only")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per server and method; the median is kept")
    parser.add_argument("--assertions", type=int, help="private_key_jwt assertions to pre-generate per run")
    parser.add_argument("--floor-seconds", type=float, default=2.0, help="seconds per crypto floor (default 2)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"JSON results (default {RESULTS_FILE})")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.duration < 1 or args.connections < 1:
        parser.error("--repeat, --duration and --connections must be at least 1")
    auths = [args.auth] if args.auth else list(AUTH_METHODS)

    try:
        check_machine()
        wrk_version = ensure_wrk()
        log(f"crypto floor on CPU {SERVER_CPU} ...")
        floor = measure_floor(args.floor_seconds)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    cfg = Settings(args.duration, args.warmup, args.connections, args.assertions, args.repeat, floor)
    tessera, peer = Tessera(), OidcProvider()
    targets: list[Target] = [t for t in (tessera, peer) if args.only in (None, "peer" if t is peer else t.name)]
    peers = {peer.name}
    key = ClientKey.generate()
    runs: list[Run] = []
    for target in targets:
        runs += bench_target(target, auths, key, cfg)
    add_ratios(runs, floor, peers)
    met, verdict_line = verdict(runs, auths, peers)

    print()
    print(
        f"client_credentials, 1 server process on CPU {SERVER_CPU}, "
        f"wrk 1 thread x {args.connections} connections on CPU {LOAD_CPU}, "
        f"{args.duration:g}s after {args.warmup:g}s warm-up"
        + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    print(
        f"crypto floor (cryptography, 1 core): client_secret_basic {floor['basic']:,.0f} ops/s "
        f"(sha256 + ES256 sign), private_key_jwt {floor['pkjwt']:,.0f} ops/s (ES256 verify + sign)"
    )
    print()
    print(render_table(runs))
    print()
    print(verdict_line)

    report = {
        "benchmark": "issuer client_credentials",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "repeat": args.repeat,
            "wrk_threads": 1,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
        },
        "versions": {
            "wrk": wrk_version,
            "tessera": tessera.version,
            "oidc-provider": peer.version,
            "node": peer.node_version,
            "cryptography": _version("cryptography"),
            "httpx": _version("httpx"),
        },
        "floor_ops_per_s": floor,
        "runs": [asdict(run) for run in runs],
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "verdict": verdict_line,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results written to {args.output}")
    return 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The results as rows for ``bench/summary.py`` (one shape for every benchmark)."""
    rows = []
    for run in report["runs"]:
        if run["rps"] is None:
            continue
        name = f"{run['target']} client_credentials, {run['auth']}"
        note = "; ".join(x for x in (run["status"] if run["status"] != "ok" else "", run.get("note", "")) if x)
        floor = report["floor_ops_per_s"]["basic" if run["auth"] == "client_secret_basic" else "pkjwt"]
        rows.append(
            dict(
                measure=name,
                value=run["rps"],
                unit="req/s",
                baseline="crypto floor",
                baseline_unit="ops/s",
                baseline_value=floor,
                ratio=run["rps"] / floor,
                note=note,
            )
        )
        if run["target"] == "tessera" and run.get("ratio_vs_peer"):
            peer = run["rps"] / run["ratio_vs_peer"]
            rows.append(
                dict(
                    measure=name,
                    value=run["rps"],
                    unit="req/s",
                    baseline="node-oidc-provider",
                    baseline_value=peer,
                    ratio=run["ratio_vs_peer"],
                    note="target >= 1.2x",
                )
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
