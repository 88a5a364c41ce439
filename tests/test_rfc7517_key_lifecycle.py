"""Signing keys and the JWK Set (RFC 7517; algorithms RFC 7518, RFC 8037; kid = RFC 7638 thumbprint).

Lifecycle next → active → retired → removed: the planning functions of ``tessera.oauth.keys`` with an
explicit ``now``, private keys sealed under the KEK, and end to end against a live server: tokens signed
before a rotation still verify through the published JWKS until their key is removed; a token from a
removed key does not. PyJWT and jwcrypto act as the relying parties.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from support import LiveServer, keys_by_state
from tessera.clock import FrozenClock
from tessera.oauth.jws import jwk_thumbprint, private_key_from_pem, sign_compact
from tessera.oauth.keys import (
    KEK,
    MAX_PUBLISHED_KEYS_PER_ALG,
    KekError,
    KeyPlan,
    KeyRecord,
    KeyRing,
    KeyState,
    TooManyKeys,
    new_key,
    plan_bootstrap,
    plan_rotation,
    plan_sweep,
    removal_time,
)
from tessera.runtime import open_runtime
from tessera.settings import load_settings

T0 = 1_800_000_000
ALGS = ["ES256", "RS256", "EdDSA"]
ROTATION = {"max_token_lifetime": 900, "refresh_interval": 5.0, "leeway": 30}


@pytest.fixture(scope="module")
def kek() -> KEK:
    return KEK.from_text(KEK.generate_text())


def apply(records: list[KeyRecord], plan: KeyPlan) -> list[KeyRecord]:
    """What the store does with a plan: update rows by kid, insert new ones."""
    by_kid = {r.kid: r for r in records}
    for r in plan.updates:
        assert r.kid in by_kid, "an update names a stored key"
        by_kid[r.kid] = r
    for r in plan.inserts:
        assert r.kid not in by_kid, "an insert is a new key"
        by_kid[r.kid] = r
    return list(by_kid.values())


def only(records: list[KeyRecord], alg: str, state: KeyState) -> KeyRecord:
    found = [r for r in records if r.alg == alg and r.state is state]
    assert len(found) == 1, (alg, state, found)
    return found[0]


# -- plan_bootstrap ---------------------------------------------------------------------------------------


def test_bootstrap_creates_an_active_and_a_next_key_per_alg(kek: KEK) -> None:
    plan = plan_bootstrap([], ALGS, kek, T0)
    assert plan.updates == []
    assert [(k.alg, k.state) for k in plan.inserts] == [
        (alg, state) for alg in ALGS for state in (KeyState.ACTIVE, KeyState.NEXT)
    ]
    for k in plan.inserts:
        assert k.created_at == T0
        assert k.activated_at == (T0 if k.state is KeyState.ACTIVE else None)
        assert k.retired_at is None and k.remove_after is None and k.removed_at is None
        assert k.kid == jwk_thumbprint(k.public_jwk)
        assert k.sealed_private is not None and b"PRIVATE KEY" not in k.sealed_private
    assert len({k.kid for k in plan.inserts}) == 6
    assert plan.events == [("key.created", {"kid": k.kid, "alg": k.alg, "state": k.state.value}) for k in plan.inserts]


def test_bootstrap_is_idempotent_and_fills_only_what_is_missing(kek: KEK) -> None:
    records = apply([], plan_bootstrap([], ["ES256"], kek, T0))
    again = plan_bootstrap(records, ["ES256"], kek, T0 + 10)
    assert (again.inserts, again.updates, again.events) == ([], [], [])

    without_next = [r for r in records if r.state is KeyState.ACTIVE]
    plan = plan_bootstrap(without_next, ["ES256"], kek, T0 + 10)
    assert [(k.alg, k.state, k.created_at) for k in plan.inserts] == [("ES256", KeyState.NEXT, T0 + 10)]

    # A newly configured algorithm gets its keys; the existing ones are left alone.
    plan = plan_bootstrap(records, ["ES256", "EdDSA"], kek, T0 + 20)
    assert [(k.alg, k.state) for k in plan.inserts] == [("EdDSA", KeyState.ACTIVE), ("EdDSA", KeyState.NEXT)]
    assert plan.updates == []


# -- plan_rotation ----------------------------------------------------------------------------------------


def test_removal_time_formula() -> None:
    # retired_at + longest token lifetime + key refresh interval (rounded down) + 1 + leeway
    assert removal_time(T0, 900, 5.0, 30) == T0 + 900 + 5 + 1 + 30
    assert removal_time(T0, 10, 0.5, 0) == T0 + 10 + 0 + 1 + 0
    assert removal_time(T0, 10, 2.9, 0) == T0 + 10 + 2 + 1  # the +1 covers the fraction
    assert removal_time(T0, 10, 2.9, 0) >= T0 + 10 + 2.9


def test_rotation_promotes_next_retires_active_and_creates_next(kek: KEK) -> None:
    records = apply([], plan_bootstrap([], ["ES256", "EdDSA"], kek, T0))
    active, nxt = only(records, "ES256", KeyState.ACTIVE), only(records, "ES256", KeyState.NEXT)
    now = T0 + 3600
    plan = plan_rotation(records, "ES256", kek, now, **ROTATION)

    retired = replace(active, state=KeyState.RETIRED, retired_at=now, remove_after=now + 900 + 5 + 1 + 30)
    promoted = replace(nxt, state=KeyState.ACTIVE, activated_at=now)
    assert plan.updates == [retired, promoted]
    assert len(plan.inserts) == 1
    fresh = plan.inserts[0]
    assert (fresh.alg, fresh.state, fresh.created_at, fresh.activated_at) == ("ES256", KeyState.NEXT, now, None)
    assert fresh.kid not in {r.kid for r in records}
    assert plan.events == [
        ("key.retired", {"kid": active.kid, "alg": "ES256", "remove_after": now + 936}),
        ("key.activated", {"kid": nxt.kid, "alg": "ES256"}),
        ("key.created", {"kid": fresh.kid, "alg": "ES256", "state": "next"}),
    ]
    # The retired key keeps its private half until it is removed; the promoted key keeps its kid and blob.
    assert retired.sealed_private == active.sealed_private
    assert promoted.sealed_private == nxt.sealed_private

    after = apply(records, plan)
    assert only(after, "ES256", KeyState.ACTIVE).kid == nxt.kid
    assert only(after, "ES256", KeyState.NEXT).kid == fresh.kid
    assert only(after, "ES256", KeyState.RETIRED).kid == active.kid
    # Other algorithms are untouched.
    assert [r for r in after if r.alg == "EdDSA"] == [r for r in records if r.alg == "EdDSA"]


def test_rotation_without_a_next_key_activates_a_new_one_at_once(kek: KEK) -> None:
    records = [r for r in apply([], plan_bootstrap([], ["ES256"], kek, T0)) if r.state is KeyState.ACTIVE]
    now = T0 + 60
    plan = plan_rotation(records, "ES256", kek, now, **ROTATION)
    assert [(k.state, k.activated_at) for k in plan.inserts] == [(KeyState.ACTIVE, now), (KeyState.NEXT, None)]
    assert [(k.kid, k.state) for k in plan.updates] == [(records[0].kid, KeyState.RETIRED)]
    after = apply(records, plan)
    assert sorted(r.state.value for r in after) == ["active", "next", "retired"]


def test_rotation_of_an_unconfigured_alg_touches_nothing_else(kek: KEK) -> None:
    records = apply([], plan_bootstrap([], ["ES256"], kek, T0))
    plan = plan_rotation(records, "EdDSA", kek, T0 + 1, **ROTATION)
    assert plan.updates == []
    assert all(k.alg == "EdDSA" for k in plan.inserts)


# -- plan_sweep --------------------------------------------------------------------------------------------


def test_sweep_removes_expired_retired_keys_and_erases_the_private_half(kek: KEK) -> None:
    records = apply([], plan_bootstrap([], ["ES256"], kek, T0))
    records = apply(records, plan_rotation(records, "ES256", kek, T0 + 100, **ROTATION))
    retired = only(records, "ES256", KeyState.RETIRED)
    assert retired.remove_after == T0 + 100 + 936

    early = plan_sweep(records, retired.remove_after - 1)
    assert (early.inserts, early.updates, early.events) == ([], [], [])

    plan = plan_sweep(records, retired.remove_after)
    assert plan.inserts == []
    assert plan.updates == [
        replace(retired, state=KeyState.REMOVED, removed_at=retired.remove_after, sealed_private=None)
    ]
    assert plan.events == [("key.removed", {"kid": retired.kid, "alg": "ES256"})]

    after = apply(records, plan)
    assert plan_sweep(after, retired.remove_after + 10_000).updates == [], "removed keys stay removed"
    assert only(after, "ES256", KeyState.ACTIVE) == only(records, "ES256", KeyState.ACTIVE)
    assert only(after, "ES256", KeyState.NEXT) == only(records, "ES256", KeyState.NEXT)


# -- KeyRing: what a process signs with and publishes ---------------------------------------------------------


def kids(ring: KeyRing) -> list[str]:
    return [k["kid"] for k in ring.jwks["keys"]]


def test_keyring_publishes_next_active_and_unexpired_retired_keys_never_removed(kek: KEK) -> None:
    records = apply([], plan_bootstrap([], ["ES256"], kek, T0))
    first_active = only(records, "ES256", KeyState.ACTIVE)
    records = apply(records, plan_rotation(records, "ES256", kek, T0 + 100, **ROTATION))
    active, nxt = only(records, "ES256", KeyState.ACTIVE), only(records, "ES256", KeyState.NEXT)
    retired = only(records, "ES256", KeyState.RETIRED)
    assert retired.kid == first_active.kid

    ring = KeyRing.from_records(records, kek, T0 + 100)
    assert kids(ring) == [active.kid, nxt.kid, retired.kid]
    assert ring.signer("ES256").kid == active.kid
    for published, rec in zip(ring.jwks["keys"], [active, nxt, retired], strict=True):
        assert published == {**rec.public_jwk, "kid": rec.kid, "alg": "ES256", "use": "sig"}
        assert "d" not in published
    with pytest.raises(LookupError, match="no active RS256 signing key"):
        ring.signer("RS256")

    # Published up to the second before remove_after; not at remove_after, even before a sweep.
    assert retired.kid in kids(KeyRing.from_records(records, kek, retired.remove_after - 1))
    assert retired.kid not in kids(KeyRing.from_records(records, kek, retired.remove_after))

    swept = apply(records, plan_sweep(records, retired.remove_after))
    for now in (T0, retired.remove_after + 1):
        assert kids(KeyRing.from_records(swept, kek, now)) == [active.kid, nxt.kid]


def test_rotation_past_the_jwks_cap_is_refused_rather_than_dropping_a_live_key(kek: KEK) -> None:
    """Retired keys must stay published until their tokens expire: the cap refuses the rotation instead."""
    records = apply([], plan_bootstrap([], ["ES256", "EdDSA"], kek, T0))
    for i in range(1, 5):  # active + next + 4 retired = 6 published
        records = apply(records, plan_rotation(records, "ES256", kek, T0 + i, **ROTATION))
    with pytest.raises(TooManyKeys, match="revoke it instead"):
        plan_rotation(records, "ES256", kek, T0 + 5, **ROTATION)
    ring = KeyRing.from_records(records, kek, T0 + 10)
    es = [k["kid"] for k in ring.jwks["keys"] if k["alg"] == "ES256"]
    retired = sorted((r for r in records if r.state is KeyState.RETIRED), key=lambda r: -(r.retired_at or 0))
    assert len(es) == MAX_PUBLISHED_KEYS_PER_ALG == 6
    assert es == [
        only(records, "ES256", KeyState.ACTIVE).kid,
        only(records, "ES256", KeyState.NEXT).kid,
        *[r.kid for r in retired],
    ], "active, next, then the most recently retired"
    assert [k["alg"] for k in ring.jwks["keys"]].count("EdDSA") == 2, "the cap is per algorithm"
    # Once the oldest retired key's tokens have expired it leaves, and rotation is possible again.
    later = max(r.remove_after or 0 for r in retired[-1:])
    records = apply(records, plan_sweep(records, later))
    plan_rotation(records, "ES256", kek, later, **ROTATION)


def test_keyring_caps_what_it_publishes_even_for_stored_records(kek: KEK) -> None:
    """Records written by other means (older versions, manual repair) are still capped per algorithm."""
    records = apply([], plan_bootstrap([], ["ES256"], kek, T0))
    extra = [
        replace(new_key("ES256", KeyState.RETIRED, kek, T0), retired_at=T0 + i, remove_after=T0 + 10_000)
        for i in range(8)
    ]
    ring = KeyRing.from_records(records + extra, kek, T0 + 10)
    assert len(ring.jwks["keys"]) == MAX_PUBLISHED_KEYS_PER_ALG


def test_keyring_never_publishes_removed_keys(kek: KEK) -> None:
    k = new_key("ES256", KeyState.NEXT, kek, T0)
    removed = replace(k, state=KeyState.REMOVED, sealed_private=None, removed_at=T0 + 5)
    retired_forever = replace(k, kid="other", state=KeyState.RETIRED, retired_at=T0, remove_after=None)
    ring = KeyRing.from_records([removed, retired_forever], kek, T0 + 10)
    assert kids(ring) == ["other"]
    assert ring.active == {}


# -- the key-encryption key ------------------------------------------------------------------------------------


def test_kek_text_is_32_bytes_of_unpadded_base64url() -> None:
    text = KEK.generate_text()
    assert len(text) == 43 and "=" not in text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert KEK.generate_text() != text
    KEK.from_text(text + "=\n")  # padding and surrounding white space are tolerated


@pytest.mark.parametrize("text", ["", "c2hvcnQ", "A" * 42, "A" * 44, "A" * 64, "!!!!"])
def test_malformed_kek_refused(text: str) -> None:
    with pytest.raises(KekError):
        KEK.from_text(text)
    with pytest.raises(KekError, match="exactly 32 bytes"):
        KEK(b"\x00" * 16)


def test_seal_and_open(kek: KEK) -> None:
    blob = kek.seal(b"private key bytes", b"kid-1")
    assert blob.startswith(b"v1") and b"private key bytes" not in blob
    assert kek.seal(b"private key bytes", b"kid-1") != blob, "a fresh nonce every time"
    assert kek.open(blob, b"kid-1") == b"private key bytes"

    with pytest.raises(KekError, match="wrong TESSERA_KEK"):
        KEK.from_text(KEK.generate_text()).open(blob, b"kid-1")
    with pytest.raises(KekError):
        kek.open(blob, b"kid-2")  # the kid is the associated data
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KekError):
        kek.open(tampered, b"kid-1")
    with pytest.raises(KekError, match="unknown format"):
        kek.open(b"v2" + blob[2:], b"kid-1")
    with pytest.raises(KekError, match="unknown format"):
        kek.open(b"v1short", b"kid-1")


def test_sealed_key_opens_only_under_its_own_kid_and_kek(kek: KEK) -> None:
    a = new_key("ES256", KeyState.ACTIVE, kek, T0)
    b = new_key("ES256", KeyState.NEXT, kek, T0)
    assert a.sealed_private is not None and b.sealed_private is not None
    pem = kek.open(a.sealed_private, a.kid.encode())
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(KekError):
        kek.open(a.sealed_private, b.kid.encode())
    swapped = replace(a, sealed_private=b.sealed_private)
    with pytest.raises(KekError):
        KeyRing.from_records([swapped], kek, T0)
    with pytest.raises(KekError, match="wrong TESSERA_KEK"):
        KeyRing.from_records([a], KEK.from_text(KEK.generate_text()), T0)


# -- every algorithm signs tokens that independent libraries verify --------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kty", "crv"), [("ES256", "EC", "P-256"), ("RS256", "RSA", None), ("EdDSA", "OKP", "Ed25519")]
)
def test_each_alg_signs_tokens_verified_by_pyjwt_and_jwcrypto(kek: KEK, alg: str, kty: str, crv: str | None) -> None:
    rec = new_key(alg, KeyState.ACTIVE, kek, T0)
    published = rec.published_jwk()
    assert published["kty"] == kty and published.get("crv") == crv
    assert set(published) & {"d", "p", "q", "dp", "dq", "qi"} == set()
    if alg == "RS256":
        assert len(jwt.utils.base64url_decode(published["n"])) == 384  # 3072-bit modulus
    # The kid is the RFC 7638 thumbprint, as an independent implementation computes it.
    assert jwcrypto_jwk.JWK(**published).thumbprint() == rec.kid

    ring = KeyRing.from_records([rec], kek, T0)
    signer = ring.signer(alg)
    now = int(time.time())
    claims = {
        "iss": "https://as.example",
        "sub": "c1",
        "aud": "https://rs.example",
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
        "client_id": "c1",
    }
    token = sign_compact({"alg": alg, "typ": "at+jwt", "kid": signer.kid}, claims, signer.private)

    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "typ": "at+jwt", "kid": rec.kid}
    key = jwt.PyJWKSet.from_dict(ring.jwks)[rec.kid]
    assert (
        jwt.decode(token, key=key, algorithms=[alg], audience="https://rs.example", issuer="https://as.example")
        == claims
    )

    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(ring.jwks))
    verified = jwcrypto_jwt.JWT(jwt=token, key=keyset, algs=[alg], expected_type="JWS")
    assert json.loads(verified.claims) == claims

    # Another key of the same algorithm does not verify it.
    other = new_key(alg, KeyState.ACTIVE, kek, T0)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key=jwt.PyJWK(other.published_jwk()), algorithms=[alg], audience="https://rs.example")


def test_private_key_round_trips_through_the_seal(kek: KEK) -> None:
    for alg in ALGS:
        rec = new_key(alg, KeyState.NEXT, kek, T0)
        assert rec.sealed_private is not None
        private = private_key_from_pem(kek.open(rec.sealed_private, rec.kid.encode()))
        token = sign_compact({"alg": alg, "kid": rec.kid}, {"x": 1}, private)
        assert jwt.decode(token, key=jwt.PyJWK(rec.published_jwk()), algorithms=[alg]) == {"x": 1}


# -- end to end, against live servers ----------------------------------------------------------------------------


@contextlib.contextmanager
def live(data_dir: pathlib.Path, **env: str) -> Iterator[LiveServer]:
    srv = LiveServer(data_dir, extra_env=env).start()
    try:
        yield srv
    finally:
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr


def token_for(srv: LiveServer, client: dict[str, Any]) -> str:
    r = httpx.post(
        srv.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def jwks_kids(srv: LiveServer) -> list[str]:
    r = httpx.get(srv.issuer + "/oauth/jwks", timeout=10)
    assert r.status_code == 200
    return [k["kid"] for k in r.json()["keys"]]


def verify(srv: LiveServer, token: str) -> dict[str, Any]:
    """A relying party: fetch the JWKS afresh, pick the key by kid, check signature and claims."""
    key = jwt.PyJWKClient(srv.issuer + "/oauth/jwks", cache_jwk_set=False).get_signing_key_from_jwt(token)
    return dict(
        jwt.decode(token, key=key, algorithms=["ES256", "RS256", "EdDSA"], audience=srv.issuer, issuer=srv.issuer)
    )


def poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_jwks_response_headers(server: LiveServer) -> None:
    r = httpx.get(server.issuer + "/oauth/jwks", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/jwk-set+json"
    assert r.headers["cache-control"] == "public, max-age=300"
    body = r.json()
    assert set(body) == {"keys"}
    assert [(k["kty"], k["alg"], k["use"]) for k in body["keys"]] == [("EC", "ES256", "sig")] * 2
    disco = httpx.get(server.issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert disco["jwks_uri"] == server.issuer + "/oauth/jwks"


def test_rotation_old_tokens_verify_until_their_key_is_removed(tmp_path: pathlib.Path) -> None:
    with live(tmp_path / "data", TESSERA_KEY_REFRESH_INTERVAL="0.5", TESSERA_JWKS_MAX_AGE="60") as srv:
        client = srv.register()
        before = keys_by_state(srv)
        active, nxt = before["active"][0]["kid"], before["next"][0]["kid"]
        assert jwks_kids(srv) == [active, nxt]
        r = httpx.get(srv.issuer + "/oauth/jwks", timeout=10)
        assert r.headers["cache-control"] == "public, max-age=60"

        # The next key is published before it signs anything.
        old_tokens = [token_for(srv, client) for _ in range(3)]
        assert {kid_of(t) for t in old_tokens} == {active}
        old = old_tokens[0]
        assert verify(srv, old)["client_id"] == client["client_id"]

        # Rotate from another process (the CLI) while the server runs.
        rotated = srv.cli("keys", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        events = [json.loads(line) for line in rotated.stdout.splitlines()]
        assert [(e["event"], e["kid"]) for e in events[:2]] == [("key.retired", active), ("key.activated", nxt)]
        assert events[2]["event"] == "key.created" and events[2]["state"] == "next"
        new_next = events[2]["kid"]

        poll(lambda: kid_of(token_for(srv, client)) == nxt, "the server signs with the promoted key")
        poll(lambda: new_next in jwks_kids(srv), "the new next key is published")
        assert jwks_kids(srv) == [nxt, new_next, active]
        new = token_for(srv, client)
        assert kid_of(new) == nxt

        # remove_after = retired_at + lifetime (900) + refresh interval (0.5 → 0) + 1 + leeway (30).
        after = keys_by_state(srv)
        [retired] = after["retired"]
        assert retired["kid"] == active
        assert retired["remove_after"] == retired["retired_at"] + 900 + 0 + 1 + 30
        assert events[0]["remove_after"] == retired["remove_after"]

        # Tokens signed before the rotation still verify through the freshly fetched JWKS.
        for t in old_tokens:
            assert verify(srv, t)["jti"]
        assert verify(srv, new)["client_id"] == client["client_id"]

        # Sweep from another process whose clock is past remove_after (no waiting for wall-clock time).
        clock = FrozenClock(retired["remove_after"] - 1)
        rt = open_runtime(load_settings(srv.env), clock=clock, migrate=False, bootstrap=False)
        try:
            assert rt.store.sweep().updates == [], "not yet due"
            clock.set(retired["remove_after"])
            plan = rt.store.sweep()
        finally:
            rt.close()
        assert [(k.kid, k.state, k.sealed_private) for k in plan.updates] == [(active, KeyState.REMOVED, None)]

        poll(lambda: active not in jwks_kids(srv), "the server stops publishing the removed key")
        assert jwks_kids(srv) == [nxt, new_next]
        with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key that matches"):
            verify(srv, old)
        assert verify(srv, new)["client_id"] == client["client_id"]

        [removed] = keys_by_state(srv)["removed"]
        assert (removed["kid"], removed["removed_at"]) == (active, retired["remove_after"])
        with sqlite3.connect(srv.data_dir / "tessera.db") as db:
            rows = dict(db.execute("SELECT kid, sealed_private FROM signing_keys").fetchall())
        assert rows[active] is None, "a removed key's private half is erased"
        assert rows[nxt] is not None and rows[new_next] is not None

        with srv.admin() as admin:
            events_logged = [(r["event"], r["subject"]) for r in admin.get("/audit", params={"limit": 1000}).json()]
        assert ("key.retired", active) in events_logged
        assert ("key.activated", nxt) in events_logged
        assert ("key.removed", active) in events_logged


def test_multiple_algorithms_are_published_and_rotate_independently(tmp_path: pathlib.Path) -> None:
    with live(tmp_path / "data", TESSERA_SIGNING_ALGS="EdDSA,ES256,RS256", TESSERA_KEY_REFRESH_INTERVAL="0.5") as srv:
        jwks = httpx.get(srv.issuer + "/oauth/jwks", timeout=10).json()["keys"]
        assert sorted((k["alg"], k["kty"]) for k in jwks) == [
            ("ES256", "EC"),
            ("ES256", "EC"),
            ("EdDSA", "OKP"),
            ("EdDSA", "OKP"),
            ("RS256", "RSA"),
            ("RS256", "RSA"),
        ]
        disco = httpx.get(srv.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
        assert disco["access_token_signing_alg_values_supported"] == ["EdDSA", "ES256", "RS256"]

        client = srv.register()
        token = token_for(srv, client)
        assert jwt.get_unverified_header(token)["alg"] == "EdDSA", "the first configured alg signs"
        assert verify(srv, token)["sub"] == client["client_id"]

        before = keys_by_state(srv)
        rotated = srv.cli("keys", "rotate", "--alg", "RS256")
        assert rotated.returncode == 0, rotated.stderr
        assert {json.loads(line)["alg"] for line in rotated.stdout.splitlines()} == {"RS256"}
        after = keys_by_state(srv)
        assert [k["alg"] for k in after["retired"]] == ["RS256"]
        assert {k["kid"] for k in after["active"] if k["alg"] != "RS256"} == {
            k["kid"] for k in before["active"] if k["alg"] != "RS256"
        }

        # Through the admin API the rotating process reloads at once: no wait for the refresh interval.
        with srv.admin() as admin:
            r = admin.post("/keys/rotate", params={"alg": "EdDSA"})
            assert r.status_code == 200, r.text
            promoted = next(e["kid"] for e in r.json()["events"] if e["event"] == "key.activated")
            assert kid_of(token_for(srv, client)) == promoted
            assert admin.post("/keys/rotate", params={"alg": "HS256"}).status_code == 400
        assert verify(srv, token)["sub"] == client["client_id"], "the retired EdDSA key is still published"

        bad = srv.cli("keys", "rotate", "--alg", "HS256")
        assert bad.returncode == 2
        assert "--alg must be one of ['EdDSA', 'ES256', 'RS256']" in bad.stderr


def test_restart_keeps_the_keys_sealed_under_the_kek(fresh_server: LiveServer) -> None:
    srv = fresh_server
    client = srv.register()
    token = token_for(srv, client)
    kids_before = jwks_kids(srv)

    kek_file = srv.data_dir / "kek"
    assert kek_file.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(srv.data_dir / "tessera.db") as db:
        blobs = db.execute("SELECT kid, sealed_private FROM signing_keys").fetchall()
    assert len(blobs) == 2
    for _kid, blob in blobs:
        assert blob.startswith(b"v1")
        assert b"PRIVATE KEY" not in blob and b"-----" not in blob

    srv.stop()
    srv.start()
    assert jwks_kids(srv) == kids_before
    assert kid_of(token_for(srv, client)) == kid_of(token)
    assert verify(srv, token)["client_id"] == client["client_id"]

    # The same KEK given through TESSERA_KEK opens the keys too.
    r = srv.cli("keys", "list")
    assert r.returncode == 0, r.stderr
    env_kek = LiveServer(srv.data_dir, extra_env={"TESSERA_KEK": kek_file.read_text().strip()})
    assert env_kek.cli("keys", "list").stdout == r.stdout


def test_a_different_kek_is_refused_with_a_clear_message(fresh_server: LiveServer) -> None:
    srv = fresh_server
    keys_before = keys_by_state(srv)
    message = "the key-encryption key does not open the stored signing keys (wrong TESSERA_KEK?)"

    wrong = LiveServer(srv.data_dir, extra_env={"TESSERA_KEK": KEK.generate_text()})
    with pytest.raises(RuntimeError, match="tessera serve exited") as exc:
        wrong.start(wait=20)
    assert message in str(exc.value)

    # Nothing is sealed under the wrong KEK: operator commands refuse too, and change nothing.
    for argv in (("keys", "rotate"), ("init",)):
        r = wrong.cli(*argv)
        assert r.returncode == 1, (argv, r.stdout)
        assert r.stderr.strip().endswith("tessera: " + message), r.stderr
    assert keys_by_state(srv) == keys_before

    # Keys without any KEK (file lost, TESSERA_KEK unset) are refused as well.
    (srv.data_dir / "kek").rename(srv.data_dir / "kek.bak")
    try:
        r = srv.cli("keys", "list")
        assert r.returncode == 1
        assert "signing keys exist but no key-encryption key was found: set TESSERA_KEK or restore" in r.stderr
        assert not (srv.data_dir / "kek").exists(), "no new KEK is made up for existing keys"
    finally:
        (srv.data_dir / "kek.bak").rename(srv.data_dir / "kek")
    assert keys_by_state(srv) == keys_before
