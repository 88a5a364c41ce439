"""Compact JWS parsing and signature verification over ``cryptography`` (RFC 7515, RFC 7518, RFC 8037).

Written by hand because it is the relying party's hot path (see ``bench/verify.py``) and because
the rules are few and must be exact:

- RFC 7518 §3.4: an ECDSA signature is R || S, each exactly the curve's size (64 bytes for P-256).
  Anything else is refused *before* conversion to DER, as are R or S outside 1..n-1.
- RFC 8037 §3.1: an Ed25519 signature is exactly 64 bytes.
- RSA keys must be at least 2048 bits; ``none`` and HMAC are not algorithms here at all.
- The key's type and curve must match the algorithm; the key's own ``alg``, if any, must equal it.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any, cast

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tessera.verify.errors import BadSignature, MalformedToken, UnsupportedAlgorithm

__all__ = [
    "ALGORITHMS",
    "PublicKey",
    "b64url_decode",
    "es256_der",
    "parse_compact",
    "public_key_from_jwk",
    "verify_signature",
]

ALGORITHMS = frozenset({"ES256", "EdDSA", "Ed25519", "RS256", "PS256"})
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_KTY = {"ES256": "EC", "EdDSA": "OKP", "Ed25519": "OKP", "RS256": "RSA", "PS256": "RSA"}


@dataclass(frozen=True)
class PublicKey:
    kid: str | None
    alg: str | None
    kty: str
    key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def b64url_decode(segment: str) -> bytes:
    # RFC 7515 §2: base64url without padding; '+', '/', '=' and anything outside the alphabet are refused.
    if "=" in segment or "+" in segment or "/" in segment:
        raise MalformedToken("not base64url without padding")
    try:
        raw = (segment + "=" * (-len(segment) % 4)).encode("ascii").translate(_FROM_URLSAFE)
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MalformedToken("not base64url") from None


def _b64_int(value: Any, size: int | None = None) -> int:
    if not isinstance(value, str):
        raise ValueError("JWK member is not a string")
    raw = b64url_decode(value)
    if size is not None and len(raw) != size:
        raise ValueError("JWK coordinate has the wrong length")
    return int.from_bytes(raw, "big")


def public_key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    """A public key from a JWK; ValueError when it is not a usable public signing key."""
    kty = jwk.get("kty")
    if any(m in jwk for m in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise ValueError("a JWK Set for verification must not contain private or symmetric keys")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError("key is not for signatures")
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
    alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else None
    key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError("only P-256 EC keys are supported")
        key = ec.EllipticCurvePublicNumbers(
            _b64_int(jwk.get("x"), 32), _b64_int(jwk.get("y"), 32), ec.SECP256R1()
        ).public_key()
    elif kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise ValueError("only Ed25519 OKP keys are supported")
        x = b64url_decode(str(jwk.get("x", "")))
        if len(x) != 32:
            raise ValueError("Ed25519 key must be 32 bytes")
        key = ed25519.Ed25519PublicKey.from_public_bytes(x)
    elif kty == "RSA":
        n, e = _b64_int(jwk.get("n")), _b64_int(jwk.get("e"))
        if n.bit_length() < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    else:
        raise ValueError(f"unsupported key type {kty!r}")
    return PublicKey(kid, alg, kty, key)


def parse_compact(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS whose payload is a JSON object."""
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("a JWT has three dot-separated parts (JWE is not accepted)")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
        claims = orjson.loads(b64url_decode(parts[1]))
    except orjson.JSONDecodeError:
        raise MalformedToken("header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise MalformedToken("header and payload must be JSON objects")
    return header, claims, (parts[0] + "." + parts[1]).encode("ascii"), b64url_decode(parts[2])


_P256_ORDER_BYTES = _P256_ORDER.to_bytes(32, "big")
_ZERO32 = bytes(32)


def _der_integer(value: bytes) -> bytes:
    value = value.lstrip(b"\0")
    if value[0] & 0x80:
        value = b"\0" + value
    return b"\x02" + bytes((len(value),)) + value


def es256_der(signature: bytes) -> bytes:
    """The DER form OpenSSL takes of a JWS ES256 signature (RFC 7518 §3.4: R || S, 32 bytes each).

    Refuses, before any conversion, a signature that is not exactly 64 bytes or whose R or S is
    outside 1..n-1. Built from the bytes directly: equal-length big-endian byte strings compare like
    the integers they encode, and a DER INTEGER is the minimal big-endian form with a 0x00 in front of
    a set high bit. (``int.from_bytes`` twice plus ``encode_dss_signature`` cost about three times as
    many instructions, measured with callgrind.)"""
    if len(signature) != 64:
        raise BadSignature("an ES256 signature is exactly 64 bytes (RFC 7518 §3.4)")
    r, s = signature[:32], signature[32:]
    if r == _ZERO32 or s == _ZERO32 or r >= _P256_ORDER_BYTES or s >= _P256_ORDER_BYTES:
        raise BadSignature("ECDSA r and s must be in 1..n-1")
    body = _der_integer(r) + _der_integer(s)
    return b"\x30" + bytes((len(body),)) + body


def verify_signature(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> None:
    """Raise ``BadSignature`` unless ``signature`` is valid for ``alg`` under ``key``."""
    if alg not in ALGORITHMS:
        raise UnsupportedAlgorithm(f"algorithm {alg[:20]!r} is not supported")
    if _KTY[alg] != key.kty or (key.alg is not None and key.alg != alg and {key.alg, alg} != {"EdDSA", "Ed25519"}):
        raise BadSignature("the key does not match the algorithm")
    try:
        if alg == "ES256":
            key.key.verify(es256_der(signature), signing_input, _ECDSA_SHA256)  # type: ignore[call-arg,arg-type]
        elif alg in ("EdDSA", "Ed25519"):
            if len(signature) != 64:
                raise BadSignature("an Ed25519 signature is exactly 64 bytes (RFC 8037 §3.1)")
            key.key.verify(signature, signing_input)  # type: ignore[call-arg]
        else:
            rsa_key = cast(rsa.RSAPublicKey, key.key)
            if len(signature) != (rsa_key.key_size + 7) // 8:
                raise BadSignature("an RSA signature has the modulus length")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15() if alg == "RS256" else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            )
            rsa_key.verify(signature, signing_input, pad, hashes.SHA256())
    except InvalidSignature:
        raise BadSignature("the signature does not verify") from None
