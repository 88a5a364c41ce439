"""The server side of no-call-home verification: IETF draft-ietf-oauth-status-list-20, operator revocation,
key revocation and trust bundles, against live servers.

- §6.2: access tokens carry ``status.status_list`` {``idx``, ``uri``}; indices are random and never given
  twice (§12.4, §13.3), also with several processes on one PostgreSQL database or one SQLite file.
- §5.1 / §8.2: ``GET <uri>`` answers a Status List Token: ``typ: statuslist+jwt``, ``sub`` = the ``uri``,
  ``iat``, ``exp``, ``ttl``, ``status_list`` {``bits``, ``lst``}; ``application/statuslist+jwt``; cacheable;
  signed with the key relying parties already trust (PyJWT verifies it against the published JWKS).
- §9: the aggregation endpoint is in the server metadata and lists the live lists.
- A revoked token is INVALID (0x01) at its index: through the admin API and the CLI (by jti, client,
  subject or the token itself), by deleting its client, and by revoking its signing key.
- ``tessera bundle export``: a signed bundle of metadata, JWKS and status list tokens (PyJWT verifies it).
"""

from __future__ import annotations

import base64
import json
import pathlib
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from status_support import (
    audit,
    basic,
    entry,
    fetch_list,
    header,
    issue,
    payload,
    status_at,
    status_of,
    wait_for_status,
)
from support import LiveServer, Postgres
from tessera.oauth.keys import KEK

STATUS_TYP = "statuslist+jwt"


def verify_with_jwks(token: str, jwks: dict[str, Any], **options: Any) -> dict[str, Any]:
    """PyJWT as the relying party: the key chosen by kid from the JWK Set, ES256 only."""
    keys = {k.key_id: k for k in pyjwt.PyJWKSet.from_dict(jwks).keys}
    key = keys[pyjwt.get_unverified_header(token)["kid"]]
    return dict(pyjwt.decode(token, key.key, algorithms=["ES256"], **options))


def jwks_of(server: LiveServer) -> dict[str, Any]:
    return dict(httpx.get(server.issuer + "/oauth/jwks", timeout=10).json())


def list_size(token: str) -> int:
    sl = payload(token)["status_list"]
    return len(zlib.decompress(base64.urlsafe_b64decode(sl["lst"] + "=="))) * 8 // sl["bits"]


@pytest.fixture(scope="module")
def client(server: LiveServer) -> dict[str, Any]:
    return server.register(scope="read write")


# -- the status claim ---------------------------------------------------------------------------------------


def test_tokens_carry_random_distinct_status_entries(server: LiveServer, client: dict[str, Any]) -> None:
    tokens = [issue(server, client) for _ in range(30)]
    entries = [entry(t) for t in tokens]
    uris = {uri for uri, _ in entries}
    assert len(uris) == 1
    uri = uris.pop()
    assert uri.startswith(server.issuer + "/oauth/status/") and uri.rsplit("/", 1)[1].isdigit()
    indices = [idx for _, idx in entries]
    assert all(isinstance(i, int) and 0 <= i < 131072 for i in indices)
    assert len(set(indices)) == 30
    assert indices != sorted(indices) and indices != sorted(indices, reverse=True)
    assert max(indices) - min(indices) > 30  # not a run of consecutive entries
    for t in tokens:
        assert payload(t)["status"] == {"status_list": {"idx": entry(t)[1], "uri": uri}}
        assert status_of(t) == 0


def test_status_list_settings(tmp_path: pathlib.Path) -> None:
    # Only tokens living at least TESSERA_STATUS_LIST_MIN_LIFETIME seconds get an entry.
    srv = LiveServer(
        tmp_path / "a", extra_env={"TESSERA_STATUS_LIST_MIN_LIFETIME": "600", "TESSERA_STATUS_LIST_TTL": "30"}
    ).start()
    try:
        short = srv.register(access_token_lifetime=599)
        long = srv.register(access_token_lifetime=600)
        assert "status" not in payload(issue(srv, short))
        token = issue(srv, long)
        uri, _ = entry(token)
        r = httpx.get(uri, timeout=10)
        assert r.headers["cache-control"] == "public, max-age=30"
        claims = payload(r.text)
        assert (claims["ttl"], claims["exp"] - claims["iat"]) == (30, 300)
    finally:
        srv.stop()
    srv = LiveServer(tmp_path / "b", extra_env={"TESSERA_STATUS_LISTS": "false"}).start()
    try:
        assert "status" not in payload(issue(srv, srv.register()))
        assert httpx.get(srv.issuer + "/oauth/status", timeout=10).json() == {"status_lists": []}
        assert httpx.get(srv.issuer + "/oauth/status/1", timeout=10).status_code == 404
    finally:
        srv.stop()


# -- the status list token ----------------------------------------------------------------------------------


def test_status_list_token_fields_headers_and_signature(server: LiveServer, client: dict[str, Any]) -> None:
    token = issue(server, client)
    uri, idx = entry(token)
    before = int(time.time())
    r = httpx.get(uri, headers={"Accept": "application/statuslist+jwt"}, timeout=10)
    after = int(time.time())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/statuslist+jwt"
    assert r.headers["cache-control"] == "public, max-age=60"
    assert r.headers["access-control-allow-origin"] == "*"
    assert header(r.text) == {"alg": "ES256", "kid": header(token)["kid"], "typ": STATUS_TYP}
    claims = verify_with_jwks(r.text, jwks_of(server), options={"require": ["iat", "exp", "sub"]})
    assert set(claims) == {"iss", "sub", "iat", "exp", "ttl", "status_list"}
    assert claims["iss"] == server.issuer
    assert claims["sub"] == uri  # §5.1: "MUST be equal to that of the uri claim" of the Referenced Token
    assert before - 2 <= claims["iat"] <= after + 2
    assert claims["exp"] == claims["iat"] + 600
    assert claims["ttl"] == 60
    assert claims["status_list"] == {
        "bits": 2,
        "lst": claims["status_list"]["lst"],
        "aggregation_uri": server.issuer + "/oauth/status",
    }
    assert list_size(r.text) == 131072
    assert status_at(claims["status_list"]["lst"], 2, idx) == 0


def test_gzip_content_encoding_is_offered(server: LiveServer, client: dict[str, Any]) -> None:
    uri, _ = entry(issue(server, client))
    plain = httpx.get(uri, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "content-encoding" not in plain.headers
    assert plain.content.count(b".") == 2
    zipped = httpx.get(uri, headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert zipped.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["vary"]
    assert zipped.text.count(".") == 2  # httpx decoded it


def test_unknown_lists_and_unsupported_requests(server: LiveServer, client: dict[str, Any]) -> None:
    uri, _ = entry(issue(server, client))
    for path in (
        "/oauth/status/999999",
        "/oauth/status/abc",
        "/oauth/status/-1",
        "/oauth/status/1.5",
        "/oauth/status/0",
        "/oauth/status/99999999999999999999",
    ):
        r = httpx.get(server.issuer + path, timeout=10)
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"
    # §8.4: historical resolution is not offered: "SHOULD return a status code of 501 (Not Implemented)".
    assert httpx.get(uri, params={"time": "1700000000"}, timeout=10).status_code == 501
    # §8.1: the relying party names the format it wants; only the JWT format is served.
    assert httpx.get(uri, headers={"Accept": "application/statuslist+cwt"}, timeout=10).status_code == 406
    assert httpx.get(uri, headers={"Accept": "application/statuslist+jwt;q=0"}, timeout=10).status_code == 406
    for accept in ("application/*", "*/*", "application/statuslist+cwt, application/statuslist+jwt;q=0.5"):
        assert httpx.get(uri, headers={"Accept": accept}, timeout=10).status_code == 200, accept
    assert httpx.post(uri, timeout=10).status_code == 405


def test_aggregation_endpoint(server: LiveServer, client: dict[str, Any]) -> None:
    uri, _ = entry(issue(server, client))
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert md["status_list_aggregation_endpoint"] == server.issuer + "/oauth/status"
    r = httpx.get(md["status_list_aggregation_endpoint"], timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"status_lists": [uri]}


# -- revocation shows in the list ---------------------------------------------------------------------------


def test_rfc7009_revocation_shows_on_the_next_fetch(server: LiveServer, client: dict[str, Any]) -> None:
    token, neighbour = issue(server, client), issue(server, client)
    uri, idx = entry(token)
    before = payload(fetch_list(uri))["status_list"]
    assert status_at(before["lst"], before["bits"], idx) == 0
    r = httpx.post(server.issuer + "/oauth/revoke", data={"token": token}, auth=basic(client), timeout=10)
    assert r.status_code == 200
    after = verify_with_jwks(fetch_list(uri), jwks_of(server))["status_list"]
    assert status_at(after["lst"], after["bits"], idx) == 1
    assert status_at(after["lst"], after["bits"], entry(neighbour)[1]) == 0


def test_admin_revocation_by_jti_client_subject_and_token(server: LiveServer) -> None:
    a, b = server.register(), server.register()
    with server.admin() as admin:
        t1, t2 = issue(server, a), issue(server, a)
        assert admin.post("/tokens/revoke", json={"jti": payload(t1)["jti"]}).json() == {"revoked": 1}
        assert (status_of(t1), status_of(t2)) == (1, 0)
        assert admin.post("/tokens/revoke", json={"jti": payload(t1)["jti"]}).json() == {"revoked": 0}
        assert admin.post("/tokens/revoke", json={"token": t2}).json() == {"revoked": 1}
        assert status_of(t2) == 1
        b_tokens = [issue(server, b) for _ in range(3)]
        assert admin.post("/tokens/revoke", json={"client_id": b["client_id"]}).json() == {
            "revoked": 3,
            "approvals_cancelled": 0,
        }
        assert [status_of(t) for t in b_tokens] == [1, 1, 1]
        t3 = issue(server, a)
        assert admin.post("/tokens/revoke", json={"sub": a["client_id"]}).json() == {"revoked": 1}
        assert status_of(t3) == 1
        assert admin.post("/tokens/revoke", json={"client_id": "nobody"}).json() == {
            "revoked": 0,
            "approvals_cancelled": 0,
        }
        for body in (
            {},
            {"jti": "x", "sub": "y"},
            {"kid": "k"},
            {"jti": ""},
            {"jti": 5},
            {"token": "garbage"},
            [],
            "jti",
            {"jti": "x" * 257},
        ):
            r = admin.post("/tokens/revoke", json=body)
            assert r.status_code == 400, body
            assert r.json()["error"] == "invalid_request"
        r = httpx.post(server.issuer + "/admin/tokens/revoke", json={"jti": "x"}, timeout=10)
        assert r.status_code == 401
    records = [r for r in audit(server, "token.revoked") if r["actor"] == "admin"]
    by_selector = {json.dumps(r["data"]["selector"], sort_keys=True): r["data"]["count"] for r in records}
    assert by_selector[json.dumps({"client_id": b["client_id"]})] == 3
    assert by_selector[json.dumps({"client_id": "nobody"})] == 0
    assert by_selector[json.dumps({"sub": a["client_id"]})] == 1


def test_cli_revocation(server: LiveServer) -> None:
    a = server.register()
    t_jti, t_token = issue(server, a), issue(server, a)
    r = server.cli("tokens", "revoke", "--jti", payload(t_jti)["jti"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"revoked": 1}
    assert wait_for_status(t_jti, 1) == 1
    r = server.cli("tokens", "revoke", "--token", t_token)
    assert json.loads(r.stdout) == {"revoked": 1}
    assert wait_for_status(t_token, 1) == 1
    t_sub = issue(server, a)
    r = server.cli("tokens", "revoke", "--subject", a["client_id"])
    assert json.loads(r.stdout) == {"revoked": 1}
    assert wait_for_status(t_sub, 1) == 1
    clients_tokens = [issue(server, a) for _ in range(2)]
    r = server.cli("tokens", "revoke", "--client", a["client_id"])
    assert json.loads(r.stdout) == {"revoked": 2}
    assert [wait_for_status(t, 1) for t in clients_tokens] == [1, 1]
    assert server.cli("tokens", "revoke").returncode == 2
    assert server.cli("tokens", "revoke", "--jti", "x", "--client", "y").returncode == 2
    r = server.cli("tokens", "revoke", "--token", "garbage")
    assert r.returncode == 1
    assert "not an access token issued by this server" in r.stderr
    assert [r["data"]["via"] for r in audit(server, "token.revoked") if r["actor"] == "cli"] == ["cli"] * 4


def test_deleting_a_client_revokes_its_tokens(server: LiveServer) -> None:
    survivor = server.register()
    kept = issue(server, survivor)
    # The admin API …
    gone = server.register()
    tokens = [issue(server, gone) for _ in range(2)]
    with server.admin() as admin:
        assert admin.delete(f"/clients/{gone['client_id']}").status_code == 204
    assert [status_of(t) for t in tokens] == [1, 1]
    # … RFC 7592 …
    gone2 = server.register()
    tokens2 = [issue(server, gone2) for _ in range(2)]
    r = httpx.delete(
        gone2["registration_client_uri"],
        timeout=10,
        headers={"Authorization": "Bearer " + gone2["registration_access_token"]},
    )
    assert r.status_code == 204
    assert [status_of(t) for t in tokens2] == [1, 1]
    # … and the CLI (another process: the list shows it within the one-second cache).
    gone3 = server.register()
    tokens3 = [issue(server, gone3) for _ in range(2)]
    r = server.cli("clients", "remove", gone3["client_id"])
    assert r.returncode == 0, r.stderr
    assert [wait_for_status(t, 1) for t in tokens3] == [1, 1]
    assert status_of(kept) == 0
    records = {r["subject"]: r["data"] for r in audit(server, "token.revoked")}
    for c, via in ((gone, "admin"), (gone2, "rfc7592"), (gone3, "cli")):
        assert records[c["client_id"]]["count"] == 2
        assert records[c["client_id"]]["via"] == via
        assert records[c["client_id"]]["selector"] == {"client_id": c["client_id"]}


# -- key revocation ------------------------------------------------------------------------------------------


def test_revoking_the_active_key(fresh_server: LiveServer) -> None:
    srv = fresh_server
    c = srv.register()
    old = issue(srv, c)
    old_kid = header(old)["kid"]
    with srv.admin() as admin:
        states = {k["kid"]: k["state"] for k in admin.get("/keys").json()}
        next_kid = next(k for k, s in states.items() if s == "next")
        r = admin.post(f"/keys/{old_kid}/revoke")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["revoked"] == 1
        assert [e["event"] for e in body["events"]] == ["key.revoked", "key.activated", "key.created"]
        assert body["events"][0] == {"event": "key.revoked", "kid": old_kid, "alg": "ES256", "previous_state": "active"}
        assert body["events"][1]["kid"] == next_kid  # the pre-published next key, promoted first
        states = {k["kid"]: k["state"] for k in admin.get("/keys").json()}
        assert states[old_kid] == "removed" and states[next_kid] == "active"
        assert admin.post(f"/keys/{old_kid}/revoke").status_code == 404
        assert admin.post("/keys/no-such-kid/revoke").json()["error"] == "not_found"
    jwks = jwks_of(srv)
    assert old_kid not in {k["kid"] for k in jwks["keys"]}  # gone from the JWKS at once
    new = issue(srv, c)
    assert header(new)["kid"] == next_kid  # signing went on
    list_token = fetch_list(entry(old)[0])
    assert header(list_token)["kid"] == next_kid
    sl = verify_with_jwks(list_token, jwks)["status_list"]
    assert status_at(sl["lst"], sl["bits"], entry(old)[1]) == 1
    assert status_at(sl["lst"], sl["bits"], entry(new)[1]) == 0
    r = httpx.post(srv.issuer + "/oauth/introspect", data={"token": old}, auth=basic(c), timeout=10)
    assert r.json() == {"active": False}
    revoked = [r for r in audit(srv, "token.revoked") if r["data"]["via"] == "key.revoked"]
    assert revoked[0]["data"]["selector"] == {"kid": old_kid} and revoked[0]["data"]["count"] == 1
    # The CLI revokes the next key: it leaves the JWKS (running servers reload keys every few seconds).
    with srv.admin() as admin:
        nxt = next(k["kid"] for k in admin.get("/keys").json() if k["state"] == "next")
    r = srv.cli("keys", "revoke", nxt)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["key.revoked", "key.created", "token.revoked"]
    deadline = time.monotonic() + 20
    while nxt in {k["kid"] for k in jwks_of(srv)["keys"]} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nxt not in {k["kid"] for k in jwks_of(srv)["keys"]}
    assert events[1]["kid"] in {k["kid"] for k in jwks_of(srv)["keys"]}
    r = srv.cli("keys", "revoke", nxt)
    assert r.returncode == 1 and "already removed" in r.stderr


# -- trust bundles -------------------------------------------------------------------------------------------


def test_bundle_export_round_trip(server: LiveServer, client: dict[str, Any], tmp_path: pathlib.Path) -> None:
    revoked, valid = issue(server, client), issue(server, client)
    assert (
        httpx.post(server.issuer + "/oauth/revoke", data={"token": revoked}, auth=basic(client), timeout=10).status_code
        == 200
    )
    out = tmp_path / "bundle.jwt"
    r = server.cli("bundle", "export", "-o", str(out), "--lifetime", "3600")
    assert r.returncode == 0, r.stderr
    value = out.read_text().strip()
    jwks = jwks_of(server)
    assert header(value) == {"alg": "ES256", "kid": header(valid)["kid"], "typ": "tessera-bundle+jwt"}
    bundle = verify_with_jwks(value, jwks, options={"require": ["iss", "iat", "exp"]})
    assert set(bundle) == {"iss", "iat", "exp", "metadata", "jwks", "status_lists"}
    assert bundle["iss"] == server.issuer
    assert bundle["exp"] - bundle["iat"] == 3600
    assert bundle["metadata"] == httpx.get(server.issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert bundle["jwks"] == jwks
    live = httpx.get(server.issuer + "/oauth/status", timeout=10).json()["status_lists"]
    assert sorted(bundle["status_lists"]) == sorted(live)
    for uri, list_token in bundle["status_lists"].items():
        assert header(list_token)["typ"] == STATUS_TYP
        claims = verify_with_jwks(list_token, bundle["jwks"])
        assert claims["sub"] == uri
        assert claims["exp"] == bundle["exp"]  # usable offline as long as the bundle
    sl = payload(bundle["status_lists"][entry(revoked)[0]])["status_list"]
    assert status_at(sl["lst"], sl["bits"], entry(revoked)[1]) == 1
    assert status_at(sl["lst"], sl["bits"], entry(valid)[1]) == 0
    r = server.cli("bundle", "export")
    assert r.returncode == 0
    default = payload(r.stdout.strip())
    assert default["exp"] - default["iat"] == 86400
    assert server.cli("bundle", "export", "--lifetime", "59").returncode == 2
    assert server.cli("bundle", "export", "--lifetime", str(30 * 86400 + 1)).returncode == 2


# -- several processes ------------------------------------------------------------------------------------


def _issue_many(server: LiveServer, client: dict[str, Any], n: int) -> list[str]:
    local = threading.local()

    def one(_: int) -> str:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=30)
        r = local.http.post(server.token_endpoint, data={"grant_type": "client_credentials"}, auth=basic(client))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def _distinct_entries(tokens: list[str]) -> set[tuple[str, int]]:
    entries = {entry(t) for t in tokens}
    assert len(entries) == len(tokens)  # §13.3: no entry is given to two tokens
    return entries


@pytest.fixture
def pg_pair(tmp_path: pathlib.Path, postgres: Postgres) -> Iterator[tuple[LiveServer, LiveServer]]:
    db_url = postgres.create_database()
    env = {"TESSERA_DATABASE_URL": db_url, "TESSERA_KEK": KEK.generate_text(), "TESSERA_STATUS_LIST_SIZE": "3072"}
    a = LiveServer(tmp_path / "a", extra_env=env)
    b = LiveServer(
        tmp_path / "b",
        extra_env={
            **env,
            "TESSERA_ISSUER": a.issuer,
            "TESSERA_ADMIN_TOKEN": a.admin_token,
            "TESSERA_REGISTRATION_TOKEN": a.reg_token,
        },
    )
    b.admin_token, b.reg_token = a.admin_token, a.reg_token
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
    assert a.cli("audit", "verify").returncode == 0


@pytest.mark.postgres
def test_two_processes_on_postgresql_never_share_an_entry(pg_pair: tuple[LiveServer, LiveServer]) -> None:
    import psycopg

    a, b = pg_pair
    c = a.register()
    # Lists of 3072 entries in segments of 1024: each process claims a segment, then its next one in the
    # background; the fourth claim starts a second list.
    with ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda s: _issue_many(s, c, 800), (a, b)))
    tokens = batches[0] + batches[1]
    entries = _distinct_entries(tokens)
    with psycopg.connect(a.env["TESSERA_DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT status_list, status_idx FROM issued_tokens").fetchall()
        segments = conn.execute("SELECT list_id, segment, claimed_by FROM status_segments").fetchall()
        lists = conn.execute(
            "SELECT list_id, size, segment_size, segments_claimed FROM status_lists ORDER BY list_id"
        ).fetchall()
    assert {(f"{a.issuer}/oauth/status/{lst}", idx) for lst, idx in rows} == entries
    assert len(segments) == len({(lst, seg) for lst, seg, _ in segments}) >= 3
    assert len({who for _, _, who in segments}) == 2  # both processes claimed segments
    assert lists[0][1:3] == (3072, 1024)
    for lst, idx in rows:  # every entry lies in a segment of its list that was claimed
        assert (lst, idx // 1024) in {(s_lst, seg) for s_lst, seg, _ in segments}
    for uri in {uri for uri, _ in entries}:
        assert list_size(fetch_list(uri)) == 3072


def test_two_worker_processes_on_sqlite_never_share_an_entry(tmp_path: pathlib.Path) -> None:
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_WORKERS": "2", "TESSERA_STATUS_LIST_SIZE": "1024"})
    srv.start()
    try:
        c = srv.register()
        tokens = _issue_many(srv, c, 400)
        entries = _distinct_entries(tokens)
        assert all(0 <= idx < 1024 for _, idx in entries)
        for t in tokens[:3]:
            assert status_of(t) == 0
    finally:
        srv.stop()
    assert srv.cli("audit", "verify").returncode == 0
