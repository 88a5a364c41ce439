"""Security review of identity federation and DPoP: one live-server test per finding.

Every test here states what a correct server does; a failing test is an open finding (see the review report).
One `tessera serve` for the module, trusting fake external issuers (real HTTP servers on loopback):

- ``k8s``: a plain OIDC issuer (no ``jti_replay``), one binding for ``API``;
- ``closed``: a condition that reads the whole claim set through a macro (``assertion.all(...)``) with a CEL
  comment between the macro's name and its arguments;
- ``slow``: an issuer that answers after a delay, to count the fetches a burst of anonymous requests causes.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from federation_support import FakeIssuer, kubernetes_sa_claims
from support import ASSERTION_TYPE, LiveServer, assert_oauth_error, ec_jwk, ec_key, sign_es256
from tessera.federation.cel import activation, claims_used, compile_expression

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AUD = "tessera"
API = "https://api.example.com"
ALLOWED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "kubernetes.io"]


class Env:
    def __init__(self, srv: LiveServer, idps: dict[str, FakeIssuer]) -> None:
        self.srv = srv
        self.k8s = idps["k8s"]
        self.closed = idps["closed"]
        self.slow = idps["slow"]
        self.http = httpx.Client(timeout=20)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    idps = {"k8s": FakeIssuer(), "closed": FakeIssuer(), "slow": FakeIssuer()}
    for idp in idps.values():
        idp.start()
    trusted = [
        {
            "name": "k8s",
            "issuer": idps["k8s"].issuer,
            "audiences": [AUD],
            "bindings": [{"audiences": [API], "scopes": ["read"]}],
        },
        {
            "name": "closed",
            "issuer": idps["closed"].issuer,
            "audiences": [AUD],
            # "every claim of the token is one we know": a token with any other claim is refused
            "condition": "assertion.all // only the claims we know\n (k, k in " + json.dumps(ALLOWED_CLAIMS) + ")",
            "bindings": [{"audiences": [API]}],
        },
        {
            "name": "slow",
            "issuer": idps["slow"].issuer,
            "audiences": [AUD],
            "bindings": [{"audiences": [API]}],
        },
    ]
    srv = LiveServer(
        tmp_path_factory.mktemp("security-review-federation") / "data",
        extra_env={"TESSERA_TRUSTED_ISSUERS": json.dumps(trusted), "TESSERA_DEV_MODE": "true"},
    )
    e: Env | None = None
    try:
        srv.start()
        e = Env(srv, idps)
        yield e
    finally:
        if e is not None:
            e.http.close()
        srv.stop()
        for idp in idps.values():
            idp.stop()


# -- helpers ----------------------------------------------------------------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def proof(key: Any, htu: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk(key)}
    return sign_es256(
        header, {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": htu, "iat": int(time.time())}, key
    )


def exchange(
    e: Env, *, auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None, **form: Any
) -> httpx.Response:
    data = {"grant_type": TOKEN_EXCHANGE, **{k: v for k, v in form.items() if v is not None}}
    return e.http.post(e.srv.token_endpoint, data=data, auth=auth, headers=headers)


def k8s_token(e: Env, service_account: str = "api") -> str:
    return e.k8s.mint(kubernetes_sa_claims(AUD, service_account=service_account))


# -- findings ---------------------------------------------------------------------------------------------------


def test_dpop_bound_token_cannot_be_laundered_through_token_exchange(env: Env) -> None:
    """HIGH. A DPoP-bound access token (``cnf.jkt``) exchanged by someone without its private key must not come back
    as a bearer token, nor as a token bound to the thief's key (RFC 9449 §1: a stolen bound token is useless)."""
    reg = env.srv.register(scope="read")
    owner_key = ec_key()
    r = env.http.post(
        env.srv.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=(reg["client_id"], reg["client_secret"]),
        headers={"DPoP": proof(owner_key, env.srv.token_endpoint)},
    )
    assert r.status_code == 200, r.text
    bound = r.json()["access_token"]
    assert "jkt" in claims_of(bound)["cnf"]

    # The thief has the token only: anonymous token exchange, no proof.
    stolen = exchange(env, subject_token=bound, subject_token_type=ACCESS_TOKEN_TYPE)
    assert stolen.status_code == 400, "a DPoP-bound token was exchanged without its key: " + stolen.text

    # The thief signs a proof with a key of their own.
    thief = ec_key()
    rebound = exchange(
        env,
        subject_token=bound,
        subject_token_type=ACCESS_TOKEN_TYPE,
        headers={"DPoP": proof(thief, env.srv.token_endpoint)},
    )
    assert rebound.status_code == 400, "a DPoP-bound token was re-bound to another key: " + rebound.text


def test_actor_token_equal_to_subject_token_does_not_bypass_delegation_policy(env: Env) -> None:
    """MEDIUM. A client that may neither delegate nor impersonate is refused when it exchanges someone else's
    token; presenting the same token again as ``actor_token`` turns the exchange into "self" and it is issued
    a token for the other subject, without ``act``, with ``client_id`` = the caller (impersonation without
    permission)."""
    reg = env.srv.register(grant_types=[TOKEN_EXCHANGE], scope="read")
    caller = (reg["client_id"], reg["client_secret"])
    victim = k8s_token(env, "victim")
    plain = exchange(env, auth=caller, subject_token=victim, subject_token_type=JWT_TYPE)
    assert plain.status_code == 400 and "neither delegate nor impersonate" in plain.text, plain.text

    trick = exchange(
        env,
        auth=caller,
        subject_token=victim,
        subject_token_type=JWT_TYPE,
        actor_token=victim,
        actor_token_type=JWT_TYPE,
    )
    if trick.status_code == 200:
        issued = claims_of(trick.json()["access_token"])
        who = f"sub={issued['sub']} client_id={issued['client_id']} act={issued.get('act')}"
        pytest.fail("impersonation without permission: " + who)
    assert trick.status_code == 400, trick.text


def test_unauthenticated_caller_cannot_use_a_public_clients_delegation_right(env: Env) -> None:
    """MEDIUM. ``token_endpoint_auth_method: none`` proves nothing: such a caller is anonymous. A public client
    cannot hold delegation rights, and the holder of an initial access token cannot grant them (RFC 7591)."""
    md = {"token_endpoint_auth_method": "none", "grant_types": [TOKEN_EXCHANGE], "allowed_resources": [API]}
    r = httpx.post(
        env.srv.issuer + "/oauth/register",
        json={**md, "may_delegate": True},
        headers={"Authorization": f"Bearer {env.srv.reg_token}"},
    )
    assert_oauth_error(r, 400, "invalid_client_metadata")
    with env.srv.admin() as admin:
        r = admin.post("/clients", json={**md, "may_delegate": True})
        assert r.status_code == 400 and "authenticates" in r.json()["error_description"], r.text
        r = admin.post(
            "/clients", json={**md, "token_endpoint_auth_method": "client_secret_basic", "may_delegate": True}
        )
        assert r.status_code == 201, r.text  # an operator may grant it to a client that authenticates
        public_id = admin.post("/clients", json=md).json()["client_id"]
    # Naming a public client makes no one an actor: the token is the subject's own, with no act.
    r = exchange(env, client_id=public_id, subject_token=k8s_token(env, "attacker"), subject_token_type=JWT_TYPE)
    assert r.status_code == 200, r.text
    issued = claims_of(r.json()["access_token"])
    assert "act" not in issued and issued["client_id"] != public_id, issued


def test_federated_client_with_a_self_signed_assertion_is_invalid_client_not_500(env: Env) -> None:
    """LOW. A client registered with ``federated_credentials`` has no ``jwks``/``jwks_uri``; an assertion whose
    ``iss`` equals its client_id takes the private_key_jwt path, which reads ``metadata["jwks_uri"]``: KeyError,
    500 and a logged traceback, for any anonymous caller who knows the client_id."""
    reg = env.srv.register(
        token_endpoint_auth_method="private_key_jwt",
        federated_credentials=[
            {"issuer": env.k8s.issuer, "subject": "system:serviceaccount:prod:api", "audience": "x"}
        ],
    )
    cid = reg["client_id"]
    now = int(time.time())
    junk = sign_es256(
        {"alg": "ES256", "typ": "JWT"},
        {
            "iss": cid,
            "sub": cid,
            "aud": env.srv.token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(8),
        },
        ec_key(),
    )
    r = env.http.post(
        env.srv.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_id": cid,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": junk,
        },
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", f"{r.status_code} {r.text}"


def test_federated_client_authentication_is_no_client_existence_oracle(env: Env) -> None:
    """LOW. Before anything verifies, an unknown client and a client with federated credentials must get the same
    answer (the earlier review removed this oracle for private_key_jwt; ``_federated`` brings it back)."""
    reg = env.srv.register(
        token_endpoint_auth_method="private_key_jwt",
        federated_credentials=[
            {"issuer": env.k8s.issuer, "subject": "system:serviceaccount:prod:api", "audience": "x"}
        ],
    )
    junk = sign_es256({"alg": "ES256"}, {"iss": "https://nobody.example", "sub": "x", "aud": "x"}, ec_key())

    def attempt(client_id: str) -> dict[str, Any]:
        r = env.http.post(
            env.srv.token_endpoint,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": junk,
            },
        )
        assert r.status_code == 401, r.text
        return r.json()

    assert attempt(reg["client_id"]) == attempt("no-such-client-" + secrets.token_hex(4))


def test_cel_claim_filter_does_not_change_a_decision(env: Env) -> None:
    """LOW. ``claims_used`` takes ``assertion.all // comment\\n (k, ...)`` for a read of the claim ``all``
    (the regex's look-ahead for "(" stops at the comment), so CEL sees a map without the token's other
    claims: a condition that refuses unknown claims accepts a token carrying one."""
    token = env.closed.mint(kubernetes_sa_claims(AUD, is_cluster_admin=True))
    # The same expression over the whole claim set refuses the token: only the filter changes the decision.
    condition = "assertion.all // only the claims we know\n (k, k in " + json.dumps(ALLOWED_CLAIMS) + ")"
    assert claims_used([condition, "assertion.sub"]) is None  # a comment: every claim is given to CEL
    assert compile_expression(condition).evaluate_bool(activation(assertion=claims_of(token))) is False
    r = exchange(env, subject_token=token, subject_token_type=JWT_TYPE)
    assert r.status_code == 400, "the condition refuses a token with an unknown claim, yet it was accepted: " + r.text
    assert "condition" in r.json()["error_description"]


def test_anonymous_burst_on_a_cold_issuer_fetches_its_keys_once(env: Env) -> None:
    """MEDIUM (DoS). Keys are fetched before any signature is checked, and concurrent requests that find no cached
    keys each start their own fetch (no single flight): N anonymous requests carrying garbage tokens with a trusted
    ``iss`` make N discovery + N JWKS requests to the issuer (each held up to the 5 s timeout when it is slow).
    Happens at start-up, after a configuration change, and after ``keys_max_stale`` without traffic."""
    env.slow.delay = 1.0
    forged = env.slow.mint(kubernetes_sa_claims(AUD), key=ec_key())  # signed by nobody the issuer knows
    before = sum(env.slow.hits.values())

    def one(_: int) -> int:
        with httpx.Client(timeout=30) as c:
            return c.post(
                env.srv.token_endpoint,
                data={"grant_type": TOKEN_EXCHANGE, "subject_token": forged, "subject_token_type": JWT_TYPE},
            ).status_code

    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(16)))
    finally:
        env.slow.delay = 0.0
    assert set(statuses) == {400}, statuses
    fetches = sum(env.slow.hits.values()) - before
    assert fetches <= 2, f"16 anonymous requests made {fetches} requests to the issuer (discovery + JWKS each)"
