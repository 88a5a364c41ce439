"""TOTP codes — RFC 6238 (https://www.rfc-editor.org/rfc/rfc6238) over HOTP, RFC 4226
(https://www.rfc-editor.org/rfc/rfc4226).

``TOTP = HOTP(K, T)`` with ``T = floor((now - T0) / period)``, ``T0 = 0``. The secret is raw bytes;
``provisioning_uri`` gives the ``otpauth://`` URI authenticator apps scan (Key Uri Format).

``verify_code`` takes the time (``now``, from the injected clock) and the last accepted time step
of this secret, and returns the step it accepted: the caller stores it, so a code is accepted at
most once (RFC 6238 §5.2). It raises ``CodeRejected``; it never returns a bool.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import struct
from urllib.parse import quote, urlencode

__all__ = ["ALGORITHMS", "CodeRejected", "code_at", "new_secret", "provisioning_uri", "verify_code"]

#: RFC 6238 §1.2: HMAC-SHA-1 (the default), HMAC-SHA-256 and HMAC-SHA-512.
ALGORITHMS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}

# RFC 4226 §4 R2: at least 160 bits of shared secret (RFC 6238 §5.1 recommends the hash length).
_SECRET_BYTES = 20


class CodeRejected(Exception):
    """A code was refused. ``reason`` is ``malformed``, ``wrong_code`` or ``replayed``; ``str()`` never
    includes the code or the secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def new_secret() -> bytes:
    """A fresh 160-bit shared secret."""
    return secrets.token_bytes(_SECRET_BYTES)


def provisioning_uri(
    secret: bytes, *, account: str, issuer: str, digits: int = 6, period: int = 30, algorithm: str = "SHA1"
) -> str:
    """``otpauth://totp/Issuer:account?secret=…&issuer=…&algorithm=…&digits=…&period=…``."""
    _check_parameters(digits, period, algorithm)
    if not account or not issuer or ":" in account or ":" in issuer:
        raise ValueError("account and issuer must be non-empty and contain no ':' (Key Uri Format label)")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": base64.b32encode(secret).decode("ascii").rstrip("="),
            "issuer": issuer,
            "algorithm": algorithm,
            "digits": digits,
            "period": period,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def code_at(secret: bytes, t: float, *, digits: int = 6, period: int = 30, algorithm: str = "SHA1") -> str:
    """The code for time ``t`` (seconds since the epoch)."""
    _check_parameters(digits, period, algorithm)
    return _hotp(secret, _step(t, period), digits, algorithm)


def verify_code(
    secret: bytes,
    code: str,
    *,
    now: float,
    last_step: int | None,
    window: int = 1,
    digits: int = 6,
    period: int = 30,
    algorithm: str = "SHA1",
) -> int:
    """Accept ``code`` for a time step within ``now ± window`` steps and after ``last_step``; return that step."""
    _check_parameters(digits, period, algorithm)
    if window < 0:
        raise ValueError("window must not be negative")
    if not isinstance(code, str) or len(code) != digits or not (code.isascii() and code.isdigit()):
        raise CodeRejected("malformed", f"a code is exactly {digits} ASCII digits")

    current = _step(now, period)
    accepted: int | None = None
    replayed = False
    # RFC 6238 §5.2: "We RECOMMEND that at most one time step is allowed as the network delay."
    # Every step in the window is compared, without stopping early, each in constant time.
    for step in range(max(current - window, 0), current + window + 1):
        if hmac.compare_digest(_hotp(secret, step, digits, algorithm), code):
            # §5.2: "the verifier MUST NOT accept the second attempt of the same OTP after the
            # successful validation has been issued for the first OTP" — nor any earlier step.
            if last_step is not None and step <= last_step:
                replayed = True
            else:
                accepted = step
    if accepted is not None:
        return accepted
    if replayed:
        raise CodeRejected("replayed", "this time step was already used")
    raise CodeRejected("wrong_code", "the code does not match")


def _hotp(secret: bytes, counter: int, digits: int, algorithm: str) -> str:
    # RFC 4226 §5.3: HS = HMAC(K, C); dynamic truncation to 31 bits; modulo 10^Digit.
    mac = hmac.new(secret, struct.pack(">Q", counter), ALGORITHMS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    binary = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def _step(t: float, period: int) -> int:
    return math.floor(t / period)


def _check_parameters(digits: int, period: int, algorithm: str) -> None:
    # RFC 4226 §5.3: "Implementations MUST extract a 6-digit code at a minimum"; 31 bits hold 9 digits.
    if not 6 <= digits <= 9:
        raise ValueError("digits must be 6 to 9")
    if period <= 0:
        raise ValueError("period must be positive")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
