"""A workload with no secret and no key: its Kubernetes projected token, read from a file, authenticates
it (federated client credentials) through the workload client, and the token file rotates underneath."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from federation_support import FakeIssuer, kubernetes_sa_claims
from support import LiveServer
from tessera.client import AssertionFile, TokenError, TokenSource

AUDIENCE = "tessera-client-auth"
SUBJECT = "system:serviceaccount:payments:api"


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeIssuer]:
    with FakeIssuer(algs=("RS256",)) as idp:
        yield idp


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, cluster: FakeIssuer) -> Iterator[LiveServer]:
    trust = {
        "name": "cluster",
        "issuer": cluster.issuer,
        "audiences": [AUDIENCE],
        "condition": "assertion['kubernetes.io'].namespace == 'payments'",
        "bindings": [{"audiences": ["https://ledger.example"]}],
    }
    env = {"TESSERA_DEV_MODE": "true", "TESSERA_TRUSTED_ISSUERS": json.dumps([trust])}
    server = LiveServer(tmp_path_factory.mktemp("fed-client") / "data", extra_env=env).start()
    yield server
    server.stop()
    assert server.cli("audit", "verify").returncode == 0


@pytest.fixture(scope="module")
def client_id(srv: LiveServer, cluster: FakeIssuer) -> str:
    reg = srv.register(
        token_endpoint_auth_method="private_key_jwt",
        federated_credentials=[{"issuer": cluster.issuer, "subject": SUBJECT, "audience": AUDIENCE}],
        allowed_resources=["https://ledger.example"],
        scope="ledger.write",
    )
    assert "client_secret" not in reg and "jwks" not in reg
    return reg["client_id"]


def projected_token(cluster: FakeIssuer, service_account: str = "api") -> str:
    claims = kubernetes_sa_claims(AUDIENCE, namespace="payments", service_account=service_account)
    return cluster.mint(claims)


def test_token_from_a_projected_service_account_token(srv, cluster, client_id, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "token"
    path.write_text(projected_token(cluster))
    with TokenSource(srv.issuer, AssertionFile(path, client_id), audience="https://ledger.example") as source:
        token = source.token()
    jwks = httpx.get(srv.issuer + "/oauth/jwks").json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key, algorithms=["ES256"], audience="https://ledger.example", issuer=srv.issuer)
    assert claims["sub"] == client_id and claims["client_id"] == client_id
    assert claims["scope"] == "ledger.write"


def test_the_rotated_file_is_used_and_a_foreign_token_is_refused(srv, cluster, client_id, tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text(projected_token(cluster))
    now = [time.time()]
    credential = AssertionFile(path, client_id)
    with TokenSource(srv.issuer, credential, audience="https://ledger.example", clock=lambda: now[0]) as source:
        first = source.get_token()
        # The kubelet swaps the file for a token of another service account: the next refresh must fail,
        # proving the file is read again rather than cached.
        path.write_text(projected_token(cluster, service_account="intruder"))
        source.invalidate()
        with pytest.raises(TokenError) as e:
            source.get_token()
        assert e.value.error == "invalid_client"
        path.write_text(projected_token(cluster))
        now[0] += 61  # past the client's back-off after the failed refresh
        second = source.get_token()
    assert second.access_token != first.access_token


def test_a_token_of_the_wrong_namespace_fails_the_trust_condition(srv, cluster, client_id, tmp_path) -> None:
    path = tmp_path / "token"
    claims = kubernetes_sa_claims(AUDIENCE, namespace="dev", service_account="api")
    claims["sub"] = SUBJECT  # even with the right subject, the issuer's condition still applies
    path.write_text(cluster.mint(claims))
    with TokenSource(srv.issuer, AssertionFile(path, client_id)) as source, pytest.raises(TokenError) as e:
        source.token()
    assert e.value.error == "invalid_client"


def test_no_client_at_all_the_platform_token_is_exchanged(srv, cluster, tmp_path) -> None:
    from tessera.client import SubjectTokenFile

    path = tmp_path / "token"
    path.write_text(projected_token(cluster))
    with TokenSource(srv.issuer, SubjectTokenFile(path), audience="https://ledger.example") as source:
        token = source.token()
        assert source.token() == token  # cached
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "cluster/" + SUBJECT and claims["aud"] == "https://ledger.example"

    r = srv.cli(
        "token", "--issuer", srv.issuer, "--subject-token-file", str(path), "--audience", "https://ledger.example"
    )
    assert r.returncode == 0, r.stderr
    printed = jwt.decode(r.stdout.strip(), options={"verify_signature": False})
    assert printed["sub"] == "cluster/" + SUBJECT and printed["jti"] != claims["jti"]

    # an audience outside the trust configuration's binding is refused
    r = srv.cli(
        "token", "--issuer", srv.issuer, "--subject-token-file", str(path), "--audience", "https://nope.example"
    )
    assert r.returncode == 1 and "invalid_target" in r.stderr
