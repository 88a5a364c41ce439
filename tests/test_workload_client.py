"""The workload client SDK (``tessera.client``) against a live server on loopback.

RFC 6749 §4.4 tokens with ``private_key_jwt`` (RFC 7523 §2.2, ES256 / EdDSA / RS256 signed by the
SDK's own JWS signer), ``client_secret_basic`` (RFC 6749 §2.3.1) and a federated assertion read
from a file; RFC 8707 ``resource`` → ``aud``; caching and the refresh rule by moving an injected
clock; one request in flight under 100 threads and 100 tasks (counted by a transport around a real
``httpx.HTTPTransport``); back-off and the cached token when a refresh fails; a server restart;
``TokenAuth`` against a loopback resource server that verifies with ``tessera.verify``; the
``tessera token`` command.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import pathlib
import subprocess
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

import tessera.client
from support import TESSERA, LiveServer, b64u, client_assertion, ec_jwk, ec_key
from tessera.client import (
    AssertionFile,
    AsyncTokenSource,
    ClientSecret,
    PrivateKeyJwt,
    TokenAuth,
    TokenError,
    TokenSource,
)
from tessera.client.jws import sign_compact
from tessera.verify import VerificationError, Verifier
from tessera.verify.jws import parse_compact, public_key_from_jwk, verify_signature

API = "https://api.example.test/orders"
METADATA = "/.well-known/oauth-authorization-server"
TOKEN = "/oauth/token"


# -- test doubles at the edge: a clock and a counting transport over the real network --------------


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Counting(httpx.HTTPTransport):
    """A real transport that counts requests by path and can be told to fail in transport."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.forms: list[dict[str, list[str]]] = []
        self.down = False
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.counts[request.url.path] += 1
            if request.method == "POST":
                self.forms.append(parse_qs(request.read().decode()))
        if self.down:
            raise httpx.ConnectError("down (test)", request=request)
        return super().handle_request(request)


class AsyncCounting(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[request.url.path] += 1
        return await super().handle_async_request(request)


# -- clients and checks ------------------------------------------------------------------------------


def okp_jwk(key: ed25519.Ed25519PrivateKey, kid: str) -> dict[str, str]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw), "kid": kid}


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    n = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "n": b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
        "e": b64u(n.e.to_bytes(3, "big")),
        "kid": kid,
    }


def jwt_client(srv: LiveServer, key: Any = None, jwk: dict[str, str] | None = None) -> dict[str, Any]:
    key = key or ec_key()
    reg = srv.register(
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [jwk or ec_jwk(key, "k1")]},
        allowed_resources=[API],
        scope="read write",
    )
    return {**reg, "key": key}


@pytest.fixture(scope="module")
def ec_client(server: LiveServer) -> dict[str, Any]:
    return jwt_client(server)


@pytest.fixture(scope="module")
def secret_client(server: LiveServer) -> dict[str, Any]:
    return server.register(token_endpoint_auth_method="client_secret_basic", allowed_resources=[API], scope="read")


def verified(srv: LiveServer, token: str, audience: str = API) -> dict[str, Any]:
    """The token's claims, its signature checked by PyJWT against the server's JWKS."""
    key = pyjwt.PyJWKClient(srv.issuer + "/oauth/jwks", cache_jwk_set=False, timeout=10).get_signing_key_from_jwt(token)
    return pyjwt.decode(token, key.key, algorithms=["ES256", "EdDSA", "RS256"], audience=audience, issuer=srv.issuer)


def source_for(srv: LiveServer, client: dict[str, Any], **options: Any) -> TokenSource:
    return TokenSource(srv.issuer, PrivateKeyJwt(client["client_id"], client["key"], kid="k1"), **options)


# -- the JWS signer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec", "ed25519", "rsa"])
def test_signer_output_verifies_with_the_verifier_sdk(kind: str) -> None:
    key: Any
    if kind == "ec":
        key, alg = ec_key(), "ES256"
        jwk: dict[str, str] = ec_jwk(key, "k")
    elif kind == "ed25519":
        key, alg = ed25519.Ed25519PrivateKey.generate(), "EdDSA"
        jwk = okp_jwk(key, "k")
    else:
        key, alg = rsa.generate_private_key(65537, 2048), "RS256"
        jwk = rsa_jwk(key, "k")
    token = sign_compact({"alg": alg, "kid": "k"}, {"sub": "x"}, key)
    assert "=" not in token
    header, claims, signing_input, signature = parse_compact(token)
    assert header == {"alg": alg, "kid": "k"} and claims == {"sub": "x"}
    if alg == "ES256":
        assert len(signature) == 64  # RFC 7518 §3.4: R || S, not DER
    verify_signature(alg, public_key_from_jwk(jwk), signing_input, signature)


def test_keys_and_algorithms_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        PrivateKeyJwt("c", ec_key(), alg="RS256")
    with pytest.raises(ValueError, match="2048"):
        PrivateKeyJwt("c", rsa.generate_private_key(65537, 1024))
    pem = ec_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert PrivateKeyJwt("c", pem).alg == "ES256"


def test_client_secret_basic_form_encodes_id_and_secret() -> None:
    auth = ClientSecret("svc a:b", "p@ss+w/rd é").authenticate("https://as.example/oauth/token")
    user, _, password = base64.b64decode(auth.headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert user == "svc+a%3Ab"  # RFC 6749 §2.3.1: form-urlencoded before Basic
    assert unquote_plus(user) == "svc a:b" and unquote_plus(password) == "p@ss+w/rd é"
    assert "secret=***" in repr(ClientSecret("c", "hunter2")) and "hunter2" not in repr(ClientSecret("c", "hunter2"))


def test_plain_http_only_to_loopback() -> None:
    credential = ClientSecret("c", "s")
    with pytest.raises(ValueError, match="https"):
        TokenSource("http://tessera.example.com", credential)
    with pytest.raises(ValueError, match="trailing"):
        TokenSource("https://tessera.example.com/", credential)
    with pytest.raises(ValueError, match="https"):
        TokenSource("https://tessera.example.com", credential, token_endpoint="http://10.0.0.1/oauth/token")
    TokenSource("http://[::1]:8080", credential).close()


def test_responses_that_are_not_bearer_token_responses() -> None:
    def answer(body: Any, status: int = 200) -> TokenError:
        transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
        source = TokenSource(
            "https://as.example", ClientSecret("c", "s"), token_endpoint="https://as.example/t", transport=transport
        )
        with pytest.raises(TokenError) as e:
            source.token()
        return e.value

    assert answer({"access_token": "a", "token_type": "DPoP", "expires_in": 60}).error == "invalid_response"
    assert answer({"token_type": "Bearer"}).error == "invalid_response"
    assert answer({"access_token": "a", "token_type": "bearer", "expires_in": "60"}).error == "invalid_response"
    assert answer(["not", "an", "object"]).error == "invalid_response"
    assert answer({"error": "invalid_scope", "error_description": "no"}, 400).error_description == "no"
    assert answer({"oops": 1}, 502).status_code == 502


def test_exports_exactly_its_public_names() -> None:
    # Submodules show up as attributes once something imports them (tessera.client.mcp, .approvals):
    # they are not exported names.
    public = {
        n
        for n in dir(tessera.client)
        if not n.startswith("_") and not isinstance(getattr(tessera.client, n), types.ModuleType)
    }
    assert set(tessera.client.__all__) == public
    for name in tessera.client.__all__:
        assert getattr(tessera.client, name).__module__.startswith("tessera.client")


# -- tokens from the live server ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec", "ed25519", "rsa"])
def test_private_key_jwt_token_for_an_audience(server: LiveServer, kind: str) -> None:
    key: Any
    if kind == "ec":
        client = jwt_client(server)
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        client = jwt_client(server, key, okp_jwk(key, "k1"))
    else:
        key = rsa.generate_private_key(65537, 2048)
        client = jwt_client(server, key, rsa_jwk(key, "k1"))
    transport = Counting()
    with source_for(server, client, audience=API, scope="read", transport=transport) as source:
        claims = verified(server, source.token())
        assert source.token_endpoint == server.token_endpoint  # discovered (RFC 8414)
    assert claims["sub"] == client["client_id"] and claims["scope"] == "read"
    assert claims["aud"] in (API, [API])
    assert transport.counts == {METADATA: 1, TOKEN: 1}
    (form,) = transport.forms
    assert form["resource"] == [API] and form["grant_type"] == ["client_credentials"]
    _, assertion, _, _ = parse_compact(form["client_assertion"][0])
    assert assertion["iss"] == assertion["sub"] == client["client_id"]
    assert assertion["aud"] == server.token_endpoint and assertion["exp"] - assertion["iat"] == 60
    assert len(assertion["jti"]) >= 22  # at least 128 random bits


def test_client_secret_basic_token(server: LiveServer, secret_client: dict[str, Any]) -> None:
    credential = ClientSecret(secret_client["client_id"], secret_client["client_secret"])
    with TokenSource(server.issuer, credential, audience=[API], token_endpoint=server.token_endpoint) as source:
        claims = verified(server, source.token())
    assert claims["sub"] == secret_client["client_id"] and claims["aud"] in (API, [API])


def test_cached_then_refreshed_before_expiry(server: LiveServer, ec_client: dict[str, Any]) -> None:
    clock, transport = Clock(), Counting()
    with source_for(server, ec_client, audience=API, clock=clock, transport=transport) as source:
        first = source.get_token()
        assert first.lifetime == 900  # the server's default lifetime
        assert source.token() == first.access_token
        assert transport.counts[TOKEN] == 1  # cached: no request
        # fresh while at least min(refresh_margin=120, lifetime/2) remains
        clock.advance(900 - 121)
        assert source.token() == first.access_token and transport.counts[TOKEN] == 1
        clock.advance(2)
        second = source.token()
        assert second != first.access_token and transport.counts[TOKEN] == 2
        assert verified(server, second)["sub"] == ec_client["client_id"]
    assert transport.counts[METADATA] == 1  # discovery is cached too


def test_short_lifetimes_refresh_at_half_life(server: LiveServer, ec_client: dict[str, Any]) -> None:
    clock, transport = Clock(), Counting()
    with source_for(server, ec_client, clock=clock, transport=transport, refresh_margin=600) as source:
        tok = source.get_token()
        clock.advance(tok.lifetime / 2 - 1)
        assert source.token() == tok.access_token
        clock.advance(2)
        assert source.token() != tok.access_token
    assert transport.counts[TOKEN] == 2


def test_one_request_for_100_threads(server: LiveServer, ec_client: dict[str, Any]) -> None:
    clock, transport = Clock(), Counting()
    source = source_for(server, ec_client, audience=API, clock=clock, transport=transport)
    barrier = threading.Barrier(100)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(source.token())

    def run_all() -> None:
        threads = [threading.Thread(target=call) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    run_all()  # nothing cached: 99 wait for the one request
    assert len(results) == 100 and len(set(results)) == 1
    assert transport.counts == {METADATA: 1, TOKEN: 1}
    old = results[0]
    results.clear()
    clock.advance(850)  # stale but usable: one refreshes, the others keep the cached token meanwhile
    run_all()
    new = source.token()
    assert len(results) == 100 and new != old and set(results) <= {old, new}
    assert transport.counts[TOKEN] == 2
    source.close()


def test_100_threads_share_one_failure(server: LiveServer, ec_client: dict[str, Any]) -> None:
    transport = Counting()
    transport.down = True
    source = source_for(server, ec_client, token_endpoint=server.token_endpoint, transport=transport)
    barrier = threading.Barrier(100)
    errors: list[str] = []

    def call() -> None:
        barrier.wait()
        try:
            source.token()
        except TokenError as e:
            errors.append(e.error)

    threads = [threading.Thread(target=call) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == ["unreachable"] * 100 and transport.counts == {TOKEN: 1}
    source.close()


def test_one_request_for_100_tasks(server: LiveServer, ec_client: dict[str, Any]) -> None:
    async def main() -> tuple[list[str], collections.Counter[str]]:
        transport = AsyncCounting()
        async with AsyncTokenSource(
            server.issuer, PrivateKeyJwt(ec_client["client_id"], ec_client["key"], kid="k1"), transport=transport
        ) as source:
            tokens = await asyncio.gather(*(source.token() for _ in range(100)))
            tokens.append(await source.token())
        return tokens, transport.counts

    tokens, counts = asyncio.run(main())
    assert len(set(tokens)) == 1 and counts == {METADATA: 1, TOKEN: 1}


def test_failed_refresh_returns_the_cached_token_and_backs_off(
    server: LiveServer, ec_client: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    clock, transport = Clock(), Counting()
    with source_for(server, ec_client, clock=clock, transport=transport) as source:
        first = source.token()
        clock.advance(800)  # due for refresh, 100 s left
        transport.down = True
        with caplog.at_level(logging.WARNING, logger="tessera.client"):
            assert source.token() == first
        assert "token refresh failed" in caplog.text and "unreachable" in caplog.text
        for _ in range(50):  # no tight loop: no request until the back-off delay has passed
            assert source.token() == first
        assert transport.counts[TOKEN] == 2
        clock.advance(1.01)
        assert source.token() == first and transport.counts[TOKEN] == 3  # retried, failed again
        clock.advance(2.01)
        transport.down = False
        second = source.token()
        assert second != first and transport.counts[TOKEN] == 4
        # past expiry with the issuer down: nothing usable, a typed error, then back-off
        clock.advance(900)
        transport.down = True
        with pytest.raises(TokenError) as e:
            source.token()
        assert e.value.error == "unreachable"
        with pytest.raises(TokenError):
            source.token()
        assert transport.counts[TOKEN] == 5


def test_invalid_credentials_raise_invalid_client(server: LiveServer, secret_client: dict[str, Any]) -> None:
    clock, transport = Clock(), Counting()
    wrong = ClientSecret(secret_client["client_id"], "not-the-secret")
    with TokenSource(server.issuer, wrong, clock=clock, transport=transport) as source:
        with pytest.raises(TokenError) as e:
            source.token()
        assert e.value.error == "invalid_client" and e.value.status_code == 401
        assert e.value.error_description
        with pytest.raises(TokenError) as again:
            source.token()
        assert again.value.error == "invalid_client" and transport.counts[TOKEN] == 1  # backing off

    unknown_key = PrivateKeyJwt(secret_client["client_id"], ec_key(), kid="k1")
    with TokenSource(server.issuer, unknown_key) as source, pytest.raises(TokenError) as e:
        source.token()
    assert e.value.error == "invalid_client"


def test_oauth_errors_other_than_client_authentication(server: LiveServer, ec_client: dict[str, Any]) -> None:
    with source_for(server, ec_client, audience="https://not-allowed.example/") as source:
        with pytest.raises(TokenError) as e:
            source.token()
    assert e.value.error == "invalid_target" and e.value.status_code == 400


def test_discovery_refuses_metadata_for_another_issuer(server: LiveServer, ec_client: dict[str, Any]) -> None:
    other = server.issuer.replace("127.0.0.1", "localhost")
    with TokenSource(other, PrivateKeyJwt(ec_client["client_id"], ec_client["key"])) as source:
        with pytest.raises(TokenError) as e:
            source.token()
    assert e.value.error == "discovery_failed"


def test_survives_a_server_restart(fresh_server: LiveServer) -> None:
    client = jwt_client(fresh_server)
    clock = Clock()
    with source_for(fresh_server, client, audience=API, clock=clock) as source:
        first = source.token()
        fresh_server.stop()
        clock.advance(800)
        assert source.token() == first  # the refresh failed; the cached token is still valid
        fresh_server.start()  # same port, same data directory
        clock.advance(60)  # past the back-off delay
        second = source.token()
    assert second != first
    assert verified(fresh_server, second)["sub"] == client["client_id"]


# -- secretless: the assertion file ------------------------------------------------------------------


def test_assertion_file_is_read_for_every_request(
    server: LiveServer, ec_client: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "token"
    path.write_text(client_assertion(ec_client["key"], ec_client["client_id"], server.token_endpoint) + "\n")
    clock, transport = Clock(), Counting()
    credential = AssertionFile(path, client_id=ec_client["client_id"])
    with TokenSource(server.issuer, credential, audience=API, clock=clock, transport=transport) as source:
        first = source.token()
        assert verified(server, first)["sub"] == ec_client["client_id"]
        assert transport.forms[-1]["client_assertion"] == [path.read_text().strip()]
        assert transport.forms[-1]["client_assertion_type"] == [
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ]
        assert transport.forms[-1]["client_id"] == [ec_client["client_id"]]

        source.invalidate()  # the same assertion again: the server refuses the replayed jti
        with pytest.raises(TokenError) as e:
            source.token()
        assert e.value.error == "invalid_client"

        path.write_text(client_assertion(ec_client["key"], ec_client["client_id"], server.token_endpoint))
        clock.advance(2)  # past the back-off delay
        second = source.token()
        assert second != first and verified(server, second)["sub"] == ec_client["client_id"]
        assert transport.forms[-1]["client_assertion"] == [path.read_text()]


def test_assertion_file_without_client_id_and_missing_file(
    server: LiveServer, ec_client: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "token"
    with TokenSource(server.issuer, AssertionFile(path)) as source:
        with pytest.raises(TokenError) as e:
            source.token()
        assert e.value.error == "credential_unavailable"
    path.write_text(client_assertion(ec_client["key"], ec_client["client_id"], server.token_endpoint))
    with TokenSource(server.issuer, AssertionFile(path)) as source:
        assert verified(server, source.token(), audience=server.issuer)["sub"] == ec_client["client_id"]


# -- TokenAuth against a resource server on loopback -------------------------------------------------


class ResourceServer:
    """``http.server`` on 127.0.0.1 that verifies the bearer token with ``tessera.verify``."""

    def __init__(self, issuer: str) -> None:
        self.verifier = Verifier(issuer, audiences=[API], background_refresh=False)
        self.refused: set[str] = set()
        self.always_refuse = False
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                outer.seen.append(token)
                try:
                    if outer.always_refuse or token in outer.refused:
                        raise VerificationError("refused by the test")
                    claims = outer.verifier.verify(token)
                except VerificationError:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"sub": claims["sub"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def resource(server: LiveServer) -> Iterator[ResourceServer]:
    rs = ResourceServer(server.issuer)
    yield rs
    rs.close()


def test_token_auth_retries_once_on_invalid_token(
    server: LiveServer, ec_client: dict[str, Any], resource: ResourceServer
) -> None:
    transport = Counting()
    with (
        source_for(server, ec_client, audience=API, transport=transport) as source,
        httpx.Client(auth=TokenAuth(source), base_url=resource.url) as http,
    ):
        r = http.get("/orders")
        assert r.status_code == 200 and r.json()["sub"] == ec_client["client_id"]
        assert http.get("/orders").status_code == 200 and transport.counts[TOKEN] == 1

        resource.refused.add(resource.seen[-1])  # e.g. revoked: 401 invalid_token
        r = http.get("/orders")
        assert r.status_code == 200 and transport.counts[TOKEN] == 2  # one refresh, one retry
        assert resource.seen[-2] in resource.refused and resource.seen[-1] not in resource.refused

        resource.always_refuse = True
        before = len(resource.seen)
        r = http.get("/orders")
        assert r.status_code == 401 and transport.counts[TOKEN] == 3  # retried once, then given up
        assert len(resource.seen) == before + 2


def test_token_auth_async(server: LiveServer, ec_client: dict[str, Any], resource: ResourceServer) -> None:
    async def main() -> tuple[list[int], int]:
        transport = AsyncCounting()
        credential = PrivateKeyJwt(ec_client["client_id"], ec_client["key"], kid="k1")
        async with (
            AsyncTokenSource(server.issuer, credential, audience=API, transport=transport) as source,
            httpx.AsyncClient(auth=TokenAuth(source), base_url=resource.url) as http,
        ):
            statuses = [r.status_code for r in await asyncio.gather(*(http.get("/orders") for _ in range(10)))]
            resource.refused.add(resource.seen[-1])
            statuses.append((await http.get("/orders")).status_code)
        return statuses, transport.counts[TOKEN]

    statuses, token_requests = asyncio.run(main())
    assert statuses == [200] * 11 and token_requests == 2


def test_token_auth_needs_the_matching_source(server: LiveServer, ec_client: dict[str, Any]) -> None:
    source = AsyncTokenSource(server.issuer, PrivateKeyJwt(ec_client["client_id"], ec_client["key"]))
    with httpx.Client(auth=TokenAuth(source)) as http, pytest.raises(TypeError, match="TokenSource"):
        http.get(server.issuer + "/healthz")


# -- tessera token -----------------------------------------------------------------------------------


def test_cli_prints_a_token_that_verifies(
    server: LiveServer, ec_client: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        ec_client["key"].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    r = server.cli(
        "token", "--audience", API, "--client-id", ec_client["client_id"], "--key-file", str(pem), "--kid", "k1"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    token = r.stdout.strip()
    assert r.stdout == token + "\n"
    assert verified(server, token)["sub"] == ec_client["client_id"]


def test_cli_secret_env_and_assertion_file(
    server: LiveServer, ec_client: dict[str, Any], secret_client: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    env = {**server.env, "MY_SECRET": secret_client["client_secret"]}
    argv = [TESSERA, "token", "--audience", API, "--client-id", secret_client["client_id"], "--secret-env", "MY_SECRET"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert verified(server, r.stdout.strip())["sub"] == secret_client["client_id"]

    path = tmp_path / "assertion"
    path.write_text(client_assertion(ec_client["key"], ec_client["client_id"], server.issuer))
    r = server.cli("token", "--audience", API, "--assertion-file", str(path))
    assert r.returncode == 0, r.stderr
    assert verified(server, r.stdout.strip())["sub"] == ec_client["client_id"]


def test_cli_errors_go_to_stderr(server: LiveServer, secret_client: dict[str, Any], tmp_path: pathlib.Path) -> None:
    env = {**server.env, "MY_SECRET": "wrong"}
    argv = [TESSERA, "token", "--client-id", secret_client["client_id"], "--secret-env", "MY_SECRET"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("tessera: invalid_client") and "Traceback" not in r.stderr

    r = server.cli("token", "--client-id", "x")
    assert r.returncode == 2 and "exactly one of" in r.stderr and r.stdout == ""
    r = server.cli("token", "--secret-env", "MY_SECRET")
    assert r.returncode == 2 and "--client-id" in r.stderr
