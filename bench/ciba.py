"""CIBA benchmark: complete backchannel cycles per second, poll latency under many pending requests,
and what pending requests cost in memory and database size.

One ``tessera serve`` (SQLite, the default) pinned to CPU 0, with the file channel as the approvers'
channel; this process (the clients and the approvers) pinned to CPU 1. Three measurements:

(a) **cycles/s**: OpenID CIBA Core 1.0 §7 backchannel request → the approval link read from the file
    channel → the approval page over HTTP with a software passkey (GET the page, POST the WebAuthn
    options, POST the signed assertion: the same requests a browser sends) → one token request (§10.1)
    that redeems. Several approvers work in parallel, each on their own requests. The baseline,
    measured in the same run against the same server: ``client_credentials`` token requests per second
    (wrk, ``bench/wrk/token.lua``, as in ``bench/issuer.py``). Reported: cycles per second divided by
    token requests per second, and the server CPU one cycle costs in token requests' worth of CPU.
(b) **poll latency** at the token endpoint with 10 pending requests, then with ``--pending`` (10,000)
    pending, one keep-alive connection, one request at a time: ``authorization_pending`` answers
    (distinct requests, each polled no faster than its interval) and ``slow_down`` answers (10 requests
    polled back to back). p50/p99 and the ratio loaded/baseline.
(c) the server's resident memory (VmRSS of its process group) and the database size (pages in use,
    as SQLite counts them, and the files with the WAL) before and after creating the pending requests,
    once the outbox has delivered every message (so no background work is left).

Run from the repository root with the project's Python (``tessera`` next to it; the test helpers in
``tests/`` provide the page client and the software authenticator)::

    python bench/ciba.py            # 10,000 pending, 10 s of cycles
    python bench/ciba.py --quick    # 200 pending, 3 s of cycles: under a minute

Results go to ``bench/results/ciba.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import queue
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_DIR / "tests"))

from issuer import (  # noqa: E402  (bench/ is not a package)
    HOST,
    INTERFERENCE_LIMIT,
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    CpuSample,
    Process,
    _version,
    basic_authorization,
    check_machine,
    discover,
    ensure_wrk,
    free_port,
    log,
    run_wrk,
)

RESULTS_FILE = BENCH_DIR / "results" / "ciba.json"
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
#: the most the server allows (settings): pending requests are spread so that no person or client passes them
PER_PERSON_PER_MINUTE = 1000
PER_REQUESTER_PER_MINUTE = 10000
#: requests created per approver and per client when filling the pending set (well under the limits)
PENDING_PER_PERSON = 500
PENDING_PER_CLIENT = 4000
#: polls of one pending request are spaced by this much more than the 1 s interval (whole-second clock)
PACING_MARGIN = 0.05


def _import_helpers() -> tuple[Any, Any]:
    try:
        from approval_support import PageClient
        from webauthn_support import SoftAuthenticator
    except ImportError as exc:
        raise BenchError(f"cannot import the helpers in tests/ ({exc}); run with the project's venv") from exc
    return PageClient, SoftAuthenticator


# --- the server ---------------------------------------------------------------------------------------


class Messages:
    """Follows the file channel (JSON lines): counts messages, hands each approver their links in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._queues: dict[tuple[str, str], queue.Queue[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def queue(self, kind: str, person: str) -> queue.Queue[str]:
        with self._lock:
            return self._queues.setdefault((kind, person), queue.Queue())

    def _follow(self) -> None:
        while not self.path.exists() and not self._stop.is_set():
            time.sleep(0.02)
        with self.path.open() as f:
            partial = ""
            while not self._stop.is_set():
                chunk = f.readline()
                if not chunk:
                    time.sleep(0.005)
                    continue
                partial += chunk
                if not partial.endswith("\n"):
                    continue
                message, partial = json.loads(partial), ""
                self.count += 1
                person = message["data"].get("person_id")
                if person and "link" in message["data"]:
                    self.queue(message["kind"], person).put(message["data"]["link"])

    def wait_count(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise BenchError(f"the outbox delivered {self.count} of {count} messages in {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class Client:
    client_id: str
    secret: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.client_id, self.secret)


class TesseraServer:
    """`tessera serve` pinned to SERVER_CPU in a fresh data directory, the file channel for messages."""

    def __init__(self, workdir: Path) -> None:
        executable = Path(sys.executable).parent / "tessera"
        if not executable.exists():
            raise BenchError(f"no `tessera` command next to {sys.executable}; run this with the project's venv")
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.data_dir = workdir / "tessera-data"
        self.data_dir.mkdir()
        self.outbox_file = workdir / "messages.jsonl"
        self.admin_token = secrets.token_urlsafe(32)
        self.registration_token = secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(
            {
                "TESSERA_ISSUER": self.base_url,
                "TESSERA_HOST": HOST,
                "TESSERA_PORT": str(self.port),
                "TESSERA_DATA_DIR": str(self.data_dir),
                "TESSERA_ADMIN_TOKEN": self.admin_token,
                "TESSERA_REGISTRATION_TOKEN": self.registration_token,
                "TESSERA_LOG_LEVEL": "warning",
                "TESSERA_OUTBOX_FILE": str(self.outbox_file),
                "TESSERA_CIBA_INTERVAL": "1",
                "TESSERA_CIBA_MAX_EXPIRY": "3600",  # the pending requests outlive the run
                "TESSERA_MESSAGES_PER_PERSON_PER_MINUTE": str(PER_PERSON_PER_MINUTE),
                "TESSERA_MESSAGES_PER_REQUESTER_PER_MINUTE": str(PER_REQUESTER_PER_MINUTE),
            }
        )
        self.process = Process("tessera", [str(executable), "serve"], env, workdir, workdir / "tessera.log")
        try:
            self.metadata, self.endpoints = discover(self.process, self.base_url)
        except BaseException:
            self.process.stop()
            raise
        self.messages = Messages(self.outbox_file)
        self.admin = httpx.Client(
            base_url=self.base_url + "/admin", timeout=30, headers={"Authorization": f"Bearer {self.admin_token}"}
        )

    @property
    def pgid(self) -> int:
        return self.process.proc.pid  # its own session and process group

    def register(self, **metadata: Any) -> Client:
        r = httpx.post(
            self.metadata["registration_endpoint"],
            json={"token_endpoint_auth_method": "client_secret_basic", **metadata},
            headers={"Authorization": f"Bearer {self.registration_token}"},
            timeout=10,
        )
        if r.status_code != 201:
            raise BenchError(f"registering a client answered {r.status_code}: {r.text[:500]}")
        return Client(r.json()["client_id"], r.json()["client_secret"])

    def ciba_client(self) -> Client:
        return self.register(grant_types=[CIBA_GRANT], backchannel_token_delivery_mode="poll", scope="payments")

    def approver(self, pid: str) -> tuple[Any, Any]:
        """A person on the file channel who enrolled a software passkey through their enrolment link."""
        page_client, soft_authenticator = _import_helpers()
        r = self.admin.put(f"/people/{pid}", json={"name": pid, "channels": ["file"]})
        if r.status_code not in (200, 201):
            raise BenchError(f"creating person {pid} answered {r.status_code}: {r.text[:300]}")
        r = self.admin.post(f"/people/{pid}/enrolment")
        if r.status_code != 202:
            raise BenchError(f"starting {pid}'s enrolment answered {r.status_code}: {r.text[:300]}")
        link = self.messages.queue("enrolment.link", pid).get(timeout=15)
        page, authenticator = page_client(self.base_url), soft_authenticator()
        page.enrol_passkey(link, authenticator)
        return page, authenticator

    def rss_kib(self) -> int:
        """VmRSS of every process in the server's process group, in KiB."""
        total = 0
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != self.pgid:
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return total

    def db_bytes(self) -> dict[str, int]:
        """The database's pages in use (what the data needs, WAL content included) and its files' size."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "tessera.db")) as db:
            pages, free, size = (
                db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
            )
        files = sum(p.stat().st_size for p in self.data_dir.glob("tessera.db*"))
        return {"used": (pages - free) * size, "files": files}

    def stop(self) -> None:
        self.messages.stop()
        self.admin.close()
        self.process.stop()


# --- (a) cycles ----------------------------------------------------------------------------------------


@dataclass
class CycleResult:
    workers: int
    seconds: float
    cycles: int
    errors: int
    cycles_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    cpu_ms_per_cycle: float
    other_cpu: float
    first_error: str = ""


def run_cycles(server: TesseraServer, approvers: list[tuple[str, Any, Any]], seconds: float) -> CycleResult:
    """Each approver's worker runs cycles back to back until time is up; all workers in parallel."""
    client = server.ciba_client()
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(pid: str, page: Any, authenticator: Any) -> None:
        links = server.messages.queue("approval.requested", pid)
        with httpx.Client(timeout=15, auth=client.auth) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    one_cycle(http, server, pid, page, authenticator, links)
                except Exception as exc:  # counted and reported, never hidden
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=a, daemon=True) for a in approvers]
    before, t0 = CpuSample.take(server.pgid), time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    with lock:
        done, failed = len(latencies), len(errors)
    after, wall = CpuSample.take(server.pgid), time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(20)
    cpu = after.server - before.server
    ms = sorted(x * 1000 for x in latencies[:done])
    return CycleResult(
        workers=len(approvers),
        seconds=wall,
        cycles=done,
        errors=failed,
        cycles_per_s=done / wall,
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        server_cpu=cpu / wall,
        cpu_ms_per_cycle=cpu / max(done, 1) * 1000,
        other_cpu=other_share(before, after, cpu),
        first_error=errors[0] if errors else "",
    )


def one_cycle(http: httpx.Client, server: TesseraServer, pid: str, page: Any, authenticator: Any, links: Any) -> None:
    r = http.post(
        server.metadata["backchannel_authentication_endpoint"],
        data={"scope": "openid payments", "login_hint": pid, "binding_message": "bench"},
    )
    if r.status_code != 200:
        raise BenchError(f"bc-authorize answered {r.status_code}: {r.text[:200]}")
    auth_req_id = r.json()["auth_req_id"]
    link = links.get(timeout=10)
    decided = page.decide_with_passkey(link, "approve", authenticator)
    if decided.status_code != 200 or 'id="outcome"' not in decided.text:
        raise BenchError(f"the approval page answered {decided.status_code}")
    # The approver's answer is known: redeem at once (a poll client would wait for its next interval).
    r = http.post(server.endpoints.token, data={"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id})
    if r.status_code != 200 or "id_token" not in r.json():
        raise BenchError(f"the CIBA token request answered {r.status_code}: {r.text[:200]}")


@dataclass
class BaselineResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float
    cpu_us_per_request: float
    other_cpu: float


def run_baseline(server: TesseraServer, seconds: float, connections: int) -> BaselineResult:
    client = server.register(grant_types=["client_credentials"], scope="read")
    header = basic_authorization(client.client_id, client.secret)
    r = httpx.post(
        server.endpoints.token,
        data={"grant_type": "client_credentials", "scope": "read"},
        headers={"Authorization": header},
        timeout=10,
    )
    if r.status_code != 200:
        raise BenchError(f"client_credentials answered {r.status_code}: {r.text[:300]}")
    run_wrk(server.endpoints.token, ["basic", header], 1, connections)  # warm-up
    before, t0 = CpuSample.take(server.pgid), time.monotonic()
    result = run_wrk(server.endpoints.token, ["basic", header], seconds, connections)
    after, wall = CpuSample.take(server.pgid), time.monotonic() - t0
    cpu = after.server - before.server
    return BaselineResult(
        result.rps,
        result.p50_ms,
        result.p99_ms,
        result.errors,
        cpu / wall,
        cpu / max(result.requests, 1) * 1e6,
        other_share(before, after, cpu),
    )


def other_share(before: CpuSample, after: CpuSample, server_cpu: float) -> float:
    """The share of core SERVER_CPU that anything but the server used (other processes, steal)."""
    total = max(after.core_total - before.core_total, 1e-9)
    return max(0.0, (after.core_busy - before.core_busy) - server_cpu) / total


# --- (b) and (c) pending requests --------------------------------------------------------------------------


@dataclass
class Pending:
    """Pending CIBA requests: each auth_req_id with the client that may redeem it."""

    ids: list[tuple[str, Client]] = field(default_factory=list)


def create_pending(server: TesseraServer, count: int, people: list[str], clients: list[Client], out: Pending) -> float:
    """``count`` more pending requests, spread over ``people`` and ``clients``; returns requests/s."""
    url = server.metadata["backchannel_authentication_endpoint"]
    local = threading.local()
    start = len(out.ids)

    def one(k: int) -> tuple[str, Client]:
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = httpx.Client(timeout=30)
        client = clients[k % len(clients)]
        data = {"scope": "openid payments", "login_hint": people[k % len(people)], "binding_message": f"#{k}"}
        r = http.post(url, data=data, auth=client.auth)
        if r.status_code != 200:
            raise BenchError(f"bc-authorize #{k} answered {r.status_code}: {r.text[:300]}")
        return r.json()["auth_req_id"], client

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        out.ids.extend(pool.map(one, range(start, start + count)))
    return count / (time.monotonic() - t0)


@dataclass
class Latency:
    answer: str
    samples: int
    p50_ms: float
    p99_ms: float
    unexpected: int
    other_cpu: float


def poll_latency(
    server: TesseraServer, targets: list[tuple[str, Client]], samples: int, expect: str, spacing: float
) -> Latency:
    """``samples`` token requests over ``targets`` in turn, one at a time on one connection, at least
    ``spacing`` seconds from the start of one to the start of the next."""
    ms: list[float] = []
    unexpected = 0
    before = CpuSample.take(server.pgid)
    with httpx.Client(timeout=10) as http:
        http.post(server.endpoints.token, data={"grant_type": "none"})  # open the connection
        next_at = time.monotonic()
        for i in range(samples):
            if spacing:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + spacing
            auth_req_id, client = targets[i % len(targets)]
            t0 = time.perf_counter()
            r = http.post(
                server.endpoints.token, data={"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id}, auth=client.auth
            )
            ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 400 or r.json().get("error") != expect:
                unexpected += 1
    after = CpuSample.take(server.pgid)
    other = other_share(before, after, after.server - before.server)
    ms.sort()
    return Latency(expect, samples, percentile(ms, 50), percentile(ms, 99), unexpected, other)


def latencies(server: TesseraServer, fresh: list[tuple[str, Client]], polled: list[tuple[str, Client]], n: int) -> dict:
    """authorization_pending on requests never polled (paced: each no faster than its 1 s interval),
    then slow_down on 10 requests polled back to back."""
    pending = poll_latency(server, fresh, n, "authorization_pending", (1 + PACING_MARGIN) / min(len(fresh), 10))
    poll_latency(server, polled, len(polled), "slow_down", 0)  # not counted: each one polled just now
    slow = poll_latency(server, polled, n, "slow_down", 0)
    return {"authorization_pending": pending, "slow_down": slow}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --- the run -----------------------------------------------------------------------------------------------


def settle(server: TesseraServer, expected_messages: int, timeout: float) -> None:
    """Wait until every message is delivered and the server is idle (no background work left)."""
    server.messages.wait_count(expected_messages, timeout)
    time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CIBA cycles/s, poll latency and the cost of pending requests.")
    parser.add_argument("--quick", action="store_true", help="a small run (200 pending, 3 s of cycles)")
    parser.add_argument("--pending", type=int, help="pending requests to create (default 10000; --quick 200)")
    parser.add_argument("--duration", type=float, help="seconds of cycles and of the baseline (default 10; quick 3)")
    parser.add_argument("--workers", type=int, default=8, help="approvers working in parallel (default 8)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections for the baseline")
    parser.add_argument("--polls", type=int, help="token requests per latency figure (default 300; quick 60)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    pending_total = args.pending or (200 if args.quick else 10_000)
    duration = args.duration or (3.0 if args.quick else 10.0)
    polls = args.polls or (60 if args.quick else 300)
    if pending_total < 20 or polls < 10:
        parser.error("--pending must be at least 20 and --polls at least 10")

    try:
        check_machine()
        wrk_version = ensure_wrk()
        os.sched_setaffinity(0, {LOAD_CPU})  # this process is the load: keep it off the server's core
        _import_helpers()
        with tempfile.TemporaryDirectory(prefix="bench-ciba-") as tmp:
            server = TesseraServer(Path(tmp))
            try:
                results = measure(server, pending_total, duration, polls, args)
            finally:
                server.stop()
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    results["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server_cpu": SERVER_CPU,
        "load_cpu": LOAD_CPU,
        "wrk": wrk_version,
        "tessera": _version("tessera"),
    }
    print(render(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=lambda o: asdict(o)) + "\n")
    log(f"results written to {args.output}")
    return 0


def measure(server: TesseraServer, pending_total: int, duration: float, polls: int, args: Any) -> dict[str, Any]:
    log(f"tessera ready at {server.base_url}; enrolling {args.workers} approvers (software passkeys)")
    approvers = [(f"cycle{i}", *server.approver(f"cycle{i}")) for i in range(args.workers)]

    log("(a) client_credentials baseline (wrk)")
    baseline = run_baseline(server, duration, args.connections)
    log(f"    {baseline.rps:,.0f} token requests/s, {baseline.cpu_us_per_request:.0f} µs server CPU each")
    log(f"(a) CIBA cycles, {args.workers} approvers in parallel: warm-up, then {duration:.0f} s")
    run_cycles(server, approvers, min(2.0, duration))
    cycles = run_cycles(server, approvers, duration)
    log(f"    {cycles.cycles_per_s:,.1f} cycles/s, {cycles.errors} errors {cycles.first_error}")

    people = [f"pending{j}" for j in range(max(2, math.ceil(pending_total / PENDING_PER_PERSON)))]
    log(f"(b) {len(people)} approvers for the pending requests")
    for pid in people:
        server.approver(pid)
    clients = [server.ciba_client() for _ in range(max(1, math.ceil(pending_total / PENDING_PER_CLIENT)))]
    pending = Pending()
    expected = server.messages.count + 10
    create_pending(server, 10, people, clients, pending)
    settle(server, expected, 30)
    small = pending.ids[:10]
    poll_latency(server, small, 10, "authorization_pending", 0)  # each polled once: slow_down from now on
    time.sleep(1 + PACING_MARGIN)
    rss_before, db_before = server.rss_kib(), server.db_bytes()
    log(f"(b) poll latency with 10 pending ({polls} polls per figure)")
    base_lat = latencies(server, small, small, polls)

    log(f"(c) creating {pending_total - 10} more pending requests")
    expected = server.messages.count + pending_total - 10
    create_rate = create_pending(server, pending_total - 10, people, clients, pending)
    log(f"    {create_rate:,.0f} backchannel requests/s; waiting for the outbox to deliver their messages")
    settle(server, expected, 600)
    rss_after, db_after = server.rss_kib(), server.db_bytes()
    log(f"(b) poll latency with {len(pending.ids)} pending")
    fresh = pending.ids[10:]
    step = max(1, len(fresh) // polls)
    spread = fresh[::step][:polls]
    load_lat = latencies(server, spread, small, polls)

    return {
        "pending": len(pending.ids),
        "baseline_client_credentials": baseline,
        "cycles": cycles,
        "cycles_per_token_request": cycles.cycles_per_s / baseline.rps if baseline.rps else None,
        "cycle_cpu_in_token_requests": cycles.cpu_ms_per_cycle * 1000 / baseline.cpu_us_per_request,
        "backchannel_requests_per_s": create_rate,
        "latency_10_pending": base_lat,
        "latency_loaded": load_lat,
        "rss_kib": {"before": rss_before, "after": rss_after},
        "db_bytes": {"before": db_before, "after": db_after},
        "outbox_file_bytes": server.outbox_file.stat().st_size,
    }


def render(r: dict[str, Any]) -> str:
    b: BaselineResult = r["baseline_client_credentials"]
    c: CycleResult = r["cycles"]
    n = r["pending"]
    lines = [
        "(a) complete CIBA cycles (backchannel request -> passkey approval over HTTP -> redemption)",
        f"    client_credentials (baseline, wrk): {b.rps:>9,.0f} req/s   p50 {b.p50_ms:.2f} ms  p99 {b.p99_ms:.2f} ms"
        f"   {b.cpu_us_per_request:,.0f} µs server CPU/request   errors {b.errors}",
        f"    CIBA cycles ({c.workers} approvers):     {c.cycles_per_s:>9,.1f} /s    p50 {c.p50_ms:.1f} ms  "
        f"p99 {c.p99_ms:.1f} ms   {c.cpu_ms_per_cycle:.2f} ms server CPU/cycle   errors {c.errors}",
        f"    other load on the server's core: {b.other_cpu:.0%} (baseline), {c.other_cpu:.0%} (cycles)"
        + (
            f"  -- above {INTERFERENCE_LIMIT:.0%}: rerun on a quiet machine"
            if max(b.other_cpu, c.other_cpu) > INTERFERENCE_LIMIT
            else ""
        ),
        f"    cycles per token request: {r['cycles_per_token_request']:.4f}   "
        f"(one cycle costs the server as much CPU as {r['cycle_cpu_in_token_requests']:.1f} token requests)",
        "",
        f"(b) token-endpoint poll latency, one connection, one request at a time: 10 vs {n:,} pending",
    ]
    header = f"    {'answer':<24}{'10 p50':>9}{'10 p99':>9}{f'{n} p50':>11}{f'{n} p99':>11}{'p50 x':>8}{'p99 x':>8}"
    lines += [header, "    " + "-" * (len(header) - 4)]
    for answer in ("authorization_pending", "slow_down"):
        lo: Latency = r["latency_10_pending"][answer]
        hi: Latency = r["latency_loaded"][answer]
        lines.append(
            f"    {answer:<24}{lo.p50_ms:>9.2f}{lo.p99_ms:>9.2f}{hi.p50_ms:>11.2f}{hi.p99_ms:>11.2f}"
            f"{hi.p50_ms / lo.p50_ms:>8.2f}{hi.p99_ms / lo.p99_ms:>8.2f}"
            + (f"   ({lo.unexpected + hi.unexpected} unexpected answers)" if lo.unexpected + hi.unexpected else "")
            + f"   other load {lo.other_cpu:.0%} / {hi.other_cpu:.0%}"
        )
    rss, db = r["rss_kib"], r["db_bytes"]
    added = max(n - 10, 1)
    lines += [
        "    (ms; authorization_pending: distinct requests, each polled no faster than its interval;",
        "     slow_down: 10 requests polled back to back)",
        "",
        f"(c) what {n - 10:,} more pending requests cost (created at {r['backchannel_requests_per_s']:,.0f}/s)",
        f"    server RSS: {rss['before'] / 1024:,.1f} MiB -> {rss['after'] / 1024:,.1f} MiB"
        f"  ({(rss['after'] - rss['before']) * 1024 / added:,.0f} bytes per request)",
        f"    database:   {db['before']['used'] / 2**20:,.1f} MiB -> {db['after']['used'] / 2**20:,.1f} MiB in use"
        f"  ({(db['after']['used'] - db['before']['used']) / added:,.0f} bytes per request); files with the WAL"
        f" {db['before']['files'] / 2**20:,.1f} -> {db['after']['files'] / 2**20:,.1f} MiB",
        f"    messages written by the file channel: {r['outbox_file_bytes'] / 2**20:,.1f} MiB",
    ]
    return "\n".join(lines)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The results as rows for ``bench/summary.py`` (one shape for every benchmark)."""
    b, c, n = report["baseline_client_credentials"], report["cycles"], report["pending"]
    rows = [
        dict(
            measure=f"CIBA cycles ({c['workers']} approvers)",
            value=c["cycles_per_s"],
            unit="cycles/s",
            baseline="client_credentials",
            baseline_unit="req/s",
            baseline_value=b["rps"],
            ratio=c["cycles_per_s"] / b["rps"],
            note=f"a cycle costs {report['cycle_cpu_in_token_requests']:.1f} token requests of CPU",
        ),
    ]
    for answer in ("authorization_pending", "slow_down"):
        lo, hi = report["latency_10_pending"][answer], report["latency_loaded"][answer]
        rows.append(
            dict(
                measure=f"poll p50, {answer}, {n:,} pending",
                value=hi["p50_ms"],
                unit="ms",
                baseline="10 pending",
                baseline_value=lo["p50_ms"],
                ratio=hi["p50_ms"] / lo["p50_ms"],
                note="lower is better; ~1x: pending requests cost polls nothing",
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
