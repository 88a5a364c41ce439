"""DPoP at the token endpoint — RFC 9449 §5, §8 and §11.1 (https://www.rfc-editor.org/rfc/rfc9449).

``DPoPChecker.check`` takes the ``DPoP`` header of a token request and returns the thumbprint the
issued token is bound to (``cnf.jkt``, §6.1), or raises ``invalid_dpop_proof`` / ``use_dpop_nonce``:

- every check of §4.3 (``tessera.verify.dpop.check_proof``) with ``htm`` POST and ``htu`` the token
  endpoint;
- §11.1 replay: a proof's ``jti`` is recorded with the key's thumbprint through the assertion
  store (``AssertionRecorder``) until the proof's ``iat`` window closes; a second use is refused;
- §8 server nonces, when enabled: stateless, ``base64url(window || HMAC-SHA256(secret, window)[:16])``
  for the current 60-second window; the current and the previous window are accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Callable, Iterable

from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.errors import InvalidDPoPProof, UseDPoPNonce
from tessera.store.interfaces import AssertionRecorder, AssertionReplayed
from tessera.verify.dpop import DPOP_ALGORITHMS, check_proof
from tessera.verify.errors import InvalidDPoPProof as ProofRefused

__all__ = ["DPOP_SIGNING_ALGS", "DPoPChecker", "nonce_secret"]

#: RFC 9449 §5.1 ``dpop_signing_alg_values_supported``: asymmetric algorithms only.
DPOP_SIGNING_ALGS = ("ES256", "EdDSA", "Ed25519", "PS256", "RS256")
assert frozenset(DPOP_SIGNING_ALGS) == DPOP_ALGORITHMS

_NONCE_MAC_BYTES = 16


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def nonce_secret(key_material: str) -> bytes:
    """The nonce MAC key, derived from secret material every server process shares (the key-encryption
    key), so that a nonce from one process is accepted by the others."""
    return hmac.new(key_material.strip().encode(), b"tessera/dpop-nonce/v1", hashlib.sha256).digest()


class DPoPChecker:
    """Checks the DPoP proofs of token requests. ``nonce_secret`` set: server nonces are required."""

    def __init__(
        self,
        *,
        token_endpoint: str,
        replay: AssertionRecorder,
        now: Callable[[], float],
        max_age: int = 300,
        leeway: float = 5,
        nonce_secret: bytes | None = None,
        nonce_window: int = 60,
        algorithms: Iterable[str] = DPOP_SIGNING_ALGS,
    ) -> None:
        if nonce_secret is not None and len(nonce_secret) < 32:
            raise ValueError("the DPoP nonce secret must be at least 32 bytes")
        self._htu = token_endpoint
        self._replay = replay
        self._now = now
        self._max_age = max_age
        self._leeway = leeway
        self._secret = nonce_secret
        self._window = nonce_window
        self._algorithms = frozenset(algorithms)

    @property
    def nonces(self) -> bool:
        return self._secret is not None

    def new_nonce(self, now: float | None = None) -> str | None:
        """The nonce of the current window (None when nonces are off). Unpredictable without the secret
        (RFC 9449 §8: "Nonce values MUST be unpredictable")."""
        if self._secret is None:
            return None
        return self._nonce(int((self._now() if now is None else now) // self._window))

    def _nonce(self, window: int) -> str:
        assert self._secret is not None
        stamp = window.to_bytes(8, "big")
        return _b64url(stamp + hmac.new(self._secret, stamp, hashlib.sha256).digest()[:_NONCE_MAC_BYTES])

    def _nonce_is_current(self, value: object, now: float) -> bool:
        if not isinstance(value, str) or len(value) > 64:
            return False
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return False
        if len(raw) != 8 + _NONCE_MAC_BYTES:
            return False
        window = int.from_bytes(raw[:8], "big")
        current = int(now // self._window)
        # The current and the previous window: a nonce lives between one and two windows.
        return window in (current, current - 1) and hmac.compare_digest(value, self._nonce(window))

    async def check(self, header: str, *, client_id: str | None = None) -> str:
        """The JWK thumbprint of the proof in ``header`` (one ``DPoP`` header's value), or an OAuth error."""
        now = self._now()
        # RFC 9449 §4.3 point 1: "There is not more than one DPoP HTTP request header field." The HTTP
        # layer joins repeated fields with commas (RFC 9110 §5.3); a JWT never contains one.
        if "," in header:
            raise InvalidDPoPProof("more than one DPoP header", client_id=client_id)
        try:
            proof = check_proof(
                header.strip(),
                htm="POST",
                htu=self._htu,
                now=now,
                leeway=self._leeway,
                max_age=self._max_age,
                algorithms=self._algorithms,
            )
        except ProofRefused as e:
            raise InvalidDPoPProof(e.message, client_id=client_id) from None
        if self._secret is not None and not self._nonce_is_current(proof.claims.get("nonce"), now):
            # RFC 9449 §8: answer use_dpop_nonce with a DPoP-Nonce header to use in the next proof.
            description = "a current server nonce is required in the DPoP proof"
            raise UseDPoPNonce(description, nonce=self._nonce(int(now // self._window)), client_id=client_id)
        try:
            # RFC 9449 §11.1: the jti is remembered as long as the proof's iat keeps it acceptable.
            expires = math.ceil(proof.iat + self._max_age + self._leeway)
            await self._replay.consume_assertion(
                AssertionUse(client_id="dpop/" + proof.jkt, jti=proof.jti, exp=expires)
            )
        except AssertionReplayed:
            raise InvalidDPoPProof("the DPoP proof was used before", client_id=client_id) from None
        return proof.jkt
