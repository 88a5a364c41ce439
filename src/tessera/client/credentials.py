"""How a workload authenticates to the token endpoint: the three credentials a token source takes.

- ``PrivateKeyJwt``: RFC 7523 §2.2 client assertion signed with the workload's own key
  (``private_key_jwt``, OpenID Connect Core §9); a fresh assertion per token request.
- ``ClientSecret``: ``client_secret_basic`` (RFC 6749 §2.3.1).
- ``AssertionFile``: a JWT someone else issued to the workload (a Kubernetes projected
  service-account token, a CI job's OIDC token), sent as the RFC 7523 §2.2 client assertion:
  secretless client authentication. The file is read again for every token request, because its
  owner rotates it.

A credential adds form parameters and headers to a token request; it never sends anything itself.
"""

from __future__ import annotations

import base64
import pathlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote_plus

from tessera.client.errors import TokenError
from tessera.client.jws import PrivateKey, default_alg, load_private_key, sign_compact

__all__ = [
    "JWT_BEARER_ASSERTION_TYPE",
    "AssertionFile",
    "ClientAuthentication",
    "ClientSecret",
    "Credential",
    "PrivateKeyJwt",
]

JWT_BEARER_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 7523 §3 (4): an assertion should live no longer than it takes to be used.
ASSERTION_LIFETIME = 60


@dataclass(frozen=True)
class ClientAuthentication:
    """What a credential adds to one token request."""

    form: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class Credential(Protocol):
    def authenticate(self, token_endpoint: str) -> ClientAuthentication:
        """Parameters for one token request to ``token_endpoint``; raises ``TokenError`` when it cannot."""
        ...


class PrivateKeyJwt:
    """``private_key_jwt``: a client assertion signed with ``private_key`` for every token request.

    ``alg`` defaults to the key's: ES256 (EC P-256), EdDSA (Ed25519) or RS256 (RSA). ``kid`` names
    the registered key; without it the server tries each registered key that fits the algorithm.
    The assertion's times come from ``clock`` (wall time by default), because the server checks
    them against its own: a token source's injected clock does not move them.
    """

    def __init__(
        self,
        client_id: str,
        private_key: PrivateKey | bytes | str,
        *,
        kid: str | None = None,
        alg: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self._key = load_private_key(private_key)
        self.alg = alg or default_alg(self._key)
        self.kid = kid
        self._clock = clock
        sign_compact({"alg": self.alg}, {}, self._key)  # ValueError now if alg does not fit the key

    def authenticate(self, token_endpoint: str) -> ClientAuthentication:
        now = int(self._clock())
        header = {"alg": self.alg, "typ": "JWT"}
        if self.kid:
            header["kid"] = self.kid
        claims = {
            # RFC 7523 §3: iss and sub are the client_id (§2.2), aud identifies the authorization
            # server (the token endpoint's URL), exp is required, jti prevents replay.
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_endpoint,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),  # 192 random bits
        }
        return ClientAuthentication(
            form={
                "client_id": self.client_id,
                "client_assertion_type": JWT_BEARER_ASSERTION_TYPE,
                "client_assertion": sign_compact(header, claims, self._key),
            }
        )

    def __repr__(self) -> str:
        return f"PrivateKeyJwt(client_id={self.client_id!r}, kid={self.kid!r}, alg={self.alg!r})"


class ClientSecret:
    """``client_secret_basic``: HTTP Basic with the client_id and secret."""

    def __init__(self, client_id: str, secret: str) -> None:
        self.client_id = client_id
        self._secret = secret

    def authenticate(self, token_endpoint: str) -> ClientAuthentication:
        # RFC 6749 §2.3.1: the client identifier and password are each encoded with the
        # application/x-www-form-urlencoded algorithm before they form the Basic credentials.
        pair = quote_plus(self.client_id, safe="") + ":" + quote_plus(self._secret, safe="")
        return ClientAuthentication(headers={"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()})

    def __repr__(self) -> str:
        return f"ClientSecret(client_id={self.client_id!r}, secret=***)"


class AssertionFile:
    """A federated credential: the JWT in ``path`` is the client assertion.

    The file is read for every token request (a projected service-account token is swapped by
    the kubelet through a symlink; a size-and-mtime check would miss a same-length rewrite within
    the file system's timestamp granularity). Surrounding whitespace is ignored. ``client_id`` is
    sent when given; without it the server identifies the client by the assertion alone.
    """

    def __init__(self, path: str | pathlib.Path, client_id: str | None = None) -> None:
        self.path = pathlib.Path(path)
        self.client_id = client_id

    def authenticate(self, token_endpoint: str) -> ClientAuthentication:
        try:
            assertion = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenError("credential_unavailable", f"cannot read the assertion file {self.path}: {e}") from None
        if assertion.count(".") != 2:
            raise TokenError("credential_unavailable", f"{self.path} does not hold a compact JWT")
        form = {"client_assertion_type": JWT_BEARER_ASSERTION_TYPE, "client_assertion": assertion}
        if self.client_id:
            form["client_id"] = self.client_id
        return ClientAuthentication(form=form)

    def __repr__(self) -> str:
        return f"AssertionFile({str(self.path)!r}, client_id={self.client_id!r})"


TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class SubjectTokenFile:
    """No client at all: the platform's identity token in ``path`` (a projected service-account token, a
    CI OIDC token) is exchanged for a Tessera token — RFC 8693 token exchange, anonymous; the server's
    trust configuration for the token's issuer decides what it may get (docs/federation.md).

    The file is read for every token request, like ``AssertionFile``.
    """

    def __init__(self, path: str | pathlib.Path, token_type: str = JWT_TOKEN_TYPE) -> None:
        self.path = pathlib.Path(path)
        self.token_type = token_type

    def authenticate(self, token_endpoint: str) -> ClientAuthentication:
        try:
            token = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenError("credential_unavailable", f"cannot read the subject token file {self.path}: {e}") from None
        if token.count(".") != 2:
            raise TokenError("credential_unavailable", f"{self.path} does not hold a compact JWT")
        form = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": token, "subject_token_type": self.token_type}
        return ClientAuthentication(form=form)

    def __repr__(self) -> str:
        return f"SubjectTokenFile({str(self.path)!r})"
