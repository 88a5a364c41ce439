"""Project Wycheproof vectors through the SDK's signature check (RFC 7518 §3.4 ES256, RFC 8037 EdDSA).

``tessera.verify.jws.verify_signature`` is run on every case of
``shared/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json`` (ECDSA P-256/SHA-256 with IEEE P1363 ``r||s``
signatures, the JWS encoding) and ``shared/wycheproof/ed25519_test.json``: every ``valid`` case must be
accepted and every ``invalid`` case refused with ``BadSignature`` (never another exception).

``acceptable`` cases: this snapshot (C2SP/wycheproof ``dac1dd47``) has none in either file; the test
asserts that, and would accept either outcome for one (refusal still only as ``BadSignature``).

Keys are built from each group's ``publicKeyJwk`` (or, for the ECDSA groups that have none, a JWK made
from ``wx``/``wy``) with the SDK's own ``public_key_from_jwk``; for ECDSA the uncompressed point
(``publicKey.uncompressed``) is checked to give the same key.
"""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from support import b64u
from tessera.verify import BadSignature, VerificationError
from tessera.verify.jws import PublicKey, public_key_from_jwk, verify_signature


def _wycheproof_dir() -> pathlib.Path:
    here = pathlib.Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1].parent, here.parents[1]):
        if (root / "shared" / "wycheproof" / "ed25519_test.json").is_file():
            return root / "shared" / "wycheproof"
    raise FileNotFoundError("shared/wycheproof not found next to the repository")


WYCHEPROOF = _wycheproof_dir()
FILES = {"ES256": "ecdsa_secp256r1_sha256_p1363_test.json", "EdDSA": "ed25519_test.json"}
DATA = {alg: json.loads((WYCHEPROOF / name).read_text()) for alg, name in FILES.items()}


def _cases(alg: str) -> list[tuple[int, dict[str, Any]]]:
    return [(gi, t) for gi, g in enumerate(DATA[alg]["testGroups"]) for t in g["tests"]]


_KEYS: dict[tuple[str, int], PublicKey] = {}


def _jwk(alg: str, group: dict[str, Any]) -> dict[str, Any]:
    """The group's ``publicKeyJwk``; the schema makes it optional, so for the few ECDSA groups without one
    (the r/x edge cases, tcId 253-262) it is built from ``wx``/``wy`` as an issuer's JWKS would carry it."""
    if "publicKeyJwk" in group:
        return group["publicKeyJwk"]
    assert alg == "ES256"

    def coord(hex_value: str) -> str:
        return b64u(int(hex_value, 16).to_bytes(32, "big"))

    return {"kty": "EC", "crv": "P-256", "x": coord(group["publicKey"]["wx"]), "y": coord(group["publicKey"]["wy"])}


def _key(alg: str, group_index: int) -> PublicKey:
    if (alg, group_index) not in _KEYS:
        _KEYS[alg, group_index] = public_key_from_jwk(_jwk(alg, DATA[alg]["testGroups"][group_index]))
    return _KEYS[alg, group_index]


def _check(alg: str, group_index: int, case: dict[str, Any]) -> None:
    key = _key(alg, group_index)
    msg, sig = bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])
    label = f"tcId {case['tcId']} ({case['comment'] or 'no comment'}; flags {case['flags']})"
    if case["result"] == "valid":
        verify_signature(alg, key, msg, sig)  # must not raise
    elif case["result"] == "invalid":
        with pytest.raises(VerificationError) as caught:
            verify_signature(alg, key, msg, sig)
        assert type(caught.value) is BadSignature, f"{label}: {caught.value!r}"
    else:
        assert case["result"] == "acceptable"
        try:
            verify_signature(alg, key, msg, sig)
        except BadSignature:
            pass


def _ids(alg: str) -> list[str]:
    return [f"{alg}-tc{t['tcId']}-{t['result']}" for _, t in _cases(alg)]


@pytest.mark.parametrize("group_index,case", _cases("ES256"), ids=_ids("ES256"))
def test_ecdsa_p256_sha256_p1363(group_index: int, case: dict[str, Any]) -> None:
    _check("ES256", group_index, case)


@pytest.mark.parametrize("group_index,case", _cases("EdDSA"), ids=_ids("EdDSA"))
def test_ed25519(group_index: int, case: dict[str, Any]) -> None:
    _check("EdDSA", group_index, case)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_the_vector_files_are_complete_and_non_trivial(alg: str) -> None:
    cases = _cases(alg)
    counts = Counter(t["result"] for _, t in cases)
    assert len(cases) == DATA[alg]["numberOfTests"] > 100
    assert counts["valid"] > 50 and counts["invalid"] > 50, counts
    assert counts["acceptable"] == 0, "acceptable cases appeared: document how the SDK treats them"
    assert len({t["tcId"] for _, t in cases}) == len(cases)


def test_ed25519_also_verifies_under_the_fully_specified_name() -> None:
    """RFC 9864's "Ed25519" is the same algorithm as JWS "EdDSA" with an Ed25519 key."""
    for group_index, case in _cases("EdDSA"):
        if case["result"] == "valid":
            verify_signature(
                "Ed25519", _key("EdDSA", group_index), bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])
            )


def test_ecdsa_jwk_and_uncompressed_point_give_the_same_key() -> None:
    groups = DATA["ES256"]["testGroups"]
    assert sum("publicKeyJwk" in g for g in groups) > 90
    for group in groups:
        from_jwk = public_key_from_jwk(_jwk("ES256", group)).key
        point = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), bytes.fromhex(group["publicKey"]["uncompressed"])
        )
        assert isinstance(from_jwk, ec.EllipticCurvePublicKey)
        assert from_jwk.public_numbers() == point.public_numbers()
