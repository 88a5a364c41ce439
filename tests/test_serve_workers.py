"""``tessera serve --workers N``: one command, several server processes on one PostgreSQL database.

The workers share the listening socket (uvicorn's supervisor); each runs its own application, background
loops and outbox worker, so they must behave as separate ``tessera serve`` processes do: one key set,
distinct status list segments, a client assertion accepted once whichever worker gets it. A worker killed
with SIGKILL is replaced by the supervisor and the service goes on answering.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from scaleout_support import sql
from support import ASSERTION_TYPE, LiveServer, Postgres, client_assertion, ec_jwk, ec_key
from tessera.oauth.keys import KEK

pytestmark = pytest.mark.postgres


def workers(srv: LiveServer) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    assert srv.proc is not None
    pid = srv.proc.pid
    out = set()
    for child in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = pathlib.Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            out.add(int(child))
    return out


def wait_for(check: Callable[[], Any], what: str, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while not (got := check()):
        assert time.monotonic() < deadline, f"waited {within} s for {what}"
        time.sleep(0.2)
    return got


@pytest.fixture
def server(tmp_path: pathlib.Path, postgres: Postgres) -> Iterator[LiveServer]:
    srv = LiveServer(
        tmp_path / "data",
        extra_env={
            "TESSERA_DATABASE_URL": postgres.create_database(),
            "TESSERA_KEK": KEK.generate_text(),
            "TESSERA_WORKERS": "2",
            "TESSERA_STATUS_LIST_SIZE": "1024",
        },
    ).start(90)
    try:
        wait_for(lambda: len(workers(srv)) == 2, "two workers")
        yield srv
    finally:
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr


def test_two_workers_serve_one_database_and_a_killed_worker_is_replaced(server: LiveServer) -> None:
    db = server.env["TESSERA_DATABASE_URL"]
    key = ec_key()
    client = server.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    first = workers(server)

    def token(assertion: str | None = None) -> httpx.Response:
        assertion = assertion or client_assertion(key, client["client_id"], server.token_endpoint)
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        with httpx.Client(timeout=30) as http:  # a new connection each time: the workers share the accepts
            return http.post(server.token_endpoint, data=data)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: token(), range(160)))
    assert [r.status_code for r in responses] == [200] * 160
    jtis = [r.json()["access_token"] for r in responses]
    assert len(set(jtis)) == 160
    # One key set for both workers (each ran the start-up bootstrap), one segment of the status list each.
    assert sql(db, "SELECT alg, state, count(*) FROM signing_keys GROUP BY alg, state ORDER BY state") == [
        ("ES256", "active", 1),
        ("ES256", "next", 1),
    ]
    claimed = {int(by.rsplit(":", 1)[1]) for (by,) in sql(db, "SELECT claimed_by FROM status_segments")}
    assert claimed == first, "both workers issued tokens, each from a status list segment of its own"
    [(entries,)] = sql(db, "SELECT count(DISTINCT (status_list, status_idx)) FROM issued_tokens")
    assert entries == 160

    # One assertion at both workers at once (new connections, so either may take either): one token.
    for _ in range(6):
        assertion = client_assertion(key, client["client_id"], server.token_endpoint)
        barrier = threading.Barrier(2)

        def send(_: int, a: str = assertion, b: threading.Barrier = barrier) -> int:
            b.wait(10)
            return token(a).status_code

        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(send, range(2))) == [200, 401]

    # SIGKILL one worker: the supervisor starts another, and requests keep being answered meanwhile.
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    answered = 0
    deadline = time.monotonic() + 60
    while not (len(now := workers(server)) == 2 and victim not in now):
        assert time.monotonic() < deadline, "the supervisor did not replace the killed worker"
        try:
            answered += token().status_code == 200
        except httpx.TransportError:
            pass  # a connection the dead worker had accepted
    replacement = (workers(server) - first).pop()
    wait_for(lambda: all(token().status_code == 200 for _ in range(4)), "answers after the replacement")
    assert answered >= 1, "the surviving worker answered while the other was being replaced"
    assert replacement != victim
