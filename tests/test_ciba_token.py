"""OpenID Connect CIBA Core 1.0 at the token endpoint: the CIBA grant (§10.1, §11 errors), polling
(``authorization_pending``, ``slow_down``), expiry, single use, and the ping callback (§10.2).

One module server in development mode (so a ping client may name a loopback notification endpoint,
and the ping may reach it) with a poll interval of 1 s; a loopback receiver plays the ping clients.
Each test uses its own people and clients.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from ciba_support import CIBA, Ciba, PingReceiver, ciba_world, claims_of
from support import ASSERTION_TYPE, assert_oauth_error, client_assertion, ec_jwk, ec_key


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ciba]:
    # "debug" logs the most (access logs included); test_secrets_stay_out_of_the_log reads the log.
    with ciba_world(
        tmp_path_factory.mktemp("ciba-token") / "data", TESSERA_DEV_MODE="true", TESSERA_LOG_LEVEL="debug"
    ) as world:
        yield world


@pytest.fixture(scope="module")
def rx() -> Iterator[PingReceiver]:
    receiver = PingReceiver().start()
    yield receiver
    receiver.stop()


def early_in_second() -> None:
    """Wait for the start of a wall-clock second: the server counts poll intervals in whole seconds, so
    two polls meant to be "at once" must not straddle a second boundary."""
    frac = time.time() % 1
    if frac > 0.5:
        time.sleep(1.02 - frac)


# -- invalid requests ------------------------------------------------------------------------------------------


def test_missing_and_unknown_auth_req_id(w: Ciba) -> None:
    c = w.client()
    assert_oauth_error(w.token(c, None), 400, "invalid_request")
    assert_oauth_error(w.token(c, secrets.token_urlsafe(32)), 400, "invalid_grant")
    assert_oauth_error(w.token(c, "x" * 300), 400, "invalid_grant")


def test_client_without_the_ciba_grant(w: Ciba) -> None:
    w.person("cc-only")
    ciba_client = w.client()
    auth_req_id = w.start(ciba_client, "cc-only")
    cc = w.srv.register(scope="read")
    assert_oauth_error(w.token(cc, auth_req_id), 400, "unauthorized_client")
    # Not consumed by the refused attempt.
    assert_oauth_error(w.token(ciba_client, auth_req_id), 400, "authorization_pending")


def test_client_authentication_is_required(w: Ciba) -> None:
    w.person("tok-authn")
    c = w.client()
    auth_req_id = w.start(c, "tok-authn")
    r = httpx.post(w.srv.token_endpoint, data={"grant_type": CIBA, "auth_req_id": auth_req_id}, timeout=10)
    assert_oauth_error(r, 401, "invalid_client")
    r = httpx.post(
        w.srv.token_endpoint,
        data={"grant_type": CIBA, "auth_req_id": auth_req_id},
        auth=(c["client_id"], "wrong"),
        timeout=10,
    )
    assert_oauth_error(r, 401, "invalid_client")


def test_another_clients_auth_req_id_is_invalid_grant_and_not_consumed(w: Ciba) -> None:
    w.person("owned")
    owner, thief = w.client(), w.client()
    auth_req_id = w.start(owner, "owned")
    assert_oauth_error(w.token(thief, auth_req_id), 400, "invalid_grant")
    # The thief's attempt did not count as the owner's poll (no slow_down for the owner's first poll).
    assert_oauth_error(w.token(owner, auth_req_id), 400, "authorization_pending")
    w.decide("owned")
    for _ in range(3):
        assert_oauth_error(w.token(thief, auth_req_id), 400, "invalid_grant")
    time.sleep(1.1)
    r = w.token(owner, auth_req_id)
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["access_token"])["act"] == {"sub": owner["client_id"]}


# -- polling ------------------------------------------------------------------------------------------------


def test_slow_down_raises_the_interval_for_later_polls(w: Ciba) -> None:
    w.person("slow")
    c = w.client()
    respectful, hasty = w.start(c, "slow"), w.start(c, "slow")
    early_in_second()
    assert_oauth_error(w.token(c, respectful), 400, "authorization_pending")
    assert_oauth_error(w.token(c, hasty), 400, "authorization_pending")
    for auth_req_id in (respectful, hasty):
        r = w.token(c, auth_req_id)  # at once: faster than the interval of 1 s
        assert_oauth_error(r, 400, "slow_down")
        assert r.json()["interval"] == 6  # RFC 8628 §3.5: increased by 5 seconds
    # The old interval is no longer enough ...
    time.sleep(1.2)
    r = w.token(c, hasty)
    assert_oauth_error(r, 400, "slow_down")
    assert r.json()["interval"] == 11
    # ... the new one is.
    time.sleep(6.1 - 1.2)
    assert_oauth_error(w.token(c, respectful), 400, "authorization_pending")


def test_pending_then_denied(w: Ciba) -> None:
    w.person("denier")
    c = w.client()
    auth_req_id = w.start(c, "denier")
    assert_oauth_error(w.token(c, auth_req_id), 400, "authorization_pending")
    w.decide("denier", "deny")
    time.sleep(1.1)
    assert_oauth_error(w.token(c, auth_req_id), 400, "access_denied")
    time.sleep(1.1)
    assert_oauth_error(w.token(c, auth_req_id), 400, "access_denied")


def test_expiry_before_approval_and_before_redemption(w: Ciba) -> None:
    """expires_in is the real lifetime: pending just before it, expired_token after it — whether the
    person never answered or answered and the client did not redeem in time."""
    w.person("late")
    c = w.client()
    unanswered = w.bc(c, login_hint="late", requested_expiry="30")
    assert unanswered.status_code == 200 and unanswered.json()["expires_in"] == 30, unanswered.text
    t0 = time.monotonic()
    unredeemed = w.start(c, "late", requested_expiry="30")
    w.next_link("late")  # the first request's link: left unanswered
    w.decide("late")  # the second: approved, never redeemed in time
    time.sleep(max(0.0, 27 - (time.monotonic() - t0)))
    assert_oauth_error(w.token(c, unanswered.json()["auth_req_id"]), 400, "authorization_pending")
    time.sleep(max(0.0, 32 - (time.monotonic() - t0)))
    assert_oauth_error(w.token(c, unanswered.json()["auth_req_id"]), 400, "expired_token")
    assert_oauth_error(w.token(c, unredeemed), 400, "expired_token")
    time.sleep(1.1)
    assert_oauth_error(w.token(c, unredeemed), 400, "expired_token")


# -- redemption ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwks(w: Ciba) -> dict[str, Any]:
    r = httpx.get(w.srv.issuer + "/oauth/jwks", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_success_response_and_tokens(w: Ciba, jwks: dict[str, Any]) -> None:
    w.person("winner")
    c = w.client()
    details = [{"type": "deployment", "locations": ["https://api.example"], "actions": ["deploy"]}]
    auth_req_id = w.start(
        c, "winner", scope="openid read", authorization_details=json.dumps(details), binding_message="BM-42"
    )
    before = int(time.time())
    w.decide("winner")
    r = w.token(c, auth_req_id)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert set(body["scope"].split()) == {"openid", "read"}
    assert body["authorization_details"] == details

    # The ID token, verified as a relying party would (PyJWT, the published JWKS).
    key = pyjwt.PyJWKSet.from_dict(jwks)[pyjwt.get_unverified_header(body["id_token"])["kid"]]
    idt = pyjwt.decode(
        body["id_token"],
        key.key,
        algorithms=["ES256"],
        audience=c["client_id"],
        issuer=w.srv.issuer,
        options={"require": ["exp", "iat", "sub", "aud", "iss", "auth_time"]},
    )
    assert idt["sub"] == "winner"
    assert idt["acr"] in ("urn:tessera:aal2", "urn:tessera:aal3")
    assert before - 2 <= idt["auth_time"] <= int(time.time())
    assert pyjwt.get_unverified_header(body["id_token"])["typ"] == "JWT"

    # The access token, verified with joserfc: RFC 9068, act = the client (RFC 8693 §4.1).
    keyset = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    tok = jose_jwt.decode(body["access_token"], keyset, algorithms=["ES256"])
    assert tok.header["typ"] == "at+jwt"
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": w.srv.issuer},
        sub={"essential": True, "value": "winner"},
        exp={"essential": True},
    ).validate(tok.claims)
    at = tok.claims
    assert at["act"] == {"sub": c["client_id"]} and at["client_id"] == c["client_id"]
    assert "openid" in at["scope"].split() and "read" in at["scope"].split()
    assert at["authorization_details"] == details
    assert at["acr"] == idt["acr"] and at["auth_time"] == idt["auth_time"]
    info = w.introspect(c, body["access_token"])
    assert info["active"] is True and info["sub"] == "winner"
    # Introspection tells a resource server who acts and how the person approved (RFC 8693 §4.1,
    # RFC 9396 §9.2).
    assert info["act"] == {"sub": c["client_id"]} and info["authorization_details"] == details
    assert info["acr"] == at["acr"] and info["auth_time"] == at["auth_time"]


def test_replay_is_refused_and_revokes_what_was_issued(w: Ciba) -> None:
    w.person("replayed")
    c = w.client()
    auth_req_id, body = w.approved(c, "replayed")
    assert w.introspect(c, body["access_token"])["active"] is True
    assert_oauth_error(w.token(c, auth_req_id), 400, "invalid_grant")
    assert w.introspect(c, body["access_token"])["active"] is False
    assert_oauth_error(w.token(c, auth_req_id), 400, "invalid_grant")
    jti = claims_of(body["access_token"])["jti"]
    revoked = [e for e in w.audit() if e["event"] == "token.revoked" and jti in json.dumps(e.get("data"))]
    assert revoked, "no token.revoked record for the replayed grant's access token"


def test_parallel_redemption_issues_once(w: Ciba) -> None:
    w.person("racer")
    c = w.client()
    auth_req_id = w.start(c, "racer")
    w.decide("racer")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: w.token(c, auth_req_id), range(10)))
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == 1, [r.text for r in answers]
    for r in answers:
        if r.status_code != 200:
            assert_oauth_error(r, 400, "invalid_grant")
    # The others were replays: what the winner got is revoked.
    assert w.introspect(c, ok[0].json()["access_token"])["active"] is False
    redeemed = [e for e in w.audit() if e["event"] == "ciba.redeemed" and e["subject"] == "racer"]
    assert len(redeemed) == 1


def jwt_token(w: Ciba, c: dict[str, Any], auth_req_id: str, assertion: str) -> httpx.Response:
    data = {
        "grant_type": CIBA,
        "auth_req_id": auth_req_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    return httpx.post(w.srv.token_endpoint, data=data, timeout=15)


def test_private_key_jwt_redemption_spends_the_assertion(w: Ciba) -> None:
    key = ec_key()
    c = w.client(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    w.person("keyed")
    r = w.bc(
        None,
        login_hint="keyed",
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=client_assertion(key, c["client_id"], w.srv.issuer),
    )
    assert r.status_code == 200, r.text
    auth_req_id = r.json()["auth_req_id"]
    w.decide("keyed")
    used = client_assertion(key, c["client_id"], w.srv.token_endpoint)
    r = jwt_token(w, c, auth_req_id, used)
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["access_token"])["act"] == {"sub": c["client_id"]}


def test_replayed_token_request_is_invalid_client_and_revokes_nothing(w: Ciba) -> None:
    key = ec_key()
    c = w.client(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    w.person("keyed4")
    r = w.bc(
        None,
        login_hint="keyed4",
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=client_assertion(key, c["client_id"], w.srv.issuer),
    )
    auth_req_id = r.json()["auth_req_id"]
    w.decide("keyed4")
    used = client_assertion(key, c["client_id"], w.srv.token_endpoint)
    r = jwt_token(w, c, auth_req_id, used)
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    # The same request again, byte for byte (as an eavesdropper or a proxy retry would send it).
    replay = jwt_token(w, c, auth_req_id, used)
    rs = w.srv.register(scope="introspect")
    still = w.introspect(rs, access)["active"]
    assert_oauth_error(replay, 401, "invalid_client")
    assert still is True


def test_replayed_assertion_does_not_consume_the_request(w: Ciba) -> None:
    key = ec_key()
    c = w.client(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    w.person("keyed2")
    r = w.bc(
        None,
        login_hint="keyed2",
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=client_assertion(key, c["client_id"], w.srv.issuer),
    )
    auth_req_id = r.json()["auth_req_id"]
    w.decide("keyed2")
    # An assertion spent elsewhere (introspection records its jti) ...
    spent = client_assertion(key, c["client_id"], w.srv.token_endpoint)
    r = httpx.post(
        w.srv.issuer + "/oauth/introspect",
        data={"token": "x", "client_assertion_type": ASSERTION_TYPE, "client_assertion": spent},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    # ... cannot redeem, and the refused attempt leaves the request redeemable.
    assert_oauth_error(jwt_token(w, c, auth_req_id, spent), 401, "invalid_client")
    r = jwt_token(w, c, auth_req_id, client_assertion(key, c["client_id"], w.srv.token_endpoint))
    assert r.status_code == 200, r.text


def test_replayed_assertion_cannot_poll(w: Ciba) -> None:
    key = ec_key()
    c = w.client(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
    w.person("keyed3")
    r = w.bc(
        None,
        login_hint="keyed3",
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=client_assertion(key, c["client_id"], w.srv.issuer),
    )
    auth_req_id = r.json()["auth_req_id"]
    once = client_assertion(key, c["client_id"], w.srv.token_endpoint)
    assert_oauth_error(jwt_token(w, c, auth_req_id, once), 400, "authorization_pending")
    time.sleep(1.1)
    assert_oauth_error(jwt_token(w, c, auth_req_id, once), 401, "invalid_client")


# -- ping (§10.2) --------------------------------------------------------------------------------------------


def ping_client(w: Ciba, rx: PingReceiver, path: str, statuses: list[int] | None = None) -> dict[str, Any]:
    if statuses is not None:
        rx.plan(path, statuses)
    return w.client(backchannel_token_delivery_mode="ping", backchannel_client_notification_endpoint=rx.url(path))


def pings_of(w: Ciba, rx: PingReceiver, path: str) -> list[dict[str, Any]]:
    return [m for m in w.outbox() if m["channel"] == "ciba-ping" and m["recipient"] == rx.url(path)]


def wait_outbox(w: Ciba, rx: PingReceiver, path: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pings_of(w, rx, path)
        if found and found[0]["status"] == status:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"the ping to {path} is not {status}: {pings_of(w, rx, path)}")


def test_ping_on_approval_then_redeem(w: Ciba, rx: PingReceiver) -> None:
    w.person("pa")
    c = ping_client(w, rx, "/cb/approve")
    token = secrets.token_urlsafe(24)
    auth_req_id = w.start(c, "pa", client_notification_token=token)
    w.decide("pa")
    [got] = rx.wait("/cb/approve")
    assert got.method == "POST"
    assert got.headers["authorization"] == f"Bearer {token}"
    assert got.headers["content-type"].split(";")[0] == "application/json"
    assert json.loads(got.body) == {"auth_req_id": auth_req_id}
    msg = wait_outbox(w, rx, "/cb/approve", "delivered")
    assert msg["attempts"] == 1
    r = w.token(c, auth_req_id)
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    assert len(rx.on("/cb/approve")) == 1  # exactly one ping


def test_ping_on_denial(w: Ciba, rx: PingReceiver) -> None:
    w.person("pd")
    c = ping_client(w, rx, "/cb/deny", [200])
    auth_req_id = w.start(c, "pd", client_notification_token="deny-token")
    w.decide("pd", "deny")
    [got] = rx.wait("/cb/deny")
    assert json.loads(got.body) == {"auth_req_id": auth_req_id}
    assert got.headers["authorization"] == "Bearer deny-token"
    assert wait_outbox(w, rx, "/cb/deny", "delivered")["attempts"] == 1
    assert_oauth_error(w.token(c, auth_req_id), 400, "access_denied")
    time.sleep(0.5)
    assert len(rx.on("/cb/deny")) == 1


@pytest.mark.parametrize("status", [401, 301])
def test_ping_refused_by_the_client_is_not_retried(w: Ciba, rx: PingReceiver, status: int) -> None:
    pid = f"pr{status}"
    path = f"/cb/refuse-{status}"
    w.person(pid)
    c = ping_client(w, rx, path, [status, 204])
    auth_req_id = w.start(c, pid, client_notification_token="tok")
    w.decide(pid)
    rx.wait(path)
    msg = wait_outbox(w, rx, path, "dead")
    assert msg["attempts"] == 1 and str(status) in (msg["last_error"] or ""), msg
    time.sleep(3)  # longer than a first retry could wait (full jitter up to 2 s)
    assert len(rx.on(path)) == 1
    assert rx.on("/redirected") == []  # a redirect is not followed
    # The client may still poll for its tokens.
    r = w.token(c, auth_req_id)
    assert r.status_code == 200, r.text


def test_ping_server_error_is_retried(w: Ciba, rx: PingReceiver) -> None:
    w.person("p500")
    c = ping_client(w, rx, "/cb/flaky", [500, 204])
    auth_req_id = w.start(c, "p500", client_notification_token="tok")
    w.decide("p500")
    first, second = rx.wait("/cb/flaky", 2, timeout=12)
    assert first.body == second.body and json.loads(second.body) == {"auth_req_id": auth_req_id}
    assert second.headers["authorization"] == "Bearer tok"
    msg = wait_outbox(w, rx, "/cb/flaky", "delivered")
    assert msg["attempts"] == 2, msg
    assert w.token(c, auth_req_id).status_code == 200


def test_ping_auth_req_id_and_token_are_not_stored_in_clear(w: Ciba, rx: PingReceiver) -> None:
    w.person("psecret")
    c = ping_client(w, rx, "/cb/secret")
    token = "nt-" + secrets.token_urlsafe(24)
    auth_req_id = w.start(c, "psecret", client_notification_token=token)
    w.next_link("psecret")  # committed, outbox message queued
    blob = b"".join(f.read_bytes() for f in sorted(w.db.parent.glob(w.db.name + "*")))
    assert hashlib.sha256(auth_req_id.encode()).hexdigest().encode() in blob
    assert auth_req_id.encode() not in blob
    assert token.encode() not in blob


# -- audit -------------------------------------------------------------------------------------------------


def test_audit_trail_of_a_flow(w: Ciba) -> None:
    w.person("audited")
    c = w.client()
    auth_req_id, body = w.approved(c, "audited")
    assert_oauth_error(w.token(c, auth_req_id), 400, "invalid_grant")
    records = w.audit()
    events = [e["event"] for e in records]
    for name in ("approval.requested", "approval.approved", "approval.decided", "ciba.redeemed", "token.revoked"):
        assert name in events, (name, events[-20:])
    [redeemed] = [e for e in records if e["event"] == "ciba.redeemed" and e["subject"] == "audited"]
    assert redeemed["actor"] == c["client_id"]
    assert redeemed["data"]["jti"] == claims_of(body["access_token"])["jti"]
    assert auth_req_id not in json.dumps(records)
    r = w.srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_secrets_stay_out_of_the_log(w: Ciba, rx: PingReceiver) -> None:
    w.person("logged")
    c = ping_client(w, rx, "/cb/logged", [500, 204])
    token = "nt-" + secrets.token_urlsafe(24)
    auth_req_id = w.start(c, "logged", client_notification_token=token)
    w.decide("logged")
    rx.wait("/cb/logged", 2, timeout=12)
    body = w.token(c, auth_req_id).json()
    assert_oauth_error(w.token(c, auth_req_id), 400, "invalid_grant")
    time.sleep(0.5)
    log = w.srv.log.read_text()
    assert "/oauth/token" in log or "ciba" in log.lower(), "the log does not seem to be written at debug level"
    for name, value in {
        "auth_req_id": auth_req_id,
        "client_notification_token": token,
        "access_token": body["access_token"],
        "id_token": body["id_token"],
        "client_secret": c["client_secret"],
    }.items():
        assert value not in log, f"{name} appears in the server log"
