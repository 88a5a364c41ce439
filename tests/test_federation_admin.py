"""Trusted issuers managed at run time: admin API, `tessera issuers`, config-declared ones, dry runs."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from federation_support import FakeIssuer, kubernetes_sa_claims
from support import LiveServer

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture(scope="module")
def idps() -> Iterator[tuple[FakeIssuer, FakeIssuer]]:
    with FakeIssuer(algs=("RS256",)) as declared, FakeIssuer(algs=("ES256",)) as added:
        yield declared, added


def k8s_config(idp: FakeIssuer, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "issuer": idp.issuer,
        "audiences": ["tessera"],
        "condition": "assertion['kubernetes.io'].namespace == 'prod'",
        "attributes": {"sa": "assertion['kubernetes.io'].serviceaccount.name"},
        "bindings": [{"audiences": ["https://ledger.example"], "scopes": ["write"], "max_lifetime": 120}],
    }
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, idps: tuple[FakeIssuer, FakeIssuer]) -> Iterator[LiveServer]:
    declared, _ = idps
    env = {
        "TESSERA_DEV_MODE": "true",
        "TESSERA_KEY_REFRESH_INTERVAL": "1",
        "TESSERA_TRUSTED_ISSUERS": json.dumps([{"name": "declared", **k8s_config(declared)}]),
    }
    server = LiveServer(tmp_path_factory.mktemp("fed-admin") / "data", extra_env=env).start()
    yield server
    server.stop()
    r = server.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def exchange(srv: LiveServer, token: str, **extra: str) -> httpx.Response:
    data = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": JWT_TYPE, **extra}
    return httpx.post(srv.token_endpoint, data=data, timeout=10)


def audit_kinds(srv: LiveServer) -> list[str]:
    with srv.admin() as admin:
        return [r["event"] for r in admin.get("/audit", params={"limit": 1000}).json()]


def test_declared_issuer_is_listed_and_cannot_be_changed_by_the_admin_api(srv, idps) -> None:
    declared, _ = idps
    with srv.admin() as admin:
        listed = admin.get("/issuers").json()
        assert [(i["name"], i["source"]) for i in listed] == [("declared", "config")]
        assert listed[0]["config"]["issuer"] == declared.issuer
        r = admin.put("/issuers/declared", json=k8s_config(declared))
        assert r.status_code == 409 and "config file" in r.json()["error_description"]
        assert admin.delete("/issuers/declared").status_code == 409
    token = declared.mint(kubernetes_sa_claims("tessera"))
    r = exchange(srv, token)
    assert r.status_code == 200, r.text


def test_admin_api_adds_an_issuer_that_applies_at_once(srv, idps) -> None:
    _, added = idps
    token = added.mint(kubernetes_sa_claims("tessera"))
    assert exchange(srv, token).json()["error"] == "invalid_request"
    assert added.hit_count(added.jwks_uri) == 0  # untrusted: not even a key fetch
    with srv.admin() as admin:
        r = admin.put("/issuers/added", json=k8s_config(added, algorithms=["ES256"]))
        assert r.status_code == 201, r.text
        assert r.json()["source"] == "admin"
        r = admin.put("/issuers/added", json=k8s_config(added, algorithms=["ES256"]))
        assert r.status_code == 200  # replaced
    r = exchange(srv, token)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "write"
    assert "issuer.created" in audit_kinds(srv)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"condition": "assertion.sub =="}, "trusted_issuers.bad.condition"),
        ({"bindings": []}, "trusted_issuers.bad.bindings"),
        ({"algorithms": ["HS256"]}, "never none or HMAC"),
        ({"audiences": "tessera"}, "trusted_issuers.bad.audiences"),
    ],
)
def test_invalid_configuration_is_refused_and_stores_nothing(srv, idps, config, words) -> None:
    _, added = idps
    with srv.admin() as admin:
        r = admin.put("/issuers/bad", json={**k8s_config(added, issuer=added.issuer + "/bad"), **config})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_request"
        assert words in r.json()["error_description"]
        assert admin.get("/issuers/bad").status_code == 404


def test_an_issuer_is_trusted_once(srv, idps) -> None:
    declared, _ = idps
    with srv.admin() as admin:
        r = admin.put("/issuers/again", json=k8s_config(declared))
        assert r.status_code == 400
        assert "already trusted" in r.json()["error_description"]
        r = admin.put("/issuers/other", json={"name": "different", **k8s_config(declared)})
        assert r.status_code == 400


def test_dry_run_reports_the_mapping_or_the_reason(srv, idps) -> None:
    declared, _ = idps
    good = declared.mint(kubernetes_sa_claims("tessera", service_account="billing"))
    wrong_ns = declared.mint(kubernetes_sa_claims("tessera", namespace="dev"))
    before = audit_kinds(srv)
    with srv.admin() as admin:
        r = admin.post("/issuers/declared/check", json={"token": good})
        assert r.status_code == 200
        body = r.json()
        assert body["accepted"] is True
        assert body["principal"] == "declared/system:serviceaccount:prod:billing"
        assert body["attributes"] == {"sa": "billing"}
        assert body["binding"]["audiences"] == ["https://ledger.example"]
        r = admin.post("/issuers/declared/check", json={"token": wrong_ns})
        assert r.json() == {
            "accepted": False,
            "reason": "the trust configuration's condition does not hold",
            "trust": "declared",
        }
        assert admin.post("/issuers/nope/check", json={"token": good}).status_code == 404
        assert admin.post("/issuers/declared/check", json={}).status_code == 400
    assert audit_kinds(srv) == before  # a dry run records nothing, issues nothing
    assert exchange(srv, good).status_code == 200  # and consumed nothing


def test_cli_manages_issuers_and_running_servers_follow(srv, idps, tmp_path: pathlib.Path) -> None:
    _, added = idps
    config = k8s_config(added, issuer=added.issuer + "/cli", algorithms=["ES256"])
    path = tmp_path / "cli.json"
    path.write_text(json.dumps(config))
    r = srv.cli("issuers", "put", "cli-added", "--file", str(path))
    assert r.returncode == 0, r.stderr
    assert "added trusted issuer cli-added" in r.stdout
    r = srv.cli("issuers", "list")
    assert "cli-added\tadmin\t" + config["issuer"] in r.stdout
    r = srv.cli("issuers", "show", "cli-added")
    assert json.loads(r.stdout)["config"]["issuer"] == config["issuer"]
    with srv.admin() as admin:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if admin.post("/issuers/cli-added/check", json={"token": "x.y.z"}).status_code == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the running server did not pick up the issuer added by the CLI")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**config, "condition": "("}))
    r = srv.cli("issuers", "put", "cli-bad", "--file", str(bad))
    assert r.returncode == 1 and "trusted_issuers.cli-bad.condition" in r.stderr

    r = srv.cli("issuers", "remove", "cli-added")
    assert r.returncode == 0
    assert srv.cli("issuers", "remove", "cli-added").returncode == 1
    assert srv.cli("issuers", "remove", "declared").returncode == 1  # config-declared


def test_cli_check(srv, idps) -> None:
    declared, _ = idps
    r = srv.cli("issuers", "check", declared.mint(kubernetes_sa_claims("tessera")))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["principal"] == "declared/system:serviceaccount:prod:api"
    r = srv.cli("issuers", "check", declared.mint(kubernetes_sa_claims("someone-else")))
    assert r.returncode == 1
    assert "refused by declared: the token's aud is not an accepted audience" in r.stderr


def test_deleting_an_issuer_stops_the_exchange(srv, idps) -> None:
    _, added = idps
    with srv.admin() as admin:
        config = k8s_config(added, issuer=added.issuer + "/temp", jwks_uri=added.jwks_uri, algorithms=["ES256"])
        assert admin.put("/issuers/temp", json=config).status_code == 201
        token = added.mint({**kubernetes_sa_claims("tessera"), "iss": added.issuer + "/temp"})
        assert exchange(srv, token).status_code == 200
        assert admin.delete("/issuers/temp").status_code == 204
        assert admin.delete("/issuers/temp").status_code == 404
    r = exchange(srv, token)
    assert r.status_code == 400
    assert "not trusted" in r.json()["error_description"]
