"""A software WebAuthn authenticator (and the client around it) for tests.

``SoftAuthenticator`` answers ``navigator.credentials.create()`` and ``get()`` options — the JSON
dicts ``tessera.approvals.webauthn`` produces — with the standard JSON response shapes, built by
hand: authenticatorData (§6.1), attested credential data with a COSE EC2 P-256 key (§6.5.1), a
``"none"`` attestation object (§8.7) and ES256 signatures over ``authData || SHA-256(clientDataJSON)``.

    authenticator = SoftAuthenticator()
    response = authenticator.create(options, "http://127.0.0.1:8080")
    assertion = authenticator.get(request_options, "http://127.0.0.1:8080")

It does what it is told, like a misbehaving client would: it signs for whatever origin it is given
and sets UV/BE as asked, so tests can check that the verifier refuses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["AAGUID", "SoftAuthenticator", "b64url", "unb64url"]

#: The AAGUID this authenticator reports (a fixed, made-up model identifier).
AAGUID = bytes.fromhex("7e55e7a0000040008000000000000001")

_UP, _UV, _BE, _BS, _AT = 0x01, 0x04, 0x08, 0x10, 0x40
_ES256 = -7


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@dataclass
class _Credential:
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    counter: int
    backup_eligible: bool


class SoftAuthenticator:
    """Holds credentials (one P-256 key each) and their signature counters."""

    def __init__(self) -> None:
        self.credentials: dict[bytes, _Credential] = {}

    def create(self, options: dict[str, Any], origin: str, *, uv: bool = True, backup_eligible: bool = False) -> dict:
        """The registration response (``PublicKeyCredential.toJSON()``) for creation ``options``."""
        rp_id = options["rp"]["id"]
        if _ES256 not in [p["alg"] for p in options["pubKeyCredParams"]]:
            raise ValueError("NotSupportedError: ES256 not offered")
        for excluded in options.get("excludeCredentials", []):
            if unb64url(excluded["id"]) in self.credentials:
                raise ValueError("InvalidStateError: this authenticator is already registered")

        credential_id = secrets.token_bytes(32)
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        cose_key = {1: 2, 3: _ES256, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        self.credentials[credential_id] = _Credential(
            key=key,
            rp_id=rp_id,
            user_handle=unb64url(options["user"]["id"]),
            counter=0,
            backup_eligible=backup_eligible,
        )

        attested = AAGUID + len(credential_id).to_bytes(2, "big") + credential_id + cbor2.dumps(cose_key)
        auth_data = self._authenticator_data(rp_id, uv=uv, backup_eligible=backup_eligible, counter=0, at=True)
        client_data = _client_data("webauthn.create", options["challenge"], origin)
        attestation_object = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data + attested})
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "transports": ["internal", "hybrid"],
            },
            "clientExtensionResults": {},
        }

    def get(
        self,
        options: dict[str, Any],
        origin: str,
        *,
        uv: bool = True,
        credential_id: str | None = None,
        counter_step: int = 1,
    ) -> dict:
        """The authentication response for request ``options``.

        The credential is ``credential_id`` if given, else the first of ``allowCredentials`` held
        here, else (a discoverable-credential request) the first held for the options' ``rpId``.
        ``counter_step`` is added to the credential's counter before signing (0 leaves it as is).
        """
        rp_id = options["rpId"]
        raw_id = self._choose(options, rp_id, credential_id)
        credential = self.credentials[raw_id]
        credential.counter += counter_step

        auth_data = self._authenticator_data(
            rp_id, uv=uv, backup_eligible=credential.backup_eligible, counter=credential.counter
        )
        client_data = _client_data("webauthn.get", options["challenge"], origin)
        signature = credential.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(raw_id),
            "rawId": b64url(raw_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(credential.user_handle),
            },
            "clientExtensionResults": {},
        }

    def _choose(self, options: dict[str, Any], rp_id: str, credential_id: str | None) -> bytes:
        if credential_id is not None:
            raw_id = unb64url(credential_id)
            if raw_id not in self.credentials:
                raise LookupError("NotAllowedError: no such credential on this authenticator")
            return raw_id
        allowed = [unb64url(c["id"]) for c in options.get("allowCredentials", [])]
        if allowed:
            for raw_id in allowed:
                if raw_id in self.credentials:
                    return raw_id
        else:
            for raw_id, credential in self.credentials.items():
                if credential.rp_id == rp_id:
                    return raw_id
        raise LookupError("NotAllowedError: no matching credential on this authenticator")

    @staticmethod
    def _authenticator_data(rp_id: str, *, uv: bool, backup_eligible: bool, counter: int, at: bool = False) -> bytes:
        # §6.1 flags: UP (bit 0), UV (bit 2), BE (bit 3), BS (bit 4), AT (bit 6). A synced credential is backed up.
        flags = _UP | (_UV if uv else 0) | ((_BE | _BS) if backup_eligible else 0) | (_AT if at else 0)
        return hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + counter.to_bytes(4, "big")


def _client_data(kind: str, challenge: str, origin: str) -> bytes:
    return json.dumps({"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False}).encode()
