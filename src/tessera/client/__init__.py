"""The workload's side of Tessera: access tokens for calling resource servers.

Depends on ``cryptography``, ``httpx`` and ``orjson`` only: ``pip install tessera`` (no server extras).

    from tessera.client import PrivateKeyJwt, TokenAuth, TokenSource
    source = TokenSource("https://tessera.example.com", PrivateKeyJwt("svc-orders", pem, kid="k1"),
                         audience="https://api.example.com")
    httpx.get("https://api.example.com/orders", auth=TokenAuth(source))

RFC 6749 §4.4 client credentials with ``private_key_jwt`` (RFC 7523 §2.2), ``client_secret_basic``
(RFC 6749 §2.3.1) or a federated assertion read from a file; or, with no client at all, the
platform's identity token exchanged anonymously (RFC 8693, ``SubjectTokenFile``); RFC 8707 resource indicators; RFC 8414
discovery. Tokens are cached and refreshed before expiry by one request at a time (docs/workload-client.md).
"""

from tessera.client.auth import TokenAuth
from tessera.client.credentials import AssertionFile, ClientSecret, Credential, PrivateKeyJwt, SubjectTokenFile
from tessera.client.errors import TokenError
from tessera.client.source import AsyncTokenSource, Token, TokenSource

__all__ = [
    "AssertionFile",
    "AsyncTokenSource",
    "ClientSecret",
    "Credential",
    "PrivateKeyJwt",
    "SubjectTokenFile",
    "Token",
    "TokenAuth",
    "TokenError",
    "TokenSource",
]
