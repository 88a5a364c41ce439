"""Passkeys — W3C Web Authentication Level 3 (https://www.w3.org/TR/webauthn-3/), through py_webauthn.

Two ceremonies, each a pair of calls the approval page makes around the browser:

- registration (§7.1): ``registration_options`` → ``navigator.credentials.create()`` →
  ``verify_registration``, which returns the ``Passkey`` to store;
- authentication (§7.2): ``authentication_options`` → ``navigator.credentials.get()`` →
  ``verify_assertion``, which returns the ``Assertion`` (and the new sign count to store).

The challenge is opaque bytes chosen by the caller: derived from the transaction hash, it binds the
proof to the one transaction being approved, so a proof made for action A cannot authorise B.

Every check that has a reason code of its own is made here, in the order of §7.2, before
py_webauthn runs the whole verification again (signature and attestation included) as defence in
depth. Verification raises ``ProofFailed``; it never returns a bool.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    bytes_to_base64url,
    decode_credential_public_key,
    options_to_json_dict,
    parse_attestation_object,
    parse_authentication_credential_json,
    parse_authenticator_data,
    parse_backup_flags,
    parse_client_data_json,
    parse_registration_credential_json,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorData,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CollectedClientData,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

__all__ = [
    "ALGORITHMS",
    "Assertion",
    "Passkey",
    "ProofFailed",
    "authentication_options",
    "registration_options",
    "verify_assertion",
    "verify_registration",
]

#: COSE algorithms offered and accepted, in order of preference: ES256, EdDSA, RS256.
ALGORITHMS: tuple[int, ...] = (
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
)

# §13.4.3: challenges SHOULD be at least 16 bytes. §5.4.3: a user handle is at most 64 bytes.
_MIN_CHALLENGE_BYTES = 16
_MAX_USER_HANDLE_BYTES = 64
# §7.1 step 25: "Verify that the credentialId is ≤ 1023 bytes."
_MAX_CREDENTIAL_ID_BYTES = 1023
_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)


class ProofFailed(Exception):
    """A registration or an assertion was refused. ``reason`` is a short machine code:

    ``malformed``, ``wrong_type``, ``wrong_challenge``, ``wrong_origin``, ``wrong_rp_id``,
    ``user_not_present``, ``user_not_verified``, ``unknown_credential``, ``counter_regressed``,
    ``backup_eligibility_changed``, ``unsupported_algorithm``, ``bad_attestation``, ``bad_signature``.

    ``str()`` is safe to log: it names the reason and never echoes challenges, keys or client data.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Passkey:
    """A registered credential, as stored for its person."""

    credential_id: str  # base64url, no padding
    public_key: str  # COSE_Key, base64url
    sign_count: int
    alg: int  # COSE algorithm identifier
    transports: tuple[str, ...]
    user_verified: bool  # UV flag at registration
    backup_eligible: bool  # BE flag: a synced (multi-device) credential, not device-bound
    aaguid: str

    def to_json(self) -> dict[str, Any]:
        return {
            "credential_id": self.credential_id,
            "public_key": self.public_key,
            "sign_count": self.sign_count,
            "alg": self.alg,
            "transports": list(self.transports),
            "user_verified": self.user_verified,
            "backup_eligible": self.backup_eligible,
            "aaguid": self.aaguid,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Passkey:
        """Rebuild a stored passkey; ``ValueError`` if ``d`` is not what ``to_json`` wrote."""
        try:
            passkey = cls(
                credential_id=_expect(d["credential_id"], str),
                public_key=_expect(d["public_key"], str),
                sign_count=_expect(d["sign_count"], int),
                alg=_expect(d["alg"], int),
                transports=tuple(_expect(t, str) for t in _expect(d["transports"], list)),
                user_verified=_expect(d["user_verified"], bool),
                backup_eligible=_expect(d["backup_eligible"], bool),
                aaguid=_expect(d["aaguid"], str),
            )
            _unb64url(passkey.credential_id)
            _unb64url(passkey.public_key)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a stored passkey: {exc!r}") from None
        return passkey


@dataclass(frozen=True)
class Assertion:
    """A verified assertion. The caller stores ``new_sign_count`` on the passkey."""

    credential_id: str
    new_sign_count: int
    user_verified: bool
    backup_eligible: bool


def registration_options(
    *,
    rp_id: str,
    rp_name: str,
    user_id: bytes,
    user_name: str,
    display_name: str,
    challenge: bytes,
    exclude: Sequence[str] = (),
    timeout_ms: int = 300_000,
) -> dict[str, Any]:
    """``PublicKeyCredentialCreationOptions`` as JSON-ready values (§5.4), for ``create()``.

    ``exclude`` lists the person's registered credential ids so an authenticator is not enrolled twice.
    """
    _check_challenge(challenge)
    if not 1 <= len(user_id) <= _MAX_USER_HANDLE_BYTES:
        raise ValueError(f"user_id must be 1 to {_MAX_USER_HANDLE_BYTES} bytes (W3C WebAuthn §5.4.3)")
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_id=user_id,
        user_name=user_name,
        user_display_name=display_name,
        challenge=challenge,
        timeout=timeout_ms,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=_unb64url(c)) for c in exclude],
        supported_pub_key_algs=[COSEAlgorithmIdentifier(a) for a in ALGORITHMS],
    )
    return options_to_json_dict(options)


def verify_registration(credential: str | dict[str, Any], *, challenge: bytes, rp_id: str, origin: str) -> Passkey:
    """Verify the result of ``create()`` (§7.1) and return the passkey to store, or raise ``ProofFailed``."""
    try:
        parsed = parse_registration_credential_json(credential)
    except Exception as exc:  # untrusted input: any parser failure is a malformed credential
        raise ProofFailed("malformed", "the registration response is not a WebAuthn credential") from exc
    client_data_bytes = bytes(parsed.response.client_data_json)
    if bytes_to_base64url(parsed.raw_id) != parsed.id:
        raise ProofFailed("malformed", "id and rawId differ")
    _check_client_data(client_data_bytes, "webauthn.create", challenge=challenge, origin=origin)

    try:
        attestation = parse_attestation_object(bytes(parsed.response.attestation_object))
    except Exception as exc:
        raise ProofFailed("malformed", "attestationObject cannot be parsed") from exc
    auth_data = attestation.auth_data
    _check_authenticator_data(auth_data, rp_id=rp_id, require_user_verification=False)

    # §7.1 step 18: "Verify that the AT flag ... is set" — the new credential must be in authData.
    attested = auth_data.attested_credential_data
    if not auth_data.flags.at or attested is None:
        raise ProofFailed("malformed", "authenticatorData carries no attested credential")
    if attested.credential_id != parsed.raw_id:
        raise ProofFailed("malformed", "the attested credential id is not the response's rawId")
    if len(attested.credential_id) > _MAX_CREDENTIAL_ID_BYTES:
        raise ProofFailed("malformed", "credential id longer than 1023 bytes (§7.1 step 25)")
    try:
        alg = int(decode_credential_public_key(attested.credential_public_key).alg)
    except Exception as exc:
        raise ProofFailed("malformed", "the credential public key is not a COSE key") from exc
    # §7.1 step 20: the alg "MUST be one of those in pubKeyCredParams".
    if alg not in ALGORITHMS:
        raise ProofFailed("unsupported_algorithm", f"COSE algorithm {alg} is not accepted")

    try:
        verified = verify_registration_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_presence=True,
            supported_pub_key_algs=[COSEAlgorithmIdentifier(a) for a in ALGORITHMS],
        )
    except (WebAuthnException, InvalidSignature, ValueError) as exc:
        raise ProofFailed("bad_attestation", "the attestation statement does not verify") from exc

    transports = tuple(t.value for t in parsed.response.transports or () if t.value in _TRANSPORTS)
    return Passkey(
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        alg=alg,
        transports=transports,
        user_verified=verified.user_verified,
        backup_eligible=auth_data.flags.be,
        aaguid=verified.aaguid,
    )


def authentication_options(
    *,
    rp_id: str,
    challenge: bytes,
    allow: Sequence[Passkey],
    user_verification: Literal["required", "preferred", "discouraged"],
    timeout_ms: int = 300_000,
) -> dict[str, Any]:
    """``PublicKeyCredentialRequestOptions`` as JSON-ready values (§5.5), for ``get()``."""
    _check_challenge(challenge)
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=timeout_ms,
        allow_credentials=[
            PublicKeyCredentialDescriptor(
                id=_unb64url(p.credential_id),
                transports=[AuthenticatorTransport(t) for t in p.transports if t in _TRANSPORTS] or None,
            )
            for p in allow
        ],
        user_verification=UserVerificationRequirement(user_verification),
    )
    return options_to_json_dict(options)


def verify_assertion(
    credential: str | dict[str, Any],
    *,
    challenge: bytes,
    rp_id: str,
    origin: str,
    passkeys: Sequence[Passkey],
    require_user_verification: bool,
) -> Assertion:
    """Verify the result of ``get()`` (§7.2) against the person's own ``passkeys``, or raise ``ProofFailed``."""
    try:
        parsed = parse_authentication_credential_json(credential)
    except Exception as exc:  # untrusted input: any parser failure is a malformed credential
        raise ProofFailed("malformed", "the authentication response is not a WebAuthn credential") from exc
    if bytes_to_base64url(parsed.raw_id) != parsed.id:
        raise ProofFailed("malformed", "id and rawId differ")

    # §7.2 step 6: "verify that the identified user account contains a credential record whose id
    # equals credential.rawId" — only the person's own passkeys are candidates.
    passkey = next((p for p in passkeys if _unb64url(p.credential_id) == parsed.raw_id), None)
    if passkey is None:
        raise ProofFailed("unknown_credential", "the credential is not one of this person's passkeys")

    client_data_bytes = bytes(parsed.response.client_data_json)
    _check_client_data(client_data_bytes, "webauthn.get", challenge=challenge, origin=origin)

    try:
        auth_data = parse_authenticator_data(bytes(parsed.response.authenticator_data))
    except Exception as exc:
        raise ProofFailed("malformed", "authenticatorData cannot be parsed") from exc
    _check_authenticator_data(auth_data, rp_id=rp_id, require_user_verification=require_user_verification)

    # §7.2 step 18: "If credentialRecord.backupEligible is not set, verify that currentBe is not set"
    # (and the converse): BE is fixed when the credential is made, so a change means another credential.
    if auth_data.flags.be != passkey.backup_eligible:
        raise ProofFailed("backup_eligibility_changed", "the BE flag differs from the one registered")

    # §7.2 step 22: if either count is non-zero and the new one is not greater, the authenticator
    # may be cloned (§6.1.1). The approval is refused, not merely flagged.
    stored, new = passkey.sign_count, auth_data.sign_count
    if (new or stored) and new <= stored:
        raise ProofFailed("counter_regressed", f"sign count {new} is not greater than stored {stored}")

    try:
        verified = verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=_unb64url(passkey.public_key),
            credential_current_sign_count=stored,
            require_user_verification=require_user_verification,
        )
    except (WebAuthnException, InvalidSignature, ValueError) as exc:
        raise ProofFailed("bad_signature", "the assertion signature does not verify") from exc

    return Assertion(
        credential_id=passkey.credential_id,
        new_sign_count=verified.new_sign_count,
        user_verified=verified.user_verified,
        backup_eligible=auth_data.flags.be,
    )


def _check_client_data(raw: bytes, expected_type: str, *, challenge: bytes, origin: str) -> CollectedClientData:
    try:
        client_data = parse_client_data_json(raw)
    except Exception as exc:
        raise ProofFailed("malformed", "clientDataJSON cannot be parsed") from exc
    # §7.1 step 7 / §7.2 step 11: "Verify that the value of C.type is webauthn.create / webauthn.get."
    if client_data.type != expected_type:
        raise ProofFailed("wrong_type", f"clientDataJSON.type is not {expected_type}")
    # §7.2 step 12: "Verify that the value of C.challenge equals the base64url encoding of the challenge."
    if client_data.challenge != challenge:
        raise ProofFailed("wrong_challenge", "the proof was made for another challenge")
    # §7.2 step 13: "Verify that the value of C.origin is an origin expected by the Relying Party."
    if client_data.origin != origin:
        raise ProofFailed("wrong_origin", "the proof was made on another origin")
    # §7.2 step 14: a ceremony inside a cross-origin iframe is not expected on an approval page.
    if client_data.cross_origin:
        raise ProofFailed("wrong_origin", "the proof was made in a cross-origin frame")
    return client_data


def _check_authenticator_data(auth_data: AuthenticatorData, *, rp_id: str, require_user_verification: bool) -> None:
    # §7.2 step 15: "Verify that the rpIdHash in authData is the SHA-256 hash of the RP ID expected."
    if auth_data.rp_id_hash != hashlib.sha256(rp_id.encode("utf-8")).digest():
        raise ProofFailed("wrong_rp_id", "the proof was made for another relying party")
    # §7.2 step 16: "Verify that the UP bit of the flags in authData is set."
    if not auth_data.flags.up:
        raise ProofFailed("user_not_present", "the authenticator did not test user presence")
    # §7.2 step 17: "If user verification is required ... verify that the UV bit ... is set."
    if require_user_verification and not auth_data.flags.uv:
        raise ProofFailed("user_not_verified", "user verification was required but not performed")
    try:
        parse_backup_flags(auth_data.flags)  # §6.1: BS set without BE is invalid
    except WebAuthnException as exc:
        raise ProofFailed("malformed", "backup state set on a device-bound credential") from exc


def _check_challenge(challenge: bytes) -> None:
    # py_webauthn silently substitutes a random challenge for an empty one; that would unbind the proof.
    if len(challenge) < _MIN_CHALLENGE_BYTES:
        raise ValueError(f"challenge must be at least {_MIN_CHALLENGE_BYTES} bytes (W3C WebAuthn §13.4.3)")


def _unb64url(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)


def _expect(value: Any, kind: type) -> Any:
    # bool is an int in Python; a stored count or alg must not be a bool.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value
