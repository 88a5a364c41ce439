"""RFC 9449 (DPoP): proof checks with the RFC's own examples and one test per refusal, JWK thumbprints
(RFC 7638, RFC 8037 vectors), the replay cache, the token endpoint of a live server (binding, replay,
nonces) and the relying party's side (``Verifier.verify_dpop``, the ASGI middleware)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from support import LiveServer, assert_oauth_error, b64u, ec_jwk, ec_key, sign_es256
from tessera.verify import (
    DPoPBindingMismatch,
    DPoPProofRequired,
    InvalidDPoPProof,
    JtiCache,
    UseDPoPNonce,
    Verifier,
    check_proof,
    jwk_thumbprint,
)
from tessera.verify.asgi import BearerTokenMiddleware, bearer_dependency

HTU = "https://server.example.com/token"
NOW = 1_700_000_000.0

# RFC 9449 §4.1 Figure 2 / §5 Figure 5: a proof for a token request, its key's thumbprint in §6.1 Figure 9.
RFC_TOKEN_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0Rs"
    "cEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2"
    "In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2Vu"
    "IiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
# RFC 9449 §7.1 Figure 13: a proof for a resource request, with ath of the access token shown there.
RFC_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0Rs"
    "cEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2"
    "In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90"
    "ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFF"
    "byJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def make_proof(
    key: ec.EllipticCurvePrivateKey,
    *,
    htm: str = "POST",
    htu: str | None = HTU,
    iat: Any = NOW,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A DPoP proof signed with ``key``; a header or claim given as None is left out."""
    h: dict[str, Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk(key)}
    h.update(header or {})
    c: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": iat}
    c.update(claims)
    return sign_es256({k: v for k, v in h.items() if v is not None}, {k: v for k, v in c.items() if v is not None}, key)


def ath(token: str) -> str:
    return b64u(hashlib.sha256(token.encode("ascii")).digest())


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode()) + "." + b64u(signature)


# -- published vectors ---------------------------------------------------------------------------------


def test_rfc7638_thumbprint_vector() -> None:
    # RFC 7638 §3.1: the members other than e, kty, n do not count.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV"
        "4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgd"
        "AZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rfc8037_and_rfc9449_thumbprint_vectors() -> None:
    # RFC 8037 Appendix A.3 (Ed25519) and RFC 9449 §6.1 (the P-256 key of the examples).
    okp = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(okp) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    ec_example = {
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "crv": "P-256",
    }
    assert jwk_thumbprint(ec_example) == RFC_JKT


@pytest.mark.parametrize("jwk", [{"kty": "oct", "k": "AAAA"}, {"kty": "EC", "crv": "P-256", "x": "AA"}, {}])
def test_thumbprint_of_unusable_keys(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


def test_rfc9449_example_proofs_verify() -> None:
    token_proof = check_proof(RFC_TOKEN_PROOF, htm="POST", htu=HTU, now=1562262616)
    assert (token_proof.jkt, token_proof.jti, token_proof.iat) == (RFC_JKT, "-BwC3ESc6acc2lTc", 1562262616)
    resource_proof = check_proof(
        RFC_RESOURCE_PROOF,
        htm="GET",
        htu="https://resource.example.org/protectedresource",
        now=1562262618,
        access_token=RFC_ACCESS_TOKEN,
    )
    assert resource_proof.jkt == RFC_JKT
    with pytest.raises(InvalidDPoPProof):  # ath binds the proof to that token and no other
        check_proof(
            RFC_RESOURCE_PROOF,
            htm="GET",
            htu="https://resource.example.org/protectedresource",
            now=1562262618,
            access_token=RFC_ACCESS_TOKEN + "x",
        )


# -- check_proof: what passes ----------------------------------------------------------------------------


def test_a_good_proof() -> None:
    key = ec_key()
    proof = check_proof(make_proof(key, jti="j1"), htm="POST", htu=HTU, now=NOW)
    assert proof.jkt == jwk_thumbprint(ec_jwk(key))
    assert (proof.jti, proof.htm, proof.htu, proof.iat) == ("j1", "POST", HTU, NOW)


@pytest.mark.parametrize(
    ("claimed", "actual"),
    [
        (HTU, HTU + "?grant_type=x"),  # §4.3 point 9: the query is ignored
        (HTU + "?a=b#frag", HTU),  # ... and so is the fragment
        ("HTTPS://Server.Example.COM/token", HTU),  # RFC 3986 §6.2.2.1: scheme and host are case-insensitive
        ("https://server.example.com:443/token", HTU),  # §6.2.3: the default port
        ("http://server.example.com:80/token", "http://server.example.com/token"),
        ("https://server.example.com", "https://server.example.com/"),  # §6.2.3: empty path is "/"
        ("https://server.example.com/%7Euser/a/./b/../token", "https://server.example.com/~user/a/token"),
        ("https://server.example.com/a%2fb", "https://server.example.com/a%2Fb"),  # §6.2.2.1: hex case
    ],
)
def test_htu_normalisation(claimed: str, actual: str) -> None:
    check_proof(make_proof(ec_key(), htu=claimed), htm="POST", htu=actual, now=NOW)


def test_iat_window_edges_are_accepted() -> None:
    key = ec_key()
    check_proof(make_proof(key, iat=NOW - 300 - 5), htm="POST", htu=HTU, now=NOW)
    check_proof(make_proof(key, iat=NOW + 5), htm="POST", htu=HTU, now=NOW)
    check_proof(make_proof(key, iat=NOW + 0.5), htm="POST", htu=HTU, now=NOW)


# -- check_proof: one refusal each -------------------------------------------------------------------------


def _refusals() -> dict[str, tuple[str, dict[str, Any]]]:
    key, other = ec_key(), ec_key()
    good = make_proof(key)
    private = ec_jwk(key) | {"d": b64u(key.private_numbers().private_value.to_bytes(32, "big"))}
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": ec_jwk(key)}
    claims = {"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW}
    hs_header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": ec_jwk(key)}
    hs_input = b64u(json.dumps(hs_header).encode()) + "." + b64u(json.dumps(claims).encode())
    hs256 = hs_input + "." + b64u(hmac.new(b"k" * 32, hs_input.encode(), hashlib.sha256).digest())
    parts = good.split(".")
    return {
        "typ JWT": (make_proof(key, header={"typ": "JWT"}), {}),
        "typ missing": (make_proof(key, header={"typ": None}), {}),
        "typ with media prefix": (make_proof(key, header={"typ": "application/dpop+jwt"}), {}),
        "alg none": (unsigned(header, claims), {}),
        "alg HS256": (hs256, {}),
        "alg not allowed here": (good, {"algorithms": {"EdDSA"}}),
        "alg of the key differs": (make_proof(key, header={"jwk": ec_jwk(key) | {"alg": "ES384"}}), {}),
        "private key in jwk": (make_proof(key, header={"jwk": private}), {}),
        "symmetric jwk": (make_proof(key, header={"jwk": {"kty": "oct", "k": b64u(b"k" * 32)}}), {}),
        "no jwk": (make_proof(key, header={"jwk": None}), {}),
        "jwk of another key": (make_proof(key, header={"jwk": ec_jwk(other)}), {}),
        "crit header": (make_proof(key, header={"crit": ["exp"], "exp": 1}), {}),
        "bad signature": (".".join([parts[0], parts[1], b64u(bytes(64))]), {}),
        "signature of another proof": (".".join([parts[0], make_proof(key).split(".")[1], parts[2]]), {}),
        "htm mismatch": (make_proof(key, htm="GET"), {}),
        "htm lower case": (make_proof(key, htm="post"), {}),
        "htu other path": (make_proof(key, htu="https://server.example.com/other"), {}),
        "htu other host": (make_proof(key, htu="https://evil.example.com/token"), {}),
        "htu other scheme": (make_proof(key, htu="http://server.example.com/token"), {}),
        "htu other port": (make_proof(key, htu="https://server.example.com:8443/token"), {}),
        "htu relative": (make_proof(key, htu="/token"), {}),
        "htu missing": (make_proof(key, htu=None), {}),
        "iat too old": (make_proof(key, iat=NOW - 306), {}),
        "iat in the future": (make_proof(key, iat=NOW + 6), {}),
        "iat missing": (make_proof(key, iat=None), {}),
        "iat a string": (make_proof(key, iat=str(NOW)), {}),
        "iat a boolean": (make_proof(key, iat=True), {}),
        "iat huge": (make_proof(key, iat=10**400), {}),
        "jti missing": (make_proof(key, jti=None), {}),
        "jti empty": (make_proof(key, jti=""), {}),
        "jti a number": (make_proof(key, jti=7), {}),
        "jti too long": (make_proof(key, jti="j" * 257), {}),
        "ath missing": (make_proof(key), {"access_token": "at"}),
        "ath of another token": (make_proof(key, ath=ath("other")), {"access_token": "at"}),
        "oversize": (make_proof(key, pad="x" * 9000), {}),
        "two proofs": (good + "," + good, {}),
        "two parts": (".".join(parts[:2]), {}),
        "JWE shape": (good + ".a.b", {}),
        "empty": ("", {}),
        "not base64url": ("@@." + parts[1] + "." + parts[2], {}),
    }


REFUSALS = _refusals()


@pytest.mark.parametrize("name", list(REFUSALS))
def test_check_proof_refuses(name: str) -> None:
    proof, options = REFUSALS[name]
    with pytest.raises(InvalidDPoPProof) as refused:
        check_proof(proof, htm="POST", htu=HTU, now=NOW, **options)
    assert refused.value.reason == "invalid_dpop_proof", refused.value
    assert not isinstance(refused.value, UseDPoPNonce)


def test_ath_of_the_token_passes() -> None:
    check_proof(make_proof(ec_key(), ath=ath("at")), htm="POST", htu=HTU, now=NOW, access_token="at")


@pytest.mark.parametrize("claimed", [None, "stale-nonce", ""])
def test_missing_or_wrong_nonce_is_use_dpop_nonce(claimed: str | None) -> None:
    with pytest.raises(UseDPoPNonce) as refused:
        check_proof(make_proof(ec_key(), nonce=claimed), htm="POST", htu=HTU, now=NOW, nonce="n-1")
    assert refused.value.reason == "use_dpop_nonce"
    assert isinstance(refused.value, InvalidDPoPProof)
    check_proof(make_proof(ec_key(), nonce="n-1"), htm="POST", htu=HTU, now=NOW, nonce="n-1")


def test_hmac_and_none_can_never_be_allowed() -> None:
    with pytest.raises(ValueError):
        check_proof(make_proof(ec_key()), htm="POST", htu=HTU, now=NOW, algorithms={"ES256", "HS256"})


# -- the replay cache --------------------------------------------------------------------------------------


def test_jti_cache_remembers_for_its_ttl() -> None:
    cache = JtiCache(ttl=10)
    assert cache.seen("a", 100) is False
    assert cache.seen("a", 105) is True
    assert cache.seen("b", 105) is False
    assert cache.seen("a", 110.5) is False  # expired: a new use (the iat window has closed by then)


def test_jti_cache_is_bounded_and_fails_closed() -> None:
    cache = JtiCache(ttl=10, max_entries=3)
    for key in "abc":
        assert cache.seen(key, 100) is False
    with pytest.raises(InvalidDPoPProof):  # full of live entries: refuse rather than forget
        cache.seen("d", 101)
    assert cache.seen("a", 101) is True  # nothing was forgotten
    assert cache.seen("d", 111) is False  # expired entries make room
    assert len(cache) <= 3


def test_one_key_cannot_fill_the_cache_for_everyone() -> None:
    cache = JtiCache(ttl=10, max_entries=100, max_per_owner=5)
    for i in range(5):
        assert cache.seen(f"greedy {i}", 100, owner="greedy") is False
    with pytest.raises(InvalidDPoPProof, match="by this key"):
        cache.seen("greedy 5", 100, owner="greedy")
    assert cache.seen("greedy 0", 100, owner="greedy") is True  # its replays are still caught
    for i in range(20):  # others are unaffected
        assert cache.seen(f"other {i}", 100, owner=f"other-{i % 4}") is False
    assert cache.seen("greedy 6", 111, owner="greedy") is False  # its quota frees as entries expire
    assert len(cache) <= 26


# -- the token endpoint of a live server ------------------------------------------------------------------


def _client(server: LiveServer) -> tuple[str, str]:
    reg = server.register(scope="read write")
    return reg["client_id"], reg["client_secret"]


def _token(
    server: LiveServer, client: tuple[str, str], *proofs: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = [("DPoP", p) for p in proofs] + list((headers or {}).items())
    return httpx.post(
        server.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=client,
        headers=sent,
        timeout=10,
    )


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_discovery_advertises_dpop_algorithms(server: LiveServer) -> None:
    md = httpx.get(server.issuer + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert "ES256" in md["dpop_signing_alg_values_supported"]
    assert not {"none", "HS256"} & set(md["dpop_signing_alg_values_supported"])


def test_token_request_with_a_proof_gets_a_bound_token(server: LiveServer) -> None:
    key, client = ec_key(), _client(server)
    r = _token(server, client, make_proof(key, htu=server.token_endpoint, iat=time.time()))
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    assert _claims(r.json()["access_token"])["cnf"] == {"jkt": jwk_thumbprint(ec_jwk(key))}
    assert "dpop-nonce" not in r.headers  # nonces are off by default
    bearer = _token(server, client)
    assert bearer.json()["token_type"] == "Bearer"
    assert "cnf" not in _claims(bearer.json()["access_token"])


def test_token_endpoint_refuses_bad_proofs(server: LiveServer) -> None:
    key, client = ec_key(), _client(server)
    proof = make_proof(key, htu=server.token_endpoint, iat=time.time())
    assert _token(server, client, proof).status_code == 200
    assert_oauth_error(_token(server, client, proof), 400, "invalid_dpop_proof")  # §11.1: replayed
    wrong_htu = make_proof(key, htu=server.issuer + "/oauth/introspect", iat=time.time())
    assert_oauth_error(_token(server, client, wrong_htu), 400, "invalid_dpop_proof")
    wrong_htm = make_proof(key, htm="GET", htu=server.token_endpoint, iat=time.time())
    assert_oauth_error(_token(server, client, wrong_htm), 400, "invalid_dpop_proof")
    old = make_proof(key, htu=server.token_endpoint, iat=time.time() - 3600)
    assert_oauth_error(_token(server, client, old), 400, "invalid_dpop_proof")
    two = [make_proof(key, htu=server.token_endpoint, iat=time.time()) for _ in range(2)]
    assert_oauth_error(_token(server, client, *two), 400, "invalid_dpop_proof")  # §4.3 point 1
    assert_oauth_error(_token(server, client, ""), 400, "invalid_dpop_proof")


def test_client_authentication_comes_before_the_proof(server: LiveServer) -> None:
    client_id, _ = _client(server)
    r = _token(server, (client_id, "wrong-" + "x" * 40), "not-a-proof")
    assert_oauth_error(r, 401, "invalid_client")


def test_server_nonces(tmp_path: Any) -> None:
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_DPOP_NONCE": "true"}).start()
    try:
        key, client = ec_key(), _client(srv)
        first = _token(srv, client, make_proof(key, htu=srv.token_endpoint, iat=time.time()))
        assert_oauth_error(first, 400, "use_dpop_nonce")
        nonce = first.headers["dpop-nonce"]
        assert nonce and "," not in nonce
        wrong = _token(srv, client, make_proof(key, htu=srv.token_endpoint, iat=time.time(), nonce=nonce + "A"))
        assert_oauth_error(wrong, 400, "use_dpop_nonce")
        retry = _token(srv, client, make_proof(key, htu=srv.token_endpoint, iat=time.time(), nonce=nonce))
        assert retry.status_code == 200, retry.text
        assert retry.json()["token_type"] == "DPoP"
        assert retry.headers["dpop-nonce"]  # the nonce for the next request
        # Without a proof, nonces do not concern the client: a bearer token as before.
        assert _token(srv, client).json()["token_type"] == "Bearer"
    finally:
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


# -- the relying party -------------------------------------------------------------------------------------

API = "https://api.example.com/orders"


def _bound_token(server: LiveServer, key: ec.EllipticCurvePrivateKey) -> str:
    r = _token(server, _client(server), make_proof(key, htu=server.token_endpoint, iat=time.time()))
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_introspection_of_a_bound_token_says_dpop_and_its_key(server: LiveServer) -> None:
    """RFC 9449 §6.2: the introspection response carries ``cnf.jkt`` and token type DPoP."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = _bound_token(server, key)
    rs = server.register(scope="introspect")
    r = httpx.post(
        server.issuer + "/oauth/introspect", data={"token": token}, auth=(rs["client_id"], rs["client_secret"])
    )
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["active"] is True and info["token_type"] == "DPoP"
    assert info["cnf"] == {"jkt": _claims(token)["cnf"]["jkt"]}


def _verifier(server: LiveServer) -> Verifier:
    return Verifier(server.issuer, audiences=[server.issuer], background_refresh=False)


def test_verifier_requires_the_proof_of_a_bound_token(server: LiveServer) -> None:
    key = ec_key()
    token = _bound_token(server, key)
    verifier = _verifier(server)
    # §7.2: "MUST reject a DPoP-bound access token received as a bearer token".
    with pytest.raises(DPoPProofRequired):
        verifier.verify(token)
    with pytest.raises(DPoPProofRequired):
        asyncio.run(verifier.averify(token))
    with pytest.raises(DPoPProofRequired):
        verifier.verify_dpop(token, None, htm="GET", htu=API)

    proof = make_proof(key, htm="GET", htu=API + "?page=2", iat=time.time(), ath=ath(token))
    claims = verifier.verify_dpop(token, proof, htm="GET", htu=API + "?page=1")
    assert claims["cnf"]["jkt"] == jwk_thumbprint(ec_jwk(key))
    with pytest.raises(InvalidDPoPProof):  # §11.1: replayed
        verifier.verify_dpop(token, proof, htm="GET", htu=API)

    other = ec_key()
    with pytest.raises(DPoPBindingMismatch):  # §4.3 point 12: the token's key, and no other
        verifier.verify_dpop(
            token, make_proof(other, htm="GET", htu=API, iat=time.time(), ath=ath(token)), htm="GET", htu=API
        )
    with pytest.raises(InvalidDPoPProof):  # ath is required with an access token
        verifier.verify_dpop(token, make_proof(key, htm="GET", htu=API, iat=time.time()), htm="GET", htu=API)
    with pytest.raises(InvalidDPoPProof):
        verifier.verify_dpop(
            token, make_proof(key, htm="POST", htu=API, iat=time.time(), ath=ath(token)), htm="GET", htu=API
        )

    async_proof = make_proof(key, htm="GET", htu=API, iat=time.time(), ath=ath(token))
    assert asyncio.run(verifier.averify_dpop(token, async_proof, htm="GET", htu=API))["sub"]
    verifier.close()


def test_verifier_and_unbound_tokens(server: LiveServer) -> None:
    r = _token(server, _client(server))
    token = r.json()["access_token"]
    verifier = _verifier(server)
    assert verifier.verify(token)["sub"]
    assert verifier.verify_dpop(token, None, htm="GET", htu=API)["sub"]  # no proof: a bearer token
    key = ec_key()
    proof = make_proof(key, htm="GET", htu=API, iat=time.time(), ath=ath(token))
    with pytest.raises(DPoPBindingMismatch):  # nothing to bind the proof to (§4.3 point 12)
        verifier.verify_dpop(token, proof, htm="GET", htu=API)
    verifier.close()


# -- ASGI middleware and FastAPI dependency ----------------------------------------------------------------


def _apps(verifier: Verifier) -> dict[str, Any]:
    from fastapi import Depends, FastAPI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.claims["sub"]})

    middleware = BearerTokenMiddleware(Starlette(routes=[Route("/orders", whoami)]), verifier, scopes=["read"])
    api = FastAPI()
    needs_read = bearer_dependency(verifier, scopes=["read"])

    @api.get("/orders")
    async def orders(claims: Any = Depends(needs_read)) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    return {"middleware": middleware, "dependency": api}


@pytest.mark.parametrize("kind", ["middleware", "dependency"])
def test_asgi_dpop(server: LiveServer, kind: str) -> None:
    key = ec_key()
    token = _bound_token(server, key)
    verifier = _verifier(server)
    app = _apps(verifier)[kind]
    url = "http://rs.test/orders"

    def proof(**claims: Any) -> str:
        values: dict[str, Any] = {"htm": "GET", "htu": url, "iat": time.time(), "ath": ath(token)}
        values.update(claims)
        return make_proof(key, **values)

    async def get(authorization: str, *proofs: str, path: str = "/orders?x=1") -> httpx.Response:
        headers = [("Authorization", authorization)] + [("DPoP", p) for p in proofs]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs.test") as client:
            return await client.get(path, headers=headers)

    async def scenario() -> dict[str, httpx.Response]:
        good = proof()
        return {
            "good": await get("DPoP " + token, good),
            "replayed": await get("DPoP " + token, good),
            "as bearer": await get("Bearer " + token),
            "no proof": await get("DPoP " + token),
            "two proofs": await get("DPoP " + token, proof(), proof()),
            "wrong htu": await get("DPoP " + token, proof(htu="http://rs.test/other")),
            "other key": await get(
                "DPoP " + token, make_proof(ec_key(), htm="GET", htu=url, iat=time.time(), ath=ath(token))
            ),
        }

    r = asyncio.run(scenario())
    assert r["good"].status_code == 200, r["good"].text
    assert r["good"].json() == {"sub": _claims(token)["sub"]}
    for name in ("replayed", "no proof", "two proofs", "wrong htu"):
        assert r[name].status_code == 401, name
        challenge = r[name].headers["www-authenticate"]
        assert challenge.startswith('DPoP realm="api", error="invalid_dpop_proof"'), (name, challenge)
        assert 'algs="' in challenge and "ES256" in challenge, name
    assert r["other key"].status_code == 401
    assert r["other key"].headers["www-authenticate"].startswith('DPoP realm="api", error="invalid_token"')
    assert "dpop_binding_mismatch" in r["other key"].headers["www-authenticate"]
    # §7.2: the bound token as a bearer token is refused; the Bearer challenge is as before.
    assert r["as bearer"].status_code == 401
    assert r["as bearer"].headers["www-authenticate"] == (
        'Bearer realm="api", error="invalid_token", error_description="dpop_proof_required"'
    )
    verifier.close()
