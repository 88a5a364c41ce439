"""Key fetches for trusted issuers: the hosts an operator configured may be anywhere (a cluster-internal
API server); a host that only an issuer's discovery document names must be public — a hostile
discovery document cannot point Tessera at internal services. (No TESSERA_DEV_MODE here.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from federation_support import FakeIssuer, kubernetes_sa_claims
from support import LiveServer

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def trust(name: str, idp: FakeIssuer) -> dict[str, object]:
    return {
        "name": name,
        "issuer": idp.issuer,
        "audiences": ["tessera"],
        "bindings": [{"audiences": ["https://api.example"]}],
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, FakeIssuer, FakeIssuer]]:
    with FakeIssuer() as honest, FakeIssuer() as hostile:
        # The hostile issuer's discovery names a jwks_uri on another host ("localhost", not the configured
        # 127.0.0.1): an internal address the operator never configured.
        hostile.metadata_extra = {"jwks_uri": hostile.jwks_uri.replace("127.0.0.1", "localhost")}
        extra = {"TESSERA_TRUSTED_ISSUERS": json.dumps([trust("honest", honest), trust("hostile", hostile)])}
        srv = LiveServer(tmp_path_factory.mktemp("guard") / "data", extra_env=extra).start()
        yield srv, honest, hostile
        srv.stop()
        assert srv.cli("audit", "verify").returncode == 0


def exchange(srv: LiveServer, token: str) -> httpx.Response:
    data = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": JWT_TYPE}
    return httpx.post(srv.token_endpoint, data=data, timeout=10)


def test_configured_hosts_are_fetched_even_when_internal(env) -> None:
    srv, honest, _ = env
    r = exchange(srv, honest.mint(kubernetes_sa_claims("tessera")))
    assert r.status_code == 200, r.text
    assert honest.hit_count(honest.jwks_uri) == 1


def test_a_discovered_internal_jwks_uri_is_not_fetched(env) -> None:
    srv, _, hostile = env
    r = exchange(srv, hostile.mint(kubernetes_sa_claims("tessera")))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert "key could not be found" in r.json()["error_description"]
    assert hostile.hit_count(hostile.discovery_url) >= 1  # the configured host was asked
    assert sum(n for path, n in hostile.hits.items() if "jwks" in path) == 0  # the internal one never
