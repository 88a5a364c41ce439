"""The verifier's inlined hot path (``Verifier._verify_fast``) decides exactly as the general path.

A verifier takes the hot path once it has seen a token's header and holds fresh keys and status
lists; the first token of a kind goes the general way. Each case here is verified twice — by a
verifier warmed up with a good token of the same header (hot path) and by the general path called
directly — and both must give the same claims or the same error.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tessera.verify import VerificationError, Verifier
from verify_support import STATUS_URL, Clock, FakeIssuer, make_verifier, signature_of, with_signature

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def outcome(call: Any, token: str) -> tuple[str, Any]:
    try:
        return "ok", dict(call(token))
    except VerificationError as e:
        return type(e).__name__, e.reason


@pytest.fixture(params=["ES256", "EdDSA"])
def setup(request: pytest.FixtureRequest) -> tuple[FakeIssuer, Verifier]:
    issuer = FakeIssuer(Clock())
    key = ec.generate_private_key(ec.SECP256R1()) if request.param == "ES256" else ed25519.Ed25519PrivateKey.generate()
    issuer.add_key("k1", key)
    other = (
        ec.generate_private_key(ec.SECP256R1()) if request.param == "ES256" else ed25519.Ed25519PrivateKey.generate()
    )
    issuer.add_key("other", other)
    issuer.publish_status({5: 1, 6: 2})
    v = make_verifier(issuer, algorithms=[request.param], max_act_depth=1, allowed_actors=["agent"])
    v.verify(issuer.token())  # warm: header seen, keys and status list cached
    v.verify(issuer.token(status={"status_list": {"idx": 1, "uri": STATUS_URL}}))
    return issuer, v


def status(idx: int) -> dict[str, Any]:
    return {"status_list": {"idx": idx, "uri": STATUS_URL}}


CASES: dict[str, dict[str, Any]] = {
    "good": {},
    "good with status": {"status": status(3)},
    "revoked": {"status": status(5)},
    "suspended": {"status": status(6)},
    "index out of range": {"status": status(10**9)},
    "foreign status uri": {"status": {"status_list": {"idx": 1, "uri": "https://evil.example/status/1"}}},
    "status not an object": {"status": "revoked?"},
    "expired": {"exp": 1},
    "exp missing": {"exp": None},
    "exp string": {"exp": "9999999999"},
    "exp bool": {"exp": True},
    "exp huge": {"exp": 1e300},
    "nbf future": {"nbf": 4e9},
    "iat future": {"iat": 4e9},
    "iat string": {"iat": "1"},
    "wrong issuer": {"iss": "https://other.example"},
    "wrong audience": {"aud": "https://other.example"},
    "audience in a list": {"aud": ["https://x.example", "https://api.test"]},
    "audience list with a number": {"aud": ["https://api.test", 7]},
    "empty audience list": {"aud": []},
    "audience object": {"aud": {"a": 1}},
    "missing jti": {"jti": None},
    "missing sub": {"sub": None},
    "allowed actor": {"act": {"sub": "agent"}},
    "actor not allowed": {"act": {"sub": "intruder"}},
    "delegation too deep": {"act": {"sub": "agent", "act": {"sub": "agent"}}},
    "act not an object": {"act": "agent"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_hot_path_decides_as_the_general_path(setup: tuple[FakeIssuer, Verifier], case: str) -> None:
    issuer, v = setup
    claims = dict(CASES[case])
    token = issuer.token(**claims)
    hot = outcome(v.verify, token)
    general = outcome(v._verify_sync, token)
    assert hot == general, f"{case}: hot path {hot} vs general path {general}"
    if case.startswith("good") or case in ("audience in a list", "allowed actor"):
        assert hot[0] == "ok"
    else:
        assert hot[0] != "ok", f"{case} was accepted"


def test_the_hot_path_is_taken_for_a_warmed_verifier(setup: tuple[FakeIssuer, Verifier]) -> None:
    issuer, v = setup
    claims = v._verify_fast(issuer.token(status=status(3)))
    assert claims is not None and claims.report.status_age is not None and claims.report.stale is False
    assert v._verify_fast(issuer.token(header={"typ": "application/at+jwt"})) is None  # header not seen yet


def test_signature_refusals_on_the_hot_path(setup: tuple[FakeIssuer, Verifier]) -> None:
    issuer, v = setup
    good = issuer.token()
    sig = signature_of(good)
    forged = [
        with_signature(good, sig[:-1] + bytes([sig[-1] ^ 1])),  # one bit
        with_signature(good, sig[:63]),  # short
        with_signature(good, sig + b"\0"),  # long
        with_signature(good, bytes(64)),  # r = s = 0
        with_signature(good, N.to_bytes(32, "big") + sig[32:]),  # r = n
        with_signature(good, sig[:32] + (N + 1).to_bytes(33, "big")[1:]),  # s > n (wrapped)
        issuer.token(kid="other", key=issuer.keys["k1"]),  # signed with k1, names another key
    ]
    for token in forged:
        hot, general = outcome(v.verify, token), outcome(v._verify_sync, token)
        assert hot == general and hot[0] == "BadSignature", (hot, general)


def test_verified_signature_cache_keeps_every_other_check() -> None:
    issuer = FakeIssuer(Clock())
    issuer.add_key("k1")
    v = make_verifier(issuer, algorithms=["ES256"])
    token = issuer.token(exp=issuer.clock() + 60)
    assert v.verify(token)["sub"]
    assert v.verify(token)["sub"]  # second time from the verified-signature cache
    issuer.clock.advance(120)
    assert outcome(v.verify, token)[0] == "Expired"
