"""Self-test of federation_support: the fake identity providers serve what they claim, over real sockets, and the
independent AWS-style relying party accepts what they mint and refuses what it should."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from federation_support import (
    AwsStyleRelyingParty,
    FakeIssuer,
    FakeSpiffeBundleEndpoint,
    Refused,
    generate_key,
    github_actions_claims,
    gitlab_claims,
    kubernetes_sa_claims,
)
from support import b64u

AUD = "sts.amazonaws.com"


def test_discovery_and_jwks_are_served_and_counted() -> None:
    with FakeIssuer(path="/tenant-a", max_age=120) as idp:
        assert idp.issuer == f"http://127.0.0.1:{idp.port}/tenant-a"
        r = httpx.get(idp.issuer + "/.well-known/openid-configuration", timeout=5)
        assert r.status_code == 200
        meta = r.json()
        assert meta["issuer"] == idp.issuer
        assert meta["jwks_uri"] == idp.jwks_uri
        assert meta["id_token_signing_alg_values_supported"] == ["ES256"]
        assert meta["response_types_supported"] == ["id_token"]
        assert meta["subject_types_supported"] == ["public"]

        r = httpx.get(idp.jwks_uri, timeout=5)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "max-age=120"
        (key,) = r.json()["keys"]
        assert key["kid"] == idp.current_kid and key["kty"] == "EC" and key["crv"] == "P-256"
        assert "d" not in key  # public half only

        assert idp.hits[idp.discovery_path] == 1
        assert idp.hits["/jwks"] == 1
        assert httpx.get(idp.base_url + "/.well-known/openid-configuration", timeout=5).status_code == 404

        idp.metadata_issuer_override = "https://elsewhere.example"
        assert httpx.get(idp.discovery_url, timeout=5).json()["issuer"] == "https://elsewhere.example"

        idp.fail = True
        assert httpx.get(idp.jwks_uri, timeout=5).status_code == 503
        assert idp.hits["/jwks"] == 2
        assert idp.hit_count(idp.discovery_url) == 2
    with pytest.raises(httpx.ConnectError):
        httpx.get(idp.jwks_uri, timeout=2)


def test_stopped_issuer_comes_back_on_the_same_port() -> None:
    idp = FakeIssuer().start()
    port = idp.port
    idp.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(idp.jwks_uri, timeout=2)
    idp.start()
    try:
        assert idp.port == port
        assert httpx.get(idp.jwks_uri, timeout=5).status_code == 200
    finally:
        idp.stop()


def test_rotate_adds_a_key_and_signs_with_it() -> None:
    with FakeIssuer(algs=("RS256",)) as idp:
        first = idp.current_kid
        second = idp.rotate()
        assert second != first and idp.current_kid == second
        kids = [k["kid"] for k in httpx.get(idp.jwks_uri, timeout=5).json()["keys"]]
        assert kids == [first, second]
        assert jwt.get_unverified_header(idp.mint({"sub": "x"}))["kid"] == second
        third = idp.rotate("EdDSA", drop_old=True)
        (only,) = httpx.get(idp.jwks_uri, timeout=5).json()["keys"]
        assert only["kid"] == third and only["kty"] == "OKP" and only["alg"] == "EdDSA"
        # A dropped key still signs on request: a token from an unpublished key.
        assert jwt.get_unverified_header(idp.mint({"sub": "x"}, kid=first))["alg"] == "RS256"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_github_shaped_token_verifies_with_pyjwt_against_served_jwks(alg: str) -> None:
    with FakeIssuer(algs=(alg,)) as idp:
        token = idp.mint(github_actions_claims(AUD, environment="prod"))
        header = jwt.get_unverified_header(token)
        assert header == {"alg": alg, "typ": "JWT", "kid": idp.current_kid}
        signing_key = jwt.PyJWKClient(idp.jwks_uri).get_signing_key_from_jwt(token)
        claims = jwt.decode(token, signing_key.key, algorithms=[alg], audience=AUD, issuer=idp.issuer)
        assert claims["sub"] == "repo:octo-org/octo-repo:environment:prod"
        assert claims["repository_owner_id"] == "1234567"
        assert claims["job_workflow_ref"] == "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main"
        assert claims["exp"] - claims["iat"] == 300 and claims["jti"]
        assert idp.hits["/jwks"] == 1


def test_claim_profiles_and_mint_overrides() -> None:
    gh = github_actions_claims(AUD)
    assert gh["sub"] == "repo:octo-org/octo-repo:ref:refs/heads/main" and gh["ref_type"] == "branch"
    assert "environment" not in gh
    assert github_actions_claims(AUD, ref="refs/tags/v1")["ref_type"] == "tag"

    k8s = kubernetes_sa_claims("https://broker.example")
    assert k8s["sub"] == "system:serviceaccount:prod:api" and k8s["aud"] == ["https://broker.example"]
    assert k8s["kubernetes.io"]["namespace"] == "prod"
    assert k8s["kubernetes.io"]["serviceaccount"]["name"] == "api" and k8s["kubernetes.io"]["pod"]["name"] == "api-7d9f"
    assert k8s["kubernetes.io"]["pod"]["uid"] != k8s["kubernetes.io"]["serviceaccount"]["uid"]

    gl = gitlab_claims("https://broker.example", user_login=None)
    assert gl["sub"] == "project_path:group/project:ref_type:branch:ref:main"
    assert gl["namespace_path"] == "group" and gl["namespace_id"] == "42" and gl["ref_path"] == "refs/heads/main"
    assert "user_login" not in gl

    with FakeIssuer() as idp:
        token = idp.mint({"sub": "s", "jti": None}, headers={"kid": None}, typ=None)
        assert jwt.get_unverified_header(token) == {"alg": "ES256"}
        claims = jwt.decode(token, options={"verify_signature": False})
        assert "jti" not in claims and claims["iss"] == idp.issuer


def test_svid_verifies_against_the_bundle() -> None:
    with FakeSpiffeBundleEndpoint("example.org", algs=("RS256",)) as td:
        bundle = httpx.get(td.url, timeout=5).json()
        assert bundle == td.bundle()
        assert bundle["spiffe_sequence"] == 1 and bundle["spiffe_refresh_hint"] == 300
        (key,) = bundle["keys"]
        assert key["use"] == "jwt-svid" and key["kid"] == td.current_kid

        spiffe_id = td.spiffe_id("/ns/prod/sa/api")
        assert spiffe_id == "spiffe://example.org/ns/prod/sa/api"
        svid = td.mint_svid(spiffe_id, "https://broker.example", typ="JOSE")
        assert jwt.get_unverified_header(svid)["typ"] == "JOSE"
        keys = jwt.PyJWKSet.from_dict({"keys": bundle["keys"]})
        claims = jwt.decode(svid, keys[td.current_kid].key, algorithms=["RS256"], audience="https://broker.example")
        assert claims["sub"] == spiffe_id and "iss" not in claims

        old = td.current_kid
        new = td.rotate()
        rotated = httpx.get(td.url, timeout=5).json()
        assert rotated["spiffe_sequence"] == 2
        assert [k["kid"] for k in rotated["keys"]] == [old, new]
        assert td.hits[td.path] == 2


def test_relying_party_accepts_a_token_of_the_issuer_it_trusts() -> None:
    with FakeIssuer(algs=("RS256",), path="/gh") as idp:
        rp = AwsStyleRelyingParty(idp.issuer, ["other-client", AUD])
        claims = rp.accept(idp.mint(github_actions_claims(AUD)))
        assert claims["sub"] == "repo:octo-org/octo-repo:ref:refs/heads/main" and claims["iss"] == idp.issuer
        assert idp.hits[idp.discovery_path] == 1 and idp.hits["/jwks"] == 1
        # Cached; a new kid after rotation triggers exactly one refetch.
        rp.accept(idp.mint(github_actions_claims(AUD)))
        assert idp.hits["/jwks"] == 1
        idp.rotate()
        assert rp.accept(idp.mint(github_actions_claims(AUD)))["aud"] == AUD
        assert idp.hits["/jwks"] == 2


def _tamper(token: str) -> str:
    h, p, s = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(p))
    claims["sub"] = "repo:evil-org/evil-repo:ref:refs/heads/main"
    return ".".join([h, b64u(json.dumps(claims).encode()), s])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda idp: _tamper(idp.mint(github_actions_claims(AUD))),
            "Signature verification failed",
            id="tampered-payload",
        ),
        pytest.param(lambda idp: idp.mint(github_actions_claims("someone-else")), "Audience", id="wrong-aud"),
        pytest.param(lambda idp: idp.mint(github_actions_claims(AUD), now=time.time() - 3600), "expired", id="expired"),
        pytest.param(
            lambda idp: idp.mint(github_actions_claims(AUD), alg="none"), "'none' not accepted", id="alg-none"
        ),
        pytest.param(
            lambda idp: idp.mint(github_actions_claims(AUD), alg="HS256"), "'HS256' not accepted", id="hs256-public-key"
        ),
        pytest.param(
            lambda idp: idp.mint(github_actions_claims(AUD), key=generate_key("ES256")),
            "Signature verification failed",
            id="foreign-key",
        ),
        pytest.param(
            lambda idp: idp.mint(github_actions_claims(AUD, iss="https://evil.example")),
            "Invalid issuer",
            id="wrong-iss",
        ),
        pytest.param(lambda idp: idp.mint({**github_actions_claims(AUD), "sub": None}), '"sub"', id="no-sub"),
        pytest.param(lambda idp: idp.mint({**github_actions_claims(AUD), "iat": None}), '"iat"', id="no-iat"),
        pytest.param(
            lambda idp: idp.mint(github_actions_claims(AUD), kid="unknown"), "no key with kid", id="unknown-kid"
        ),
        pytest.param(
            lambda idp: idp.mint(github_actions_claims(AUD), headers={"alg": "ES384"}),
            "'ES384' not accepted",
            id="alg-outside-allowlist",
        ),
    ],
)
def test_relying_party_refuses(make: Callable[[FakeIssuer], str], reason: str) -> None:
    with FakeIssuer(algs=("ES256",)) as idp:
        rp = AwsStyleRelyingParty(idp.issuer, [AUD])
        assert rp.accepts(idp.mint(github_actions_claims(AUD)))
        with pytest.raises(Refused, match=re.escape(reason)):
            rp.accept(make(idp))


def test_relying_party_refuses_on_discovery_issuer_mismatch_and_eddsa_keys() -> None:
    with FakeIssuer() as idp:
        idp.metadata_issuer_override = idp.issuer + "/"
        with pytest.raises(Refused, match="discovery names issuer"):
            AwsStyleRelyingParty(idp.issuer, [AUD]).accept(idp.mint(github_actions_claims(AUD)))
    with FakeIssuer(algs=("EdDSA",)) as idp:
        with pytest.raises(Refused, match="not accepted"):
            AwsStyleRelyingParty(idp.issuer, [AUD]).accept(idp.mint(github_actions_claims(AUD)))
