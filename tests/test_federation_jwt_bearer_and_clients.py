"""Identity federation beyond token exchange, against a live server and real HTTP fake issuers:

- the JWT bearer grant (RFC 7523 §2.1): an external token whose ``aud`` names this authorization server is the
  grant; every problem with it is ``invalid_grant`` (§3.1);
- federated client credentials: a client registered with ``federated_credentials`` authenticates with its
  platform's token as ``client_assertion`` — no secret, no key of its own;
- Tessera as an issuer others trust: the outbound ``requested_token_type=jwt`` token is accepted by an independent
  relying party following AWS STS ``AssumeRoleWithWebIdentity`` rules (PyJWT, discovery + JWKS over HTTP).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import jwt.api_jwt
import pytest

from federation_support import (
    AwsStyleRelyingParty,
    FakeIssuer,
    Refused,
    generate_key,
    github_actions_claims,
    kubernetes_sa_claims,
)
from support import ASSERTION_TYPE, LiveServer, assert_oauth_error, client_assertion, ec_jwk, ec_key

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

AUD = "tessera"
CLIENT_AUTH_AUD = "tessera-client-auth"
API = "https://api.example.com"
OTHER_API = "https://other.example.com"
STS = "sts.amazonaws.com"
PROD_SA = "system:serviceaccount:prod:api"


class Env:
    def __init__(self, srv: LiveServer, idps: dict[str, FakeIssuer]) -> None:
        self.srv = srv
        self.idps = idps
        self.k8s, self.ci, self.replay = idps["k8s"], idps["ci"], idps["replay"]
        self.agents, self.stranger = idps["agents"], idps["stranger"]
        self.http = httpx.Client(timeout=10)
        self._jwks: dict[str, dict[str, Any]] = {}

    def server_key(self, kid: str) -> dict[str, Any]:
        if kid not in self._jwks:
            meta = self.http.get(self.srv.issuer + "/.well-known/openid-configuration").json()
            self._jwks = {k["kid"]: k for k in self.http.get(meta["jwks_uri"]).json()["keys"]}
        return self._jwks[kid]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    idps = {
        "k8s": FakeIssuer(algs=("ES256",)),
        "ci": FakeIssuer(algs=("RS256",)),
        "replay": FakeIssuer(),
        "agents": FakeIssuer(),
        "stranger": FakeIssuer(),  # never configured
    }
    for idp in idps.values():
        idp.start()
    trusted = [
        {
            "name": "k8s",
            "issuer": idps["k8s"].issuer,
            "audiences": [AUD],
            "condition": 'assertion["kubernetes.io"].namespace != "kube-system"',
            "bindings": [
                {
                    "when": 'assertion["kubernetes.io"].namespace == "prod"',
                    "audiences": [API, OTHER_API],
                    "scopes": ["read", "write"],
                }
            ],
        },
        {
            "name": "ci",
            "issuer": idps["ci"].issuer,
            "algorithms": ["RS256"],
            "audiences": [AUD],
            "shared": True,
            "condition": 'assertion.repository_owner_id == "1234567"',
            "bindings": [{"audiences": [STS, API], "scopes": ["deploy"]}],
        },
        {
            "name": "replay",
            "issuer": idps["replay"].issuer,
            "audiences": [AUD],
            "jti_replay": True,
            "bindings": [{"audiences": [API], "scopes": ["read"]}],
        },
        {
            "name": "agents",
            "issuer": idps["agents"].issuer,
            "audiences": [AUD],
            "bindings": [
                {"when": 'assertion.role == "delegator"', "audiences": [STS], "may_delegate": True},
                {"audiences": [STS]},
            ],
        },
    ]
    srv = LiveServer(
        tmp_path_factory.mktemp("federation-jb") / "data",
        extra_env={
            "TESSERA_TRUSTED_ISSUERS": json.dumps(trusted),
            "TESSERA_DEV_MODE": "true",
            "TESSERA_SIGNING_ALGS": "ES256,RS256",
        },
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
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken after the module's tests: " + r.stdout + r.stderr


# -- helpers ----------------------------------------------------------------------------------------------------


def post(e: Env, data: dict[str, Any], auth: tuple[str, str] | None = None) -> httpx.Response:
    return e.http.post(e.srv.token_endpoint, data={k: v for k, v in data.items() if v is not None}, auth=auth)


def bearer(e: Env, assertion: str | None, **params: Any) -> httpx.Response:
    auth = params.pop("auth", None)
    return post(e, {"grant_type": JWT_BEARER, "assertion": assertion, **params}, auth)


def issued(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def refused(r: httpx.Response, error: str, reason: str = "", status: int = 400) -> None:
    assert_oauth_error(r, status, error)
    assert reason.lower() in r.json().get("error_description", "").lower(), r.text


def verify(e: Env, token: str, audience: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWK(e.server_key(header["kid"]))
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        issuer=e.srv.issuer,
        audience=audience,
        options={"verify_aud": audience is not None, "require": ["iss", "sub", "exp", "iat", "jti"]},
    )
    return header, claims


def auds(claims: dict[str, Any]) -> list[str]:
    return [claims["aud"]] if isinstance(claims["aud"], str) else list(claims["aud"])


def k8s_token(e: Env, aud: Any, namespace: str = "prod", service_account: str = "api", **kw: Any) -> str:
    mint_kw = {k: kw.pop(k) for k in ("key", "kid", "alg", "now", "lifetime") if k in kw}
    return e.k8s.mint(kubernetes_sa_claims(aud, namespace=namespace, service_account=service_account, **kw), **mint_kw)


def tamper_payload(token: str, **changes: Any) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{head}.{new}.{sig}"


def flip_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{sig[:8]}{'A' if sig[8] != 'A' else 'B'}{sig[9:]}"


# -- 7. the JWT bearer grant (RFC 7523 §2.1) --------------------------------------------------------------------


def test_jwt_bearer_with_this_server_as_audience(env: Env) -> None:
    r = bearer(env, k8s_token(env, env.srv.issuer))
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["token_type"] == "Bearer" and body["scope"] == "read write"
    assert "refresh_token" not in body
    header, claims = verify(env, body["access_token"], API)
    assert header["typ"] == "at+jwt"
    assert claims["sub"] == f"k8s/{PROD_SA}" and claims["client_id"] == f"k8s/{PROD_SA}"
    assert auds(claims) == [API]  # the binding's first audience
    assert claims["scope"] == "read write"
    # RFC 7523 §3 (3): the token endpoint URL identifies this server too; aud may be an array containing it
    issued(bearer(env, k8s_token(env, env.srv.token_endpoint)))
    issued(bearer(env, k8s_token(env, ["https://elsewhere.example", env.srv.issuer])))


def test_the_external_issuers_keys_are_fetched_once(env: Env) -> None:
    for _ in range(3):
        issued(bearer(env, k8s_token(env, env.srv.issuer)))
    # discovery once, JWKS once, whatever else this worker's tests did with this issuer (no unknown kid is used)
    assert env.k8s.hits[env.k8s.discovery_path] == 1
    assert env.k8s.hits[env.k8s.jwks_path] == 1


def test_jwt_bearer_narrows_resource_and_scope(env: Env) -> None:
    _, claims = verify(env, issued(bearer(env, k8s_token(env, env.srv.issuer), resource=OTHER_API, scope="read")))
    assert auds(claims) == [OTHER_API] and claims["scope"] == "read"
    _, claims = verify(env, issued(bearer(env, k8s_token(env, env.srv.issuer), resource=[API, OTHER_API])))
    assert sorted(auds(claims)) == sorted([API, OTHER_API])
    refused(bearer(env, k8s_token(env, env.srv.issuer), resource="https://nope.example"), "invalid_target")
    refused(bearer(env, k8s_token(env, env.srv.issuer), scope="read admin"), "invalid_scope")


def test_jwt_bearer_failures_are_invalid_grant(env: Env) -> None:
    iss = env.srv.issuer
    t = time.time()
    cases = {
        "the trust configuration's own audience, not this server": (k8s_token(env, AUD), "aud"),
        "another audience": (k8s_token(env, "https://other-as.example"), "aud"),
        "a bad signature": (flip_signature(k8s_token(env, iss)), "signature"),
        "an unpublished key": (k8s_token(env, iss, key=generate_key("ES256")), "signature"),
        "alg none": (k8s_token(env, iss, alg="none"), "algorithm"),
        "an untrusted issuer": (env.stranger.mint(kubernetes_sa_claims(iss)), "not trusted"),
        "expired": (k8s_token(env, iss, now=t - 600, lifetime=300), "expired"),
        "not yet valid": (k8s_token(env, iss, nbf=int(t) + 600), "nbf"),
        "the condition false": (k8s_token(env, iss, namespace="kube-system"), "condition"),
        "no binding": (k8s_token(env, iss, namespace="dev"), "no binding"),
        "no sub": (k8s_token(env, iss, sub=None), "no sub"),
        "not a JWT": ("not.a.jwt", "not a compact jws"),
        "a tampered payload": (
            tamper_payload(k8s_token(env, iss), sub="system:serviceaccount:prod:admin"),
            "signature",
        ),
    }
    for why, (assertion, reason) in cases.items():
        r = bearer(env, assertion)
        assert r.status_code == 400, f"{why}: {r.text}"
        refused(r, "invalid_grant", reason)


def test_jwt_bearer_without_assertion_is_invalid_request(env: Env) -> None:
    refused(bearer(env, None), "invalid_request", "assertion")
    refused(bearer(env, ""), "invalid_request", "assertion")


def test_jwt_bearer_jti_replay(env: Env) -> None:
    token = env.replay.mint({"sub": "w", "aud": env.srv.issuer})
    refused(bearer(env, token, scope="write"), "invalid_scope")  # refused after validation: jti not consumed
    _, claims = verify(env, issued(bearer(env, token)))
    assert claims["sub"] == "replay/w"
    refused(bearer(env, token), "invalid_grant", "already used")
    refused(bearer(env, env.replay.mint({"sub": "w", "aud": env.srv.issuer, "jti": None})), "invalid_grant", "jti")
    # no replay protection configured: the same assertion works twice
    again = k8s_token(env, env.srv.issuer)
    issued(bearer(env, again))
    issued(bearer(env, again))


def key_client(env: Env) -> tuple[dict[str, str], str]:
    """A private_key_jwt client for the JWT bearer grant and the form fields of one (single-use) client assertion."""
    key = ec_key()
    client = env.srv.register(
        grant_types=[JWT_BEARER], token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]}
    )
    cid = client["client_id"]
    fields = {
        "client_id": cid,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, cid, env.srv.token_endpoint),
    }
    return fields, cid


def test_jwt_bearer_replayed_client_assertion_keeps_the_grant_assertion_jti(env: Env) -> None:
    ca, cid = key_client(env)
    _, claims = verify(env, issued(bearer(env, env.replay.mint({"sub": "b1", "aud": env.srv.issuer}), **ca)))
    assert claims["client_id"] == cid
    fresh = env.replay.mint({"sub": "b2", "aud": env.srv.issuer})
    r = bearer(env, fresh, **ca)  # the client assertion is replayed: refused ...
    assert r.status_code in (400, 401) and "already used" in r.text, r.text
    _, claims = verify(env, issued(bearer(env, fresh)))  # ... and the grant's assertion was not consumed
    assert claims["sub"] == "replay/b2"


def test_jwt_bearer_replayed_client_assertion_is_invalid_client(env: Env) -> None:
    ca, _ = key_client(env)
    issued(bearer(env, env.replay.mint({"sub": "b3", "aud": env.srv.issuer}), **ca))
    # the grant assertion is fresh, the client assertion replayed: client authentication failed
    refused(bearer(env, env.replay.mint({"sub": "b4", "aud": env.srv.issuer}), **ca), "invalid_client", "", 401)


def test_replay_protected_token_is_single_use_across_roles(env: Env) -> None:
    # A trust configuration with jti_replay: its token is used once, whether as a federated client assertion or as
    # a grant's assertion / subject token.
    client = register_federated(env, env.replay.issuer, subject="svc-x")
    token = env.replay.mint({"sub": "svc-x", "aud": [CLIENT_AUTH_AUD, env.srv.issuer, AUD]})
    issued(client_credentials(env, client["client_id"], token))
    refused(bearer(env, token), "invalid_grant", "already used")


def test_jwt_bearer_with_an_authenticated_client(env: Env) -> None:
    client = env.srv.register(grant_types=[JWT_BEARER])
    auth = (client["client_id"], client["client_secret"])
    _, claims = verify(env, issued(bearer(env, k8s_token(env, env.srv.issuer), auth=auth)))
    assert claims["sub"] == f"k8s/{PROD_SA}" and claims["client_id"] == client["client_id"]
    other = env.srv.register()  # client_credentials only
    r = bearer(env, k8s_token(env, env.srv.issuer), auth=(other["client_id"], other["client_secret"]))
    refused(r, "unauthorized_client")
    r = bearer(env, k8s_token(env, env.srv.issuer), auth=(client["client_id"], "wrong"))
    refused(r, "invalid_client", status=401)


# -- 8. federated client credentials ----------------------------------------------------------------------------


def register_federated(e: Env, issuer: str, subject: str = PROD_SA, audience: str = CLIENT_AUTH_AUD) -> dict[str, Any]:
    client = e.srv.register(
        token_endpoint_auth_method="private_key_jwt",
        grant_types=["client_credentials"],
        scope="read",
        federated_credentials=[{"issuer": issuer, "subject": subject, "audience": audience}],
    )
    assert "client_secret" not in client
    assert client["federated_credentials"] == [{"issuer": issuer, "subject": subject, "audience": audience}]
    return client


def client_credentials(e: Env, client_id: str | None, assertion: str, **params: Any) -> httpx.Response:
    return post(
        e,
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            **params,
        },
    )


@pytest.fixture(scope="module")
def fed_client(env: Env) -> dict[str, Any]:
    return register_federated(env, env.k8s.issuer)


def test_federated_client_gets_a_token_with_its_platform_token(env: Env, fed_client: dict[str, Any]) -> None:
    cid = fed_client["client_id"]
    token = k8s_token(env, [CLIENT_AUTH_AUD])
    _, claims = verify(env, issued(client_credentials(env, cid, token)))
    assert claims["sub"] == cid and claims["client_id"] == cid
    assert claims["scope"] == "read"
    # the trust configuration has no jti replay protection: the platform token is reused until it expires
    issued(client_credentials(env, cid, token))


def test_federated_client_assertion_must_match_a_credential(env: Env, fed_client: dict[str, Any]) -> None:
    cid = fed_client["client_id"]
    t = time.time()
    cases = {
        "another subject": k8s_token(env, [CLIENT_AUTH_AUD], service_account="worker"),
        "another audience": k8s_token(env, [AUD]),
        "this server as audience": k8s_token(env, [env.srv.issuer]),
        "another trusted issuer, same sub and aud": env.ci.mint(
            github_actions_claims(CLIENT_AUTH_AUD, sub=PROD_SA), kid=None
        ),
        "an untrusted issuer": env.stranger.mint(kubernetes_sa_claims(CLIENT_AUTH_AUD)),
        "expired": k8s_token(env, [CLIENT_AUTH_AUD], now=t - 600, lifetime=300),
        "a bad signature": flip_signature(k8s_token(env, [CLIENT_AUTH_AUD])),
        "a tampered subject": tamper_payload(k8s_token(env, [CLIENT_AUTH_AUD], service_account="worker"), sub=PROD_SA),
    }
    for why, assertion in cases.items():
        r = client_credentials(env, cid, assertion)
        assert r.status_code == 401, f"{why}: {r.text}"
        assert_oauth_error(r, 401, "invalid_client")
    # without client_id the assertion is read as the client's own private_key_jwt (iss = sub = client_id)
    assert_oauth_error(client_credentials(env, None, k8s_token(env, [CLIENT_AUTH_AUD])), 401, "invalid_client")
    # a client that has no federated credentials cannot be authenticated with a platform token
    other = env.srv.register()
    assert_oauth_error(
        client_credentials(env, other["client_id"], k8s_token(env, [CLIENT_AUTH_AUD])), 401, "invalid_client"
    )


def test_federated_client_and_the_issuer_condition(env: Env) -> None:
    client = register_federated(env, env.k8s.issuer, subject="system:serviceaccount:kube-system:api")
    token = k8s_token(env, [CLIENT_AUTH_AUD], namespace="kube-system")
    r = client_credentials(env, client["client_id"], token)
    refused(r, "invalid_client", "unknown client or bad credentials", status=401)  # no oracle before verification


def test_federated_client_with_jti_replay(env: Env) -> None:
    client = register_federated(env, env.replay.issuer, subject="svc")
    token = env.replay.mint({"sub": "svc", "aud": CLIENT_AUTH_AUD})
    refused(client_credentials(env, client["client_id"], token, scope="admin"), "invalid_scope")
    issued(client_credentials(env, client["client_id"], token))
    refused(client_credentials(env, client["client_id"], token), "invalid_client", "already used", status=401)


@pytest.mark.parametrize(
    "metadata",
    [
        {
            "jwks": {
                "keys": [
                    {
                        "kty": "EC",
                        "crv": "P-256",
                        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                    }
                ]
            }
        },
        {"jwks_uri": "https://keys.example.com/jwks"},
        {"token_endpoint_auth_method": "client_secret_basic"},
        {"federated_credentials": []},
        {"federated_credentials": [{"issuer": "https://i.example", "subject": "s"}]},
        {"federated_credentials": [{"issuer": "https://i.example", "subject": "s", "audience": "a", "x": "y"}]},
        {"federated_credentials": [{"issuer": "https://i.example", "subject": "", "audience": "a"}]},
        {"federated_credentials": "https://i.example"},
    ],
    ids=[
        "with-jwks",
        "with-jwks_uri",
        "secret-method",
        "empty",
        "missing-audience",
        "extra-member",
        "empty-subject",
        "not-a-list",
    ],
)
def test_federated_credentials_registration_errors(env: Env, metadata: dict[str, Any]) -> None:
    md: dict[str, Any] = {
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "private_key_jwt",
        "federated_credentials": [{"issuer": env.k8s.issuer, "subject": PROD_SA, "audience": CLIENT_AUTH_AUD}],
    }
    md.update(metadata)
    r = env.http.post(
        env.srv.issuer + "/oauth/register", json=md, headers={"Authorization": f"Bearer {env.srv.reg_token}"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_client_metadata", r.text


def test_federated_client_through_the_admin_api(env: Env) -> None:
    md = {
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": "read",
        "federated_credentials": [{"issuer": env.k8s.issuer, "subject": PROD_SA, "audience": "admin-made"}],
    }
    with env.srv.admin() as admin:
        r = admin.post("/clients", json=md)
        assert r.status_code == 201, r.text
        cid = r.json()["client_id"]
        bad = admin.post("/clients", json={**md, "jwks_uri": "https://keys.example.com/jwks"})
        assert bad.status_code == 400, bad.text
    _, claims = verify(env, issued(client_credentials(env, cid, k8s_token(env, ["admin-made"]))))
    assert claims["sub"] == cid


# -- 9. Tessera as an issuer others trust -----------------------------------------------------------------------


def outbound(e: Env, subject: str, audience: str = STS, **params: Any) -> str:
    r = post(
        e,
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": JWT_TYPE,
            "requested_token_type": JWT_TYPE,
            "audience": audience,
            **params,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["issued_token_type"] == JWT_TYPE
    return r.json()["access_token"]


def test_discovery_works_as_an_openid_provider(env: Env) -> None:
    meta = env.http.get(env.srv.issuer + "/.well-known/openid-configuration").json()
    assert meta["issuer"] == env.srv.issuer
    jwks = env.http.get(meta["jwks_uri"]).json()
    assert {k["kty"] for k in jwks["keys"]} >= {"RSA", "EC"}
    assert all("d" not in k for k in jwks["keys"])


def test_aws_style_relying_party_accepts_the_outbound_token(env: Env) -> None:
    rp = AwsStyleRelyingParty(env.srv.issuer, [STS])
    token = outbound(env, env.ci.mint(github_actions_claims(AUD)))
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "JWT" and header["alg"] == "RS256" and header.get("kid")
    claims = rp.accept(token)
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti"}  # no scope, no client_id, no act
    assert claims["iss"] == env.srv.issuer
    assert claims["sub"] == "ci/repo:octo-org/octo-repo:ref:refs/heads/main"
    assert claims["aud"] == STS
    assert claims["nbf"] == claims["iat"] and 0 < claims["exp"] - claims["iat"] <= 900
    # a second token: the relying party's cached keys suffice
    rp.accept(outbound(env, env.ci.mint(github_actions_claims(AUD))))
    assert rp.fetches == 1


def test_aws_style_relying_party_rejects_what_it_must(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    rp = AwsStyleRelyingParty(env.srv.issuer, [STS])
    token = outbound(env, env.ci.mint(github_actions_claims(AUD)))
    claims = rp.accept(token)
    # tampered: one character of the payload changed, re-encoded, same signature
    for change in ({"sub": claims["sub"][:-1] + "X"}, {"exp": claims["exp"] + 3600}, {"aud": "sts.amazonaws.co"}):
        with pytest.raises(Refused):
            rp.accept(tamper_payload(token, **change))
    head, payload, sig = token.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    assert not rp.accepts(f"{head}.{flipped}.{sig}")
    # another audience: a relying party that is not STS, and a token made for another audience
    assert not AwsStyleRelyingParty(env.srv.issuer, ["https://partner.example"]).accepts(token)
    assert not rp.accepts(outbound(env, env.ci.mint(github_actions_claims(AUD)), audience=API))
    # another provider URL (a trailing slash is another issuer)
    assert not AwsStyleRelyingParty(env.srv.issuer + "/", [STS]).accepts(token)
    # expired: the same relying party, its clock moved past exp (PyJWT reads the time through datetime.now)
    later = dt.datetime.fromtimestamp(claims["exp"] + 1, tz=dt.UTC)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return later.astimezone(tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    with pytest.raises(Refused, match=r"(?i)expired"):
        rp.accept(token)
    monkeypatch.undo()
    assert rp.accepts(token)


def test_outbound_token_of_a_delegation_carries_act(env: Env) -> None:
    rp = AwsStyleRelyingParty(env.srv.issuer, [STS])
    user = env.agents.mint({"sub": "alice", "aud": AUD, "role": "user"})
    actor = env.agents.mint({"sub": "agent-1", "aud": AUD, "role": "delegator"})
    claims = rp.accept(outbound(env, user, actor_token=actor, actor_token_type=JWT_TYPE))
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "act"}
    assert claims["sub"] == "agents/alice"
    assert claims["act"] == {"sub": "agents/agent-1", "iss": env.agents.issuer}


def test_outbound_token_is_never_accepted_back(env: Env) -> None:
    token = outbound(env, env.ci.mint(github_actions_claims(AUD)))
    # not as a JWT bearer assertion (its iss is Tessera itself, which is no trusted issuer) ...
    refused(bearer(env, token), "invalid_grant")
    # ... nor as a token exchange subject (the loop guard)
    r = post(env, {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": JWT_TYPE})
    refused(r, "invalid_request", "not a Tessera access token")
    # ... nor as a federated client assertion
    fed = register_federated(env, env.srv.issuer, subject=claims_of(token)["sub"], audience=STS)
    assert_oauth_error(client_credentials(env, fed["client_id"], token), 401, "invalid_client")


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_refusals_issue_nothing_and_keep_the_audit_chain(env: Env) -> None:
    with env.srv.admin() as admin:
        head = admin.get("/audit", params={"after": 0, "limit": 1000}).json()
        while len(head) == 1000:
            more = admin.get("/audit", params={"after": head[-1]["seq"], "limit": 1000}).json()
            head = head[-1:] + more if more else head[-1:]
        seq = head[-1]["seq"]
        refused(bearer(env, k8s_token(env, env.srv.issuer, namespace="kube-system")), "invalid_grant")
        refused(bearer(env, env.stranger.mint(kubernetes_sa_claims(env.srv.issuer))), "invalid_grant")
        assert_oauth_error(client_credentials(env, "nobody", k8s_token(env, [CLIENT_AUTH_AUD])), 401, "invalid_client")
        new = admin.get("/audit", params={"after": seq, "limit": 1000}).json()
        assert new and not [r for r in new if r["event"] == "token.issued"], new
        report = admin.get("/audit/verify").json()
    assert report["ok"] is True, report
    assert sum(sum(i.hits.values()) for i in [env.stranger]) == 0
