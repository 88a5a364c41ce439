"""The crypto floor: the raw cost of a token request's signatures with `cryptography`.

For each client authentication method this times, on one core, only the
cryptographic work that any server must do per `client_credentials` request:

* ``basic``: SHA-256 of the client secret, plus one ES256 signature of a typical
  access-token JWS signing input (including the DER -> raw r||s conversion JWS needs);
* ``pkjwt``: one ES256 verification of a client assertion (raw r||s -> DER, then
  verify) plus the same ES256 access-token signature.

The result, in operations per second, is an upper bound for a single-core server's
requests per second: no server doing this work can be faster.

``--mode token_exchange`` measures instead the floor of an RFC 8693 token exchange of an
external identity token (``bench/exchange.py``):

* ``token_exchange``: one RS256 verification (RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit
  key) of a GitHub-Actions-shaped identity token, plus one ES256 signature of the
  issued access token (with the DER -> raw r||s conversion).

Run it alone with ``python bench/floor.py [--seconds S] [--json] [--mode M]``; pin it
with ``taskset -c 0`` to measure the same core the servers get. ``bench/issuer.py``
and ``bench/exchange.py`` run it that way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

ES256 = ec.ECDSA(hashes.SHA256())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def access_token_signing_input() -> bytes:
    """A JWS signing input shaped like an RFC 9068 access token for this benchmark."""
    now = int(time.time())
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "7b0b5f8e-2a6c-4c4e-9d0f-3f1d2c9a1b11"}
    payload = {
        "iss": "http://127.0.0.1:9100",
        "sub": "c_3k9vQx2mT7bN1pL8wR4yZ6",
        "aud": "https://api.bench.example",
        "client_id": "c_3k9vQx2mT7bN1pL8wR4yZ6",
        "scope": "read",
        "iat": now,
        "exp": now + 600,
        "jti": "Vd2nq8sJx0bT5mK9rW3eY7hU1cA4fG6i",
    }
    return f"{_json_b64(header)}.{_json_b64(payload)}".encode("ascii")


def client_assertion(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    """A signed client assertion, as (signing input, raw r||s signature)."""
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", "kid": "bench-client-key"}
    payload = {
        "iss": "c_3k9vQx2mT7bN1pL8wR4yZ6",
        "sub": "c_3k9vQx2mT7bN1pL8wR4yZ6",
        "aud": "http://127.0.0.1:9100/token",
        "iat": now,
        "exp": now + 300,
        "jti": "2f0c9b1e-5d7a-4c3b-8e6f-0a1b2c3d4e5f",
    }
    signing_input = f"{_json_b64(header)}.{_json_b64(payload)}".encode("ascii")
    return signing_input, sign_es256(key, signing_input)


def sign_es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(signing_input, ES256))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_es256(key: ec.EllipticCurvePublicKey, signing_input: bytes, raw: bytes) -> None:
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.verify(der, signing_input, ES256)


def _rate(op: Callable[[], object], seconds: float, window: float = 0.2, batch: int = 20) -> float:
    """Ops/sec of `op` run back to back for about `seconds`: the best of ~`window`-second windows.

    The best window, not the mean, so that a moment of interference from other work on
    the core does not lower the floor.
    """
    for _ in range(batch):  # warm caches and the allocator
        op()
    best = 0.0
    end = time.perf_counter() + seconds
    while True:
        count = 0
        start = now = time.perf_counter()
        while now - start < window:
            for _ in range(batch):
                op()
            count += batch
            now = time.perf_counter()
        best = max(best, count / (now - start))
        if now >= end:
            return best


def measure(seconds: float = 2.0) -> dict[str, float]:
    """Ops/sec for each floor, plus the primitives they are made of."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_pub = client_key.public_key()
    at_input = access_token_signing_input()
    ca_input, ca_sig = client_assertion(client_key)
    secret = os.urandom(32).hex().encode()
    stored = hashlib.sha256(secret).digest()

    def basic() -> None:
        if not hmac.compare_digest(hashlib.sha256(secret).digest(), stored):
            raise AssertionError("secret mismatch")
        sign_es256(server_key, at_input)

    def pkjwt() -> None:
        verify_es256(client_pub, ca_input, ca_sig)
        sign_es256(server_key, at_input)

    return {
        "basic": _rate(basic, seconds),
        "pkjwt": _rate(pkjwt, seconds),
        "es256_sign": _rate(lambda: sign_es256(server_key, at_input), seconds / 2),
        "es256_verify": _rate(lambda: verify_es256(client_pub, ca_input, ca_sig), seconds / 2),
    }


def github_actions_token(key: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    """A GitHub-Actions-shaped RS256 identity token, as (signing input, signature)."""
    now = int(time.time())
    header = {
        "alg": "RS256",
        "typ": "JWT",
        "kid": "cc413527-173f-5a05-976e-9c52b1d7b431",
        "x5t": "ykNaY4qM_ta4k2TgZOCEYLkcYlA",
    }
    sha = "3f8c0b6e1d2a4b5c6d7e8f90a1b2c3d4e5f60718"
    workflow_ref = "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main"
    payload = {
        "jti": "5c2e8a4f-9b1d-4e3a-8f6c-0d7b2a1e9c34",
        "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
        "aud": "tessera",
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "ref_protected": "true",
        "sha": sha,
        "repository": "octo-org/octo-repo",
        "repository_id": "690123456",
        "repository_owner": "octo-org",
        "repository_owner_id": "1234567",
        "repository_visibility": "private",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "deploy",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "event_name": "push",
        "head_ref": "",
        "base_ref": "",
        "run_id": "5123456789",
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": now - 5,
        "iat": now,
        "exp": now + 300,
    }
    signing_input = f"{_json_b64(header)}.{_json_b64(payload)}".encode("ascii")
    return signing_input, key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def exchanged_token_signing_input() -> bytes:
    """A JWS signing input shaped like the access token a token exchange issues."""
    now = int(time.time())
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "7b0b5f8e-2a6c-4c4e-9d0f-3f1d2c9a1b11"}
    payload = {
        "iss": "http://127.0.0.1:9100",
        "sub": "ci/repo:octo-org/octo-repo:ref:refs/heads/main",
        "aud": "https://api.example",
        "client_id": "ci/repo:octo-org/octo-repo:ref:refs/heads/main",
        "scope": "deploy",
        "iat": now,
        "exp": now + 300,
        "jti": "Vd2nq8sJx0bT5mK9rW3eY7hU1cA4fG6i",
    }
    return f"{_json_b64(header)}.{_json_b64(payload)}".encode("ascii")


def verify_rs256(key: rsa.RSAPublicKey, signing_input: bytes, signature: bytes) -> None:
    key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())


def measure_token_exchange(seconds: float = 2.0) -> dict[str, float]:
    """Ops/sec of the token-exchange floor (RS256 verify + ES256 sign), plus its two primitives."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer_pub = issuer_key.public_key()
    at_input = exchanged_token_signing_input()
    gh_input, gh_sig = github_actions_token(issuer_key)

    def token_exchange() -> None:
        verify_rs256(issuer_pub, gh_input, gh_sig)
        sign_es256(server_key, at_input)

    return {
        "token_exchange": _rate(token_exchange, seconds),
        "rs256_verify": _rate(lambda: verify_rs256(issuer_pub, gh_input, gh_sig), seconds / 2),
        "es256_sign": _rate(lambda: sign_es256(server_key, at_input), seconds / 2),
    }


MODES = {
    "client_credentials": (
        measure,
        {
            "basic": "client_secret_basic: sha256 + ES256 sign",
            "pkjwt": "private_key_jwt: ES256 verify + ES256 sign",
            "es256_sign": "ES256 sign alone",
            "es256_verify": "ES256 verify alone",
        },
    ),
    "token_exchange": (
        measure_token_exchange,
        {
            "token_exchange": "token exchange: RS256 verify + ES256 sign",
            "rs256_verify": "RS256 verify alone (2048-bit)",
            "es256_sign": "ES256 sign alone",
        },
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per floor (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--mode",
        choices=list(MODES),
        default="client_credentials",
        help="which floor: client_credentials (default) or token_exchange",
    )
    args = parser.parse_args(argv)

    measure_mode, labels = MODES[args.mode]
    result = measure_mode(args.seconds)
    if args.json:
        print(json.dumps(result))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    print(f"crypto floor with cryptography, 1 process on CPU(s) {cpus}:")
    for name, label in labels.items():
        print(f"  {label:<45} {result[name]:>10,.0f} ops/s  {1e6 / result[name]:7.1f} us/op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
