"""W3C WebAuthn registration (§7.1) and authentication (§7.2) ceremonies, end to end against a
software authenticator: every refusal names its reason, and a proof made for one transaction's
challenge never verifies for another."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.approvals.webauthn import (
    Assertion,
    Passkey,
    ProofFailed,
    authentication_options,
    registration_options,
    verify_assertion,
    verify_registration,
)
from webauthn_support import AAGUID, SoftAuthenticator, b64url, unb64url

RP_ID = "approvals.example"
ORIGIN = "https://approvals.example"
CHALLENGE_A = hashlib.sha256(b"transaction A: deploy v1 to production").digest()
CHALLENGE_B = hashlib.sha256(b"transaction B: delete the production database").digest()
ENROL_CHALLENGE = hashlib.sha256(b"enrolment").digest()


def _reg_options(user_id: bytes = b"user-alice", exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    return registration_options(
        rp_id=RP_ID,
        rp_name="Tessera",
        user_id=user_id,
        user_name="alice@example.com",
        display_name="Alice",
        challenge=ENROL_CHALLENGE,
        exclude=exclude,
    )


def _enrol(authenticator: SoftAuthenticator, *, user_id: bytes = b"user-alice", **kwargs: Any) -> Passkey:
    response = authenticator.create(_reg_options(user_id), ORIGIN, **kwargs)
    return verify_registration(response, challenge=ENROL_CHALLENGE, rp_id=RP_ID, origin=ORIGIN)


def _auth_options(passkeys: list[Passkey], challenge: bytes = CHALLENGE_A) -> dict[str, Any]:
    return authentication_options(rp_id=RP_ID, challenge=challenge, allow=passkeys, user_verification="required")


def _verify(response: Any, passkeys: list[Passkey], *, challenge: bytes = CHALLENGE_A, **kwargs: Any) -> Assertion:
    args: dict[str, Any] = {"rp_id": RP_ID, "origin": ORIGIN, "require_user_verification": True} | kwargs
    return verify_assertion(response, challenge=challenge, passkeys=passkeys, **args)


def _refused(reason: str, response: Any, passkeys: list[Passkey], **kwargs: Any) -> ProofFailed:
    with pytest.raises(ProofFailed) as caught:
        _verify(response, passkeys, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value


def _resign(
    authenticator: SoftAuthenticator,
    response: dict[str, Any],
    *,
    client_data: dict[str, Any] | None = None,
    auth_data: bytes | None = None,
) -> dict[str, Any]:
    """Change clientDataJSON or authenticatorData and sign again with the credential's own key, so
    only the changed field (not the signature) can be why the verifier refuses."""
    out = json.loads(json.dumps(response))
    cdj = json.dumps(client_data).encode() if client_data is not None else unb64url(out["response"]["clientDataJSON"])
    ad = auth_data if auth_data is not None else unb64url(out["response"]["authenticatorData"])
    key = authenticator.credentials[unb64url(out["rawId"])].key
    out["response"]["clientDataJSON"] = b64url(cdj)
    out["response"]["authenticatorData"] = b64url(ad)
    out["response"]["signature"] = b64url(key.sign(ad + hashlib.sha256(cdj).digest(), ec.ECDSA(hashes.SHA256())))
    return out


def _client_data(response: dict[str, Any]) -> dict[str, Any]:
    return json.loads(unb64url(response["response"]["clientDataJSON"]))


def _auth_data(response: dict[str, Any]) -> bytearray:
    return bytearray(unb64url(response["response"]["authenticatorData"]))


# --- options -------------------------------------------------------------------------------------


def test_registration_options_are_json_ready_creation_options() -> None:
    options = _reg_options(exclude=("AAAAAAAAAAAAAAAAAAAAAA",))
    assert json.loads(json.dumps(options)) == options
    assert options["rp"] == {"id": RP_ID, "name": "Tessera"}
    assert options["user"] == {"id": b64url(b"user-alice"), "name": "alice@example.com", "displayName": "Alice"}
    assert options["challenge"] == b64url(ENROL_CHALLENGE)
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -8, -257]
    assert options["authenticatorSelection"] == {
        "residentKey": "preferred",
        "requireResidentKey": False,
        "userVerification": "preferred",
    }
    assert options["attestation"] == "none"
    assert options["timeout"] == 300_000
    assert options["excludeCredentials"] == [{"id": "AAAAAAAAAAAAAAAAAAAAAA", "type": "public-key"}]


def test_authentication_options_list_the_persons_passkeys() -> None:
    passkey = _enrol(SoftAuthenticator())
    options = authentication_options(
        rp_id=RP_ID, challenge=CHALLENGE_A, allow=[passkey], user_verification="required", timeout_ms=60_000
    )
    assert json.loads(json.dumps(options)) == options
    assert options == {
        "challenge": b64url(CHALLENGE_A),
        "timeout": 60_000,
        "rpId": RP_ID,
        "allowCredentials": [{"id": passkey.credential_id, "type": "public-key", "transports": ["internal", "hybrid"]}],
        "userVerification": "required",
    }


@pytest.mark.parametrize("challenge", [b"", b"too short"])
def test_a_short_challenge_is_refused_rather_than_replaced(challenge: bytes) -> None:
    # py_webauthn would silently substitute a random challenge, unbinding the proof from the transaction.
    with pytest.raises(ValueError, match="challenge"):
        authentication_options(rp_id=RP_ID, challenge=challenge, allow=[], user_verification="required")
    with pytest.raises(ValueError, match="challenge"):
        registration_options(
            rp_id=RP_ID, rp_name="T", user_id=b"u", user_name="u", display_name="u", challenge=challenge
        )


def test_excluded_credentials_stop_a_second_enrolment_of_the_same_authenticator() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    with pytest.raises(ValueError, match="InvalidStateError"):
        authenticator.create(_reg_options(exclude=(passkey.credential_id,)), ORIGIN)


# --- registration ---------------------------------------------------------------------------------


def test_registration_returns_the_passkey_to_store() -> None:
    passkey = _enrol(SoftAuthenticator())
    assert len(unb64url(passkey.credential_id)) == 32
    assert "=" not in passkey.credential_id and "=" not in passkey.public_key
    assert passkey.alg == -7
    assert passkey.sign_count == 0
    assert passkey.transports == ("internal", "hybrid")
    assert passkey.user_verified is True
    assert passkey.backup_eligible is False
    assert passkey.aaguid == "7e55e7a0-0000-4000-8000-000000000001"
    assert AAGUID.hex() == passkey.aaguid.replace("-", "")
    assert Passkey.from_json(json.loads(json.dumps(passkey.to_json()))) == passkey


def test_registration_surfaces_uv_and_backup_eligibility() -> None:
    synced = _enrol(SoftAuthenticator(), uv=False, backup_eligible=True)
    assert synced.user_verified is False
    assert synced.backup_eligible is True


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"challenge": CHALLENGE_B}, "wrong_challenge"),
        ({"origin": "https://approvals.example.evil.test"}, "wrong_origin"),
        ({"origin": "http://approvals.example"}, "wrong_origin"),
        ({"rp_id": "evil.test"}, "wrong_rp_id"),
    ],
)
def test_registration_refusals(kwargs: dict[str, Any], reason: str) -> None:
    response = SoftAuthenticator().create(_reg_options(), ORIGIN)
    args = {"challenge": ENROL_CHALLENGE, "rp_id": RP_ID, "origin": ORIGIN} | kwargs
    with pytest.raises(ProofFailed) as caught:
        verify_registration(response, **args)
    assert caught.value.reason == reason


def test_an_assertion_is_not_a_registration() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    assertion = authenticator.get(_auth_options([passkey], ENROL_CHALLENGE), ORIGIN)
    with pytest.raises(ProofFailed) as caught:
        verify_registration(assertion, challenge=ENROL_CHALLENGE, rp_id=RP_ID, origin=ORIGIN)
    assert caught.value.reason == "malformed"


def test_a_registration_with_an_unoffered_algorithm_is_refused() -> None:
    response = SoftAuthenticator().create(_reg_options(), ORIGIN)
    attestation = cbor2.loads(unb64url(response["response"]["attestationObject"]))
    auth_data: bytes = attestation["authData"]
    id_len = int.from_bytes(auth_data[53:55], "big")
    head, cose = auth_data[: 55 + id_len], cbor2.loads(auth_data[55 + id_len :])
    cose[3] = -35  # ES384: not in pubKeyCredParams ("none" attestation signs nothing, so this is all it takes)
    attestation["authData"] = head + cbor2.dumps(cose)
    response["response"]["attestationObject"] = b64url(cbor2.dumps(attestation))
    with pytest.raises(ProofFailed) as caught:
        verify_registration(response, challenge=ENROL_CHALLENGE, rp_id=RP_ID, origin=ORIGIN)
    assert caught.value.reason == "unsupported_algorithm"


# --- authentication -------------------------------------------------------------------------------


def test_register_then_assert_round_trip() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    first = _verify(authenticator.get(_auth_options([passkey]), ORIGIN), [passkey])
    assert first == Assertion(
        credential_id=passkey.credential_id, new_sign_count=1, user_verified=True, backup_eligible=False
    )
    # The caller stores the new count; the next approval verifies against it.
    passkey = dataclasses.replace(passkey, sign_count=first.new_sign_count)
    second = _verify(authenticator.get(_auth_options([passkey], CHALLENGE_B), ORIGIN), [passkey], challenge=CHALLENGE_B)
    assert second.new_sign_count == 2


def test_a_discoverable_credential_request_picks_the_persons_passkey() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    options = authentication_options(rp_id=RP_ID, challenge=CHALLENGE_A, allow=[], user_verification="required")
    assert options["allowCredentials"] == []
    other = _enrol(SoftAuthenticator(), user_id=b"user-alice")
    assert _verify(authenticator.get(options, ORIGIN), [other, passkey]).credential_id == passkey.credential_id


def test_an_approval_for_action_a_cannot_authorise_action_b() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    proof_for_a = authenticator.get(_auth_options([passkey], CHALLENGE_A), ORIGIN)
    _refused("wrong_challenge", proof_for_a, [passkey], challenge=CHALLENGE_B)
    # Rewriting the challenge in clientDataJSON breaks the signature over its hash.
    forged = json.loads(json.dumps(proof_for_a))
    client_data = _client_data(forged) | {"challenge": b64url(CHALLENGE_B)}
    forged["response"]["clientDataJSON"] = b64url(json.dumps(client_data).encode())
    _refused("bad_signature", forged, [passkey], challenge=CHALLENGE_B)


@pytest.mark.parametrize(
    "origin",
    ["https://approvals.example.evil.test", "http://approvals.example", "https://approvals.example:8443"],
)
def test_an_assertion_made_on_another_origin_is_refused(origin: str) -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    _refused("wrong_origin", authenticator.get(_auth_options([passkey]), origin), [passkey])


def test_an_assertion_in_a_cross_origin_frame_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    framed = _resign(authenticator, response, client_data=_client_data(response) | {"crossOrigin": True})
    _refused("wrong_origin", framed, [passkey])


def test_an_assertion_for_another_rp_id_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    _refused("wrong_rp_id", response, [passkey], rp_id="evil.test")
    # An authenticator scoped to another RP ID, signing honestly, is refused too.
    evil_rp = _auth_data(response)
    evil_rp[:32] = hashlib.sha256(b"evil.test").digest()
    _refused("wrong_rp_id", _resign(authenticator, response, auth_data=bytes(evil_rp)), [passkey])


def test_another_persons_credential_is_refused() -> None:
    alice_authenticator, bob_authenticator = SoftAuthenticator(), SoftAuthenticator()
    alice = _enrol(alice_authenticator, user_id=b"user-alice")
    bob = _enrol(bob_authenticator, user_id=b"user-bob")
    bobs_proof = bob_authenticator.get(_auth_options([bob]), ORIGIN)
    assert _verify(bobs_proof, [bob]).credential_id == bob.credential_id
    _refused("unknown_credential", bobs_proof, [alice])
    _refused("unknown_credential", bobs_proof, [])


def test_a_response_whose_id_and_raw_id_differ_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    other = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN) | {"id": other.credential_id}
    _refused("malformed", response, [passkey, other])


def test_a_tampered_signature_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    signature = bytearray(unb64url(response["response"]["signature"]))
    signature[-1] ^= 0x01
    response["response"]["signature"] = b64url(bytes(signature))
    _refused("bad_signature", response, [passkey])
    response["response"]["signature"] = ""
    _refused("bad_signature", response, [passkey])


def test_a_tampered_authenticator_data_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator, uv=False)
    response = authenticator.get(_auth_options([passkey]), ORIGIN, uv=False)
    auth_data = _auth_data(response)
    auth_data[32] |= 0x04  # claim user verification the authenticator did not perform
    response["response"]["authenticatorData"] = b64url(bytes(auth_data))
    _refused("bad_signature", response, [passkey])


def test_a_tampered_client_data_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    client_data = _client_data(response) | {"note": "appended by a man in the middle"}
    response["response"]["clientDataJSON"] = b64url(json.dumps(client_data).encode())
    _refused("bad_signature", response, [passkey])


def test_a_signature_by_another_key_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    other = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    stolen_id = dataclasses.replace(passkey, public_key=other.public_key)
    _refused("bad_signature", response, [stolen_id])


def test_a_counter_that_did_not_increase_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    first = _verify(authenticator.get(_auth_options([passkey]), ORIGIN), [passkey])
    passkey = dataclasses.replace(passkey, sign_count=first.new_sign_count)
    # A clone replaying the same count (§6.1.1), and one behind the stored count.
    _refused("counter_regressed", authenticator.get(_auth_options([passkey]), ORIGIN, counter_step=0), [passkey])
    ahead = dataclasses.replace(passkey, sign_count=10)
    _refused("counter_regressed", authenticator.get(_auth_options([passkey]), ORIGIN), [ahead])


def test_an_authenticator_without_a_counter_is_accepted() -> None:
    # Both counts zero: the authenticator does not implement a signature counter (synced passkeys).
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator, backup_eligible=True)
    for challenge in (CHALLENGE_A, CHALLENGE_B):
        response = authenticator.get(_auth_options([passkey], challenge), ORIGIN, counter_step=0)
        assert _verify(response, [passkey], challenge=challenge).new_sign_count == 0


def test_user_verification_required_but_absent_is_refused() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN, uv=False)
    _refused("user_not_verified", response, [passkey])
    assert _verify(response, [passkey], require_user_verification=False).user_verified is False


def test_user_presence_is_always_required() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    auth_data = _auth_data(response)
    auth_data[32] &= ~0x01 & 0xFF
    _refused("user_not_present", _resign(authenticator, response, auth_data=bytes(auth_data)), [passkey])


def test_the_backup_eligibility_flag_is_surfaced() -> None:
    authenticator = SoftAuthenticator()
    synced = _enrol(authenticator, backup_eligible=True)
    bound = _enrol(authenticator, backup_eligible=False)
    assert _verify(authenticator.get(_auth_options([synced]), ORIGIN), [synced]).backup_eligible is True
    assert _verify(authenticator.get(_auth_options([bound]), ORIGIN), [bound]).backup_eligible is False


def test_a_change_of_backup_eligibility_is_refused() -> None:
    # §7.2 step 18: BE is fixed at creation; a device-bound passkey that now reports BE is not the
    # credential that was enrolled as hardware-bound (aal3 rests on this).
    authenticator = SoftAuthenticator()
    bound = _enrol(authenticator)
    response = authenticator.get(_auth_options([bound]), ORIGIN)
    auth_data = _auth_data(response)
    auth_data[32] |= 0x08
    _refused("backup_eligibility_changed", _resign(authenticator, response, auth_data=bytes(auth_data)), [bound])
    synced = _enrol(authenticator, backup_eligible=True)
    response = authenticator.get(_auth_options([synced]), ORIGIN)
    _refused("backup_eligibility_changed", response, [dataclasses.replace(synced, backup_eligible=False)])


def test_backed_up_without_backup_eligible_is_malformed() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    auth_data = _auth_data(response)
    auth_data[32] |= 0x10  # BS without BE (§6.1: invalid)
    _refused("malformed", _resign(authenticator, response, auth_data=bytes(auth_data)), [passkey])


def test_a_registration_response_is_not_an_assertion() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    as_create = _resign(authenticator, response, client_data=_client_data(response) | {"type": "webauthn.create"})
    _refused("wrong_type", as_create, [passkey])
    _refused("malformed", authenticator.create(_reg_options(), ORIGIN), [passkey])


def _malformed_assertions(response: dict[str, Any]) -> list[Any]:
    def with_response(**fields: Any) -> dict[str, Any]:
        return response | {"response": response["response"] | fields}

    return [
        "",
        "not json",
        "[]",
        "null",
        42,
        None,
        {},
        {"id": response["id"]},
        response | {"type": "password"},
        response | {"response": "nope"},
        with_response(clientDataJSON=None),
        with_response(clientDataJSON=b64url(b"not json")),
        with_response(clientDataJSON=b64url(b"[1, 2]")),
        with_response(clientDataJSON=b64url(b'{"type": "webauthn.get"}')),
        with_response(clientDataJSON=b64url(json.dumps(_client_data(response) | {"challenge": 7}).encode())),
        with_response(authenticatorData=b64url(b"\x00" * 36)),
        with_response(authenticatorData=b64url(bytes(_auth_data(response)) + b"trailing")),
        with_response(userHandle=17),
    ]


def test_malformed_assertions_are_refused_not_crashes() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    for bad in _malformed_assertions(response):
        error = _refused("malformed", bad, [passkey])
        assert "malformed" in str(error)


def test_malformed_registrations_are_refused_not_crashes() -> None:
    response = SoftAuthenticator().create(_reg_options(), ORIGIN)

    def with_response(**fields: Any) -> dict[str, Any]:
        return response | {"response": response["response"] | fields}

    attestation = cbor2.loads(unb64url(response["response"]["attestationObject"]))
    bad_registrations: list[Any] = [
        "",
        "{",
        42,
        {},
        with_response(attestationObject=b64url(b"\xff\x00")),
        with_response(attestationObject=b64url(cbor2.dumps([1, 2]))),
        with_response(attestationObject=b64url(cbor2.dumps(attestation | {"authData": b"short"}))),
        with_response(attestationObject=b64url(cbor2.dumps(attestation | {"authData": attestation["authData"][:37]}))),
        with_response(clientDataJSON=b64url(b"\x00")),
    ]
    for bad in bad_registrations:
        with pytest.raises(ProofFailed) as caught:
            verify_registration(bad, challenge=ENROL_CHALLENGE, rp_id=RP_ID, origin=ORIGIN)
        assert caught.value.reason == "malformed", str(caught.value)


def test_refusals_are_safe_to_log() -> None:
    authenticator = SoftAuthenticator()
    passkey = _enrol(authenticator)
    response = authenticator.get(_auth_options([passkey]), ORIGIN)
    error = _refused("wrong_challenge", response, [passkey], challenge=CHALLENGE_B)
    text = str(error)
    assert text.startswith("wrong_challenge: ")
    for secret_ish in (b64url(CHALLENGE_A), b64url(CHALLENGE_B), passkey.public_key, response["response"]["signature"]):
        assert secret_ish not in text


@pytest.mark.parametrize(
    "stored",
    [
        {},
        {"credential_id": "x"},
        {**dict.fromkeys(["credential_id", "public_key", "aaguid"], "AA"), "sign_count": "1", "alg": -7},
    ],
)
def test_a_stored_passkey_that_is_not_one_is_a_value_error(stored: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not a stored passkey"):
        Passkey.from_json(stored)


def test_from_json_refuses_bools_for_counts_and_bad_base64() -> None:
    good = _enrol(SoftAuthenticator()).to_json()
    for bad in (good | {"sign_count": True}, good | {"credential_id": "not base64!"}, good | {"transports": "usb"}):
        with pytest.raises(ValueError):
            Passkey.from_json(bad)
