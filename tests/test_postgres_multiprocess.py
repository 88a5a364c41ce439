"""Two ``tessera serve`` processes on one PostgreSQL database (RFC 6749 §4.4, RFC 7523, RFC 7517).

They start together on an empty database without creating two active keys per algorithm, issue
tokens concurrently without errors or duplicate ``jti`` values, accept a client assertion's ``jti``
once across both processes (RFC 7523 §3 (7)), and leave one intact audit hash chain.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from support import ASSERTION_TYPE, LiveServer, Postgres, client_assertion, ec_jwk, ec_key
from tessera.oauth.keys import KEK

pytestmark = pytest.mark.postgres

ALGS = "ES256,EdDSA"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers, one database and KEK, one issuer; started at the same time on an empty database."""
    db_url = postgres.create_database()
    base = tmp_path_factory.mktemp("pg-cluster")
    a = LiveServer(
        base / "a",
        extra_env={"TESSERA_DATABASE_URL": db_url, "TESSERA_KEK": KEK.generate_text(), "TESSERA_SIGNING_ALGS": ALGS},
    )
    b = LiveServer(
        base / "b",
        extra_env={
            "TESSERA_DATABASE_URL": db_url,
            "TESSERA_KEK": a.env["TESSERA_KEK"],
            "TESSERA_SIGNING_ALGS": ALGS,
            "TESSERA_ISSUER": a.issuer,
            "TESSERA_ADMIN_TOKEN": a.admin_token,
            "TESSERA_REGISTRATION_TOKEN": a.reg_token,
        },
    )
    b.admin_token, b.reg_token = a.admin_token, a.reg_token
    with ThreadPoolExecutor(2) as pool:
        starts = [pool.submit(s.start, 60) for s in (a, b)]
        errors = [f.exception() for f in starts]
    try:
        assert errors == [None, None], errors
        yield a, b
    finally:
        a.stop()
        b.stop()
    r = a.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr


def sql(server: LiveServer, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.env["TESSERA_DATABASE_URL"]) as conn:
        return list(conn.execute(query, params).fetchall())  # type: ignore[arg-type]


def test_concurrent_start_bootstraps_one_key_set(cluster: tuple[LiveServer, LiveServer]) -> None:
    a, b = cluster
    counts = sql(a, "SELECT alg, state, count(*) FROM signing_keys GROUP BY alg, state ORDER BY alg, state")
    assert counts == [("ES256", "active", 1), ("ES256", "next", 1), ("EdDSA", "active", 1), ("EdDSA", "next", 1)]
    created = sql(a, "SELECT count(*) FROM audit_log WHERE event = 'key.created'")
    assert created == [(4,)]
    jwks_a = httpx.get(a.issuer + "/oauth/jwks", timeout=10).json()
    jwks_b = httpx.get(b.issuer + "/oauth/jwks", timeout=10).json()
    assert jwks_a == jwks_b
    assert len(jwks_a["keys"]) == 4
    disco = httpx.get(b.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert disco["issuer"] == a.issuer
    assert disco["token_endpoint"] == a.issuer + "/oauth/token"


def test_two_processes_issue_tokens_concurrently(cluster: tuple[LiveServer, LiveServer]) -> None:
    a, b = cluster
    secret_client = a.register(scope="read")
    key = ec_key()
    jwt_client = a.register(
        token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]}, scope="read"
    )
    aud = a.issuer + "/oauth/token"  # the issuer both processes share
    local = threading.local()
    opened: list[httpx.Client] = []

    def request(i: int) -> httpx.Response:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=30)
            opened.append(local.http)
        srv = (a, b)[i % 2]
        if (i // 2) % 2:
            assertion = client_assertion(key, jwt_client["client_id"], aud)
            return local.http.post(
                srv.token_endpoint,
                data={
                    "grant_type": "client_credentials",
                    "scope": "read",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                },
            )
        return local.http.post(
            srv.token_endpoint,
            data={"grant_type": "client_credentials", "scope": "read"},
            auth=(secret_client["client_id"], secret_client["client_secret"]),
        )

    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(request, range(300)))
    finally:
        for http in opened:
            http.close()
    assert [r.status_code for r in responses] == [200] * 300, [r.text for r in responses if r.status_code != 200][:3]

    tokens = [r.json()["access_token"] for r in responses]
    claims = [jwt.decode(t, options={"verify_signature": False}) for t in tokens]
    jtis = [c["jti"] for c in claims]
    assert len(set(jtis)) == 300
    assert {c["iss"] for c in claims} == {a.issuer}
    assert collections.Counter(c["client_id"] for c in claims) == {
        secret_client["client_id"]: 150,
        jwt_client["client_id"]: 150,
    }
    [(active,)] = sql(a, "SELECT kid FROM signing_keys WHERE alg = 'ES256' AND state = 'active'")
    assert {jwt.get_unverified_header(t)["kid"] for t in tokens} == {active}

    stored = dict(sql(a, "SELECT jti, count(*) FROM issued_tokens WHERE jti = ANY(%s) GROUP BY jti", jtis))
    assert stored == dict.fromkeys(jtis, 1)
    assert sql(a, "SELECT count(*) FROM audit_log WHERE event = 'token.issued'") == [(300,)]

    # Both processes' tokens verify with the JWKS either of them publishes.
    keys = jwt.PyJWKSet.from_dict(httpx.get(b.issuer + "/oauth/jwks", timeout=10).json())
    for t in (tokens[0], tokens[1]):
        assert (
            jwt.decode(
                t,
                key=keys[jwt.get_unverified_header(t)["kid"]],
                algorithms=["ES256"],
                audience=a.issuer,
                issuer=a.issuer,
            )["scope"]
            == "read"
        )

    r = a.cli("audit", "verify")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("audit chain ok: ")
    with a.admin() as admin:
        report = admin.get("/audit/verify").json()
    assert report["ok"] is True and report["first_bad_seq"] is None


def test_an_assertion_is_accepted_once_across_both_processes(cluster: tuple[LiveServer, LiveServer]) -> None:
    a, b = cluster
    key = ec_key()
    c = a.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})

    def race(assertion: str) -> list[httpx.Response]:
        barrier = threading.Barrier(2)

        def send(srv: LiveServer) -> httpx.Response:
            barrier.wait(10)
            return httpx.post(
                srv.token_endpoint,
                timeout=30,
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                },
            )

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(send, (a, b)))

    for _ in range(10):
        results = race(client_assertion(key, c["client_id"], a.issuer + "/oauth/token"))
        assert sorted(r.status_code for r in results) == [200, 401], [r.text for r in results]
        refused = next(r for r in results if r.status_code == 401)
        assert refused.json()["error"] == "invalid_client"
        assert refused.json()["error_description"] == "client_assertion was already used (jti replay)"
        assert refused.headers["cache-control"] == "no-store"
        assert refused.headers["www-authenticate"] == f'Basic realm="{a.issuer}"'

    assert sql(a, "SELECT count(*) FROM issued_tokens WHERE client_id = %s", c["client_id"]) == [(10,)]
    assert sql(a, "SELECT count(*) FROM assertion_jtis WHERE client_id = %s", c["client_id"]) == [(10,)]


def test_a_registration_on_one_process_is_served_by_the_other(cluster: tuple[LiveServer, LiveServer]) -> None:
    a, b = cluster
    c = a.register(scope="read")
    r = httpx.post(
        b.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=(c["client_id"], c["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    deleted = httpx.delete(
        c["registration_client_uri"], timeout=10, headers={"Authorization": "Bearer " + c["registration_access_token"]}
    )
    assert deleted.status_code == 204

    def refused() -> bool:
        r = httpx.post(
            b.token_endpoint,
            data={"grant_type": "client_credentials"},
            auth=(c["client_id"], c["client_secret"]),
            timeout=10,
        )
        return r.status_code == 401 and r.json()["error"] == "invalid_client"

    # The other process caches the registration for TESSERA_CLIENT_CACHE_TTL (1 s by default).
    deadline = time.monotonic() + 10
    while not refused():
        assert time.monotonic() < deadline, "the deleted client was still served by the other process"
        time.sleep(0.2)


def test_rotation_in_one_process_reaches_the_other(cluster: tuple[LiveServer, LiveServer]) -> None:
    a, b = cluster
    with a.admin() as admin:
        r = admin.post("/keys/rotate", params={"alg": "ES256"})
    assert r.status_code == 200, r.text
    promoted = next(e["kid"] for e in r.json()["events"] if e["event"] == "key.activated")
    c = a.register()

    def kid_from_b() -> str:
        r = httpx.post(
            b.token_endpoint,
            data={"grant_type": "client_credentials"},
            auth=(c["client_id"], c["client_secret"]),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(jwt.get_unverified_header(r.json()["access_token"])["kid"])

    deadline = time.monotonic() + 15  # b reloads keys every TESSERA_KEY_REFRESH_INTERVAL (5 s by default)
    while kid_from_b() != promoted:
        assert time.monotonic() < deadline, "the other process never signed with the promoted key"
        time.sleep(0.2)
    assert sql(a, "SELECT count(*) FROM signing_keys WHERE alg = 'ES256' AND state = 'active'") == [(1,)]
