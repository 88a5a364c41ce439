"""Token-exchange benchmark: RFC 8693 requests per second on one pinned core.

An external identity token in (a GitHub-Actions-shaped RS256 JWT from a fake OpenID
issuer served by this process on 127.0.0.1), a Tessera access token (ES256, RFC 9068)
out, as an anonymous POST to the token endpoint:

    grant_type=urn:ietf:params:oauth:grant-type:token-exchange
    subject_token=<JWT>  subject_token_type=urn:ietf:params:oauth:token-type:jwt

Two variants, each against a fresh server:

* ``reuse``: ``jti_replay`` off (the default): every request carries the same token;
* ``distinct``: ``jti_replay`` on (the stricter production setting): every request
  carries its own pre-minted token, whose jti the server records as used.

The server runs pinned to CPU 0, wrk (bench/wrk/exchange.lua) on CPU 1. Each figure is
printed beside the crypto floor for this request (bench/floor.py --mode token_exchange:
one RS256 verification + one ES256 signature, on CPU 0) and the cost of the CEL
mapping (condition + attribute + subject, with the server's CEL library, in-process
on CPU 0). There is no peer: node-oidc-provider does not implement RFC 8693. Results go
to bench/results/exchange.json.

Run from the repository root with the project's Python (where `tessera` is installed):
``python bench/exchange.py [--duration 10] [--connections 32] [--repeat 3]
[--variant reuse|distinct|both]``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from issuer import (  # noqa: E402  (bench/ is not a package)
    HOST,
    INTERFERENCE_LIMIT,
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    CpuSample,
    Process,
    WrkResult,
    _version,
    b64url,
    b64url_decode,
    check_access_token,
    check_machine,
    discover,
    ensure_wrk,
    free_port,
    log,
    parse_wrk,
)

LUA_SCRIPT = BENCH_DIR / "wrk" / "exchange.lua"
RESULTS_FILE = BENCH_DIR / "results" / "exchange.json"

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TRUST_NAME = "ci"
EXTERNAL_AUDIENCE = "tessera"
REPOSITORY = "octo-org/octo-repo"
EXPECTED_SUB = f"{TRUST_NAME}/repo:{REPOSITORY}:ref:refs/heads/main"
CONDITION = "assertion.repository_owner_id == '1234567'"
ATTRIBUTES = {"repo": "assertion.repository"}
SUBJECT = "assertion.sub"  # the trust configuration's default subject mapping
BINDINGS = [{"audiences": ["https://api.example"], "scopes": ["deploy"], "max_lifetime": 300}]
VARIANTS = {"reuse": False, "distinct": True}  # variant -> jti_replay
# Subject tokens to pre-mint per second of a `distinct` run, as a multiple of the best
# rate seen so far (RS256 signing is ~1-2 ms, so the crypto floor would be far too many).
TOKEN_HEADROOM = 1.5
# Assumed rate for the first `distinct` warm-up when no `reuse` figure is known yet.
FIRST_GUESS_RPS = 2000.0
PEER_NOTE = (
    "no peer: node-oidc-provider (the peer of bench/issuer.py) does not implement RFC 8693 token exchange, "
    "so there is no like-for-like implementation to compare against; the crypto floor is the only baseline"
)


# --- the fake external issuer ------------------------------------------------------------------------


def _mint_batch(pem: bytes, kid: str, claims: dict[str, Any], prefix: str, start: int, count: int) -> list[str]:
    """`count` RS256 tokens that differ only in jti (``<prefix>.<n>``); runs in a worker process."""
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}, separators=(",", ":")).encode())
    out = []
    for n in range(start, start + count):
        body = b64url(json.dumps({**claims, "jti": f"{prefix}.{n}"}, separators=(",", ":")).encode())
        signing_input = f"{head}.{body}"
        signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        out.append(f"{signing_input}.{b64url(signature)}")
    return out


class ExternalIssuer:
    """tests/federation_support.py's FakeIssuer (discovery + JWKS over real HTTP), RS256, GitHub-shaped claims."""

    def __init__(self) -> None:
        sys.path.insert(0, str(REPO_DIR / "tests"))
        try:
            from federation_support import FakeIssuer, github_actions_claims
        except ImportError as exc:
            raise BenchError(f"cannot import tests/federation_support.py ({exc}); run with the project's venv") from exc
        self._claims = github_actions_claims
        self.fake = FakeIssuer(algs=("RS256",)).start()
        self.url = self.fake.issuer

    def claims(self, lifetime: int) -> dict[str, Any]:
        now = int(time.time())
        claims = self._claims(EXTERNAL_AUDIENCE, repository=REPOSITORY)
        claims.update({"iss": self.url, "iat": now, "nbf": now - 5, "exp": now + lifetime})
        return claims

    def mint(self, lifetime: int = 300) -> str:
        claims = self.claims(lifetime)
        claims["jti"] = secrets.token_urlsafe(16)
        return str(self.fake.mint(claims))

    def write_tokens(self, path: Path, count: int, lifetime: int) -> None:
        """`count` distinct tokens (unique jti), one a line, signed on all cores."""
        key = self.fake.current_key
        pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        claims = self.claims(lifetime)
        prefix = secrets.token_urlsafe(12)
        chunk = 1000
        with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool, path.open("w") as out:
            futures = [
                pool.submit(_mint_batch, pem, key.kid, claims, prefix, start, min(chunk, count - start))
                for start in range(0, count, chunk)
            ]
            for future in futures:
                out.write("\n".join(future.result()))
                out.write("\n")

    def stop(self) -> None:
        self.fake.stop()


def trust_configuration(issuer_url: str, jti_replay: bool) -> list[dict[str, Any]]:
    trust: dict[str, Any] = {
        "name": TRUST_NAME,
        "issuer": issuer_url,
        "audiences": [EXTERNAL_AUDIENCE],
        "shared": True,
        "condition": CONDITION,
        "attributes": ATTRIBUTES,
        "bindings": BINDINGS,
    }
    if jti_replay:
        trust["jti_replay"] = True
    return [trust]


# --- the server ---------------------------------------------------------------------------------------


class TesseraServer:
    """`tessera serve` pinned to SERVER_CPU with one trusted issuer, in a fresh data directory."""

    def __init__(self, workdir: Path, issuer_url: str, jti_replay: bool) -> None:
        executable = Path(sys.executable).parent / "tessera"
        if not executable.exists():
            raise BenchError(f"no `tessera` command next to {sys.executable}; run this with the project's venv")
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        data_dir = workdir / "tessera-data"
        data_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(
            {
                "TESSERA_ISSUER": self.base_url,
                "TESSERA_HOST": HOST,
                "TESSERA_PORT": str(self.port),
                "TESSERA_DATA_DIR": str(data_dir),
                "TESSERA_ADMIN_TOKEN": secrets.token_urlsafe(32),
                "TESSERA_REGISTRATION_TOKEN": secrets.token_urlsafe(32),
                "TESSERA_DEV_MODE": "true",
                "TESSERA_TRUSTED_ISSUERS": json.dumps(trust_configuration(issuer_url, jti_replay)),
            }
        )
        self.process = Process("tessera", [str(executable), "serve"], env, workdir, workdir / "tessera.log")
        try:
            _, self.endpoints = discover(self.process, self.base_url)
        except BaseException:
            self.process.stop()
            raise

    def stop(self) -> None:
        self.process.stop()


def exchange(url: str, subject_token: str) -> httpx.Response:
    data = {"grant_type": GRANT_TYPE, "subject_token": subject_token, "subject_token_type": JWT_TYPE}
    return httpx.post(url, data=data, headers={"Accept": "application/json"}, timeout=10.0)


def check_exchange(server: TesseraServer, issuer: ExternalIssuer, variant: str) -> dict[str, Any]:
    """One exchange by hand: 200, an ES256 access token verifying with the JWKS, the expected sub.

    Then the same subject token again: accepted for `reuse`, refused as a replay for `distinct`.
    Returns the issued token's claims.
    """
    token = issuer.mint()
    response = exchange(server.endpoints.token, token)
    if response.status_code != 200:
        raise BenchError(f"{variant}: token exchange answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    access_token = body.get("access_token")
    if not isinstance(access_token, str):
        raise BenchError(f"{variant}: token response has no access_token: {response.text[:500]}")
    errors, warnings = check_access_token(access_token, server.endpoints.jwks)
    for warning in warnings:
        log(f"{variant}: warning: {warning}")
    if errors:
        raise BenchError(f"{variant}: " + "; ".join(errors))
    claims = json.loads(b64url_decode(access_token.split(".")[1]))
    if claims.get("sub") != EXPECTED_SUB:
        raise BenchError(f"{variant}: issued token's sub is {claims.get('sub')!r}, not {EXPECTED_SUB!r}")
    again = exchange(server.endpoints.token, token)
    if variant == "reuse" and again.status_code != 200:
        raise BenchError(f"reuse: the same subject token again answered {again.status_code}: {again.text[:300]}")
    if variant == "distinct" and again.status_code != 400:
        raise BenchError(
            f"distinct: a replayed subject token answered {again.status_code}, not 400 (is jti_replay on?): "
            f"{again.text[:300]}"
        )
    log(
        f"{variant}: checked: 200, sub {claims['sub']!r}, aud {claims.get('aud')!r}, scope {claims.get('scope')!r}, "
        f"expires_in {body.get('expires_in')}; same token again: {again.status_code}"
    )
    return dict(claims)


# --- load ------------------------------------------------------------------------------------------------


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


@dataclass
class Measurement:
    wrk: WrkResult
    server_cpu: float
    other_cpu: float


def measure_once(url: str, script_args: list[str], seconds: float, connections: int, pgid: int) -> Measurement:
    before, t0 = CpuSample.take(pgid), time.monotonic()
    result = run_wrk(url, script_args, seconds, connections)
    after, wall = CpuSample.take(pgid), time.monotonic() - t0
    server = after.server - before.server
    core_total = max(after.core_total - before.core_total, 1e-9)
    other = max(0.0, (after.core_busy - before.core_busy) - server) / core_total
    return Measurement(result, server / wall, other)


@dataclass
class Run:
    variant: str
    jti_replay: bool
    status: str = "ok"  # ok | flagged | failed
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
    cpu_us_per_request: float | None = None  # the server's CPU time per request (robust to a shared core)
    repeats_rps: list[float] = field(default_factory=list)
    subject_tokens_per_run: list[int] = field(default_factory=list)
    ratio_vs_floor: float | None = None
    cel_share: float | None = None
    issued_claims: dict[str, Any] = field(default_factory=dict)


def measure_variant(variant: str, issuer: ExternalIssuer, args: argparse.Namespace, known_rps: float) -> Run:
    jti_replay = VARIANTS[variant]
    run = Run(variant, jti_replay)
    with tempfile.TemporaryDirectory(prefix=f"bench-exchange-{variant}-") as tmp:
        workdir = Path(tmp)
        server = TesseraServer(workdir, issuer.url, jti_replay)
        try:
            log(f"{variant}: tessera ready at {server.base_url} (jti_replay {'on' if jti_replay else 'off'})")
            run.issued_claims = check_exchange(server, issuer, variant)
            url = server.endpoints.token
            pgid = server.process.proc.pid  # its own session and process group

            best_rps = known_rps

            def script_args(phase: str, seconds: float) -> list[str]:
                path = workdir / f"tokens-{phase}.txt"
                lifetime = max(300, int(seconds) + 240)
                if variant == "reuse":
                    path.write_text(issuer.mint(lifetime) + "\n")
                    return ["reuse", str(path)]
                rate = best_rps or FIRST_GUESS_RPS
                count = args.tokens or math.ceil(rate * TOKEN_HEADROOM * max(1, round(seconds))) + 1000
                t0 = time.monotonic()
                issuer.write_tokens(path, count, lifetime)
                log(f"{variant}: {count} subject tokens for the {phase} in {time.monotonic() - t0:.1f}s")
                if phase != "warmup":
                    run.subject_tokens_per_run.append(count)
                return ["distinct", str(path)]

            if args.warmup > 0:
                warm = run_wrk(url, script_args("warmup", args.warmup), args.warmup, args.connections)
                log(f"{variant}: warm-up {warm.rps:,.0f} req/s, {warm.errors} errors")
                best_rps = max(best_rps, warm.rps)
            measurements: list[Measurement] = []
            for i in range(args.repeat):
                m = measure_once(url, script_args(f"run{i + 1}", args.duration), args.duration, args.connections, pgid)
                log(
                    f"{variant}: run {i + 1}/{args.repeat}: {m.wrk.rps:,.0f} req/s, p50 {m.wrk.p50_ms:.2f} ms, "
                    f"p99 {m.wrk.p99_ms:.2f} ms, {m.wrk.errors} errors, server CPU {m.server_cpu:.0%}, "
                    f"other load on CPU {SERVER_CPU} {m.other_cpu:.0%}"
                )
                measurements.append(m)
                best_rps = max(best_rps, m.wrk.rps)
        finally:
            server.stop()
    summarize(run, measurements)
    return run


def summarize(run: Run, measurements: list[Measurement]) -> None:
    """The median run by req/s among those without interference (all of them if none is clean)."""
    clean = [m for m in measurements if m.other_cpu <= INTERFERENCE_LIMIT]
    pool = sorted(clean or measurements, key=lambda m: m.wrk.rps)
    chosen = pool[(len(pool) - 1) // 2]
    result = chosen.wrk
    run.rps, run.p50_ms, run.p99_ms = result.rps, result.p50_ms, result.p99_ms
    run.requests, run.errors = result.requests, sum(m.wrk.errors for m in measurements)
    run.statuses, run.socket_errors = result.statuses, result.socket_errors
    run.server_cpu, run.other_cpu = chosen.server_cpu, chosen.other_cpu
    if result.rps > 0:
        run.cpu_us_per_request = chosen.server_cpu / result.rps * 1e6
    run.repeats_rps = [m.wrk.rps for m in measurements]
    notes = []
    if run.errors:
        statuses: dict[int, int] = {}
        for m in measurements:
            for status, n in m.wrk.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
        codes = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()) if not 200 <= s < 300)
        sockets = sum(sum(m.wrk.socket_errors.values()) for m in measurements)
        notes.append(f"errors ({codes}{'; ' if codes and sockets else ''}{f'socket: {sockets}' if sockets else ''})")
        run.flags.append("errors")
    if any(m.wrk.wrapped for m in measurements):
        notes.append("ran out of pre-minted subject tokens (raise --tokens)")
        run.flags.append("wrapped")
    if not clean:
        run.flags.append("interference")
        notes.append(f"CPU {SERVER_CPU} was {run.other_cpu:.0%} busy with other work (rerun on a quiet machine)")
    elif len(clean) < len(measurements):
        notes.append(f"{len(measurements) - len(clean)} of {len(measurements)} runs left out (interference)")
    run.note = "; ".join(notes)
    if run.flags:
        run.status = "flagged"


# --- baselines: crypto floor and CEL ---------------------------------------------------------------------


def measure_floor(seconds: float) -> dict[str, float]:
    argv = ["taskset", "-c", str(SERVER_CPU), sys.executable, str(BENCH_DIR / "floor.py"), "--json"]
    done = subprocess.run(
        [*argv, "--mode", "token_exchange", "--seconds", str(seconds)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"bench/floor.py failed:\n{done.stderr}")
    return {name: float(value) for name, value in json.loads(done.stdout).items()}


def _cpu_us(op: Callable[[], object], seconds: float, window: float = 0.2, batch: int = 5) -> float:
    """CPU microseconds of this thread per `op`: the best of ~`window`-second windows over `seconds`.

    CPU time, not wall time, so that other work sharing the core does not inflate it (the same
    unit as the server's CPU time per request it is compared with).
    """
    for _ in range(batch):
        op()
    best = math.inf
    end = time.perf_counter() + seconds
    while True:
        count, start, cpu0 = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - start < window:
            for _ in range(batch):
                op()
            count += batch
        best = min(best, (time.thread_time() - cpu0) / count * 1e6)
        if time.perf_counter() >= end:
            return best


def cel_costs(seconds: float) -> dict[str, float]:
    """CPU microseconds per CEL evaluation with the server's own code (run in a process pinned to CPU 0).

    * ``expressions_us``: the condition + one attribute + the subject, each given the whole claim set
      as a plain dict (what a naive caller pays: the claims are converted to CEL values each time);
    * ``mapping_us``: the server's whole mapping step for one token (``IssuerRegistry._map``):
      the three expressions, the results checked and the binding chosen.
    """
    from tessera.federation.config import parse_trusted_issuer
    from tessera.federation.validator import IssuerRegistry

    issuer_url = "https://token.actions.githubusercontent.com"
    raw = trust_configuration(issuer_url, jti_replay=False)[0]
    trust = parse_trusted_issuer(raw, own_issuer="http://127.0.0.1:9100", allow_http=True)
    sys.path.insert(0, str(REPO_DIR / "tests"))
    from federation_support import github_actions_claims

    now = int(time.time())
    claims = github_actions_claims(EXTERNAL_AUDIENCE, repository=REPOSITORY)
    claims.update({"iss": issuer_url, "iat": now, "exp": now + 300, "jti": secrets.token_urlsafe(16)})
    activation: dict[str, Any] = {"assertion": claims}
    assert trust.condition is not None and len(trust.attributes) == 1
    condition, subject, (_, attribute) = trust.condition, trust.subject, trust.attributes[0]

    def expressions() -> None:
        if not condition.evaluate_bool(activation):
            raise AssertionError("condition does not hold")
        subject.evaluate(activation)
        attribute.evaluate(activation)

    def mapping() -> None:
        identity = IssuerRegistry._map(trust, claims)
        assert identity.principal == EXPECTED_SUB

    mapping()
    return {
        "expressions_us": _cpu_us(expressions, seconds),
        "mapping_us": _cpu_us(mapping, seconds),
    }


def measure_cel(seconds: float) -> dict[str, float]:
    argv = ["taskset", "-c", str(SERVER_CPU), sys.executable, str(Path(__file__).resolve()), "--cel-json"]
    done = subprocess.run([*argv, "--floor-seconds", str(seconds)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"CEL measurement failed:\n{done.stderr}")
    return {name: float(value) for name, value in json.loads(done.stdout).items()}


# --- report ----------------------------------------------------------------------------------------------


def render_table(runs: list[Run]) -> str:
    header = [
        "variant",
        "jti replay",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "vs crypto floor",
        "server cpu",
        "cpu us/req",
        "CEL share",
    ]

    def fmt(value: float | None, spec: str, suffix: str = "") -> str:
        return "-" if value is None else format(value, spec) + suffix

    rows = [
        [
            run.variant,
            "on" if run.jti_replay else "off",
            fmt(run.rps, ",.0f"),
            fmt(run.p50_ms, ".2f"),
            fmt(run.p99_ms, ".2f"),
            "-" if run.errors is None else str(run.errors),
            fmt(run.ratio_vs_floor, ".3f", "x"),
            fmt(run.server_cpu, ".0%"),
            fmt(run.cpu_us_per_request, ",.0f"),
            fmt(run.cel_share, ".0%"),
        ]
        + ([run.status] if run.status != "ok" else [""])
        for run in runs
    ]
    header.append("status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8, 9}

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), "-+-".join("-" * w for w in widths), *map(line, rows)]
    notes = [f"  {r.variant}: {r.note}" for r in runs if r.note]
    return "\n".join(out + (["notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RFC 8693 token-exchange benchmark for Tessera")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load per variant (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per variant; the median is kept")
    parser.add_argument("--variant", choices=["reuse", "distinct", "both"], default="both", help="default both")
    parser.add_argument("--tokens", type=int, help="subject tokens to pre-mint per distinct run")
    parser.add_argument("--floor-seconds", type=float, default=2.0, help="seconds per floor figure (default 2)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"JSON results (default {RESULTS_FILE})")
    parser.add_argument("--cel-json", action="store_true", help=argparse.SUPPRESS)  # internal: CEL costs as JSON
    args = parser.parse_args(argv)
    if args.cel_json:
        print(json.dumps(cel_costs(args.floor_seconds)))
        return 0
    if args.repeat < 1 or args.duration < 1 or args.connections < 1:
        parser.error("--repeat, --duration and --connections must be at least 1")
    variants = list(VARIANTS) if args.variant == "both" else [args.variant]

    try:
        check_machine()
        wrk_version = ensure_wrk()
        log(f"crypto floor on CPU {SERVER_CPU} ...")
        floor = measure_floor(args.floor_seconds)
        log(f"CEL cost on CPU {SERVER_CPU} ...")
        cel = measure_cel(args.floor_seconds)
        issuer = ExternalIssuer()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log(f"fake external issuer (RS256, discovery + JWKS) at {issuer.url}")

    runs: list[Run] = []
    known_rps = 0.0
    try:
        for variant in variants:
            try:
                run = measure_variant(variant, issuer, args, known_rps)
            except BenchError as exc:
                log(f"{variant} failed: {exc}")
                run = Run(variant, VARIANTS[variant], status="failed", note=str(exc).splitlines()[0][:300])
            runs.append(run)
            known_rps = max(known_rps, run.rps or 0.0)
    finally:
        issuer.stop()
    for run in runs:
        if run.rps:
            run.ratio_vs_floor = run.rps / floor["token_exchange"]
        if run.cpu_us_per_request:
            run.cel_share = cel["mapping_us"] / run.cpu_us_per_request

    print()
    print(
        f"RFC 8693 token exchange (RS256 external JWT in, ES256 access token out), anonymous, "
        f"1 server process on CPU {SERVER_CPU}, wrk 1 thread x {args.connections} connections on CPU {LOAD_CPU}, "
        f"{args.duration:g}s after {args.warmup:g}s warm-up"
        + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    print(
        f"crypto floor (cryptography, 1 core): {floor['token_exchange']:,.0f} ops/s "
        f"(RS256 verify 2048-bit + ES256 sign; RS256 verify alone {floor['rs256_verify']:,.0f}/s, "
        f"ES256 sign alone {floor['es256_sign']:,.0f}/s)"
    )
    print(
        f"CEL (common-expression-language, in-process, 1 core, CPU time): condition + 1 attribute + subject "
        f"{cel['expressions_us']:,.0f} us when each is given the whole claim set; "
        f"the server's whole mapping step {cel['mapping_us']:,.0f} us per token"
    )
    print()
    print(render_table(runs))
    print()
    print(
        "cpu us/req: the server's CPU time per request (its process group's CPU time / requests); "
        "CEL share: the CEL mapping step's time as a fraction of that."
    )
    print(PEER_NOTE + ".")

    report = {
        "benchmark": "token exchange (RFC 8693)",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "repeat": args.repeat,
            "wrk_threads": 1,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
            "trust_configuration": trust_configuration("<fake issuer URL>", jti_replay=False)[0],
            "distinct_variant_adds": {"jti_replay": True},
            "expected_sub": EXPECTED_SUB,
        },
        "versions": {
            "wrk": wrk_version,
            "tessera": _version("tessera"),
            "cryptography": _version("cryptography"),
            "cel-python": _version("cel-python"),
            "httpx": _version("httpx"),
        },
        "floor_ops_per_s": floor,
        "cel_us": cel,
        "runs": [asdict(run) for run in runs],
        "peer": None,
        "peer_note": PEER_NOTE,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results written to {args.output}")
    return 0


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The results as rows for ``bench/summary.py`` (one shape for every benchmark)."""
    rows = []
    floor = report["floor_ops_per_s"]["token_exchange"]
    for run in report["runs"]:
        if run["rps"] is None:
            continue
        note = "; ".join(x for x in (run["status"] if run["status"] != "ok" else "", run.get("note", "")) if x)
        rows.append(
            dict(
                measure=f"token exchange, {run['variant']} subject token",
                value=run["rps"],
                unit="req/s",
                baseline="crypto floor",
                baseline_unit="ops/s",
                baseline_value=floor,
                ratio=run["rps"] / floor,
                note=note,
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
