"""DPoP proofs — RFC 9449, "OAuth 2.0 Demonstrating Proof of Possession" (https://www.rfc-editor.org/rfc/rfc9449).

Shared by the relying party (``Verifier.verify_dpop``) and the authorization server's token endpoint:

- ``check_proof`` makes every check of RFC 9449 §4.3 on one proof and returns its key thumbprint;
- ``jwk_thumbprint`` is the RFC 7638 SHA-256 thumbprint that ``cnf.jkt`` carries (RFC 9449 §6.1);
- ``JtiCache`` is a bounded in-memory replay cache for relying parties (RFC 9449 §11.1).

Standard library, ``cryptography`` and ``orjson`` only, like the rest of ``tessera.verify``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from tessera.verify.errors import InvalidDPoPProof, UseDPoPNonce, VerificationError
from tessera.verify.jws import ALGORITHMS, parse_compact, public_key_from_jwk, verify_signature

__all__ = [
    "DPOP_ALGORITHMS",
    "DPoPProof",
    "JtiCache",
    "access_token_hash",
    "check_proof",
    "jwk_thumbprint",
    "normalize_htu",
]

#: Asymmetric algorithms only: ``none`` and HMAC are not algorithms here at all (RFC 9449 §4.3 point 5).
DPOP_ALGORITHMS = frozenset({"ES256", "EdDSA", "Ed25519", "RS256", "PS256"})
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_MAX_JTI = 256
_MAX_TIME = 1e11  # beyond it a "time" is an attack on arithmetic (NaN and infinities fail the comparison)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 JWK thumbprint, base64url: the required members only, in lexicographic order,
    no whitespace (§3.2, §3.3). ValueError for an unsupported key type or a missing member."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError(f"no thumbprint for key type {str(jwk.get('kty'))[:20]!r}")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"the JWK has no {name!r} member")
        required[name] = value
    return _b64url(hashlib.sha256(orjson.dumps(required, option=orjson.OPT_SORT_KEYS)).digest())


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url(SHA-256(ASCII(access_token)))."""
    return _b64url(hashlib.sha256(access_token.encode("ascii")).digest())


@dataclass(frozen=True)
class DPoPProof:
    """A proof that passed ``check_proof``: its key's thumbprint (``jkt``) and its claims."""

    jkt: str
    jti: str
    iat: float
    htm: str
    htu: str
    claims: dict[str, Any]


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4.
    out: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./") or path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if out:
                out.pop()
        elif path == "/..":
            path = "/"
            if out:
                out.pop()
        elif path in (".", ".."):
            path = ""
        else:
            start = 1 if path.startswith("/") else 0
            end = path.find("/", start)
            end = len(path) if end < 0 else end
            out.append(path[:end])
            path = path[end:]
    return "".join(out)


def _percent(match: re.Match[str]) -> str:
    # RFC 3986 §6.2.2.1 and §6.2.2.2: upper-case hex digits; unreserved characters decoded.
    octet = int(match.group(1), 16)
    return chr(octet) if octet in _UNRESERVED else "%" + match.group(1).upper()


def normalize_htu(uri: str) -> str:
    """The HTTP URI without query and fragment, after syntax-based (RFC 3986 §6.2.2) and scheme-based
    (§6.2.3) normalization: lower-case scheme and host, no default port, empty path as ``/``, percent-
    encodings normalized, dot segments removed. ValueError when it is not an absolute http(s) URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased by urlsplit
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError("not an absolute http(s) URI")
    port = parts.port  # ValueError when not a number in range
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority += f":{port}"
    if "@" in parts.netloc:
        authority = _PERCENT.sub(_percent, parts.netloc.rpartition("@")[0]) + "@" + authority
    path = _remove_dot_segments(_PERCENT.sub(_percent, parts.path)) or "/"
    return f"{scheme}://{authority}{path}"


def _refuse(message: str) -> InvalidDPoPProof:
    return InvalidDPoPProof(message)


def check_proof(
    proof: str,
    *,
    htm: str,
    htu: str,
    now: float,
    leeway: float = 5,
    max_age: float = 300,
    access_token: str | None = None,
    nonce: str | None = None,
    algorithms: Iterable[str] = DPOP_ALGORITHMS,
    max_bytes: int = 8192,
) -> DPoPProof:
    """The checked proof, or ``InvalidDPoPProof`` (``UseDPoPNonce`` for a missing or wrong nonce).

    Every check of RFC 9449 §4.3 except two that need state or the request: "not more than one DPoP
    header" (point 1) is the caller's, and so is replay detection of ``jti`` (§11.1), and the
    comparison of ``jkt`` with the token's ``cnf.jkt`` (point 12).
    """
    allowed = frozenset(algorithms)
    if not allowed <= ALGORITHMS:
        raise ValueError(f"DPoP algorithms must be a subset of {sorted(ALGORITHMS)}")
    if not isinstance(proof, str) or not proof:
        raise _refuse("the DPoP header is empty")
    if len(proof) > max_bytes:
        raise _refuse(f"DPoP proofs larger than {max_bytes} bytes are refused")
    # §4.3 point 2: a single and well-formed JWT (a compact JWS; JWE has five parts and is refused).
    try:
        header, claims, signing_input, signature = parse_compact(proof)
    except VerificationError as e:
        raise _refuse(f"not a well-formed JWT: {e.message}") from None
    # §4.3 point 4: "The typ JOSE Header Parameter has the value dpop+jwt."
    if header.get("typ") != "dpop+jwt":
        raise _refuse("typ must be dpop+jwt")
    alg = header.get("alg")
    # §4.3 point 5: an asymmetric algorithm, not none, supported and acceptable per local policy.
    if not isinstance(alg, str) or alg not in allowed:
        raise _refuse(f"alg {str(alg)[:20]!r} is not accepted for DPoP proofs")
    if "crit" in header:
        raise _refuse("critical header parameters are not supported")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _refuse("the jwk header parameter is required")
    # §4.3 point 7: "The jwk JOSE Header Parameter does not contain a private key."
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise _refuse("the jwk header parameter must be a public key")
    try:
        key = public_key_from_jwk(jwk)
        jkt = jwk_thumbprint(jwk)
    except (ValueError, VerificationError) as e:
        raise _refuse(f"the jwk header parameter is not a usable public key: {e}") from None
    # §4.3 point 6: "The JWT signature verifies with the public key contained in the jwk JOSE Header Parameter."
    try:
        verify_signature(alg, key, signing_input, signature)
    except VerificationError as e:
        raise _refuse(f"the proof's signature does not verify: {e.message}") from None
    # §4.3 point 3 with §4.2: jti, htm, htu and iat are required.
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI:
        raise _refuse(f"jti must be a string of 1 to {_MAX_JTI} characters")
    # §4.3 point 8: "The htm claim matches the HTTP method of the current request."
    if claims.get("htm") != htm:
        raise _refuse("htm does not match the request method")
    # §4.3 point 9: htu matches the request's URI, "ignoring any query and fragment parts", after
    # syntax-based and scheme-based normalization (RFC 3986 §6.2.2, §6.2.3).
    claimed_htu = claims.get("htu")
    if not isinstance(claimed_htu, str):
        raise _refuse("htu is required")
    try:
        same_uri = normalize_htu(claimed_htu) == normalize_htu(htu)
    except ValueError:
        same_uri = False
    if not same_uri:
        raise _refuse("htu does not match the request URI")
    # §4.3 point 11 and §11.1: the creation time is within an acceptable window.
    iat = claims.get("iat")
    if not (type(iat) is int or type(iat) is float) or not -_MAX_TIME < iat < _MAX_TIME:
        raise _refuse("iat must be a number of seconds")
    if iat > now + leeway:
        raise _refuse("the proof was issued in the future (iat)")
    if iat < now - max_age - leeway:
        raise _refuse(f"the proof is older than {max_age} s (iat)")
    # §4.3 point 12: with an access token, "the value of the ath claim equals the hash of that access token".
    if access_token is not None:
        try:
            expected = access_token_hash(access_token)
        except UnicodeEncodeError:
            raise _refuse("the access token is not ASCII") from None
        if claims.get("ath") != expected:
            raise _refuse("ath does not match the access token")
    # §4.3 point 10: "the nonce claim matches the server-provided nonce value".
    if nonce is not None and claims.get("nonce") != nonce:
        raise UseDPoPNonce("the proof must carry the server-provided nonce")
    return DPoPProof(jkt=jkt, jti=jti, iat=float(iat), htm=htm, htu=claimed_htu, claims=claims)


class JtiCache:
    """Proofs seen recently, by key (e.g. ``jkt`` + ``jti``): RFC 9449 §11.1 replay detection.

    Bounded and thread-safe. An entry lives ``ttl`` seconds: use at least the proof's acceptance window
    (``max_age`` + 2 * ``leeway``, as a proof may be dated ``leeway`` in the future). When the cache
    holds ``max_entries`` unexpired entries it refuses new proofs rather than forget old ones (fail closed).

    Entries may name an ``owner`` (the proof's key thumbprint): one owner holds at most ``max_per_owner``
    unexpired entries, so a single client with a valid bound token cannot fill the cache and lock every
    other client out; past its quota only its own proofs are refused.
    """

    def __init__(self, ttl: float, max_entries: int = 100_000, max_per_owner: int | None = None) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_per_owner = max_per_owner if max_per_owner is not None else max(1, max_entries // 20)
        self._expiry: dict[str, float] = {}  # insertion order is (nearly) expiry order
        self._owner_of: dict[str, str] = {}
        self._per_owner: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, key: str, now: float, owner: str | None = None) -> bool:
        """True if ``key`` was seen within its lifetime (a replay); otherwise remember it and return False.

        Raises ``InvalidDPoPProof`` when the cache, or the owner's share of it, is full of unexpired entries."""
        with self._lock:
            expiry = self._expiry.get(key)
            if expiry is not None:
                if expiry > now:
                    return True
                self._forget(key)
            full = len(self._expiry) >= self.max_entries
            over = owner is not None and self._per_owner.get(owner, 0) >= self.max_per_owner
            self._evict(now, len(self._expiry) if full or over else 2)
            if len(self._expiry) >= self.max_entries:
                raise InvalidDPoPProof("too many recent proofs to detect replays; refused (fail closed)")
            if owner is not None:
                if self._per_owner.get(owner, 0) >= self.max_per_owner:
                    raise InvalidDPoPProof("too many recent proofs by this key; refused (fail closed)")
                self._owner_of[key] = owner
                self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
            self._expiry[key] = now + self.ttl
            return False

    def _forget(self, key: str) -> None:
        del self._expiry[key]
        owner = self._owner_of.pop(key, None)
        if owner is not None:
            left = self._per_owner[owner] - 1
            if left:
                self._per_owner[owner] = left
            else:
                del self._per_owner[owner]

    def _evict(self, now: float, budget: int) -> None:
        """Drop up to ``budget`` expired entries from the oldest end."""
        stale: list[str] = []
        for key, expiry in self._expiry.items():
            if expiry > now or len(stale) >= budget:
                break
            stale.append(key)
        for key in stale:
            self._forget(key)
