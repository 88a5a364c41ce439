"""The token endpoint's client credentials grant: RFC 6749 §4.4, §5.1 and §5.2, with client authentication by
secret (RFC 6749 §2.3.1) and by ``private_key_jwt`` assertion (RFC 7523 §2.2 and §3), resource indicators
(RFC 8707 §2) and the strict form parsing of RFC 6749 §3.2.

Every refusal is checked for its exact status and ``error`` code; ``invalid_client`` is 401 with
``WWW-Authenticate`` (RFC 6749 §5.2). Assertions are forged with ``cryptography`` alone (tests/support.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from support import ASSERTION_TYPE, b64u, client_assertion, ec_jwk, ec_key, sign_es256

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
API = "https://api.example.test/orders"
API2 = "https://api.example.test/billing"


# -- helpers -------------------------------------------------------------------------------------------


def token_request(
    server,
    data: Any = None,
    *,
    auth: tuple[str, str] | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    if content is not None:
        return httpx.post(
            server.token_endpoint, content=content, auth=auth, headers={**FORM, **(headers or {})}, timeout=10, **kw
        )
    return httpx.post(server.token_endpoint, data=data, auth=auth, headers=headers, timeout=10, **kw)


def assert_error(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == error, r.text
    assert r.headers["cache-control"] == "no-store"
    if error == "invalid_client":
        # RFC 6749 §5.2: 401 with a WWW-Authenticate header naming the scheme the client may use.
        assert r.headers["www-authenticate"].startswith("Basic realm=")
    else:
        assert "www-authenticate" not in r.headers


def claims_of(r: httpx.Response) -> dict[str, Any]:
    """The access token's claims (signature checks belong to test_interop_clients_and_relying_parties.py)."""
    return pyjwt.decode(r.json()["access_token"], options={"verify_signature": False})


def audit_after(server, seq: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with server.admin() as admin:
        while True:
            r = admin.get("/audit", params={"after": seq, "limit": 1000})
            assert r.status_code == 200, r.text
            page = r.json()
            if not page:
                return out
            out += page
            seq = page[-1]["seq"]


def audit_head(server) -> int:
    records = audit_after(server, 0)
    return records[-1]["seq"] if records else 0


# -- clients -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic(server) -> dict[str, Any]:
    reg = server.register(token_endpoint_auth_method="client_secret_basic", scope="read write")
    return {**reg, "auth": (reg["client_id"], reg["client_secret"])}


@pytest.fixture(scope="module")
def post_client(server) -> dict[str, Any]:
    return server.register(token_endpoint_auth_method="client_secret_post", scope="read")


@pytest.fixture(scope="module")
def jwt_client(server) -> dict[str, Any]:
    key = ec_key()
    reg = server.register(
        token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]}, scope="read"
    )
    return {**reg, "key": key}


@pytest.fixture(scope="module")
def rs_client(server) -> dict[str, Any]:
    """Resources of its own (RFC 8707), a default among them, and a 60 s token lifetime cap."""
    reg = server.register(scope="orders", allowed_resources=[API, API2], default_resource=API, access_token_lifetime=60)
    return {**reg, "auth": (reg["client_id"], reg["client_secret"])}


def assertion_form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


# -- success ----------------------------------------------------------------------------------------------


def test_client_secret_basic_success_response(server, basic) -> None:
    r = token_request(server, {"grant_type": "client_credentials", "scope": "read"}, auth=basic["auth"])
    assert r.status_code == 200, r.text
    # RFC 6749 §5.1: the response MUST NOT be cached.
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "read"
    assert "refresh_token" not in body  # RFC 6749 §4.4.3: SHOULD NOT be included
    claims = claims_of(r)
    assert claims["sub"] == claims["client_id"] == basic["client_id"]
    assert claims["aud"] == server.issuer  # no resource, no default_resource: the server's default audience
    assert claims["exp"] - claims["iat"] == 900
    assert claims["scope"] == "read"


def test_omitted_scope_grants_the_registered_scope(server, basic) -> None:
    r = token_request(server, {"grant_type": "client_credentials"}, auth=basic["auth"])
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "read write"
    assert claims_of(r)["scope"] == "read write"


def test_client_secret_basic_credentials_are_form_urlencoded(server) -> None:
    """RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Base64; a '+' in the header is a space."""
    with server.admin() as admin:
        r = admin.post(
            "/clients",
            json={"client_id": "svc:a@b", "scope": "read", "token_endpoint_auth_method": "client_secret_basic"},
        )
    assert r.status_code == 201, r.text
    secret = r.json()["client_secret"]
    header = "Basic " + base64.b64encode(f"svc%3Aa%40b:{secret}".encode()).decode()
    r = token_request(server, {"grant_type": "client_credentials"}, headers={"Authorization": header})
    assert r.status_code == 200, r.text
    assert claims_of(r)["client_id"] == "svc:a@b"


def test_client_secret_post_success(server, post_client) -> None:
    r = token_request(
        server,
        {
            "grant_type": "client_credentials",
            "client_id": post_client["client_id"],
            "client_secret": post_client["client_secret"],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "read"
    assert claims_of(r)["client_id"] == post_client["client_id"]


@pytest.mark.parametrize("aud", ["token_endpoint", "issuer", "single_element_list"])
def test_private_key_jwt_audiences_accepted(server, jwt_client, aud: str) -> None:
    """RFC 7523 §3 (3): the audience identifies the server: its token endpoint or its issuer identifier."""
    value: Any = {
        "token_endpoint": server.token_endpoint,
        "issuer": server.issuer,
        "single_element_list": [server.token_endpoint],
    }[aud]
    r = token_request(server, assertion_form(_signed(jwt_client, server, aud=value)))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert claims_of(r)["sub"] == jwt_client["client_id"]


def test_private_key_jwt_with_matching_client_id_parameter(server, jwt_client) -> None:
    a = client_assertion(jwt_client["key"], jwt_client["client_id"], server.token_endpoint)
    r = token_request(server, assertion_form(a, client_id=jwt_client["client_id"]))
    assert r.status_code == 200, r.text


def test_lifetime_capped_by_client_access_token_lifetime(server, rs_client) -> None:
    r = token_request(server, {"grant_type": "client_credentials"}, auth=rs_client["auth"])
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 60
    claims = claims_of(r)
    assert claims["exp"] - claims["iat"] == 60


# -- RFC 8707 resource indicators ----------------------------------------------------------------------------


def test_default_resource_is_the_audience_when_none_requested(server, rs_client) -> None:
    r = token_request(server, {"grant_type": "client_credentials"}, auth=rs_client["auth"])
    assert r.status_code == 200, r.text
    assert claims_of(r)["aud"] == API


def test_allowed_resource_becomes_the_audience(server, rs_client) -> None:
    r = token_request(server, {"grant_type": "client_credentials", "resource": API2}, auth=rs_client["auth"])
    assert r.status_code == 200, r.text
    assert claims_of(r)["aud"] == API2


def test_several_resources_give_an_audience_array(server, rs_client) -> None:
    r = token_request(server, {"grant_type": "client_credentials", "resource": [API, API2]}, auth=rs_client["auth"])
    assert r.status_code == 200, r.text
    assert claims_of(r)["aud"] == [API, API2]


@pytest.mark.parametrize(
    "resource",
    [
        API + "#fragment",  # RFC 8707 §2: MUST NOT include a fragment component
        "/orders",  # MUST be an absolute URI
        "api.example.test/orders",  # no scheme: relative
        "https://api.example.test/elsewhere",  # absolute but not allowed for this client
    ],
)
def test_invalid_target(server, rs_client, resource: str) -> None:
    r = token_request(server, {"grant_type": "client_credentials", "resource": resource}, auth=rs_client["auth"])
    assert_error(r, 400, "invalid_target")


def test_one_bad_resource_among_good_ones_is_invalid_target(server, rs_client) -> None:
    r = token_request(
        server, {"grant_type": "client_credentials", "resource": [API, "https://evil.example/"]}, auth=rs_client["auth"]
    )
    assert_error(r, 400, "invalid_target")


def test_resource_of_another_client_is_invalid_target(server, basic) -> None:
    r = token_request(server, {"grant_type": "client_credentials", "resource": API}, auth=basic["auth"])
    assert_error(r, 400, "invalid_target")


# -- invalid_client: secrets -------------------------------------------------------------------------------------


def test_unknown_client(server) -> None:
    assert_error(
        token_request(server, {"grant_type": "client_credentials"}, auth=("no-such-client", "x" * 43)),
        401,
        "invalid_client",
    )


def test_wrong_secret(server, basic) -> None:
    r = token_request(server, {"grant_type": "client_credentials"}, auth=(basic["client_id"], "wrong-" + "x" * 40))
    assert_error(r, 401, "invalid_client")


def test_no_client_authentication_at_all(server) -> None:
    assert_error(token_request(server, {"grant_type": "client_credentials"}), 401, "invalid_client")


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b":secret-without-id").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),  # not UTF-8
        "Basic =",
    ],
)
def test_malformed_basic_header(server, header: str) -> None:
    r = token_request(server, {"grant_type": "client_credentials"}, headers={"Authorization": header})
    assert_error(r, 401, "invalid_client")


def test_client_secret_post_client_using_basic(server, post_client) -> None:
    r = token_request(
        server, {"grant_type": "client_credentials"}, auth=(post_client["client_id"], post_client["client_secret"])
    )
    assert_error(r, 401, "invalid_client")


def test_client_secret_basic_client_using_post(server, basic) -> None:
    r = token_request(
        server,
        {"grant_type": "client_credentials", "client_id": basic["client_id"], "client_secret": basic["client_secret"]},
    )
    assert_error(r, 401, "invalid_client")


def test_secret_client_cannot_send_an_assertion(server, basic) -> None:
    a = client_assertion(ec_key(), basic["client_id"], server.token_endpoint)
    assert_error(token_request(server, assertion_form(a)), 401, "invalid_client")


# -- invalid_client: private_key_jwt assertions (RFC 7523 §3) --------------------------------------------------------


def _fresh_claims(c: dict[str, Any], server) -> dict[str, Any]:
    """Claims of a well-formed assertion: only its header and signature make the forgeries below."""
    now = int(time.time())
    return {
        "iss": c["client_id"],
        "sub": c["client_id"],
        "aud": server.token_endpoint,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }


def _alg_none(c: dict[str, Any], server) -> str:
    claims = _fresh_claims(c, server)
    return b64u(json.dumps({"alg": "none", "kid": "k1"}).encode()) + "." + b64u(json.dumps(claims).encode()) + "."


def _hs256(c: dict[str, Any], server) -> str:
    """HMAC keyed with the client's own public JWK: what a key-confusion forgery looks like."""
    claims = _fresh_claims(c, server)
    si = (
        b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()) + "." + b64u(json.dumps(claims).encode())
    )
    secret = json.dumps(ec_jwk(c["key"], "k1")).encode()
    return si + "." + b64u(hmac.new(secret, si.encode(), hashlib.sha256).digest())


def _signed(c: dict[str, Any], server, *, aud: Any = "token_endpoint", **overrides: Any) -> str:
    return client_assertion(
        c["key"], c["client_id"], server.token_endpoint if aud == "token_endpoint" else aud, **overrides
    )


BAD_ASSERTIONS: dict[str, Callable[[dict[str, Any], Any], str]] = {
    # RFC 7523 §3 (4): expired (well beyond the 30 s leeway)
    "expired": lambda c, s: _signed(c, s, now=time.time() - 600),
    # exp further than assertion_max_lifetime (3600 s) + leeway (30 s) in the future
    "exp_too_far": lambda c, s: _signed(c, s, lifetime=3700),
    "exp_one_day": lambda c, s: _signed(c, s, lifetime=86400),
    "exp_missing": lambda c, s: _signed(c, s, exp=None),
    "exp_not_a_number": lambda c, s: _signed(c, s, exp="tomorrow"),
    "jti_missing": lambda c, s: _signed(c, s, jti=None),
    "iss_not_sub": lambda c, s: _signed(c, s, iss="someone-else"),
    "aud_wrong": lambda c, s: _signed(c, s, aud=s.issuer + "/elsewhere"),
    "aud_two_values": lambda c, s: _signed(c, s, aud=[s.token_endpoint, s.issuer]),
    "aud_missing": lambda c, s: _signed(c, s, aud=None),
    "nbf_in_future": lambda c, s: _signed(c, s, nbf=int(time.time()) + 600),
    "iat_in_future": lambda c, s: _signed(c, s, iat=int(time.time()) + 600),
    "other_key": lambda c, s: client_assertion(ec_key(), c["client_id"], s.token_endpoint),
    "kid_unknown": lambda c, s: _signed(c, s, kid="not-a-registered-kid"),
    "alg_none": _alg_none,
    "hs256": _hs256,
    "not_a_jwt": lambda c, s: "not.a.jwt",
    "two_segments": lambda c, s: ".".join(_signed(c, s).split(".")[:2]),
    "payload_tampered": lambda c, s: (lambda h, p, sig: f"{h}.{p[:-2]}{'A' if p[-2] != 'A' else 'B'}{p[-1]}.{sig}")(
        *_signed(c, s).split(".")
    ),
    "crit_header": lambda c, s: sign_es256(
        {"alg": "ES256", "kid": "k1", "crit": ["exp"]},
        {
            "iss": c["client_id"],
            "sub": c["client_id"],
            "aud": s.token_endpoint,
            "exp": int(time.time()) + 60,
            "jti": secrets.token_urlsafe(8),
        },
        c["key"],
    ),
}


@pytest.mark.parametrize("case", BAD_ASSERTIONS)
def test_bad_client_assertion_is_invalid_client(server, jwt_client, case: str) -> None:
    a = BAD_ASSERTIONS[case](jwt_client, server)
    assert_error(token_request(server, assertion_form(a)), 401, "invalid_client")


def test_assertion_sub_differs_from_client_id_parameter(server, jwt_client) -> None:
    a = _signed(jwt_client, server)
    assert_error(token_request(server, assertion_form(a, client_id="another-client")), 401, "invalid_client")


def test_replayed_assertion_is_refused(server, jwt_client) -> None:
    """RFC 7523 §3 (7): a jti is used once; the second presentation of the same assertion is refused."""
    a = _signed(jwt_client, server)
    assert token_request(server, assertion_form(a)).status_code == 200
    assert_error(token_request(server, assertion_form(a)), 401, "invalid_client")
    # Another assertion with a fresh jti still works.
    assert token_request(server, assertion_form(_signed(jwt_client, server))).status_code == 200


def test_refused_assertion_does_not_burn_its_jti(server, jwt_client) -> None:
    """A jti is consumed by a successful request only: a refusal for scope leaves it usable."""
    jti = secrets.token_urlsafe(16)
    r = token_request(server, assertion_form(_signed(jwt_client, server, jti=jti), scope="admin"))
    assert_error(r, 400, "invalid_scope")
    assert token_request(server, assertion_form(_signed(jwt_client, server, jti=jti))).status_code == 200


# -- invalid_request ---------------------------------------------------------------------------------------------


def test_missing_grant_type(server, basic) -> None:
    assert_error(token_request(server, {"scope": "read"}, auth=basic["auth"]), 400, "invalid_request")


def test_empty_grant_type_is_missing(server, basic) -> None:
    """RFC 6749 §3.1: a parameter sent without a value is treated as omitted."""
    assert_error(token_request(server, content=b"grant_type=", auth=basic["auth"]), 400, "invalid_request")


@pytest.mark.parametrize(
    "content",
    [
        b"grant_type=client_credentials&grant_type=client_credentials",
        b"grant_type=client_credentials&scope=read&scope=write",
    ],
)
def test_duplicate_parameter(server, basic, content: bytes) -> None:
    """RFC 6749 §3.2: request parameters MUST NOT be included more than once."""
    assert_error(token_request(server, content=content, auth=basic["auth"]), 400, "invalid_request")


def test_two_authentication_methods_basic_and_post(server, basic) -> None:
    """RFC 6749 §2.3: the client MUST NOT use more than one authentication method in each request."""
    r = token_request(
        server,
        {"grant_type": "client_credentials", "client_id": basic["client_id"], "client_secret": basic["client_secret"]},
        auth=basic["auth"],
    )
    assert_error(r, 400, "invalid_request")


def test_two_authentication_methods_basic_and_assertion(server, basic, jwt_client) -> None:
    r = token_request(server, assertion_form(_signed(jwt_client, server)), auth=basic["auth"])
    assert_error(r, 400, "invalid_request")


def test_json_body_is_refused(server, basic) -> None:
    r = httpx.post(server.token_endpoint, json={"grant_type": "client_credentials"}, auth=basic["auth"], timeout=10)
    assert_error(r, 400, "invalid_request")


def test_missing_content_type_is_refused(server, basic) -> None:
    r = httpx.post(server.token_endpoint, content=b"grant_type=client_credentials", auth=basic["auth"], timeout=10)
    assert_error(r, 400, "invalid_request")


def test_repeated_authorization_header_is_refused(server, basic) -> None:
    good = "Basic " + base64.b64encode(f"{basic['client_id']}:{basic['client_secret']}".encode()).decode()
    r = httpx.post(
        server.token_endpoint,
        content=b"grant_type=client_credentials",
        timeout=10,
        headers=[("Content-Type", FORM["Content-Type"]), ("Authorization", good), ("Authorization", good)],
    )
    assert_error(r, 400, "invalid_request")


def test_token_endpoint_requires_post(server, basic) -> None:
    """RFC 6749 §3.2: the client MUST use POST; credentials in a query string are never read."""
    r = httpx.get(server.token_endpoint, params={"grant_type": "client_credentials"}, auth=basic["auth"], timeout=10)
    assert r.status_code == 405
    assert "access_token" not in r.text


@pytest.mark.parametrize("assertion_type", ["urn:ietf:params:oauth:client-assertion-type:saml2-bearer", None])
def test_client_assertion_type_wrong_or_missing(server, jwt_client, assertion_type: str | None) -> None:
    form = assertion_form(_signed(jwt_client, server))
    if assertion_type is None:
        del form["client_assertion_type"]
    else:
        form["client_assertion_type"] = assertion_type
    assert_error(token_request(server, form), 400, "invalid_request")


def test_client_assertion_type_without_assertion(server) -> None:
    r = token_request(server, {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE})
    assert_error(r, 400, "invalid_request")


# -- unsupported_grant_type, unauthorized_client ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "grant_type",
    [
        "password",  # (authorization_code and refresh_token are offered: tests/test_authorization_code.py)
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "CLIENT_CREDENTIALS",
    ],
)
def test_unsupported_grant_type(server, basic, grant_type: str) -> None:
    r = token_request(server, {"grant_type": grant_type}, auth=basic["auth"])
    assert_error(r, 400, "unsupported_grant_type")


@pytest.fixture(scope="module")
def client_without_client_credentials(server) -> Iterator[tuple[str, str]]:
    """A client registered (RFC 7591) for the JWT bearer grant only."""
    reg = server.register(grant_types=["urn:ietf:params:oauth:grant-type:jwt-bearer"], scope="read")
    yield reg["client_id"], reg["client_secret"]


def test_unauthorized_client(server, client_without_client_credentials) -> None:
    cid, secret = client_without_client_credentials
    head = audit_head(server)
    assert_error(
        token_request(server, {"grant_type": "client_credentials"}, auth=(cid, secret)), 400, "unauthorized_client"
    )
    # The client did authenticate: a wrong secret is still invalid_client, checked before the grant.
    assert_error(
        token_request(server, {"grant_type": "client_credentials"}, auth=(cid, secret + "x")), 401, "invalid_client"
    )
    refusals = [(r["event"], r["subject"], r["data"]["error"]) for r in audit_after(server, head)]
    assert refusals == [("token.refused", cid, "unauthorized_client"), ("token.refused", cid, "invalid_client")]


# -- invalid_scope ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["admin", "read admin", "Read"])
def test_scope_not_registered(server, basic, scope: str) -> None:
    assert_error(
        token_request(server, {"grant_type": "client_credentials", "scope": scope}, auth=basic["auth"]),
        400,
        "invalid_scope",
    )


@pytest.mark.parametrize("scope", ['read"', "read\\", "réad"])
def test_scope_with_characters_outside_nqchar(server, basic, scope: str) -> None:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )."""
    assert_error(
        token_request(server, {"grant_type": "client_credentials", "scope": scope}, auth=basic["auth"]),
        400,
        "invalid_scope",
    )


def test_assertion_client_scope_not_registered(server, jwt_client) -> None:
    r = token_request(server, assertion_form(_signed(jwt_client, server), scope="write"))
    assert_error(r, 400, "invalid_scope")


# -- hostile input -----------------------------------------------------------------------------------------------


def _stream_3mib() -> Iterator[bytes]:
    yield b"grant_type=client_credentials&x="
    for _ in range(48):
        yield b"a" * 65536


BAD_BODIES: dict[str, tuple[bytes, int]] = {
    "malformed_percent_zz": (b"grant_type=client_credentials&x=%zz", 400),
    "malformed_percent_truncated": (b"grant_type=client_credentials&x=%4", 400),
    "malformed_percent_at_end": (b"grant_type=client_credentials&scope=read%", 400),
    "percent_decoded_not_utf8": (b"grant_type=client_credentials&x=%C3%28", 400),
    "raw_bytes_not_ascii": (b"grant_type=client_credentials&x=\xff\xfe", 400),
    "raw_utf8": ("grant_type=client_credentials&x=é".encode(), 400),
    "raw_nul": (b"grant_type=client_credentials&x=a\x00b", 400),
    "encoded_nul": (b"grant_type=client_credentials&x=a%00b", 400),
    "encoded_nul_in_name": (b"grant_type=client_credentials&a%00=b", 400),
    "no_equals_sign": (b"grant_type=client_credentials&garbage", 400),
}


def test_hostile_bodies_are_refused_without_side_effects(server, basic) -> None:
    head = audit_head(server)

    def still_answers() -> None:
        assert httpx.get(server.issuer + "/healthz", timeout=10).status_code == 200

    r = token_request(
        server, content=b"grant_type=client_credentials&x=" + b"a" * (3 * 1024 * 1024), auth=basic["auth"]
    )
    assert_error(r, 413, "invalid_request")
    still_answers()
    r = token_request(server, content=_stream_3mib(), auth=basic["auth"])  # chunked: no Content-Length to trust
    assert_error(r, 413, "invalid_request")
    still_answers()
    for name, (content, status) in BAD_BODIES.items():
        r = token_request(server, content=content, auth=basic["auth"])
        assert r.status_code == status, (name, r.text)
        assert r.json()["error"] == "invalid_request", (name, r.text)
        still_answers()

    # No token was issued and nothing but refusals was recorded.
    events = [rec["event"] for rec in audit_after(server, head)]
    assert "token.issued" not in events
    assert set(events) <= {"token.refused"}

    # The endpoint still works, and the good request is the one issuance recorded.
    r = token_request(server, {"grant_type": "client_credentials"}, auth=basic["auth"])
    assert r.status_code == 200, r.text
    issued = [rec for rec in audit_after(server, head) if rec["event"] == "token.issued"]
    assert len(issued) == 1
    assert issued[0]["data"]["jti"] == claims_of(r)["jti"]
    assert issued[0]["subject"] == basic["client_id"]


def test_oversized_assertion_is_refused(server, jwt_client) -> None:
    a = _signed(jwt_client, server, pad="x" * 9000)
    assert_error(token_request(server, assertion_form(a)), 401, "invalid_client")


def test_refusals_are_audited(server, basic) -> None:
    """Every refusal after the body was parsed is an audit record naming the error (never the secret)."""
    head = audit_head(server)
    wrong = "wrong-" + secrets.token_urlsafe(24)
    assert_error(
        token_request(server, {"grant_type": "client_credentials"}, auth=(basic["client_id"], wrong)),
        401,
        "invalid_client",
    )
    assert_error(
        token_request(server, {"grant_type": "client_credentials", "scope": "admin"}, auth=basic["auth"]),
        400,
        "invalid_scope",
    )
    records = audit_after(server, head)
    assert [(r["event"], r["subject"], r["data"]["error"]) for r in records] == [
        ("token.refused", basic["client_id"], "invalid_client"),
        ("token.refused", basic["client_id"], "invalid_scope"),
    ]
    assert wrong not in json.dumps(records)
    assert basic["client_secret"] not in json.dumps(records)


def test_a_malformed_grant_request_is_invalid_request_before_unauthorized_client(server, basic) -> None:
    """The grant's parameters are checked before the client's grant registration (RFC 6749 §5.2): a
    client registered for client_credentials only learns that its token-exchange request is malformed."""
    exchange = "urn:ietf:params:oauth:grant-type:token-exchange"
    r = token_request(server, {"grant_type": exchange, "subject_token": "x"}, auth=basic["auth"])
    assert_error(r, 400, "invalid_request")
    assert "subject_token_type" in r.json()["error_description"]
    well_formed = {
        "grant_type": exchange,
        "subject_token": "x.y.z",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }
    assert_error(token_request(server, well_formed, auth=basic["auth"]), 400, "unauthorized_client")
    r = token_request(server, {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}, auth=basic["auth"])
    assert_error(r, 400, "invalid_request")
