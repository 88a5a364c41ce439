"""Observability of a live server: Prometheus metrics, request ids, JSON logs without secrets, probes.

Everything is read over real HTTP from ``tessera serve`` subprocesses: ``/metrics`` is parsed with
``prometheus_client``'s own text parser, the logs are the server's captured output parsed line by
line as JSON, ``/readyz`` follows a PostgreSQL server being stopped and started again.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from approval_support import Mailbox, PageClient, approval_server, form_fields
from support import ASSERTION_TYPE, LiveServer, Postgres, client_assertion, ec_jwk, ec_key
from tessera.approvals.totp import code_at

# -- helpers ---------------------------------------------------------------------------------------------


def scrape(srv: LiveServer, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (sample name, sorted labels), read by the reference parser."""
    r = httpx.get(srv.issuer + "/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def basic_token(srv: LiveServer, client: dict[str, Any], secret: str | None = None) -> httpx.Response:
    return httpx.post(
        srv.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=(client["client_id"], secret or client["client_secret"]),
        timeout=10,
    )


def json_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    """The server's log lines that are JSON objects (uvicorn's own start-up text aside, none should not be)."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# -- a server with JSON logs at debug level (access logs on) and an approver enrolled with TOTP ------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = approval_server(
        tmp_path_factory.mktemp("obs") / "data", TESSERA_LOG_FORMAT="json", TESSERA_LOG_LEVEL="debug"
    ).start()
    yield s
    s.stop()


def test_metrics_parse_and_move_with_issuance_denials_and_approvals(srv: LiveServer) -> None:
    client = srv.register()
    before = scrape(srv)
    for _ in range(3):
        assert basic_token(srv, client).status_code == 200
    for _ in range(2):
        assert basic_token(srv, client, secret="wrong").status_code == 401
    r = httpx.post(srv.token_endpoint, data={"grant_type": "password"}, auth=(client["client_id"], "x"), timeout=10)
    assert r.status_code == 400
    after = scrape(srv)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tessera_tokens_issued_total", grant="client_credentials") == 3
    assert moved("tessera_token_denials_total", grant="client_credentials", error="invalid_client") == 2
    assert moved("tessera_token_denials_total", grant="other", error="unsupported_grant_type") == 1
    assert moved("tessera_http_requests_total", route="/oauth/token", method="POST", status="200") == 3
    assert moved("tessera_http_requests_total", route="/oauth/token", method="POST", status="401") == 2
    assert moved("tessera_http_request_duration_seconds_count", route="/oauth/token") == 6
    # Route templates, never raw paths: a registration read is counted under its template.
    r = httpx.get(
        srv.issuer + "/oauth/register/" + client["client_id"],
        headers={"Authorization": "Bearer " + client["registration_access_token"]},
        timeout=10,
    )
    assert r.status_code == 200
    r = httpx.get(srv.issuer + "/no/such/" + client["client_id"], timeout=10)
    assert r.status_code == 404
    later = scrape(srv)
    assert value(later, "tessera_http_requests_total", route="/oauth/register/{client_id}", method="GET", status="200")
    assert value(later, "tessera_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert not any(client["client_id"] in dict(labels).get("route", "") for _, labels in later)
    # Gauges read from the database and from the process at scrape time.
    assert value(later, "tessera_metrics_database_up") == 1
    assert ("tessera_outbox_pending", ()) in later and ("tessera_ciba_pending", ()) in later
    ages = [v for (name, _), v in later.items() if name == "tessera_signing_key_age_seconds"]
    assert ages and all(0 <= a < 3600 for a in ages)

    # An approval created, then decided by the person with a TOTP code from the page.
    admin = srv.admin()
    mb = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
    r = admin.put("/people/olga", json={"name": "Olga", "channels": ["file"]})
    assert r.status_code == 201, r.text
    assert admin.post("/people/olga/enrolment").status_code == 202
    page = PageClient(srv.issuer)
    secret = page.enrol_totp(mb.link("enrolment.link", "olga"))
    before = scrape(srv)
    r = admin.post(
        "/approvals",
        json={
            "requester": "ci-bot",
            "action": "deploy",
            "resource": "prod",
            "approvers": ["olga"],
            "assurance": "aal1",
        },
    )
    assert r.status_code == 201, r.text
    rid = r.json()["request_id"]
    assert value(scrape(srv), "tessera_approvals_pending") == value(before, "tessera_approvals_pending") + 1
    link = next(
        m["data"]["link"]
        for m in _wait(lambda: [m for m in mb.all() if m["data"].get("request_id") == rid and "link" in m["data"]])
    )
    decision_page = page.get(link)
    fields = form_fields(decision_page.text, "decide")
    fields.update(code=code_at(secret, time.time() + 30), decision="approve")
    r = page.post_form(link, fields)
    assert r.status_code == 200 and "<strong>approved</strong>" in r.text, r.text
    after = scrape(srv)
    assert value(after, "tessera_approvals_created_total") - value(before, "tessera_approvals_created_total") == 1
    assert (
        value(after, "tessera_approvals_decided_total", outcome="approved")
        - value(before, "tessera_approvals_decided_total", outcome="approved")
        == 1
    )
    assert value(after, "tessera_approval_decision_seconds_count", outcome="approved") == 1
    assert value(after, "tessera_approvals_pending") == value(before, "tessera_approvals_pending")


def _wait(find: Any, timeout: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return list(found)
        time.sleep(0.1)
    raise AssertionError("not found in time")


def test_request_id_round_trip_and_json_log_lines(srv: LiveServer) -> None:
    r = httpx.get(srv.issuer + "/healthz", headers={"X-Request-Id": "deploy-42.a:b"}, timeout=10)
    assert r.status_code == 200 and r.headers["x-request-id"] == "deploy-42.a:b"
    # An id that could forge a log field, or one too long, is replaced by a generated one.
    for bad in ('a" b', "x" * 129, ""):
        r = httpx.get(srv.issuer + "/healthz", headers={"X-Request-Id": bad}, timeout=10)
        assert re.fullmatch(r"[0-9a-f]{24}", r.headers["x-request-id"]), r.headers["x-request-id"]
    r = httpx.post(srv.token_endpoint, data={"grant_type": "client_credentials"}, timeout=10)
    generated = r.headers["x-request-id"]  # the token endpoint's fast path too
    assert r.status_code == 401 and re.fullmatch(r"[0-9a-f]{24}", generated)
    assert len({httpx.get(srv.issuer + "/healthz", timeout=10).headers["x-request-id"] for _ in range(5)}) == 5
    lines = _wait(lambda: [x for x in json_lines(srv.log) if x.get("request_id") == generated])
    access = [x for x in lines if x["logger"] == "uvicorn.access"]
    assert access and access[0]["path"] == "/oauth/token" and access[0]["status"] == 401
    every = json_lines(srv.log)
    assert every and all({"ts", "level", "logger", "msg"} <= set(x) for x in every)
    assert any(x.get("request_id") == "deploy-42.a:b" and x["path"] == "/healthz" for x in every if "path" in x)
    text = [line for line in srv.log.read_text().splitlines() if line.strip() and not line.startswith("{")]
    # Only what is printed before logging is configured (the KEK notice of the first start) and
    # Python's own warnings (the warnings module writes to stderr itself) are not JSON.
    assert all("key-encryption key" in line or "Warning" in line for line in text), text


def test_no_secret_in_the_logs_after_a_full_flow(srv: LiveServer) -> None:
    """Client secrets, tokens, client assertions, link tokens and codes: none of them in the captured logs."""
    secrets_seen: list[str] = []
    client = srv.register()
    secrets_seen += [client["client_secret"], client["registration_access_token"]]
    token = basic_token(srv, client).json()["access_token"]
    secrets_seen.append(token)
    key = ec_key()
    pk = srv.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    assertion = client_assertion(key, pk["client_id"], srv.token_endpoint)
    secrets_seen.append(assertion)
    r = httpx.post(
        srv.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_id": pk["client_id"],
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    secrets_seen.append(r.json()["access_token"])
    # Secrets where a careless client puts them: the query string (access logs print the path).
    r = httpx.get(srv.issuer + "/healthz", params={"access_token": token, "client_secret": client["client_secret"]})
    assert r.status_code == 200
    r = httpx.post(
        srv.issuer + "/oauth/introspect",
        data={"token": token},
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["active"] is True
    # An enrolment and an approval through their one-time links; a failed code too.
    admin = srv.admin()
    mb = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
    assert admin.put("/people/pavel", json={"name": "Pavel", "channels": ["file"]}).status_code == 201
    assert admin.post("/people/pavel/enrolment").status_code == 202
    enrol = mb.link("enrolment.link", "pavel")
    page = PageClient(srv.issuer)
    secret = page.enrol_totp(enrol)
    r = admin.post(
        "/approvals",
        json={"requester": "ci-bot", "action": "pay", "resource": "acct", "approvers": ["pavel"], "assurance": "aal1"},
    )
    rid = r.json()["request_id"]
    link = next(
        m["data"]["link"]
        for m in _wait(lambda: [m for m in mb.all() if m["data"].get("request_id") == rid and "link" in m["data"]])
    )
    code = code_at(secret, time.time() + 30)
    fields = form_fields(page.get(link).text, "decide")
    fields.update(code=code, decision="approve")
    assert "<strong>approved</strong>" in page.post_form(link, fields).text
    r = httpx.post(srv.issuer + "/oauth/revoke", data={"token": token}, auth=(client["client_id"], "wrong"))
    assert r.status_code == 401
    secrets_seen += [enrol.rsplit("/", 1)[1], link.rsplit("/", 1)[1], code, srv.admin_token, srv.reg_token]

    time.sleep(0.5)  # the last access log lines
    logs = srv.log.read_text()
    assert "/approve/…" in logs and "/enrol/…" in logs  # the access log did see those requests
    assert "/healthz?access_token=…&client_secret=…" in logs  # query values redacted, the request logged
    for s in secrets_seen:
        assert len(s) >= 6 and s not in logs, f"a secret of {len(s)} characters is in the log"
    # ...and nothing shaped like a compact JWS at all.
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ", logs)


# -- /readyz ---------------------------------------------------------------------------------------------


def _ready(srv: LiveServer) -> httpx.Response:
    return httpx.get(srv.issuer + "/readyz", timeout=15)


def _until(srv: LiveServer, status: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = _ready(srv)
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            return r
        time.sleep(0.3)


def test_readyz_and_healthz_on_sqlite(srv: LiveServer) -> None:
    r = _ready(srv)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert set(body["checks"]) == {"database", "migrations", "keys"}
    assert all(c["ok"] for c in body["checks"].values())
    db = srv.data_dir / "tessera.db"
    away = db.with_name("tessera.db.away")
    db.rename(away)
    try:
        r = _until(srv, 503)
        assert r.json()["failing"] == ["database", "migrations"] and r.json()["status"] == "unready"
        assert httpx.get(srv.issuer + "/healthz", timeout=10).status_code == 200  # alive all the same
    finally:
        away.rename(db)
    assert _until(srv, 200).json()["failing"] == []


def test_readyz_follows_postgresql_going_away_and_back(tmp_path: pathlib.Path) -> None:
    pg = Postgres()
    url = pg.start()
    if pg.dir is None:
        pytest.skip("TESSERA_TEST_POSTGRES_URL names a server this test cannot stop")
    assert url
    s = LiveServer(tmp_path / "data", extra_env={"TESSERA_DATABASE_URL": pg.create_database()}).start()
    data = str(pg.dir / "data")
    ctl = [*pg._as, pg._bin("pg_ctl"), "-D", data]
    try:
        assert _ready(s).status_code == 200
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        r = _until(s, 503)
        assert "database" in r.json()["failing"] and not r.json()["checks"]["database"]["ok"]
        assert r.json()["checks"]["keys"]["ok"]  # the keys loaded before stay loaded
        opts = f"-p {pg.port} -k {pg.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run([*ctl, "-l", str(pg.dir / "log"), "-w", "-o", opts, "start"], check=True, capture_output=True)
        r = _until(s, 200)
        assert r.json()["checks"]["database"]["ok"] and r.json()["checks"]["migrations"]["ok"]
    finally:
        s.stop()
        pg.stop()


def test_readyz_fails_past_the_key_rotation_deadline(tmp_path: pathlib.Path) -> None:
    s = LiveServer(tmp_path / "data", extra_env={"TESSERA_READYZ_KEY_MAX_AGE": "1"}).start()
    try:
        r = _until(s, 503, timeout=10)
        assert r.json()["failing"] == ["keys"] and "rotation deadline" in r.json()["checks"]["keys"]["detail"]
    finally:
        s.stop()


# -- several workers, and who may read /metrics -----------------------------------------------------------


def test_metrics_are_summed_across_workers(tmp_path: pathlib.Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    s = LiveServer(tmp_path / "data", extra_env={"TESSERA_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(prom)}).start()
    try:
        client = s.register()
        total = 60

        def one(_: int) -> int:
            with httpx.Client(timeout=15) as c:  # a new connection each: the kernel spreads them over workers
                return c.post(
                    s.token_endpoint,
                    data={"grant_type": "client_credentials"},
                    auth=(client["client_id"], client["client_secret"]),
                ).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(total))) == [200] * total
        # Each worker moves its counts to its own file at most a second later; then every scrape,
        # whichever worker answers it, shows the whole server's sum.
        deadline = time.monotonic() + 15
        while value(scrape(s), "tessera_tokens_issued_total", grant="client_credentials") != total:
            assert time.monotonic() < deadline, "the scrape never showed every token issued"
            time.sleep(0.3)
        seen = {value(scrape(s), "tessera_tokens_issued_total", grant="client_credentials") for _ in range(6)}
        assert seen == {float(total)}
        per_worker = {}
        for f in prom.glob("counter_*.db"):  # one file per worker process
            families = MultiProcessCollector._read_metrics([str(f)])  # the reader the scrape itself uses
            issued = families.get("tessera_tokens_issued")
            per_worker[f.name] = sum(x.value for x in issued.samples if x.name.endswith("_total")) if issued else 0
        assert sum(per_worker.values()) == total
        assert len([n for n in per_worker.values() if n > 0]) >= 2, per_worker  # both workers issued some
    finally:
        s.stop()


def test_metrics_access_settings(tmp_path: pathlib.Path) -> None:
    s = LiveServer(
        tmp_path / "a", extra_env={"TESSERA_METRICS": "token", "TESSERA_METRICS_TOKEN": "m-secret-1234"}
    ).start()
    try:
        r = httpx.get(s.issuer + "/metrics", timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(s.issuer + "/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert "tessera_http_requests_total" in str(scrape(s, Authorization="Bearer m-secret-1234"))
        assert "m-secret-1234" not in s.cli("config").stdout
    finally:
        s.stop()
    s = LiveServer(tmp_path / "b", extra_env={"TESSERA_METRICS": "disabled"}).start()
    try:
        assert httpx.get(s.issuer + "/metrics", timeout=10).status_code == 404
        assert httpx.get(s.issuer + "/healthz", timeout=10).headers["x-request-id"]
    finally:
        s.stop()
    bad = LiveServer(tmp_path / "c", extra_env={"TESSERA_METRICS": "token"})
    r = bad.cli("config")
    assert r.returncode != 0 and "metrics_token" in (r.stderr + r.stdout)
