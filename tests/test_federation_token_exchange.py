"""Identity federation through RFC 8693 token exchange, against a live server and real HTTP fake issuers.

One set of fake external issuers and one `tessera serve` per module; the server trusts several issuers at once:

- ``ci``: GitHub-Actions-shaped (RS256), shared, with a condition pinning ``repository_owner_id``;
- ``k8s``: Kubernetes service-account tokens, CEL attributes used in the bindings' ``when``;
- ``calc``: CEL edge cases (a subject mapping that may produce a non-string, evaluation errors);
- ``rotating``: key rotation at the external issuer;
- ``replay``: ``jti_replay = true``; ``typed``: a required ``typ``;
- ``strict``: ``max_token_lifetime`` 600 / ``max_token_age`` 300 and an issuer string on ``localhost`` with a
  pinned ``jwks_uri`` (exact issuer comparison);
- ``agents``: bindings that may delegate or impersonate (RFC 8693 §4.1 ``act``, §4.4 ``may_act``);
- ``spiffe`` (bundle endpoint) and ``inline`` (inline bundle): JWT-SVIDs without ``iss``.

Every refusal is checked for its error code and for the reason in ``error_description``, so that a test
cannot pass because the token was refused for some other reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from federation_support import (
    FakeIssuer,
    FakeSpiffeBundleEndpoint,
    generate_key,
    github_actions_claims,
    kubernetes_sa_claims,
)
from support import ASSERTION_TYPE, LiveServer, assert_oauth_error, client_assertion, ec_jwk, ec_key

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

AUD = "tessera"  # what the external tokens are issued for
DEPLOY = "https://deploy.example.com"
READ_API = "https://read.example.com"
API = "https://api.example.com"
STAGING = "https://staging.example.com"
STS = "sts.amazonaws.com"
SUB_MAIN = "repo:octo-org/octo-repo:ref:refs/heads/main"


# -- fixtures ---------------------------------------------------------------------------------------------------


class Env:
    """The module's fake issuers and server."""

    def __init__(self, srv: LiveServer, idps: dict[str, Any]) -> None:
        self.srv = srv
        self.idps = idps
        self.ci: FakeIssuer = idps["ci"]
        self.k8s: FakeIssuer = idps["k8s"]
        self.calc: FakeIssuer = idps["calc"]
        self.rotating: FakeIssuer = idps["rotating"]
        self.replay: FakeIssuer = idps["replay"]
        self.typed: FakeIssuer = idps["typed"]
        self.strict: FakeIssuer = idps["strict"]
        self.agents: FakeIssuer = idps["agents"]
        self.stranger: FakeIssuer = idps["stranger"]
        self.spiffe: FakeSpiffeBundleEndpoint = idps["spiffe"]
        self.other_domain: FakeSpiffeBundleEndpoint = idps["other_domain"]
        self.inline: FakeSpiffeBundleEndpoint = idps["inline"]
        self.strict_iss = f"http://localhost:{self.strict.port}"
        self.http = httpx.Client(timeout=10)  # one client: creating one costs ~0.1 s on a busy machine
        self._jwks: dict[str, dict[str, Any]] = {}

    def server_key(self, kid: str) -> dict[str, Any]:
        """The server's public JWK named ``kid``, from the JWKS named by its discovery document."""
        if kid not in self._jwks:
            meta = self.http.get(self.srv.issuer + "/.well-known/openid-configuration").json()
            assert meta["issuer"] == self.srv.issuer
            self._jwks = {k["kid"]: k for k in self.http.get(meta["jwks_uri"]).json()["keys"]}
        return self._jwks[kid]

    def total_hits(self) -> int:
        return sum(sum(i.hits.values()) for i in self.idps.values())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    idps: dict[str, Any] = {
        "ci": FakeIssuer(algs=("RS256",)),
        "k8s": FakeIssuer(algs=("ES256",)),
        "calc": FakeIssuer(),
        "rotating": FakeIssuer(),
        "replay": FakeIssuer(),
        "typed": FakeIssuer(),
        "strict": FakeIssuer(),
        "agents": FakeIssuer(),
        "stranger": FakeIssuer(),  # never configured
        "spiffe": FakeSpiffeBundleEndpoint("example.org"),
        "other_domain": FakeSpiffeBundleEndpoint("other.example"),  # never configured
        "inline": FakeSpiffeBundleEndpoint("inline.example"),  # configured inline; its endpoint is never asked
    }
    for idp in idps.values():
        idp.start()
    strict_iss = f"http://localhost:{idps['strict'].port}"
    trusted = [
        {
            "name": "ci",
            "issuer": idps["ci"].issuer,
            "algorithms": ["RS256"],
            "audiences": [AUD],
            "shared": True,
            "condition": 'assertion.repository_owner_id == "1234567"',
            "bindings": [
                {
                    "when": 'assertion.ref == "refs/heads/main"',
                    "audiences": [DEPLOY, STS],
                    "scopes": ["deploy", "read"],
                    "max_lifetime": 600,
                },
                {"when": 'assertion.ref.startsWith("refs/heads/")', "audiences": [READ_API], "scopes": ["read"]},
            ],
        },
        {
            "name": "k8s",
            "issuer": idps["k8s"].issuer,
            "audiences": [AUD],
            "attributes": {
                "namespace": 'assertion["kubernetes.io"].namespace',
                "service_account": 'assertion["kubernetes.io"].serviceaccount.name',
            },
            "condition": 'assertion["kubernetes.io"].namespace != "kube-system"',
            "bindings": [
                {"when": 'attributes.namespace == "prod"', "audiences": [API], "scopes": ["read", "write"]},
                {
                    "when": 'attributes.namespace == "staging" && attributes.service_account == "api"',
                    "audiences": [STAGING],
                    "scopes": ["read"],
                },
            ],
        },
        {
            "name": "calc",
            "issuer": idps["calc"].issuer,
            "audiences": [AUD],
            "subject": "has(assertion.alias) ? assertion.alias : assertion.sub",
            "condition": "int(assertion.sub) > 0",
            "bindings": [
                {"when": "has(assertion.divisor) && 100 / assertion.divisor > 1", "audiences": [API]},
                {"when": "!has(assertion.divisor)", "audiences": [READ_API]},
            ],
        },
        {"name": "rotating", "issuer": idps["rotating"].issuer, "audiences": [AUD], "bindings": [{"audiences": [API]}]},
        {
            "name": "replay",
            "issuer": idps["replay"].issuer,
            "audiences": [AUD],
            "jti_replay": True,
            "bindings": [
                {
                    "when": 'has(assertion.role) && assertion.role == "delegator"',
                    "audiences": [API],
                    "scopes": ["read"],
                    "may_delegate": True,
                },
                {"audiences": [API], "scopes": ["read"]},
            ],
        },
        {
            "name": "typed",
            "issuer": idps["typed"].issuer,
            "audiences": [AUD],
            "typ": "oauth-id+jwt",
            "bindings": [{"audiences": [API]}],
        },
        {
            "name": "strict",
            "issuer": strict_iss,
            "jwks_uri": idps["strict"].jwks_uri,
            "audiences": [AUD, "tessera-alt"],
            "max_token_lifetime": 600,
            "max_token_age": 300,
            "leeway": 5,
            "bindings": [{"audiences": [API]}],
        },
        {
            "name": "agents",
            "issuer": idps["agents"].issuer,
            "audiences": [AUD],
            "bindings": [
                {
                    "when": 'assertion.role == "delegator"',
                    "audiences": [API, STS],
                    "scopes": ["read", "write"],
                    "may_delegate": True,
                },
                {
                    "when": 'assertion.role == "impersonator"',
                    "audiences": [API, STS],
                    "scopes": ["read", "write"],
                    "may_impersonate": True,
                },
                {"audiences": [API, STS], "scopes": ["read", "write"]},
            ],
        },
        {
            "name": "spiffe",
            "issuer": "spiffe://example.org",
            "spiffe_bundle_uri": idps["spiffe"].url,
            "trust_domain": "example.org",
            "audiences": [AUD],
            "bindings": [{"audiences": [API]}],
        },
        {
            "name": "inline",
            "issuer": "spiffe://inline.example",
            "spiffe_bundle": idps["inline"].bundle(),
            "trust_domain": "inline.example",
            "audiences": [AUD],
            "bindings": [{"audiences": [READ_API]}],
        },
    ]
    srv = LiveServer(
        tmp_path_factory.mktemp("federation-tx") / "data",
        extra_env={
            "TESSERA_TRUSTED_ISSUERS": json.dumps(trusted),
            "TESSERA_DEV_MODE": "true",
            "TESSERA_SIGNING_ALGS": "ES256,RS256",
            "TESSERA_MAX_ACT_DEPTH": "2",
            "TESSERA_ACCESS_TOKEN_LIFETIME": "900",
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


def exchange(
    e: Env,
    subject_token: str | None,
    subject_token_type: str | None = JWT_TYPE,
    *,
    auth: tuple[str, str] | None = None,
    **params: Any,
) -> httpx.Response:
    data: dict[str, Any] = {"grant_type": TOKEN_EXCHANGE}
    if subject_token is not None:
        data["subject_token"] = subject_token
    if subject_token_type is not None:
        data["subject_token_type"] = subject_token_type
    data.update({k: v for k, v in params.items() if v is not None})
    return e.http.post(e.srv.token_endpoint, data=data, auth=auth)


def issued(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def refused(r: httpx.Response, reason: str, status: int = 400, error: str = "invalid_request") -> None:
    assert_oauth_error(r, status, error)
    assert reason.lower() in r.json().get("error_description", "").lower(), r.text


def verify(e: Env, token: str, audience: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token Tessera issued, verified with PyJWT against the JWKS named by discovery."""
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWK(e.server_key(header["kid"]))
    assert key.algorithm_name == header["alg"]
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        issuer=e.srv.issuer,
        audience=audience,
        options={"verify_aud": audience is not None, "require": ["iss", "sub", "exp", "iat", "jti"]},
    )
    return header, claims


def auds(claims: dict[str, Any]) -> list[str]:
    aud = claims["aud"]
    return [aud] if isinstance(aud, str) else list(aud)


def ci_token(e: Env, **overrides: Any) -> str:
    return e.ci.mint(github_actions_claims(AUD, **overrides))


def k8s_token(e: Env, namespace: str = "prod", service_account: str = "api", **overrides: Any) -> str:
    return e.k8s.mint(kubernetes_sa_claims(AUD, namespace=namespace, service_account=service_account, **overrides))


def agent_token(e: Env, sub: str, role: str, **claims: Any) -> str:
    return e.agents.mint({"sub": sub, "aud": AUD, "role": role, **claims})


def audit_records(e: Env, after: int = 0) -> list[dict[str, Any]]:
    """Every audit record after ``after`` (seq), through the admin API, page by page."""
    out: list[dict[str, Any]] = []
    with e.srv.admin() as admin:
        while True:
            page = admin.get("/audit", params={"after": after, "limit": 1000}).json()
            out += page
            if len(page) < 1000:
                return out
            after = page[-1]["seq"]


def audit_ok(e: Env) -> None:
    with e.srv.admin() as admin:
        r = admin.get("/audit/verify")
    assert r.status_code == 200, r.text
    assert r.json().get("ok", True) is True, r.text


# -- 1. mapping and conditions ----------------------------------------------------------------------------------


def test_condition_true_maps_the_principal_and_the_binding(env: Env) -> None:
    r = exchange(env, ci_token(env))
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] <= 600  # the binding's max_lifetime
    header, claims = verify(env, body["access_token"], DEPLOY)
    assert header["typ"] == "at+jwt"
    assert claims["sub"] == f"ci/{SUB_MAIN}"
    assert auds(claims) == [DEPLOY]  # the binding's first audience is the default
    assert claims["scope"] == "deploy read"
    assert claims["exp"] - claims["iat"] <= 600
    assert "act" not in claims


def test_condition_false_is_refused(env: Env) -> None:
    # A token of the shared issuer from another tenant: same issuer, keys and audience, other owner.
    r = exchange(env, ci_token(env, repository_owner="evil-org", repository_owner_id="666"))
    refused(r, "condition does not hold")


def test_condition_on_a_missing_claim_denies(env: Env) -> None:
    r = exchange(env, ci_token(env, repository_owner_id=None))
    refused(r, "not accepted")
    r = exchange(env, env.k8s.mint({"sub": "system:serviceaccount:prod:api", "aud": [AUD]}))
    refused(r, "mapping failed")


def test_cel_evaluation_errors_deny(env: Env) -> None:
    # int() of a non-numeric sub
    refused(exchange(env, env.calc.mint({"sub": "abc", "aud": AUD})), "mapping failed")
    # a division by zero in a binding's when
    refused(exchange(env, env.calc.mint({"sub": "17", "aud": AUD, "divisor": 0})), "binding condition failed")
    # the condition false
    refused(exchange(env, env.calc.mint({"sub": "-5", "aud": AUD})), "condition does not hold")
    # and the same configuration works when everything evaluates
    _, claims = verify(env, issued(exchange(env, env.calc.mint({"sub": "17", "aud": AUD, "divisor": 10}))))
    assert claims["sub"] == "calc/17" and auds(claims) == [API]
    _, claims = verify(env, issued(exchange(env, env.calc.mint({"sub": "18", "aud": AUD}))))
    assert claims["sub"] == "calc/18" and auds(claims) == [READ_API]


def test_no_binding_applies(env: Env) -> None:
    # calc: a divisor that makes the first binding false and the second does not apply either
    refused(exchange(env, env.calc.mint({"sub": "17", "aud": AUD, "divisor": 200})), "no binding")
    # ci: a tag ref matches neither binding
    refused(exchange(env, ci_token(env, ref="refs/tags/v1.0")), "no binding")
    # k8s: a namespace no binding names
    refused(exchange(env, k8s_token(env, namespace="dev")), "no binding")


def test_subject_mapping_must_produce_a_string(env: Env) -> None:
    for alias in (42, ["a", "b"], {"x": "y"}, True, ""):
        r = exchange(env, env.calc.mint({"sub": "17", "aud": AUD, "alias": alias}))
        refused(r, "mapped subject")
    _, claims = verify(env, issued(exchange(env, env.calc.mint({"sub": "17", "aud": AUD, "alias": "x-1"}))))
    assert claims["sub"] == "calc/x-1"


def test_attributes_select_the_binding(env: Env) -> None:
    _, prod = verify(env, issued(exchange(env, k8s_token(env, namespace="prod"))))
    assert prod["sub"] == "k8s/system:serviceaccount:prod:api"
    assert auds(prod) == [API] and prod["scope"] == "read write"
    _, staging = verify(env, issued(exchange(env, k8s_token(env, namespace="staging"))))
    assert staging["sub"] == "k8s/system:serviceaccount:staging:api"
    assert auds(staging) == [STAGING] and staging["scope"] == "read"
    # staging binding also needs service_account == "api"
    refused(exchange(env, k8s_token(env, namespace="staging", service_account="worker")), "no binding")
    # the issuer's condition excludes kube-system before any binding is tried
    refused(exchange(env, k8s_token(env, namespace="kube-system")), "condition does not hold")
    # a prod workload cannot ask for the staging audience
    assert_oauth_error(exchange(env, k8s_token(env), audience=STAGING), 400, "invalid_target")


# -- 2. keys ----------------------------------------------------------------------------------------------------


def test_key_rotation_refetches_the_jwks_exactly_once(env: Env) -> None:
    idp = env.rotating
    token = idp.mint({"sub": "w1", "aud": AUD})
    issued(exchange(env, token))  # primes the cache (discovery + JWKS, or nothing if already cached)
    before = dict(idp.hits)
    issued(exchange(env, idp.mint({"sub": "w1", "aud": AUD})))
    assert dict(idp.hits) == before  # cached: no request at all
    new_kid = idp.rotate(drop_old=True)
    r = exchange(env, idp.mint({"sub": "w2", "aud": AUD}))
    assert jwt.get_unverified_header(idp.mint({"sub": "w2", "aud": AUD}))["kid"] == new_kid
    _, claims = verify(env, issued(r))
    assert claims["sub"] == "rotating/w2"
    assert idp.hits[idp.jwks_path] == before.get(idp.jwks_path, 0) + 1  # exactly one refetch
    assert idp.hits[idp.discovery_path] == before.get(idp.discovery_path, 0)  # jwks_uri remembered
    issued(exchange(env, idp.mint({"sub": "w3", "aud": AUD})))
    assert idp.hits[idp.jwks_path] == before.get(idp.jwks_path, 0) + 1


def test_untrusted_issuer_is_refused_without_a_request(env: Env) -> None:
    env.stranger.reset_hits()
    before = env.total_hits()
    r = exchange(env, env.stranger.mint(github_actions_claims(AUD)))
    refused(r, "issuer is not trusted")
    assert sum(env.stranger.hits.values()) == 0
    assert env.total_hits() == before


@pytest.mark.parametrize(
    "variant",
    [
        lambda iss: iss + "/",
        lambda iss: iss.replace("localhost", "LOCALHOST"),
        lambda iss: iss.replace("http://", "https://"),
        lambda iss: iss.replace("localhost", "127.0.0.1"),
        lambda iss: iss + "/.",
    ],
    ids=["trailing-slash", "host-case", "https", "ip-for-name", "dot-segment"],
)
def test_issuer_must_match_exactly_and_nothing_is_fetched(env: Env, variant: Any) -> None:
    # The same key signs: only the issuer string differs.
    good = env.strict.mint({"iss": env.strict_iss, "sub": "w", "aud": AUD})
    issued(exchange(env, good))  # the exact string is accepted (and the keys are cached)
    before = env.total_hits()
    r = exchange(env, env.strict.mint({"iss": variant(env.strict_iss), "sub": "w", "aud": AUD}))
    refused(r, "issuer is not trusted")
    assert env.total_hits() == before


def test_kid_of_another_issuer_is_refused(env: Env) -> None:
    # iss names "typed", signature and kid are "k8s"'s: the key must come from the claimed issuer only.
    k8s_hits = sum(env.k8s.hits.values())
    b = env.k8s.current_key
    token = env.typed.mint({"sub": "w", "aud": AUD}, typ="oauth-id+jwt", key=b.private, kid=b.kid)
    refused(exchange(env, token), "key could not be found")
    assert sum(env.k8s.hits.values()) == k8s_hits  # never fetched the other issuer's keys
    # B's key with A's kid: found, but the signature does not verify
    token = env.typed.mint({"sub": "w", "aud": AUD}, typ="oauth-id+jwt", key=b.private, kid=env.typed.current_kid)
    refused(exchange(env, token), "signature does not verify")


def test_unpublished_key_is_refused(env: Env) -> None:
    stray = generate_key("ES256")
    # the current kid in the header, another key signing
    refused(exchange(env, env.k8s.mint(kubernetes_sa_claims(AUD), key=stray)), "signature does not verify")
    # a kid the issuer never published
    refused(exchange(env, env.k8s.mint(kubernetes_sa_claims(AUD), key=stray, kid="unpublished")), "key")


def test_alg_none_and_hmac_with_the_public_key_are_refused(env: Env) -> None:
    refused(exchange(env, ci_token_alg(env, "none")), "algorithm is not allowed")
    refused(exchange(env, ci_token_alg(env, "HS256")), "algorithm is not allowed")
    # ES256 is not in ci's allow-list (RS256 only), even correctly signed with a key that would fit
    token = env.ci.mint(github_actions_claims(AUD), key=generate_key("ES256"))
    refused(exchange(env, token), "algorithm is not allowed")


def ci_token_alg(e: Env, alg: str) -> str:
    return e.ci.mint(github_actions_claims(AUD), alg=alg)


# -- 3. claims --------------------------------------------------------------------------------------------------


def strict_token(e: Env, **kw: Any) -> str:
    claims = {"iss": e.strict_iss, "sub": "w", "aud": AUD}
    claims.update(kw.pop("claims", {}))
    return e.strict.mint(claims, **kw)


def test_audience(env: Env) -> None:
    refused(exchange(env, strict_token(env, claims={"aud": "someone-else"})), "aud")
    refused(exchange(env, strict_token(env, claims={"aud": ["a", "b"]})), "aud")
    refused(exchange(env, strict_token(env, claims={"aud": []})), "aud")
    refused(exchange(env, strict_token(env, claims={"aud": None})), "aud")
    issued(exchange(env, strict_token(env, claims={"aud": ["someone-else", "tessera-alt"]})))
    issued(exchange(env, strict_token(env, claims={"aud": "tessera-alt"})))


def test_time_claims(env: Env) -> None:
    t = time.time()
    refused(exchange(env, strict_token(env, now=t - 200, lifetime=100)), "expired")
    refused(exchange(env, strict_token(env, claims={"exp": None})), "exp")
    refused(exchange(env, strict_token(env, claims={"nbf": int(t) + 120})), "nbf")
    refused(exchange(env, strict_token(env, now=t + 120)), "iat")
    refused(exchange(env, strict_token(env, lifetime=700)), "longer than 600")
    refused(exchange(env, strict_token(env, now=t - 400, lifetime=500)), "older than 300")
    # lifetime measured from nbf when there is no iat
    refused(exchange(env, strict_token(env, claims={"iat": None, "nbf": int(t)}, lifetime=700)), "longer")
    issued(exchange(env, strict_token(env, lifetime=600)))
    issued(exchange(env, strict_token(env, now=t - 250, lifetime=300)))


def test_sub_is_required(env: Env) -> None:
    refused(exchange(env, strict_token(env, claims={"sub": None})), "no sub")
    refused(exchange(env, strict_token(env, claims={"sub": ""})), "no sub")


def test_jti_replay_protection(env: Env) -> None:
    token = env.replay.mint({"sub": "w", "aud": AUD})
    # a refused request (scope not allowed) must not consume the jti
    assert_oauth_error(exchange(env, token, scope="admin"), 400, "invalid_scope")
    assert_oauth_error(exchange(env, token, audience=STAGING), 400, "invalid_target")
    _, claims = verify(env, issued(exchange(env, token)))
    assert claims["sub"] == "replay/w" and claims["scope"] == "read"
    refused(exchange(env, token), "already used")
    refused(exchange(env, token, scope="read"), "already used")
    refused(exchange(env, env.replay.mint({"sub": "w", "aud": AUD, "jti": None})), "needs a jti")
    # without replay protection the same token exchanges twice
    again = ci_token(env)
    issued(exchange(env, again))
    issued(exchange(env, again))


def test_refused_exchange_with_a_bad_actor_keeps_the_subject_jti(env: Env) -> None:
    token = env.replay.mint({"sub": "w2", "aud": AUD})
    bad_actor = env.stranger.mint({"sub": "x", "aud": AUD})
    refused(exchange(env, token, actor_token=bad_actor, actor_token_type=JWT_TYPE), "actor token")
    issued(exchange(env, token))
    audit_ok(env)


def test_refused_exchange_with_a_replayed_actor_keeps_the_subject_jti(env: Env) -> None:
    # The actor token was used before; the subject token is fresh. The request is refused as a replay, and the
    # subject token's jti must not be consumed by that refusal: the same subject token works afterwards.
    actor = env.replay.mint({"sub": "a", "aud": AUD, "role": "delegator"})
    issued(exchange(env, actor))
    subject = env.replay.mint({"sub": "s", "aud": AUD})
    refused(exchange(env, subject, actor_token=actor, actor_token_type=JWT_TYPE), "already used")
    _, claims = verify(env, issued(exchange(env, subject)))
    assert claims["sub"] == "replay/s"
    # and a fresh actor with the same subject: delegation works (each jti consumed once)
    fresh_actor = env.replay.mint({"sub": "a", "aud": AUD, "role": "delegator"})
    subject2 = env.replay.mint({"sub": "s2", "aud": AUD})
    _, claims = verify(env, issued(exchange(env, subject2, actor_token=fresh_actor, actor_token_type=JWT_TYPE)))
    assert claims["act"] == {"sub": "replay/a", "iss": env.replay.issuer}


def test_same_replay_protected_token_as_subject_and_actor(env: Env) -> None:
    # The subject acting for itself is no actor: one use of the token, consumed once.
    token = env.replay.mint({"sub": "same", "aud": AUD})
    _, claims = verify(env, issued(exchange(env, token, actor_token=token, actor_token_type=JWT_TYPE)), API)
    assert "act" not in claims
    refused(exchange(env, token), "already used")


def delegating_key_client(env: Env) -> tuple[dict[str, str], Any]:
    """A private_key_jwt client that may delegate, and the form fields of one (single-use) client assertion."""
    key = ec_key()
    client = admin_register(
        env,
        grant_types=[TOKEN_EXCHANGE],
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [ec_jwk(key, "k1")]},
        scope="read",
        allowed_resources=[API],
        default_resource=API,
        may_delegate=True,
    )
    cid = client["client_id"]
    assertion = client_assertion(key, cid, env.srv.token_endpoint)
    return {"client_id": cid, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}, client


def test_replayed_client_assertion_keeps_the_subject_jti(env: Env) -> None:
    auth, client = delegating_key_client(env)
    _, claims = verify(env, issued(exchange(env, env.replay.mint({"sub": "c1", "aud": AUD}), **auth)))
    assert claims["act"] == {"sub": client["client_id"]}
    fresh = env.replay.mint({"sub": "c2", "aud": AUD})
    r = exchange(env, fresh, **auth)  # the client assertion is replayed: refused ...
    assert r.status_code in (400, 401) and "already used" in r.text, r.text
    _, claims = verify(env, issued(exchange(env, fresh)))  # ... and the subject token was not consumed
    assert claims["sub"] == "replay/c2"


def test_replayed_client_assertion_is_invalid_client(env: Env) -> None:
    # RFC 7523 §3 (7) / RFC 6749 §5.2: a replayed client assertion fails client authentication (invalid_client),
    # also when the request carries a replay-protected subject token too.
    auth, _ = delegating_key_client(env)
    issued(exchange(env, env.replay.mint({"sub": "d1", "aud": AUD}), **auth))
    user = agent_token(env, "u", "user")  # no replay protection: the client assertion is the only jti
    refused(exchange(env, user, **auth), "already used", 401, "invalid_client")
    refused(exchange(env, env.replay.mint({"sub": "d2", "aud": AUD}), **auth), "already used", 401, "invalid_client")


def test_typ(env: Env) -> None:
    refused(exchange(env, env.typed.mint({"sub": "w", "aud": AUD}, typ="JWT")), "typ must be")
    refused(exchange(env, env.typed.mint({"sub": "w", "aud": AUD}, typ=None)), "typ must be")
    refused(exchange(env, env.typed.mint({"sub": "w", "aud": AUD}, typ="dpop+jwt")), "typ must be")
    _, claims = verify(env, issued(exchange(env, env.typed.mint({"sub": "w", "aud": AUD}, typ="oauth-id+jwt"))))
    assert claims["sub"] == "typed/w"
    issued(exchange(env, env.typed.mint({"sub": "w", "aud": AUD}, typ="OAUTH-ID+JWT")))
    # RFC 7515 §4.1.9: a typ without '/' is read as if "application/" were prepended; both spellings are one type
    # (as tessera.verify and the foreign-type check below treat them)
    issued(exchange(env, env.typed.mint({"sub": "w", "aud": AUD}, typ="application/oauth-id+jwt")))


@pytest.mark.parametrize("typ", ["dpop+jwt", "application/dpop+jwt", "logout+jwt", "secevent+jwt", "statuslist+jwt"])
def test_foreign_token_types_are_refused(env: Env, typ: str) -> None:
    refused(exchange(env, env.ci.mint(github_actions_claims(AUD), typ=typ)), "not an identity token")


# -- 4. SPIFFE --------------------------------------------------------------------------------------------------


def test_jwt_svid_from_the_bundle_endpoint(env: Env) -> None:
    svid = env.spiffe.mint_svid(env.spiffe.spiffe_id(), AUD)
    assert "iss" not in jwt.decode(svid, options={"verify_signature": False})
    _, claims = verify(env, issued(exchange(env, svid)))
    assert claims["sub"] == "spiffe/spiffe://example.org/ns/prod/sa/api"
    assert auds(claims) == [API]
    assert env.spiffe.hit_count(env.spiffe.url) >= 1


def test_svid_of_another_trust_domain_is_refused(env: Env) -> None:
    foreign = env.other_domain.mint_svid(env.other_domain.spiffe_id(), AUD)
    refused(exchange(env, foreign), "issuer is not trusted")
    assert sum(env.other_domain.hits.values()) == 0
    # claiming a trust domain it does not hold the key of
    forged = env.other_domain.mint_svid(env.spiffe.spiffe_id(), AUD)
    refused(exchange(env, forged), "key")
    # a key of the trusted domain signing for a SPIFFE ID of another domain, with a matching iss
    wrong = env.spiffe.mint_svid("spiffe://other.example/ns/prod/sa/api", AUD, iss="spiffe://example.org")
    refused(exchange(env, wrong), "spiffe id")


def test_inline_spiffe_bundle(env: Env) -> None:
    before = sum(env.inline.hits.values())
    svid = env.inline.mint_svid(env.inline.spiffe_id("/ns/batch/sa/job"), [AUD, "x"])
    _, claims = verify(env, issued(exchange(env, svid)))
    assert claims["sub"] == "inline/spiffe://inline.example/ns/batch/sa/job"
    assert auds(claims) == [READ_API]
    assert sum(env.inline.hits.values()) == before  # inline: nothing fetched


# -- 5. token exchange specifics --------------------------------------------------------------------------------


def test_request_parameter_errors(env: Env) -> None:
    token = ci_token(env)
    refused(exchange(env, token, None), "subject_token_type")
    refused(exchange(env, None), "subject_token")
    refused(exchange(env, token, "urn:ietf:params:oauth:token-type:saml2"), "subject_token_type")
    refused(exchange(env, token, actor_token=ci_token(env)), "actor_token_type")
    refused(exchange(env, token, actor_token_type=JWT_TYPE), "actor_token_type")
    refused(exchange(env, token, actor_token=ci_token(env), actor_token_type="urn:x"), "actor_token_type")
    refused(exchange(env, token, requested_token_type="urn:ietf:params:oauth:token-type:saml2"), "requested")
    refused(exchange(env, "not-a-jwt"), "not a jwt")
    assert_oauth_error(exchange(env, token, audience="https://elsewhere.example"), 400, "invalid_target")
    assert_oauth_error(exchange(env, token, resource=READ_API), 400, "invalid_target")  # other binding's
    assert_oauth_error(exchange(env, token, scope="read admin"), 400, "invalid_scope")
    # id_token as subject_token_type is accepted for an external token, audience and scope narrowed
    r = exchange(env, token, ID_TOKEN_TYPE, audience=STS, scope="read")
    _, claims = verify(env, issued(r), STS)
    assert auds(claims) == [STS] and claims["scope"] == "read"
    assert r.json()["scope"] == "read"


def own_token(env: Env) -> tuple[str, dict[str, Any]]:
    r = exchange(env, ci_token(env), audience=[DEPLOY, STS], scope="deploy read")
    token = issued(r)
    _, claims = verify(env, token)
    assert sorted(auds(claims)) == sorted([DEPLOY, STS])
    return token, claims


def test_down_scoping_an_own_token(env: Env) -> None:
    token, original = own_token(env)
    r = exchange(env, token, ACCESS_TOKEN_TYPE, audience=DEPLOY, scope="read")
    _, claims = verify(env, issued(r), DEPLOY)
    assert claims["sub"] == original["sub"]
    assert auds(claims) == [DEPLOY] and claims["scope"] == "read"
    assert claims["exp"] <= original["exp"]
    assert claims["jti"] != original["jti"]
    # without audience/scope: the original's
    _, same = verify(env, issued(exchange(env, token, ACCESS_TOKEN_TYPE)))
    assert sorted(auds(same)) == sorted(auds(original)) and same["scope"] == "deploy read"
    assert same["exp"] <= original["exp"]
    # never wider
    assert_oauth_error(exchange(env, token, ACCESS_TOKEN_TYPE, scope="read write"), 400, "invalid_scope")
    assert_oauth_error(exchange(env, token, ACCESS_TOKEN_TYPE, audience=READ_API), 400, "invalid_target")
    # narrowed tokens narrow further, never back
    narrow = issued(exchange(env, token, ACCESS_TOKEN_TYPE, audience=DEPLOY, scope="read"))
    assert_oauth_error(exchange(env, narrow, ACCESS_TOKEN_TYPE, scope="deploy"), 400, "invalid_scope")
    assert_oauth_error(exchange(env, narrow, ACCESS_TOKEN_TYPE, audience=STS), 400, "invalid_target")
    # the declared type must fit: Tessera issues access tokens, not ID tokens
    refused(exchange(env, token, ID_TOKEN_TYPE), "not an id_token")


def test_down_scoping_to_an_outbound_jwt_and_the_loop_guard(env: Env) -> None:
    token, original = own_token(env)
    r = exchange(env, token, ACCESS_TOKEN_TYPE, audience=STS, requested_token_type=JWT_TYPE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["issued_token_type"] == JWT_TYPE and body["token_type"] == "N_A"
    assert "scope" not in body
    header, claims = verify(env, body["access_token"], STS)
    assert header["typ"] == "JWT" and header["alg"] == "RS256"
    assert claims["exp"] <= original["exp"]
    # an outbound token names exactly one audience
    assert_oauth_error(
        exchange(env, token, ACCESS_TOKEN_TYPE, audience=[STS, DEPLOY], requested_token_type=JWT_TYPE),
        400,
        "invalid_target",
    )
    # never accepted back, whatever type it is declared as
    for declared in (JWT_TYPE, ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE):
        refused(exchange(env, body["access_token"], declared), "not a Tessera access token")
    refused(
        exchange(env, ci_token(env), actor_token=body["access_token"], actor_token_type=JWT_TYPE),
        "not a Tessera access token",
    )


def test_revoked_own_token_is_refused(env: Env) -> None:
    token, _ = own_token(env)
    issued(exchange(env, token, ACCESS_TOKEN_TYPE, scope="read"))
    with env.srv.admin() as admin:
        r = admin.post("/tokens/revoke", json={"token": token})
    # the token and the one exchanged from it above (lineage: tests/test_federation_lineage.py)
    assert r.status_code == 200 and r.json()["revoked"] == 2, r.text
    refused(exchange(env, token, ACCESS_TOKEN_TYPE, scope="read"), "revoked")
    refused(exchange(env, token, ACCESS_TOKEN_TYPE, requested_token_type=JWT_TYPE, audience=STS), "revoked")


def test_own_token_with_a_bad_signature_is_refused(env: Env) -> None:
    token, _ = own_token(env)
    head, payload, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    refused(exchange(env, f"{head}.{payload}.{flipped}", ACCESS_TOKEN_TYPE), "not accepted")


# -- 6. delegation ----------------------------------------------------------------------------------------------


def delegate(env: Env, subject: str, actor: str, subject_type: str = JWT_TYPE, **kw: Any) -> httpx.Response:
    return exchange(env, subject, subject_type, actor_token=actor, actor_token_type=JWT_TYPE, **kw)


def test_delegation_records_the_actor(env: Env) -> None:
    user = agent_token(env, "alice", "user")
    r = delegate(env, user, agent_token(env, "agent-1", "delegator"), audience=API, scope="read")
    _, claims = verify(env, issued(r), API)
    assert claims["sub"] == "agents/alice"
    assert claims["act"] == {"sub": "agents/agent-1", "iss": env.agents.issuer}
    assert claims["scope"] == "read"
    assert claims["client_id"] == "agents/agent-1"


def test_delegation_chain_nests_the_newest_actor_outermost_up_to_the_depth_limit(env: Env) -> None:
    user = agent_token(env, "bob", "user")
    one = issued(delegate(env, user, agent_token(env, "agent-1", "delegator"), audience=API))
    _, c1 = verify(env, one)
    two_r = delegate(env, one, agent_token(env, "agent-2", "delegator"), ACCESS_TOKEN_TYPE)
    _, c2 = verify(env, issued(two_r))
    assert c2["sub"] == "agents/bob"
    assert c2["act"] == {
        "sub": "agents/agent-2",
        "iss": env.agents.issuer,
        "act": {"sub": "agents/agent-1", "iss": env.agents.issuer},
    }
    assert c2["exp"] <= c1["exp"]
    # TESSERA_MAX_ACT_DEPTH=2: a third actor is refused, and nothing was issued
    refused(
        delegate(env, two_r.json()["access_token"], agent_token(env, "agent-3", "delegator"), ACCESS_TOKEN_TYPE),
        "deeper than 2",
    )
    # the delegated token itself can still be down-scoped (no new actor: the chain is kept as is)
    _, c3 = verify(env, issued(exchange(env, two_r.json()["access_token"], ACCESS_TOKEN_TYPE, scope="read")))
    assert c3["act"] == c2["act"]


def test_an_actor_that_may_neither_delegate_nor_impersonate_is_refused(env: Env) -> None:
    user = agent_token(env, "carol", "user")
    refused(delegate(env, user, agent_token(env, "plain-1", "plain")), "neither delegate nor impersonate")
    # a k8s workload (no flags in its binding) either
    refused(delegate(env, user, k8s_token(env)), "neither delegate nor impersonate")


def test_impersonation_issues_a_token_without_act(env: Env) -> None:
    user = agent_token(env, "dave", "user")
    r = delegate(env, user, agent_token(env, "imp-1", "impersonator"), audience=API, scope="write")
    _, claims = verify(env, issued(r), API)
    assert claims["sub"] == "agents/dave"
    assert "act" not in claims
    [record] = [x for x in audit_records(env) if x.get("data", {}).get("jti") == claims["jti"]]
    assert record["actor"] == "agents/imp-1"
    assert record["data"]["mode"] == "impersonation"


def test_may_act(env: Env) -> None:
    actor = agent_token(env, "agent-1", "delegator")
    other = {"sub": "agents/agent-9"}
    refused(delegate(env, agent_token(env, "erin", "user", may_act=other), actor), "may_act")
    wrong_iss = {"sub": "agents/agent-1", "iss": env.ci.issuer}
    refused(delegate(env, agent_token(env, "erin", "user", may_act=wrong_iss), actor), "may_act")
    refused(delegate(env, agent_token(env, "erin", "user", may_act="agents/agent-1"), actor), "may_act")
    ok = {"sub": "agents/agent-1", "iss": env.agents.issuer}
    _, claims = verify(env, issued(delegate(env, agent_token(env, "erin", "user", may_act=ok), actor)))
    assert claims["act"]["sub"] == "agents/agent-1"
    _, claims = verify(
        env, issued(delegate(env, agent_token(env, "erin", "user", may_act={"sub": "agents/agent-1"}), actor))
    )
    assert claims["act"]["sub"] == "agents/agent-1"


def test_delegation_narrows_to_what_both_may_get(env: Env) -> None:
    # the k8s prod workload may get API read/write; an agent delegating for it too, but not STAGING
    user = k8s_token(env)
    actor = agent_token(env, "agent-1", "delegator")
    assert_oauth_error(delegate(env, user, actor, audience=STS), 400, "invalid_target")  # subject may not
    assert_oauth_error(delegate(env, k8s_token(env, namespace="staging"), actor), 400, "invalid_target")
    _, claims = verify(env, issued(delegate(env, user, actor, scope="write")), API)
    assert claims["sub"] == "k8s/system:serviceaccount:prod:api" and claims["act"]["sub"] == "agents/agent-1"


def test_delegated_outbound_jwt_carries_act_and_minimal_claims(env: Env) -> None:
    user = agent_token(env, "frank", "user")
    r = delegate(env, user, agent_token(env, "agent-1", "delegator"), audience=STS, requested_token_type=JWT_TYPE)
    header, claims = verify(env, issued(r), STS)
    assert header["typ"] == "JWT" and header["alg"] == "RS256"
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "act"}
    assert claims["act"] == {"sub": "agents/agent-1", "iss": env.agents.issuer}


def admin_register(env: Env, **metadata: Any) -> dict[str, Any]:
    """Delegation rights are granted by an operator (admin API), never through RFC 7591 registration."""
    md = {"token_endpoint_auth_method": "client_secret_basic", **metadata}
    with env.srv.admin() as admin:
        r = admin.post("/clients", json=md)
    assert r.status_code == 201, r.text
    return r.json()


def register_te_client(env: Env, **metadata: Any) -> dict[str, Any]:
    return admin_register(
        env,
        grant_types=[TOKEN_EXCHANGE, "client_credentials"],
        scope="read write",
        allowed_resources=[API],
        default_resource=API,
        **metadata,
    )


def test_registered_client_with_may_delegate_acts_through_client_authentication(env: Env) -> None:
    client = register_te_client(env, may_delegate=True)
    auth = (client["client_id"], client["client_secret"])
    user = agent_token(env, "grace", "user")
    r = exchange(env, user, auth=auth, scope="read")
    _, claims = verify(env, issued(r), API)
    assert claims["sub"] == "agents/grace"
    assert claims["act"] == {"sub": client["client_id"]}  # Tessera's own client: no iss
    assert claims["client_id"] == client["client_id"]
    # the client revokes the token it was issued (RFC 7009): the token is no longer exchangeable
    token = r.json()["access_token"]
    issued(exchange(env, token, ACCESS_TOKEN_TYPE, scope="read"))
    rv = env.http.post(env.srv.issuer + "/oauth/revoke", data={"token": token}, auth=auth)
    assert rv.status_code == 200, rv.text
    refused(exchange(env, token, ACCESS_TOKEN_TYPE), "revoked")
    # a client without may_delegate / may_impersonate cannot act for the subject
    plain = register_te_client(env)
    r = exchange(env, user, auth=(plain["client_id"], plain["client_secret"]), scope="read")
    refused(r, "neither delegate nor impersonate")


def test_client_without_the_token_exchange_grant_is_refused(env: Env) -> None:
    client = admin_register(
        env,
        grant_types=["client_credentials"],
        scope="read write",
        may_delegate=True,
        allowed_resources=[API],
        default_resource=API,
    )
    r = exchange(env, agent_token(env, "heidi", "user"), auth=(client["client_id"], client["client_secret"]))
    assert_oauth_error(r, 400, "unauthorized_client")
    r = exchange(env, agent_token(env, "heidi", "user"), auth=(client["client_id"], "wrong"))
    assert_oauth_error(r, 401, "invalid_client")


# -- 10. refusals change no state -------------------------------------------------------------------------------


def test_refusals_leave_the_audit_chain_intact_and_issue_nothing(env: Env) -> None:
    head = audit_records(env)[-1]["seq"]
    bad = [
        exchange(env, ci_token(env, repository_owner_id="1")),
        exchange(env, env.stranger.mint({"sub": "x", "aud": AUD})),
        exchange(env, ci_token(env), scope="admin"),
        exchange(env, ci_token(env), audience="https://nope.example"),
    ]
    assert all(r.status_code == 400 for r in bad)
    new = audit_records(env, head)
    assert len(new) >= len(bad)  # refusals are recorded ...
    assert not [r for r in new if r["event"] == "token.issued"], new  # ... and nothing is issued
    audit_ok(env)  # the CLI's `tessera audit verify` runs at module teardown
