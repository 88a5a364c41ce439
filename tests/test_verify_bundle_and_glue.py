"""Offline trust bundles and the resource-server glue of ``tessera.verify`` (RFC 6750 bearer usage).

Bundles (``src/tessera/verify/bundle.py``): a compact JWS, ``typ`` ``tessera-bundle+jwt``, signed with a key
the relying party already trusts, whose payload carries ``iss``, ``iat``, ``exp``, the issuer's RFC 8414
``metadata``, its ``jwks`` and ``status_lists`` (URI -> status list token). ``Verifier.from_bundle``
verifies tokens and status without any network access, refuses a bundle that is expired, untrusted or
another issuer's (``InvalidBundle``), and fails closed (``TrustDataStale``) once the bundle expires.

Glue (``src/tessera/verify/asgi.py``), RFC 6750 §3: a request without credentials gets ``401`` with
``WWW-Authenticate: Bearer realm=...`` and no error code (§3.1); a refused token ``401``
``error="invalid_token"``; a token lacking a required scope ``403`` ``error="insufficient_scope"``.
Checked for the ASGI middleware in front of Starlette and for the FastAPI dependency.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import pathlib
import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from support import b64u
from tessera.verify import (
    InvalidBundle,
    Revoked,
    StatusUnavailable,
    Suspended,
    TrustDataStale,
    UnknownKey,
    VerificationError,
    Verifier,
)
from tessera.verify.asgi import BearerTokenMiddleware, bearer_dependency
from verify_support import (
    AUDIENCE,
    ISSUER,
    JWKS_URL,
    STATUS_URL,
    T0,
    Clock,
    FakeIssuer,
    PrivateKey,
    access_claims,
    make_verifier,
    public_jwk,
    sign,
    status_list_token,
)

OTHER_ISSUER = "https://other-issuer.test"


class NoNetwork:
    """Transports that record and fail any request: a bundle verifier must never use them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        raise AssertionError(f"network access from a bundle verifier: {request.url}")

    def options(self) -> dict[str, Any]:
        return {"transport": httpx.MockTransport(self._handler), "async_transport": httpx.MockTransport(self._handler)}


def make_bundle(
    signer: PrivateKey,
    *,
    kid: str | None = "k1",
    iss: str = ISSUER,
    iat: float = T0,
    exp: float = T0 + 86400,
    jwks: Any = None,
    metadata: Any = None,
    status_lists: Any = None,
    typ: str | None = "tessera-bundle+jwt",
    drop: tuple[str, ...] = (),
) -> str:
    payload: dict[str, Any] = {
        "iss": iss,
        "iat": iat,
        "exp": exp,
        "metadata": metadata if metadata is not None else {"issuer": iss, "jwks_uri": iss + "/oauth/jwks"},
        "jwks": jwks if jwks is not None else {"keys": [public_jwk(signer, kid)]},
        "status_lists": status_lists if status_lists is not None else {},
    }
    for name in drop:
        payload.pop(name)
    header: dict[str, Any] = {"alg": "ES256"}
    if typ is not None:
        header["typ"] = typ
    if kid is not None:
        header["kid"] = kid
    return sign(header, payload, signer)


@pytest.fixture
def issuer() -> FakeIssuer:
    fake = FakeIssuer(Clock(T0))
    fake.add_key("k1")
    return fake


@pytest.fixture
def trusted(issuer: FakeIssuer) -> dict[str, Any]:
    return {"keys": [issuer.published["k1"]]}


def bundle_verifier(
    issuer: FakeIssuer, bundle: str, trusted: dict[str, Any], net: NoNetwork | None = None, **options: Any
) -> Verifier:
    net = net or NoNetwork()
    settings: dict[str, Any] = {"clock": issuer.clock, "background_refresh": False, **net.options()}
    settings.update(options)
    return Verifier.from_bundle(bundle, issuer=ISSUER, trusted_jwks=trusted, audiences=[AUDIENCE], **settings)


def refused(verifier: Verifier, token: str, error: type[VerificationError]) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token)
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    assert caught.value.reason == error.reason
    return caught.value


def invalid_bundle(issuer: FakeIssuer, bundle: str, trusted: dict[str, Any]) -> InvalidBundle:
    with pytest.raises(VerificationError) as caught:
        bundle_verifier(issuer, bundle, trusted)
    assert type(caught.value) is InvalidBundle, repr(caught.value)
    assert caught.value.reason == "invalid_bundle"
    return caught.value


# -- bundles -------------------------------------------------------------------------------------


def test_bundle_verifies_tokens_with_no_network(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    net = NoNetwork()
    v = bundle_verifier(issuer, make_bundle(issuer.keys["k1"], iat=T0 - 600), trusted, net)
    claims = v.verify(issuer.token())
    assert claims["sub"] == "svc-reporting"
    assert claims.report.source == "bundle" and claims.report.keys_age == 600 and claims.report.stale is False
    assert asyncio.run(v.averify(issuer.token())).report.source == "bundle"
    refused(v, issuer.token("k9", key=ec.generate_private_key(ec.SECP256R1())), UnknownKey)
    refused(v, issuer.token(status={"status_list": {"idx": 0, "uri": STATUS_URL}}), StatusUnavailable)
    issuer.clock.advance(3600)
    assert v.verify(issuer.token())
    assert net.calls == []


def test_bundle_keys_are_the_bundles_not_the_trust_anchor(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    """The anchor signs the bundle; the bundle's JWK Set (here: k1 rotated out, k2 in) verifies tokens."""
    k2 = issuer.add_key("k2")
    bundle = make_bundle(issuer.keys["k1"], jwks={"keys": [public_jwk(k2, "k2")]})
    v = bundle_verifier(issuer, bundle, trusted)
    assert v.verify(issuer.token("k2"))
    refused(v, issuer.token("k1"), UnknownKey)


def test_bundle_chain_previous_jwks_trusts_the_next_bundle(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    k2 = issuer.add_key("k2")
    first_jwks = {"keys": [public_jwk(issuer.keys["k1"], "k1"), public_jwk(k2, "k2")]}
    first = make_bundle(issuer.keys["k1"], jwks=first_jwks)
    assert bundle_verifier(issuer, first, trusted).verify(issuer.token("k2"))
    second = make_bundle(k2, kid="k2", jwks={"keys": [public_jwk(k2, "k2")]})
    v = bundle_verifier(issuer, second, first_jwks)
    assert v.verify(issuer.token("k2"))
    invalid_bundle(issuer, second, trusted)  # k2 was never in the original anchor


@pytest.mark.parametrize("exp_offset", [-31, -30, -3600])
def test_expired_bundle_is_refused_at_load(issuer: FakeIssuer, trusted: dict[str, Any], exp_offset: int) -> None:
    error = invalid_bundle(issuer, make_bundle(issuer.keys["k1"], iat=T0 - 7200, exp=T0 + exp_offset), trusted)
    assert "expired" in error.message


def test_bundle_that_expires_later_fails_closed(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    net = NoNetwork()
    v = bundle_verifier(issuer, make_bundle(issuer.keys["k1"], exp=T0 + 3600), trusted, net)
    issuer.clock.advance(3599)
    assert v.verify(issuer.token())
    issuer.clock.advance(1)
    refused(v, issuer.token(), TrustDataStale)
    with pytest.raises(TrustDataStale):
        asyncio.run(v.averify(issuer.token()))
    assert net.calls == []


def test_bundle_lifetime_not_keys_max_stale_bounds_its_keys(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    v = bundle_verifier(issuer, make_bundle(issuer.keys["k1"], exp=T0 + 7 * 86400), trusted, keys_max_stale=3600)
    issuer.clock.advance(3 * 86400)
    claims = v.verify(issuer.token())
    assert claims.report.keys_age == 3 * 86400 and claims.report.source == "bundle"


def test_bundle_signed_by_an_untrusted_key(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    invalid_bundle(issuer, make_bundle(stranger), trusted)  # same kid, other key
    invalid_bundle(issuer, make_bundle(stranger, kid="k9"), trusted)  # unknown kid
    invalid_bundle(issuer, make_bundle(stranger, kid=None), trusted)  # no kid at all
    invalid_bundle(issuer, make_bundle(issuer.keys["k1"]), {"keys": []})  # nothing trusted
    invalid_bundle(issuer, make_bundle(issuer.keys["k1"]), {"keys": [public_jwk(stranger, "k1")]})


def test_another_issuers_bundle(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_bundle = make_bundle(other_key, iss=OTHER_ISSUER)
    invalid_bundle(issuer, other_bundle, {"keys": [public_jwk(other_key, "k1")]})
    invalid_bundle(issuer, make_bundle(issuer.keys["k1"], iss=OTHER_ISSUER), trusted)
    invalid_bundle(issuer, make_bundle(issuer.keys["k1"], metadata={"issuer": OTHER_ISSUER}), trusted)
    invalid_bundle(issuer, make_bundle(issuer.keys["k1"], metadata={"jwks_uri": JWKS_URL}), trusted)


@pytest.mark.parametrize(
    "variant",
    [
        "typ at+jwt",
        "typ JWT",
        "no typ",
        "alg none",
        "HS256",
        "tampered",
        "not a JWS",
        "iat in the future",
        "iat missing",
        "exp missing",
        "exp a string",
        "no jwks",
        "jwks not a set",
        "status_lists a list",
        "status_lists value not a string",
        "metadata missing",
    ],
)
def test_malformed_bundles(issuer: FakeIssuer, trusted: dict[str, Any], variant: str) -> None:
    k1 = issuer.keys["k1"]
    if variant == "alg none":
        good = make_bundle(k1)
        bundle = b64u(b'{"alg":"none","typ":"tessera-bundle+jwt","kid":"k1"}') + "." + good.split(".")[1] + "."
    elif variant == "HS256":  # "signed" with the trusted public JWK as HMAC secret
        h = b64u(b'{"alg":"HS256","typ":"tessera-bundle+jwt","kid":"k1"}')
        p = make_bundle(k1).split(".")[1]
        mac = hmac.new(json.dumps(trusted["keys"][0]).encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
        bundle = f"{h}.{p}.{b64u(mac)}"
    elif variant == "tampered":
        h, p, s = make_bundle(k1).split(".")
        payload = json.loads(__import__("base64").urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        payload["exp"] += 10**6
        bundle = f"{h}.{b64u(json.dumps(payload).encode())}.{s}"
    else:
        bundle = {
            "typ at+jwt": lambda: make_bundle(k1, typ="at+jwt"),
            "typ JWT": lambda: make_bundle(k1, typ="JWT"),
            "no typ": lambda: make_bundle(k1, typ=None),
            "not a JWS": lambda: "bundle",
            "iat in the future": lambda: make_bundle(k1, iat=T0 + 31),
            "iat missing": lambda: make_bundle(k1, drop=("iat",)),
            "exp missing": lambda: make_bundle(k1, drop=("exp",)),
            "exp a string": lambda: make_bundle(k1, exp=str(T0 + 3600)),  # type: ignore[arg-type]
            "no jwks": lambda: make_bundle(k1, drop=("jwks",)),
            "jwks not a set": lambda: make_bundle(k1, jwks=[public_jwk(k1, "k1")]),
            "status_lists a list": lambda: make_bundle(k1, status_lists=["x"]),
            "status_lists value not a string": lambda: make_bundle(k1, status_lists={STATUS_URL: {"lst": "x"}}),
            "metadata missing": lambda: make_bundle(k1, drop=("metadata",)),
        }[variant]()
    invalid_bundle(issuer, bundle, trusted)


def test_status_lists_inside_the_bundle_apply(issuer: FakeIssuer, trusted: dict[str, Any]) -> None:
    lists = {
        STATUS_URL: status_list_token(issuer.keys["k1"], kid="k1", uri=STATUS_URL, now=T0 - 60, statuses={1: 1, 2: 2})
    }
    net = NoNetwork()
    v = bundle_verifier(issuer, make_bundle(issuer.keys["k1"], iat=T0 - 60, status_lists=lists), trusted, net)

    def tok(idx: int, uri: str = STATUS_URL) -> str:
        return issuer.token(status={"status_list": {"idx": idx, "uri": uri}})

    claims = v.verify(tok(0))
    assert claims.report.status_age == 60 and claims.report.source == "bundle"
    refused(v, tok(1), Revoked)
    refused(v, tok(2), Suspended)
    refused(v, tok(0, ISSUER + "/oauth/status/2"), StatusUnavailable)  # not in the bundle: no fetch either
    assert asyncio.run(v.averify(tok(0)))
    assert net.calls == []


@pytest.mark.parametrize("case", ["forged", "not a JWS", "wrong typ", "expired", "other sub"])
def test_a_bundle_with_a_bad_status_list_is_an_invalid_bundle(
    issuer: FakeIssuer, trusted: dict[str, Any], case: str
) -> None:
    k1 = issuer.keys["k1"]
    bad = {
        "forged": lambda: status_list_token(
            ec.generate_private_key(ec.SECP256R1()), kid="k1", uri=STATUS_URL, now=T0, statuses={}
        ),
        "not a JWS": lambda: "garbage",
        "wrong typ": lambda: status_list_token(k1, kid="k1", uri=STATUS_URL, now=T0, statuses={}, typ="JWT"),
        "expired": lambda: status_list_token(k1, kid="k1", uri=STATUS_URL, now=T0 - 7200, statuses={}, exp=T0 - 3600),
        "other sub": lambda: status_list_token(k1, kid="k1", uri=ISSUER + "/oauth/status/9", now=T0, statuses={}),
    }[case]()
    invalid_bundle(issuer, make_bundle(k1, status_lists={STATUS_URL: bad}), trusted)


def test_cli_verify_with_a_bundle(issuer: FakeIssuer, tmp_path: pathlib.Path) -> None:
    """``tessera verify --bundle`` on the real clock (the CLI has no injectable time)."""
    from tessera.cli.main import main

    now = time.time()
    k1 = issuer.keys["k1"]
    (tmp_path / "bundle.jws").write_text(make_bundle(k1, iat=now - 5, exp=now + 3600))
    (tmp_path / "trusted.json").write_text(json.dumps({"keys": [issuer.published["k1"]]}))
    token = sign({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}, access_claims(now), k1)
    args = [
        "verify",
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--bundle",
        str(tmp_path / "bundle.jws"),
        "--trusted-jwks",
        str(tmp_path / "trusted.json"),
    ]
    ok = CliRunner().invoke(main, [*args, token])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.output)
    assert out["valid"] is True and out["claims"]["sub"] == "svc-reporting" and out["report"]["source"] == "bundle"
    bad = CliRunner().invoke(main, [*args, token[:-4] + "AAAA"])
    assert bad.exit_code == 1 and json.loads(bad.output)["reason"] == "bad_signature"
    stdin = CliRunner().invoke(main, [*args, "-"], input=token + "\n")
    assert stdin.exit_code == 0 and json.loads(stdin.output)["valid"] is True
    missing = CliRunner().invoke(
        main, ["verify", "--issuer", ISSUER, "--audience", AUDIENCE, "--bundle", str(tmp_path / "bundle.jws"), token]
    )
    assert missing.exit_code == 2
    expired = tmp_path / "old.jws"
    expired.write_text(make_bundle(k1, iat=now - 7200, exp=now - 3600))
    old = CliRunner().invoke(
        main, [*args[:-4], "--bundle", str(expired), "--trusted-jwks", str(tmp_path / "trusted.json"), token]
    )
    assert old.exit_code == 1 and json.loads(old.output)["reason"] == "invalid_bundle"


# -- ASGI middleware in front of Starlette -------------------------------------------------------------


def _starlette_app(verifier: Verifier, *, as_middleware_option: bool) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def whoami(request: Request) -> JSONResponse:
        claims = request.state.claims
        return JSONResponse({"sub": claims["sub"], "scope": claims["scope"], "source": claims.report.source})

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route("/whoami", whoami), Route("/health", health), Route("/health/", health)]
    options = {"verifier": verifier, "scopes": ["read"], "realm": "orders", "public_paths": ["/health"]}
    if as_middleware_option:
        return Starlette(routes=routes, middleware=[Middleware(BearerTokenMiddleware, **options)])
    return BearerTokenMiddleware(Starlette(routes=routes), **options)


async def _get(app: Any, path: str, authorization: str | None = None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs.test") as client:
        return await client.get(path, headers=headers)


def _bearer_cases(issuer: FakeIssuer) -> dict[str, str | None]:
    return {
        "none": None,
        "basic": "Basic c3ZjOnNlY3JldA==",
        "empty bearer": "Bearer ",
        "malformed": "Bearer not-a-token",
        "expired": "Bearer " + issuer.token(iat=int(T0) - 7200, exp=int(T0) - 3600),
        "forged": "Bearer " + issuer.token(key=ec.generate_private_key(ec.SECP256R1())),
        "no scope": "Bearer " + issuer.token(scope="write"),
        "scope prefix": "Bearer " + issuer.token(scope="reader"),
        "good": "Bearer " + issuer.token(scope="read write"),
        "good lowercase scheme": "bearer " + issuer.token(),
    }


@pytest.mark.parametrize("as_middleware_option", [False, True], ids=["wrapped", "Middleware()"])
def test_bearer_middleware(issuer: FakeIssuer, as_middleware_option: bool) -> None:
    app = _starlette_app(make_verifier(issuer), as_middleware_option=as_middleware_option)
    cases = _bearer_cases(issuer)

    async def scenario() -> dict[str, httpx.Response]:
        out = {name: await _get(app, "/whoami", value) for name, value in cases.items()}
        out["public"] = await _get(app, "/health")
        out["public with bad token"] = await _get(app, "/health", "Bearer junk")
        out["not public"] = await _get(app, "/health/")
        return out

    r = asyncio.run(scenario())
    for name in ("none", "basic", "empty bearer", "not public"):
        assert r[name].status_code == 401, name
        assert r[name].headers["www-authenticate"] == 'Bearer realm="orders"', name  # RFC 6750 §3.1: no error code
    for name, reason in (("malformed", "malformed"), ("expired", "expired"), ("forged", "bad_signature")):
        assert r[name].status_code == 401, name
        assert (
            r[name].headers["www-authenticate"]
            == f'Bearer realm="orders", error="invalid_token", error_description="{reason}"'
        ), name
        assert r[name].json() == {"error": "invalid_token", "reason": reason}
    for name in ("no scope", "scope prefix"):
        assert r[name].status_code == 403, name
        assert (
            r[name].headers["www-authenticate"] == 'Bearer realm="orders", error="insufficient_scope", scope="read"'
        ), name
        assert r[name].json()["error"] == "insufficient_scope"
    assert r["good"].status_code == 200
    assert r["good"].json() == {"sub": "svc-reporting", "scope": "read write", "source": "network"}
    assert r["good lowercase scheme"].status_code == 200
    assert r["public"].status_code == 200 and r["public"].text == "ok"
    assert r["public with bad token"].status_code == 200


def test_bearer_middleware_fails_closed_when_trust_data_is_stale(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, keys_max_stale=600)
    app = _starlette_app(v, as_middleware_option=False)
    assert asyncio.run(_get(app, "/whoami", "Bearer " + issuer.token())).status_code == 200
    issuer.down = "connect"
    issuer.clock.advance(601)
    r = asyncio.run(_get(app, "/whoami", "Bearer " + issuer.token()))
    assert r.status_code == 401
    assert 'error_description="trust_data_stale"' in r.headers["www-authenticate"]


# -- FastAPI dependency -------------------------------------------------------------------------------


def _fastapi_app(verifier: Verifier) -> Any:
    from fastapi import Depends, FastAPI

    app = FastAPI()
    needs_read = bearer_dependency(verifier, scopes=["read"], realm="orders")

    @app.get("/whoami")
    async def whoami(claims: Any = Depends(needs_read)) -> dict[str, Any]:
        return {"sub": claims["sub"], "scope": claims["scope"], "source": claims.report.source}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def test_fastapi_dependency(issuer: FakeIssuer) -> None:
    app = _fastapi_app(make_verifier(issuer))
    cases = _bearer_cases(issuer)

    async def scenario() -> dict[str, httpx.Response]:
        out = {name: await _get(app, "/whoami", value) for name, value in cases.items()}
        out["public"] = await _get(app, "/health")
        return out

    r = asyncio.run(scenario())
    for name in ("none", "basic", "empty bearer"):
        assert r[name].status_code == 401, (name, r[name].text)
        assert r[name].headers["www-authenticate"] == 'Bearer realm="orders"', name
    for name, reason in (("malformed", "malformed"), ("expired", "expired"), ("forged", "bad_signature")):
        assert r[name].status_code == 401, name
        assert (
            r[name].headers["www-authenticate"]
            == f'Bearer realm="orders", error="invalid_token", error_description="{reason}"'
        ), name
        assert r[name].json() == {"detail": reason}
    for name in ("no scope", "scope prefix"):
        assert r[name].status_code == 403, name
        assert (
            r[name].headers["www-authenticate"] == 'Bearer realm="orders", error="insufficient_scope", scope="read"'
        ), name
    assert r["good"].status_code == 200, r["good"].text
    assert r["good"].json() == {"sub": "svc-reporting", "scope": "read write", "source": "network"}
    assert r["good lowercase scheme"].status_code == 200
    assert r["public"].status_code == 200


def test_fastapi_dependency_is_documented_in_openapi_without_a_request_parameter(issuer: FakeIssuer) -> None:
    """FastAPI must inject the Request, not ask clients for a ``request`` query parameter."""
    app = _fastapi_app(make_verifier(issuer))
    params = app.openapi()["paths"]["/whoami"]["get"].get("parameters", [])
    assert [p["name"] for p in params] == []


def test_bearer_middleware_guards_websockets_too(issuer: FakeIssuer) -> None:
    """A WebSocket handshake is an HTTP request carrying the same bearer token: refused ones close with 1008."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    verifier = make_verifier(issuer)

    async def feed(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_json({"sub": ws.scope["state"]["claims"]["sub"]})
        await ws.close()

    app = BearerTokenMiddleware(Starlette(routes=[WebSocketRoute("/feed", feed)]), verifier, scopes=["read"])
    with TestClient(app) as client:
        for authorization in (None, "Bearer not-a-token", "Bearer " + issuer.token(scope="write")):
            headers = {"Authorization": authorization} if authorization else {}
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/feed", headers=headers):
                pass
            assert closed.value.code == 1008
        with client.websocket_connect("/feed", headers={"Authorization": "Bearer " + issuer.token(scope="read")}) as ws:
            assert ws.receive_json()["sub"]
