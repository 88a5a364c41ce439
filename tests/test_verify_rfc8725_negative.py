"""RFC 8725 (JWT Best Current Practices) and RFC 9068 (JWT access tokens): every refusal of the SDK verifier.

``tessera.verify.Verifier`` must refuse, with the exact error class and ``reason`` code:

- RFC 8725 §3.1/§2.1: ``alg: none``; HMAC "signed" with the public key as secret (key confusion); any
  algorithm outside the relying party's allow-list; a key whose type does not match the algorithm;
- RFC 8725 §3.10 / RFC 7515 §4.1: key-locating header parameters it does not honour (``jku``, ``jwk``,
  ``x5u``, ``x5c``) and ``crit``;
- RFC 8725 §3.11 / RFC 9068 §4: explicit typing (``typ`` ``at+jwt``, ``application/at+jwt`` accepted);
- RFC 8725 §3.8/§3.9, RFC 7519 §4.1: issuer, audience (string and array forms), ``exp``/``nbf``/``iat``
  as NumericDate only (no strings, booleans or absurd magnitudes), boundaries with the leeway,
  maximum token age, required claims;
- structure and size: malformed base64url/JSON, two or four segments, a size cap, unknown ``kid``;
- RFC 8693 §4.1: ``act`` delegation depth and allowed actors;
- RFC 7518 §3.4 / RFC 8037 / RFC 7518 §3.3: ES256 signatures are exactly R||S (64 bytes, 1 <= r, s < n;
  DER refused), EdDSA and RS256/PS256 verify, RSA keys under 2048 bits are never used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from support import b64u
from tessera.verify import (
    BadSignature,
    DelegationRefused,
    Expired,
    IssuedInFuture,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    TokenTooLarge,
    TooOld,
    UnknownKey,
    UnsupportedAlgorithm,
    VerificationError,
    Verifier,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from tessera.verify.jws import public_key_from_jwk, verify_signature
from verify_support import (
    AUDIENCE,
    ISSUER,
    P256_N,
    Clock,
    FakeIssuer,
    access_claims,
    make_verifier,
    raw_signature,
    sign,
    sign_segments,
    signature_of,
    with_signature,
)

NOW = 1_700_000_000


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture
def issuer() -> FakeIssuer:
    fake = FakeIssuer(Clock(NOW))
    fake.add_key("k1")
    return fake


@pytest.fixture
def verifier(issuer: FakeIssuer) -> Verifier:
    return make_verifier(issuer)


def refused(verifier: Verifier, token: Any, error: type[VerificationError], reason: str) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token)
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    assert caught.value.reason == reason
    return caught.value


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    si = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    return si + "." + b64u(hmac.new(secret, si.encode(), hashlib.sha256).digest())


def test_a_well_formed_token_verifies(issuer: FakeIssuer, verifier: Verifier) -> None:
    claims = verifier.verify(issuer.token())
    assert claims["sub"] == "svc-reporting" and claims["iss"] == ISSUER
    assert claims.report.source == "network" and claims.report.keys_age == 0 and claims.report.stale is False


# -- algorithms (RFC 8725 §2.1, §3.1) -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_is_refused(issuer: FakeIssuer, verifier: Verifier, alg: str) -> None:
    unsigned = (
        b64u(json.dumps({"alg": alg, "typ": "at+jwt", "kid": "k1"}).encode())
        + "."
        + b64u(json.dumps(access_claims(NOW)).encode())
        + "."
    )
    refused(verifier, unsigned, UnsupportedAlgorithm, "unsupported_algorithm")
    # ... and with the real signature of another token glued on.
    refused(verifier, unsigned + issuer.token().rsplit(".", 1)[1], UnsupportedAlgorithm, "unsupported_algorithm")


@pytest.mark.parametrize(
    "alg",
    [
        None,
        ["ES256"],
        {"alg": "ES256"},
        256,
        "ES256 ",
        "es256",
        "ES384",
        "ES512",
        "HS256",
        "RS256",
        "PS256",
        "EdDSA",
        "ES256K",
    ],
)
def test_alg_outside_the_allow_list_is_refused(issuer: FakeIssuer, verifier: Verifier, alg: Any) -> None:
    header: dict[str, Any] = {"typ": "at+jwt", "kid": "k1", "alg": alg}
    if alg is None:
        del header["alg"]
    token = sign_segments(
        b64u(json.dumps(header).encode()), b64u(json.dumps(access_claims(NOW)).encode()), issuer.keys["k1"], "ES256"
    )
    refused(verifier, token, UnsupportedAlgorithm, "unsupported_algorithm")


def _public_key_secrets(key: ec.EllipticCurvePrivateKey, jwk: dict[str, Any]) -> dict[str, bytes]:
    pub = key.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "pem": pem,
        "pem-stripped": pem.strip(),
        "der": pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "point": pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
    }


@pytest.mark.parametrize("variant", ["pem", "pem-stripped", "der", "jwk-json", "jwk-json-compact", "point"])
def test_hs256_with_the_public_key_as_hmac_secret_is_refused(issuer: FakeIssuer, variant: str) -> None:
    """The classic key-confusion forgery: every algorithm the SDK knows is allowed, HS256 still never is."""
    secret = _public_key_secrets(issuer.keys["k1"], issuer.published["k1"])[variant]
    forged = hs256({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}, access_claims(NOW), secret)
    everything = make_verifier(issuer, algorithms=["ES256", "EdDSA", "Ed25519", "RS256", "PS256"])
    refused(everything, forged, UnsupportedAlgorithm, "unsupported_algorithm")
    # verify_signature itself has no HMAC path, whatever key it is handed.
    key = public_key_from_jwk(issuer.published["k1"])
    h, p, _s = forged.split(".")
    with pytest.raises(UnsupportedAlgorithm):
        verify_signature("HS256", key, f"{h}.{p}".encode(), signature_of(forged))


@pytest.mark.parametrize("algorithms", [["HS256"], ["ES256", "HS256"], ["none"], ["ES384"], []])
def test_a_verifier_cannot_be_configured_with_hmac_none_or_unknown_algorithms(algorithms: list[str]) -> None:
    with pytest.raises(ValueError):
        Verifier(ISSUER, audiences=[AUDIENCE], algorithms=algorithms)


def test_an_oct_key_in_the_jwks_is_never_used(issuer: FakeIssuer) -> None:
    issuer.published["k1"] = {"kty": "oct", "kid": "k1", "k": b64u(b"secret-secret-secret-secret-32b!")}
    refused(make_verifier(issuer), issuer.token(), UnknownKey, "unknown_key")


def test_key_type_must_match_the_algorithm(issuer: FakeIssuer) -> None:
    """An EdDSA token naming the kid of an EC key is checked against that key and refused."""
    ed = ed25519.Ed25519PrivateKey.generate()
    token = issuer.token(key=ed, header={"alg": "EdDSA"})
    refused(make_verifier(issuer, algorithms=["ES256", "EdDSA"]), token, BadSignature, "bad_signature")


def test_a_jwk_alg_different_from_the_token_alg_excludes_the_key(
    issuer: FakeIssuer, rsa2048: rsa.RSAPrivateKey
) -> None:
    issuer.add_key("r1", rsa2048, alg="PS256")
    token = issuer.token("r1", header={"alg": "RS256"})
    refused(make_verifier(issuer, algorithms=["RS256", "PS256"]), token, UnknownKey, "unknown_key")
    assert make_verifier(issuer, algorithms=["PS256"]).verify(issuer.token("r1", header={"alg": "PS256"}))


@pytest.mark.parametrize("member", ["d", "p", "k"])
def test_private_or_symmetric_members_make_a_jwk_unusable(issuer: FakeIssuer, member: str) -> None:
    issuer.published["k1"] = {**issuer.published["k1"], member: b64u(b"\x01" * 32)}
    refused(make_verifier(issuer), issuer.token(), UnknownKey, "unknown_key")


def test_a_key_for_encryption_is_not_used_for_signatures(issuer: FakeIssuer) -> None:
    issuer.published["k1"] = {**issuer.published["k1"], "use": "enc"}
    refused(make_verifier(issuer), issuer.token(), UnknownKey, "unknown_key")


# -- header parameters (RFC 8725 §3.10, RFC 7515 §4.1.11) -----------------------------------------------


@pytest.mark.parametrize(
    "name,value",
    [
        ("jku", "https://attacker.test/jwks"),
        ("jwk", {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        ("x5u", "https://attacker.test/cert.pem"),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("crit", []),
    ],
)
def test_key_locating_and_critical_headers_are_refused(
    issuer: FakeIssuer, verifier: Verifier, name: str, value: Any
) -> None:
    """Even on an otherwise valid token signed by the issuer's own key."""
    refused(verifier, issuer.token(header={name: value}), MalformedToken, "malformed")


def test_embedded_jwk_with_the_attackers_own_key_is_refused(issuer: FakeIssuer, verifier: Verifier) -> None:
    from verify_support import public_jwk

    attacker = ec.generate_private_key(ec.SECP256R1())
    token = issuer.token(key=attacker, header={"jwk": public_jwk(attacker)})
    refused(verifier, token, MalformedToken, "malformed")


# -- explicit typing (RFC 8725 §3.11, RFC 9068 §4) -----------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_at_jwt_type_accepted_in_both_forms(issuer: FakeIssuer, verifier: Verifier, typ: str) -> None:
    assert verifier.verify(issuer.token(header={"typ": typ}))["sub"] == "svc-reporting"


@pytest.mark.parametrize(
    "typ",
    [
        None,
        "JWT",
        "jwt",
        "",
        "at+jwt ",
        "application/jwt",
        "statuslist+jwt",
        "tessera-bundle+jwt",
        "application/application/at+jwt",
        1,
        ["at+jwt"],
    ],
)
def test_missing_or_wrong_type_is_refused(issuer: FakeIssuer, verifier: Verifier, typ: Any) -> None:
    refused(verifier, issuer.token(header={"typ": typ}), WrongType, "wrong_type")  # None: no typ at all


def test_typ_check_can_be_disabled(issuer: FakeIssuer) -> None:
    assert make_verifier(issuer, typ=None).verify(issuer.token(header={"typ": "JWT"}))


# -- issuer and audience (RFC 8725 §3.8, §3.9; RFC 7519 §4.1.1, §4.1.3) ------------------------------------


@pytest.mark.parametrize(
    "iss",
    [None, "https://evil.test", ISSUER + "/", ISSUER.upper(), "HTTPS://issuer.test", ISSUER + "/tenant", [ISSUER], 1],
)
def test_wrong_or_missing_issuer_is_refused(issuer: FakeIssuer, verifier: Verifier, iss: Any) -> None:
    refused(verifier, issuer.token(iss=iss), WrongIssuer, "wrong_issuer")


def test_issuer_must_be_configured_exactly() -> None:
    with pytest.raises(ValueError):
        Verifier(ISSUER + "/", audiences=[AUDIENCE])
    with pytest.raises(ValueError):
        Verifier(ISSUER, audiences=[])


@pytest.mark.parametrize("aud", [AUDIENCE, [AUDIENCE], ["https://other.test", AUDIENCE], [AUDIENCE, AUDIENCE]])
def test_matching_audience_string_or_array(issuer: FakeIssuer, verifier: Verifier, aud: Any) -> None:
    assert verifier.verify(issuer.token(aud=aud))["aud"] == aud


@pytest.mark.parametrize(
    "aud",
    [
        None,
        "https://other.test",
        AUDIENCE + "/",
        ["https://other.test"],
        [],
        "",
        [""],
        [AUDIENCE, 1],
        [1],
        [None],
        [[AUDIENCE]],
        {"aud": AUDIENCE},
        7,
        True,
    ],
)
def test_audience_refusals(issuer: FakeIssuer, verifier: Verifier, aud: Any) -> None:
    refused(verifier, issuer.token(aud=aud), WrongAudience, "wrong_audience")


def test_any_of_several_accepted_audiences(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, audiences=["https://a.test", "https://b.test"])
    assert v.verify(issuer.token(aud=["https://x.test", "https://b.test"]))
    refused(v, issuer.token(aud=AUDIENCE), WrongAudience, "wrong_audience")


# -- NumericDate values (RFC 7519 §2, §4.1.4-4.1.6) ------------------------------------------------------


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    [
        "1700000300",
        "soon",
        "",
        True,
        False,
        1e300,
        -1e300,
        2**64,
        -(2**64),
        10**11,
        float("inf"),
        float("-inf"),
        float("nan"),
        [1700000300],
        {"t": 1},
    ],
)
def test_times_must_be_sane_numbers(issuer: FakeIssuer, verifier: Verifier, name: str, value: Any) -> None:
    refused(verifier, issuer.token(**{name: value}), MalformedToken, "malformed")


def test_json_null_times_are_malformed(issuer: FakeIssuer, verifier: Verifier) -> None:
    """A claim present with JSON null is not a NumericDate (access_claims drops None, so build by hand)."""
    for name in ("exp", "nbf", "iat"):
        claims = access_claims(NOW)
        claims[name] = None
        token = sign({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}, claims, issuer.keys["k1"])
        refused(verifier, token, MalformedToken, "malformed")


def test_fractional_times_are_accepted(issuer: FakeIssuer, verifier: Verifier) -> None:
    claims = verifier.verify(issuer.token(iat=NOW - 0.25, nbf=NOW + 0.5, exp=NOW + 299.75))
    assert claims["exp"] == NOW + 299.75


def test_exp_boundary_with_leeway(issuer: FakeIssuer) -> None:
    """RFC 7519 §4.1.4: valid while now < exp (+ leeway); refused at exactly exp + leeway."""
    v30 = make_verifier(issuer)
    assert v30.verify(issuer.token(exp=NOW - 29.999))
    assert v30.verify(issuer.token(exp=NOW - 29, iat=NOW - 100))
    refused(v30, issuer.token(exp=NOW - 30, iat=NOW - 100), Expired, "expired")
    refused(v30, issuer.token(exp=NOW - 3600, iat=NOW - 7200), Expired, "expired")
    v0 = make_verifier(issuer, leeway=0)
    assert v0.verify(issuer.token(exp=NOW + 0.001))
    refused(v0, issuer.token(exp=NOW), Expired, "expired")


def test_nbf_boundary_with_leeway(issuer: FakeIssuer) -> None:
    """RFC 7519 §4.1.5: valid from nbf on; nbf up to now + leeway is accepted."""
    v30 = make_verifier(issuer)
    assert v30.verify(issuer.token(nbf=NOW + 30))
    refused(v30, issuer.token(nbf=NOW + 30.001), NotYetValid, "not_yet_valid")
    v0 = make_verifier(issuer, leeway=0)
    assert v0.verify(issuer.token(nbf=NOW))
    refused(v0, issuer.token(nbf=NOW + 1), NotYetValid, "not_yet_valid")


def test_iat_in_the_future_boundary(issuer: FakeIssuer) -> None:
    v30 = make_verifier(issuer)
    assert v30.verify(issuer.token(iat=NOW + 30))
    refused(v30, issuer.token(iat=NOW + 31), IssuedInFuture, "issued_in_future")
    refused(make_verifier(issuer, leeway=0), issuer.token(iat=NOW + 1), IssuedInFuture, "issued_in_future")


def test_max_token_age(issuer: FakeIssuer) -> None:
    """Age is measured from iat; the same leeway applies."""
    v = make_verifier(issuer, max_token_age=300)
    assert v.verify(issuer.token(iat=NOW - 330, exp=NOW + 60))
    refused(v, issuer.token(iat=NOW - 331, exp=NOW + 60), TooOld, "too_old")
    v0 = make_verifier(issuer, max_token_age=300, leeway=0)
    assert v0.verify(issuer.token(iat=NOW - 300, exp=NOW + 60))
    refused(v0, issuer.token(iat=NOW - 300.5, exp=NOW + 60), TooOld, "too_old")


def test_max_token_age_requires_iat(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, max_token_age=300, required_claims=())
    refused(v, issuer.token(iat=None), MissingClaim, "missing_claim")
    assert make_verifier(issuer, required_claims=()).verify(issuer.token(iat=None))


# -- required claims (RFC 9068 §2.2) ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sub", "jti", "iat"])
def test_default_required_claims(issuer: FakeIssuer, verifier: Verifier, name: str) -> None:
    refused(verifier, issuer.token(**{name: None}), MissingClaim, "missing_claim")


def test_exp_is_always_required(issuer: FakeIssuer) -> None:
    refused(make_verifier(issuer, required_claims=()), issuer.token(exp=None), MissingClaim, "missing_claim")


def test_custom_required_claims(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, required_claims=("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "cnf"))
    refused(v, issuer.token(), MissingClaim, "missing_claim")
    assert v.verify(issuer.token(cnf={"x5t#S256": "abc"}))  # a cnf.jkt token needs verify_dpop (RFC 9449)


# -- size and structure ------------------------------------------------------------------------------


def test_token_size_cap(issuer: FakeIssuer) -> None:
    token = issuer.token(padding="x" * 2000)
    assert make_verifier(issuer, max_token_bytes=len(token)).verify(token)
    refused(make_verifier(issuer, max_token_bytes=len(token) - 1), token, TokenTooLarge, "token_too_large")


def test_default_size_cap_is_16_kib(issuer: FakeIssuer, verifier: Verifier) -> None:
    refused(verifier, "a" * (16 * 1024 + 1), TokenTooLarge, "token_too_large")
    refused(verifier, issuer.token(padding="x" * 16 * 1024), TokenTooLarge, "token_too_large")
    refused(verifier, "." * 10_000_000, TokenTooLarge, "token_too_large")


def _segments(issuer: FakeIssuer) -> tuple[str, str, str]:
    h, p, s = issuer.token().split(".")
    return h, p, s


@pytest.mark.parametrize(
    "shape",
    [
        "",
        ".",
        "..",
        "...",
        "a",
        "a.b",
        "{h}.{p}",
        "{h}.{p}.{s}.{s}",
        "{h}.{p}.{s}.{p}.{s}",
        ".{p}.{s}",
        "{h}.{p}.{s}.",
        "{h}.{p}.{s}..",
        "{h}.{p}..{s}",
    ],
)
def test_wrong_number_or_empty_segments(issuer: FakeIssuer, verifier: Verifier, shape: str) -> None:
    h, p, s = _segments(issuer)
    token = shape.format(h=h, p=p, s=s)
    refused(verifier, token, MalformedToken, "malformed")


def test_non_string_token_is_malformed(verifier: Verifier) -> None:
    refused(verifier, b"a.b.c", MalformedToken, "malformed")
    refused(verifier, None, MalformedToken, "malformed")


@pytest.mark.parametrize(
    "mutation",
    [
        "header-padding",
        "header-plus",
        "header-slash",
        "header-star",
        "header-space",
        "header-length",
        "sig-padding",
        "sig-star",
        "sig-newline",
        "sig-length",
        "sig-nonascii",
    ],
)
def test_malformed_base64url(issuer: FakeIssuer, verifier: Verifier, mutation: str) -> None:
    """RFC 7515 §2/§7.1: base64url without padding; nothing else in the alphabet."""
    h, p, s = _segments(issuer)
    token = {
        "header-padding": f"{h}=.{p}.{s}",
        "header-plus": f"{h[:-1]}+.{p}.{s}",
        "header-slash": f"{h[:-1]}/.{p}.{s}",
        "header-star": f"{h[:4]}*{h[4:]}.{p}.{s}",
        "header-space": f"{h[:4]} {h[4:]}.{p}.{s}",
        "header-length": f"{h}AAAAA.{p}.{s}",
        "sig-padding": f"{h}.{p}.{s}==",
        "sig-star": f"{h}.{p}.{s[:10]}****{s[10:]}",
        "sig-newline": f"{h}.{p}.{s}\n",
        "sig-length": f"{h}.{p}.{s}AAA",
        "sig-nonascii": f"{h}.{p}.{s[:-1]}é",
    }[mutation]
    refused(verifier, token, MalformedToken, "malformed")


@pytest.mark.parametrize("header_json", [b"not json", b"[]", b'"at+jwt"', b"null", b"\xff\xfe{}", b""])
def test_header_not_a_json_object(issuer: FakeIssuer, verifier: Verifier, header_json: bytes) -> None:
    token = sign_segments(b64u(header_json), b64u(json.dumps(access_claims(NOW)).encode()), issuer.keys["k1"], "ES256")
    refused(verifier, token, MalformedToken, "malformed")


@pytest.mark.parametrize("payload", [b"", b"not json", b"[]", b"[1,2]", b'"claims"', b"42", b"null", b"\xc3\x28"])
def test_signed_payload_not_a_json_object(issuer: FakeIssuer, verifier: Verifier, payload: bytes) -> None:
    header = b64u(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}).encode())
    token = sign_segments(header, b64u(payload), issuer.keys["k1"], "ES256")
    refused(verifier, token, MalformedToken, "malformed")


def test_unknown_kid(issuer: FakeIssuer, verifier: Verifier) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    refused(verifier, issuer.token("nope", key=other), UnknownKey, "unknown_key")
    refused(verifier, issuer.token("k1 ", key=other), UnknownKey, "unknown_key")


@pytest.mark.parametrize("kid", [1, ["k1"], {"kid": "k1"}, True, "k" * 257])
def test_kid_must_be_a_short_string(issuer: FakeIssuer, verifier: Verifier, kid: Any) -> None:
    refused(verifier, issuer.token(header={"kid": kid}), MalformedToken, "malformed")


def test_token_without_kid_uses_the_issuers_keys(issuer: FakeIssuer, verifier: Verifier) -> None:
    assert verifier.verify(issuer.token(None, key=issuer.keys["k1"]))
    refused(verifier, issuer.token(None, key=ec.generate_private_key(ec.SECP256R1())), BadSignature, "bad_signature")


# -- delegation (RFC 8693 §4.1) -----------------------------------------------------------------------


def _chain(*subs: str) -> dict[str, Any] | None:
    act: dict[str, Any] | None = None
    for sub in reversed(subs):
        act = {"sub": sub, **({"act": act} if act else {})}
    return act


def test_delegation_refused_by_default(issuer: FakeIssuer, verifier: Verifier) -> None:
    refused(verifier, issuer.token(act=_chain("agent-1")), DelegationRefused, "delegation_refused")


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_delegation_depth_up_to_the_maximum(issuer: FakeIssuer, depth: int) -> None:
    v = make_verifier(issuer, max_act_depth=3)
    actors = [f"agent-{i}" for i in range(depth)]
    assert v.verify(issuer.token(act=_chain(*actors)))["act"]["sub"] == "agent-0"


def test_delegation_one_beyond_the_maximum_is_refused(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, max_act_depth=3)
    refused(v, issuer.token(act=_chain("a", "b", "c", "d")), DelegationRefused, "delegation_refused")
    refused(v, issuer.token(act=_chain(*[f"a{i}" for i in range(50)])), DelegationRefused, "delegation_refused")


def test_actor_not_allowed(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, max_act_depth=3, allowed_actors=["agent-a", "agent-b"])
    assert v.verify(issuer.token(act=_chain("agent-a", "agent-b")))
    refused(v, issuer.token(act=_chain("agent-c")), DelegationRefused, "delegation_refused")
    refused(v, issuer.token(act=_chain("agent-a", "agent-c")), DelegationRefused, "delegation_refused")
    assert v.verify(issuer.token())  # no delegation at all is fine


@pytest.mark.parametrize(
    "act", ["agent-a", ["agent-a"], {}, {"sub": 1}, {"client_id": "agent-a"}, {"sub": "agent-a", "act": "agent-b"}]
)
def test_malformed_act(issuer: FakeIssuer, act: Any) -> None:
    refused(make_verifier(issuer, max_act_depth=3), issuer.token(act=act), MalformedToken, "malformed")


# -- signatures (RFC 7518 §3.3, §3.4, §3.5; RFC 8037 §3.1) -------------------------------------------------


def _rs(token: str) -> tuple[int, int]:
    sig = signature_of(token)
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


@pytest.mark.parametrize(
    "variant",
    [
        "63-bytes",
        "65-bytes",
        "65-bytes-leading-zero",
        "empty",
        "128-bytes",
        "der",
        "r=0",
        "s=0",
        "r=n",
        "s=n",
        "s=n+1",
        "r=s=0",
        "flipped-bit",
        "r-only",
        "swapped",
    ],
)
def test_es256_signature_encoding_refusals(issuer: FakeIssuer, verifier: Verifier, variant: str) -> None:
    token = issuer.token()
    sig = signature_of(token)
    r, s = _rs(token)

    def rs(a: int, b: int) -> bytes:
        return a.to_bytes(32, "big") + b.to_bytes(32, "big")

    bad = {
        "63-bytes": sig[:63],
        "65-bytes": sig + b"\x00",
        "65-bytes-leading-zero": b"\x00" + sig,
        "empty": b"",
        "128-bytes": sig + sig,
        "der": encode_dss_signature(r, s),
        "r=0": rs(0, s),
        "s=0": rs(r, 0),
        "r=n": rs(P256_N, s),
        "s=n": rs(r, P256_N),
        "s=n+1": rs(r, P256_N + 1),
        "r=s=0": bytes(64),
        "flipped-bit": sig[:40] + bytes([sig[40] ^ 1]) + sig[41:],
        "r-only": sig[:32],
        "swapped": rs(s, r),
    }[variant]
    refused(verifier, with_signature(token, bad), BadSignature, "bad_signature")


def test_high_s_es256_signature_is_accepted(issuer: FakeIssuer, verifier: Verifier) -> None:
    """RFC 7518 does not require low-S; Wycheproof lists (r, n - s) as a valid signature ("malleability")."""
    token = issuer.token()
    r, s = _rs(token)
    assert verifier.verify(with_signature(token, r.to_bytes(32, "big") + (P256_N - s).to_bytes(32, "big")))


def test_der_signature_of_the_right_message_is_refused(issuer: FakeIssuer, verifier: Verifier) -> None:
    """A DER ECDSA signature that cryptography itself would accept is not a JWS ES256 signature."""
    header = b64u(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}).encode())
    payload = b64u(json.dumps(access_claims(NOW)).encode())
    from cryptography.hazmat.primitives import hashes

    der = issuer.keys["k1"].sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    decode_dss_signature(der)  # genuinely DER
    refused(verifier, f"{header}.{payload}.{b64u(der)}", BadSignature, "bad_signature")


def test_signature_of_another_key_or_message(issuer: FakeIssuer, verifier: Verifier) -> None:
    forged = issuer.token(key=ec.generate_private_key(ec.SECP256R1()))
    refused(verifier, forged, BadSignature, "bad_signature")
    a, b = issuer.token(), issuer.token(sub="root")
    refused(verifier, a.rsplit(".", 1)[0] + "." + b.rsplit(".", 1)[1], BadSignature, "bad_signature")
    h, p, s = a.split(".")
    tampered = b64u(json.dumps({**json.loads(_b64d(p)), "scope": "admin"}).encode())
    refused(verifier, f"{h}.{tampered}.{s}", BadSignature, "bad_signature")


def _b64d(seg: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_eddsa_token_verifies_with_an_okp_key(alg: str) -> None:
    issuer = FakeIssuer(Clock(NOW))
    issuer.add_key("ed1", ed25519.Ed25519PrivateKey.generate())
    v = make_verifier(issuer, algorithms=[alg])
    token = issuer.token("ed1", header={"alg": alg})
    assert v.verify(token)["sub"] == "svc-reporting"
    refused(v, with_signature(token, signature_of(token)[:63]), BadSignature, "bad_signature")
    refused(v, with_signature(token, signature_of(token) + b"\x00"), BadSignature, "bad_signature")
    refused(
        v,
        issuer.token("ed1", header={"alg": alg}, key=ed25519.Ed25519PrivateKey.generate()),
        BadSignature,
        "bad_signature",
    )
    refused(make_verifier(issuer), token, UnsupportedAlgorithm, "unsupported_algorithm")


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_2048_verifies(rsa2048: rsa.RSAPrivateKey, alg: str) -> None:
    issuer = FakeIssuer(Clock(NOW))
    issuer.add_key("r1", rsa2048)
    v = make_verifier(issuer, algorithms=[alg])
    token = issuer.token("r1", header={"alg": alg})
    assert v.verify(token)["sub"] == "svc-reporting"
    refused(v, with_signature(token, signature_of(token)[:-1]), BadSignature, "bad_signature")
    refused(v, with_signature(token, b"\x00" + signature_of(token)), BadSignature, "bad_signature")
    other_padding = raw_signature("PS256" if alg == "RS256" else "RS256", rsa2048, token.rsplit(".", 1)[0].encode())
    refused(v, with_signature(token, other_padding), BadSignature, "bad_signature")


def test_rsa_1024_key_is_skipped_at_jwks_load() -> None:
    weak = rsa.generate_private_key(65537, 1024)
    issuer = FakeIssuer(Clock(NOW))
    issuer.add_key("weak", weak)
    issuer.add_key("k1")
    v = make_verifier(issuer, algorithms=["RS256", "ES256"])
    refused(v, issuer.token("weak", header={"alg": "RS256"}), UnknownKey, "unknown_key")
    assert v.verify(issuer.token("k1"))  # the rest of the JWK Set still loads


# -- the verified-signature cache ------------------------------------------------------------------------


def test_a_cached_verification_still_runs_every_claim_check(issuer: FakeIssuer) -> None:
    """The signature cache (keyed by the whole token) must not carry a token past its exp or its audience."""
    token = issuer.token(exp=NOW + 10)
    v = make_verifier(issuer, leeway=0)
    assert v.verify(token)
    issuer.clock.advance(10)
    refused(v, token, Expired, "expired")


def test_claims_returned_to_one_caller_cannot_change_what_the_next_verification_sees(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, max_act_depth=2)
    token = issuer.token(act={"sub": "agent-a"}, aud=[AUDIENCE])
    first = v.verify(token)
    first["act"]["sub"] = "mallory"
    first["aud"].append("https://evil.test")
    second = v.verify(token)
    assert second["act"] == {"sub": "agent-a"} and second["aud"] == [AUDIENCE]
