"""A compact JWS signer over ``cryptography`` for client assertions (RFC 7515 §7.1, RFC 7518, RFC 8037).

The counterpart of ``tessera.verify.jws``, kept as small: three algorithms and nothing to choose
at run time that the key does not already say.

- RFC 7518 §3.4: an ES256 signature is R || S, each left-padded to 32 bytes (not DER).
- RFC 8037 §3.1: ``EdDSA`` with an Ed25519 key.
- RFC 7518 §3.3: ``RS256``, and §3.5 ``PS256``, with an RSA key of at least 2048 bits.
- RFC 7515 §2: base64url without padding; the JSON is compact (orjson).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["PrivateKey", "b64url", "default_alg", "load_private_key", "sign_compact"]

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_private_key(key: PrivateKey | bytes | str, password: bytes | None = None) -> PrivateKey:
    """A usable signing key from a ``cryptography`` key or PEM text; ValueError otherwise."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        key = serialization.load_pem_private_key(key, password=password)  # type: ignore[assignment]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"EC keys must be P-256 (ES256), not {key.curve.name}")
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported signing key {type(key).__name__}: use EC P-256, Ed25519 or RSA")
    return key


def default_alg(key: PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return "RS256"


def _check_alg(key: PrivateKey, alg: str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        allowed = {"ES256"}
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        allowed = {"EdDSA", "Ed25519"}
    else:
        allowed = {"RS256", "PS256"}
    if alg not in allowed:
        raise ValueError(f"algorithm {alg!r} does not fit a {type(key).__name__}; use one of {sorted(allowed)}")


def sign_compact(header: dict[str, Any], claims: dict[str, Any], key: PrivateKey) -> str:
    """``header.payload.signature``; ``header["alg"]`` must fit the key."""
    alg = header["alg"]
    _check_alg(key, alg)
    signing_input = b64url(orjson.dumps(header)) + "." + b64url(orjson.dumps(claims))
    data = signing_input.encode("ascii")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # RFC 7518 §3.4: R || S, 32 bytes each
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(data)
    elif alg == "PS256":
        signature = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    else:
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)
