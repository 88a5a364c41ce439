"""Revocation follows token exchange: revoking a Tessera token revokes every token exchanged from it
(down-scoped, delegated, for an outside audience), generation by generation, and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jwt
import pytest

from federation_support import FakeIssuer, github_actions_claims
from support import LiveServer
from tessera.verify import Revoked, Verifier

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
API = "https://deploy.example"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, FakeIssuer]]:
    with FakeIssuer(algs=("RS256",)) as idp:
        trust = {
            "name": "ci",
            "issuer": idp.issuer,
            "audiences": ["tessera"],
            "condition": "assertion.repository_owner_id == '1234567'",
            "bindings": [{"audiences": [API, "sts.example"], "scopes": ["deploy", "read"], "max_lifetime": 600}],
        }
        extra = {"TESSERA_DEV_MODE": "true", "TESSERA_TRUSTED_ISSUERS": json.dumps([trust])}
        srv = LiveServer(tmp_path_factory.mktemp("lineage") / "data", extra_env=extra).start()
        yield srv, idp
        srv.stop()
        assert srv.cli("audit", "verify").returncode == 0


def exchange(srv: LiveServer, token: str, token_type: str, **extra: str) -> str:
    data = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": token_type, **extra}
    r = httpx.post(srv.token_endpoint, data=data, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_revoking_a_token_revokes_what_was_exchanged_from_it(env) -> None:
    srv, idp = env
    root = exchange(srv, idp.mint(github_actions_claims("tessera")), JWT_TYPE, scope="deploy read")
    child = exchange(srv, root, ACCESS, scope="read")
    grandchild = exchange(srv, child, ACCESS, scope="read")
    sibling_root = exchange(srv, idp.mint(github_actions_claims("tessera")), JWT_TYPE, scope="read")
    with srv.admin() as admin:
        r = admin.post("/tokens/revoke", json={"jti": jti(root)})
    assert r.status_code == 200 and r.json() == {"revoked": 3}, r.text

    verifier = Verifier(srv.issuer, audiences=[API], algorithms=["ES256"], background_refresh=False)
    try:
        for token in (root, child, grandchild):
            with pytest.raises(Revoked):
                verifier.verify(token)
        assert verifier.verify(sibling_root)["scope"] == "read"  # another lineage is untouched
    finally:
        verifier.close()
    # A revoked parent cannot be exchanged again either.
    r = httpx.post(
        srv.token_endpoint,
        data={"grant_type": EXCHANGE, "subject_token": root, "subject_token_type": ACCESS},
        timeout=10,
    )
    assert r.status_code == 400 and "revoked" in r.json()["error_description"]


def test_revoking_a_middle_generation_leaves_its_parent(env) -> None:
    srv, idp = env
    root = exchange(srv, idp.mint(github_actions_claims("tessera")), JWT_TYPE)
    child = exchange(srv, root, ACCESS)
    grandchild = exchange(srv, child, ACCESS)
    with srv.admin() as admin:
        assert admin.post("/tokens/revoke", json={"jti": jti(child)}).json() == {"revoked": 2}
        assert admin.post("/tokens/revoke", json={"jti": jti(grandchild)}).json() == {"revoked": 0}
    verifier = Verifier(srv.issuer, audiences=[API], algorithms=["ES256"], background_refresh=False)
    try:
        assert verifier.verify(root)["sub"].startswith("ci/")
        with pytest.raises(Revoked):
            verifier.verify(grandchild)
    finally:
        verifier.close()
