"""The admin API (``/admin``): bearer admin token (RFC 6750), clients, signing keys and the audit log.

Errors have the RFC 6749 §5.2 shape ``{"error", "error_description"}``; the OpenAPI 3 document is
served at ``/admin/openapi.json``. No response ever carries a stored secret hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pathlib
import secrets
from typing import Any

import httpx
import jwt
import pytest

from support import LiveServer, ec_jwk, ec_key


def _error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    return body


def _token(server: LiveServer, client_id: str, secret: str, **form: str) -> httpx.Response:
    return httpx.post(
        server.token_endpoint, data={"grant_type": "client_credentials", **form}, auth=(client_id, secret), timeout=10
    )


def _audit(admin: httpx.Client) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    while page := admin.get("/audit", params={"after": records[-1]["seq"] if records else 0, "limit": 1000}).json():
        records += page
    return records


def _no_secret_hash(text: str, *secrets_: str) -> None:
    for s in secrets_:
        assert s not in text
        assert hashlib.sha256(s.encode()).hexdigest() not in text
    assert "secret_hash" not in text and "registration_token_hash" not in text


# -- authentication -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Basic YWRtaW46YWRtaW4=", "Bearer"],
    ids=["missing", "wrong", "basic-scheme", "empty"],
)
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/clients"),
        ("POST", "/clients"),
        ("GET", "/keys"),
        ("POST", "/keys/rotate"),
        ("GET", "/audit"),
        ("GET", "/audit/verify"),
        ("DELETE", "/clients/x"),
        ("POST", "/clients/x/secret"),
    ],
)
def test_admin_token_is_required(server: LiveServer, authorization: str | None, method: str, path: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    r = httpx.request(method, server.issuer + "/admin" + path, headers=headers, json={}, timeout=10)
    _error(r, 401, "invalid_token")
    assert r.headers["www-authenticate"].startswith("Bearer ")


def test_bearer_scheme_is_case_insensitive(server: LiveServer) -> None:
    r = httpx.get(server.issuer + "/admin/keys", headers={"Authorization": f"bearer {server.admin_token}"}, timeout=10)
    assert r.status_code == 200, r.text


def test_admin_api_is_disabled_without_an_admin_token(tmp_path: pathlib.Path) -> None:
    # An empty TESSERA_ADMIN_TOKEN counts as unset: the API is off, whatever token is presented.
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_ADMIN_TOKEN": ""}).start()
    try:
        for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": f"Bearer {srv.admin_token}"}):
            _error(httpx.get(srv.issuer + "/admin/clients", headers=headers, timeout=10), 403, "access_denied")
        _error(
            httpx.post(srv.issuer + "/admin/keys/rotate", headers={"Authorization": "Bearer x"}, timeout=10),
            403,
            "access_denied",
        )
    finally:
        srv.stop()


# -- OpenAPI ------------------------------------------------------------------------------------------------


def test_openapi_document_is_valid_openapi_3(server: LiveServer) -> None:
    from openapi_spec_validator import validate

    with server.admin() as admin:
        r = admin.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    validate(doc)
    assert {s["url"] for s in doc.get("servers", [])} == {"/admin"}
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ops >= {
        ("GET", "/clients"),
        ("POST", "/clients"),
        ("GET", "/clients/{client_id}"),
        ("PUT", "/clients/{client_id}"),
        ("DELETE", "/clients/{client_id}"),
        ("POST", "/clients/{client_id}/secret"),
        ("GET", "/keys"),
        ("POST", "/keys/rotate"),
        ("GET", "/audit"),
        ("GET", "/audit/verify"),
    }


def test_openapi_document_declares_bearer_auth_and_real_error_codes(server: LiveServer) -> None:
    with server.admin() as admin:
        doc = admin.get("/openapi.json").json()
    schemes = doc.get("components", {}).get("securitySchemes", {})
    bearer = [name for name, s in schemes.items() if s.get("type") == "http" and s.get("scheme") == "bearer"]
    assert bearer
    for item in doc["paths"].values():
        for op in item.values():
            assert any(name in req for req in op.get("security", doc.get("security", [])) for name in bearer)
            assert "422" not in op["responses"]


# -- clients ------------------------------------------------------------------------------------------------


def test_client_crud(server: LiveServer) -> None:
    cid = "admin-crud-" + secrets.token_hex(4)
    with server.admin() as admin:
        r = admin.post(
            "/clients",
            json={
                "client_id": cid,
                "token_endpoint_auth_method": "client_secret_basic",
                "scope": "read write",
                "client_name": "crud",
            },
        )
        assert r.status_code == 201, r.text
        created = r.json()
        secret = created["client_secret"]
        assert created["client_id"] == cid
        assert created["source"] == "admin"
        assert created["scope"] == "read write"
        assert created["grant_types"] == ["client_credentials"]
        assert len(secret) >= 32
        _no_secret_hash(r.text)
        assert _token(server, cid, secret).status_code == 200

        r = admin.get(f"/clients/{cid}")
        assert r.status_code == 200
        shown = r.json()
        assert "client_secret" not in shown
        assert {k: shown[k] for k in ("client_id", "scope", "client_name", "source")} == {
            "client_id": cid,
            "scope": "read write",
            "client_name": "crud",
            "source": "admin",
        }
        _no_secret_hash(r.text, secret)

        listed = admin.get("/clients", params={"limit": 1000})
        assert listed.status_code == 200
        assert cid in [c["client_id"] for c in listed.json()]
        _no_secret_hash(listed.text, secret)

        r = admin.put(f"/clients/{cid}", json={"token_endpoint_auth_method": "client_secret_basic", "scope": "read"})
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "read"
        assert "client_name" not in r.json()  # PUT replaces the metadata
        assert "client_secret" not in r.json()
        _no_secret_hash(r.text, secret)
        assert _token(server, cid, secret).json()["scope"] == "read"
        _error(_token(server, cid, secret, scope="write"), 400, "invalid_scope")

        r = admin.delete(f"/clients/{cid}")
        assert r.status_code == 204
        _error(admin.get(f"/clients/{cid}"), 404, "not_found")
        _error(admin.delete(f"/clients/{cid}"), 404, "not_found")
        _error(admin.put(f"/clients/{cid}", json={"scope": "read"}), 404, "not_found")
        _error(_token(server, cid, secret), 401, "invalid_client")


def test_client_listing_pages_by_client_id(server: LiveServer) -> None:
    prefix = "page-" + secrets.token_hex(3)
    ids = [f"{prefix}-{i}" for i in range(3)]
    with server.admin() as admin:
        for cid in ids:
            assert admin.post("/clients", json={"client_id": cid}).status_code == 201
        first = admin.get("/clients", params={"after": f"{prefix}-", "limit": 2}).json()
        assert [c["client_id"] for c in first] == ids[:2]
        rest = admin.get("/clients", params={"after": ids[1], "limit": 2}).json()
        assert rest[0]["client_id"] == ids[2]
        _error(admin.get("/clients", params={"limit": 0}), 400, "invalid_request")


def test_private_key_jwt_client_has_no_secret(server: LiveServer) -> None:
    with server.admin() as admin:
        r = admin.post(
            "/clients",
            json={"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [ec_jwk(ec_key(), "k1")]}},
        )
        assert r.status_code == 201, r.text
        assert "client_secret" not in r.json()
        cid = r.json()["client_id"]
        _error(admin.post(f"/clients/{cid}/secret"), 400, "invalid_request")
        # switching to a secret method issues a secret, once
        r = admin.put(f"/clients/{cid}", json={"token_endpoint_auth_method": "client_secret_post"})
        assert r.status_code == 200, r.text
        secret = r.json()["client_secret"]
    r = httpx.post(
        server.token_endpoint,
        timeout=10,
        data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
    )
    assert r.status_code == 200, r.text


def test_secret_rotation(server: LiveServer) -> None:
    with server.admin() as admin:
        created = admin.post("/clients", json={"scope": "read"}).json()
        cid, old = created["client_id"], created["client_secret"]
        assert _token(server, cid, old).status_code == 200
        r = admin.post(f"/clients/{cid}/secret")
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"client_id", "client_secret"}
        new = r.json()["client_secret"]
        assert new != old and len(new) >= 32
        _error(_token(server, cid, old), 401, "invalid_client")
        assert _token(server, cid, new).status_code == 200
        _error(admin.post("/clients/no-such-client/secret"), 404, "not_found")
        records = _audit(admin)
    rotated = [r for r in records if r["event"] == "client.secret_rotated" and r["subject"] == cid]
    assert len(rotated) == 1
    _no_secret_hash(json.dumps(records), old, new)


def test_broken_json_is_invalid_request(server: LiveServer) -> None:
    with server.admin() as admin:
        for raw in (b'{"scope": ', b"[]", b'"text"'):
            _error(
                admin.post("/clients", content=raw, headers={"Content-Type": "application/json"}),
                400,
                "invalid_request",
            )
        cid = admin.post("/clients", json={}).json()["client_id"]
        _error(
            admin.put(f"/clients/{cid}", content=b"{", headers={"Content-Type": "application/json"}),
            400,
            "invalid_request",
        )


@pytest.mark.parametrize(
    "metadata",
    [
        {"grant_types": ["password"]},
        {"token_endpoint_auth_method": "none"},
        {"token_endpoint_auth_method": "private_key_jwt"},
        {"scope": 'read "write"'},
        {"access_token_lifetime": 1},
        {"allowed_resources": ["https://api.example.com#x"]},
        {"client_id": "bad id with spaces"},
        {"client_id": "x" * 257},
    ],
    ids=[
        "grant",
        "none",
        "pkjwt-no-keys",
        "scope",
        "lifetime",
        "resource-fragment",
        "client-id-chars",
        "client-id-long",
    ],
)
def test_invalid_metadata_is_invalid_client_metadata(server: LiveServer, metadata: dict[str, Any]) -> None:
    with server.admin() as admin:
        _error(admin.post("/clients", json=metadata), 400, "invalid_client_metadata")


def test_invalid_update_changes_nothing(server: LiveServer) -> None:
    with server.admin() as admin:
        cid = admin.post("/clients", json={"scope": "read"}).json()["client_id"]
        _error(admin.put(f"/clients/{cid}", json={"grant_types": ["implicit"]}), 400, "invalid_client_metadata")
        assert admin.get(f"/clients/{cid}").json()["scope"] == "read"


def test_duplicate_client_id_is_409(server: LiveServer) -> None:
    cid = "dup-" + secrets.token_hex(4)
    with server.admin() as admin:
        first = admin.post("/clients", json={"client_id": cid})
        assert first.status_code == 201
        _error(admin.post("/clients", json={"client_id": cid, "scope": "other"}), 409, "conflict")
        assert admin.get(f"/clients/{cid}").json().get("scope") is None
    assert _token(server, cid, first.json()["client_secret"]).status_code == 200


# -- keys ---------------------------------------------------------------------------------------------------


def test_keys_lists_active_and_next(server: LiveServer) -> None:
    with server.admin() as admin:
        r = admin.get("/keys")
    assert r.status_code == 200
    keys = r.json()
    assert sorted((k["alg"], k["state"]) for k in keys) == [("ES256", "active"), ("ES256", "next")]
    for k in keys:
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
    jwks = httpx.get(server.issuer + "/oauth/jwks", timeout=10).json()
    published = {k["kid"] for k in jwks["keys"]}
    assert {k["kid"] for k in keys if k["state"] in ("active", "next")} <= published
    assert "sealed_private" not in r.text and '"d"' not in r.text


def test_key_rotation(fresh_server: LiveServer) -> None:
    srv = fresh_server
    with srv.admin() as admin:
        before = {k["state"]: k for k in admin.get("/keys").json()}
        r = admin.post("/keys/rotate")
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        assert [e["event"] for e in events] == ["key.retired", "key.activated", "key.created"]
        assert events[0]["kid"] == before["active"]["kid"]
        assert events[1]["kid"] == before["next"]["kid"]
        new_next = events[2]["kid"]
        assert new_next not in (before["active"]["kid"], before["next"]["kid"])

        after = {k["kid"]: k for k in admin.get("/keys").json()}
        assert after[before["active"]["kid"]]["state"] == "retired"
        assert after[before["active"]["kid"]]["remove_after"] == events[0]["remove_after"]
        assert after[before["next"]["kid"]]["state"] == "active"
        assert after[new_next]["state"] == "next"

        # the serving process reloaded at once: the new active key signs, all three are published
        published = {k["kid"] for k in httpx.get(srv.issuer + "/oauth/jwks", timeout=10).json()["keys"]}
        assert published == {before["active"]["kid"], before["next"]["kid"], new_next}
        created = admin.post("/clients", json={}).json()
        tok = _token(srv, created["client_id"], created["client_secret"])
        assert tok.status_code == 200, tok.text
        assert jwt.get_unverified_header(tok.json()["access_token"])["kid"] == before["next"]["kid"]

        _error(admin.post("/keys/rotate", params={"alg": "HS256"}), 400, "invalid_request")
        assert [e["event"] for e in _audit(admin) if e["actor"] == "admin" and e["event"].startswith("key.")] == [
            "key.retired",
            "key.activated",
            "key.created",
        ]


# -- audit --------------------------------------------------------------------------------------------------


def test_audit_paging_and_verify(server: LiveServer) -> None:
    with server.admin() as admin:
        for _ in range(3):  # make sure there are records to page through
            assert admin.post("/clients", json={}).status_code == 201
        everything = admin.get("/audit", params={"limit": 1000}).json()
        assert len(everything) >= 5
        assert [r["seq"] for r in everything] == list(range(1, len(everything) + 1))
        for prev, rec in itertools.pairwise(everything):
            assert rec["prev"] == prev["hash"]
        for rec in everything:
            assert set(rec) == {"seq", "ts", "event", "actor", "subject", "data", "prev", "hash"}

        assert admin.get("/audit", params={"limit": 2}).json() == everything[:2]
        assert admin.get("/audit", params={"after": 2, "limit": 2}).json() == everything[2:4]
        assert admin.get("/audit", params={"after": everything[-1]["seq"] + 1000}).json() == []
        paged, after = [], 0
        while True:
            page = admin.get("/audit", params={"after": after, "limit": 2}).json()
            if not page:
                break
            paged += page
            after = page[-1]["seq"]
        assert paged[: len(everything)] == everything

        for bad in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"limit": "x"}):
            _error(admin.get("/audit", params=bad), 400, "invalid_request")

        r = admin.get("/audit/verify")
        assert r.status_code == 200
        report = r.json()
        assert report["ok"] is True
        assert report["first_bad_seq"] is None and report["reason"] is None
        assert report["checked"] >= len(everything)
        last = admin.get("/audit", params={"after": report["checked"] - 1, "limit": 1}).json()[0]
        assert report["head"] == last["hash"]
