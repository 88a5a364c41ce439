"""Test support for identity federation: fake external identity providers and an independent relying party.

The fakes are real HTTP servers on 127.0.0.1 (``http.server.ThreadingHTTPServer`` in a daemon thread), so
whatever fetches discovery documents, JWK Sets or SPIFFE bundles does so over a socket, exactly as in
production. Tokens are signed with `cryptography` alone (ES256 as raw r||s per RFC 7518 §3.4, RS256 as
RSASSA-PKCS1-v1_5 with SHA-256, EdDSA over Ed25519), so nothing of the code under test helps forge them.

* `FakeIssuer`: an OpenID Connect issuer (discovery + JWKS), e.g. GitHub Actions, GitLab CI, a Kubernetes cluster.
* `FakeSpiffeBundleEndpoint`: a SPIFFE bundle endpoint for one trust domain, minting JWT-SVIDs.
* `github_actions_claims`, `kubernetes_sa_claims`, `gitlab_claims`: realistic claim sets for those issuers.
* `AwsStyleRelyingParty`: a second, independent relying party (PyJWT + httpx) following the validation rules of
  AWS STS ``AssumeRoleWithWebIdentity`` against an IAM OIDC provider; no Tessera code is imported.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Self

import httpx
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from support import b64u, ec_jwk, ec_key

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

SUPPORTED_ALGS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
_EC = {"ES256": (ec.SECP256R1, hashes.SHA256, 32, "P-256"), "ES384": (ec.SECP384R1, hashes.SHA384, 48, "P-384")}
_HS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


# -- keys, JWKs and compact JWS -------------------------------------------------------------------


def generate_key(alg: str) -> PrivateKey:
    """A fresh private key for ``alg`` (ES256 P-256, ES384 P-384, RS256/PS256 RSA-2048, EdDSA Ed25519)."""
    if alg == "ES256":
        return ec_key()
    if alg in _EC:
        return ec.generate_private_key(_EC[alg][0]())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def natural_alg(key: PrivateKey) -> str:
    """The algorithm a key signs with by default."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384"}[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise TypeError(f"unsupported key type {type(key).__name__}")


def public_jwk(key: PrivateKey, kid: str | None = None, *, alg: str | None = None, use: str | None = None) -> dict:
    """The public JWK (RFC 7517/7518/8037) of a private key; ``kid``, ``alg`` and ``use`` added when given."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        jwk: dict[str, Any] = ec_jwk(key)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        size, crv = _EC["ES384"][2], _EC["ES384"][3]
        n = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": b64u(n.x.to_bytes(size, "big")), "y": b64u(n.y.to_bytes(size, "big"))}
    elif isinstance(key, rsa.RSAPrivateKey):
        pn = key.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "n": b64u(pn.n.to_bytes((pn.n.bit_length() + 7) // 8, "big")),
            "e": b64u(pn.e.to_bytes(3, "big")),
        }
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    else:
        raise TypeError(f"unsupported key type {type(key).__name__}")
    for name, value in (("kid", kid), ("alg", alg), ("use", use)):
        if value is not None:
            jwk[name] = value
    return jwk


def public_pem(key: PrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half: the HMAC secret of the classic algorithm-confusion attack."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_signature(alg: str, key: PrivateKey | bytes, data: bytes) -> bytes:
    """A JWS signature over ``data``: ``none`` is empty, ``HS*`` uses ``key`` as the secret (bytes, or a key's PEM)."""
    if alg == "none":
        return b""
    if alg in _HS:
        secret = key if isinstance(key, bytes) else public_pem(key)
        return hmac.new(secret, data, _HS[alg]).digest()
    if isinstance(key, bytes):
        raise TypeError(f"{alg} needs a private key, not bytes")
    if alg in _EC and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == _EC[alg][0].name:
        _, hash_cls, size, _ = _EC[alg]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_cls())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if alg == "PS256" and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), hashes.SHA256().digest_size), hashes.SHA256())
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise ValueError(f"a {type(key).__name__} cannot sign {alg} (use headers={{'alg': ...}} to lie in the header)")


def sign_jws(header: dict[str, Any], claims: dict[str, Any], key: PrivateKey | bytes, alg: str | None = None) -> str:
    """Compact JWS of ``claims`` under ``header``; the signature uses ``alg`` (default: the header's ``alg``)."""
    alg = alg or header["alg"]
    si = (
        b64u(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64u(json.dumps(claims, separators=(",", ":")).encode())
    )
    return si + "." + b64u(raw_signature(alg, key, si.encode()))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class SigningKey(NamedTuple):
    kid: str
    alg: str
    private: PrivateKey


class RequestRecord(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]


# -- the HTTP server underneath both fakes ---------------------------------------------------------


class _LocalServer:
    """A JSON-over-HTTP server on 127.0.0.1 with per-path hit counting, failure injection and a key ring."""

    def __init__(self, *, algs: Iterable[str], port: int = 0, use: str | None, with_alg: bool) -> None:
        self.algs = tuple(algs)
        if not self.algs or any(a not in SUPPORTED_ALGS for a in self.algs):
            raise ValueError(f"algs must be drawn from {SUPPORTED_ALGS}, got {self.algs}")
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[RequestRecord] = []
        self.fail = False  # every request answers `fail_status` (still counted)
        self.fail_status = 503
        self.delay = 0.0  # seconds to sleep before answering (timeouts)
        self.extra_jwks: list[dict[str, Any]] = []  # published verbatim after the real keys
        self._lock = threading.RLock()
        self._use, self._with_alg = use, with_alg
        self._keys: dict[str, SigningKey] = {}  # every key ever made, by kid (retired ones stay mintable)
        self._published: list[str] = []
        self._current = ""
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int = self._bind(port).server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._new_key(self.algs[0])

    # keys

    def _new_key(self, alg: str, kid: str | None = None) -> str:
        with self._lock:
            kid = kid or secrets.token_urlsafe(8)
            if kid in self._keys:
                raise ValueError(f"kid {kid!r} already used")
            self._keys[kid] = SigningKey(kid, alg, generate_key(alg))
            self._published.append(kid)
            self._current = kid
            return kid

    def rotate(self, alg: str | None = None, *, drop_old: bool = False, kid: str | None = None) -> str:
        """Add a key (new kid; same alg as the current one unless given) and sign with it from now on.

        The old keys stay published unless ``drop_old``. Returns the new kid.
        """
        with self._lock:
            old = list(self._published)
            new = self._new_key(alg or self._keys[self._current].alg, kid)
            if drop_old:
                for k in old:
                    self._published.remove(k)
            return new

    def retire(self, kid: str) -> None:
        """Stop publishing a key (it can still sign via ``mint(kid=...)``, to test unpublished keys)."""
        with self._lock:
            self._published.remove(kid)

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def current_key(self) -> SigningKey:
        with self._lock:
            return self._keys[self._current]

    @property
    def published_kids(self) -> list[str]:
        with self._lock:
            return list(self._published)

    def key(self, kid: str) -> SigningKey:
        with self._lock:
            return self._keys[kid]

    def jwks(self) -> dict[str, Any]:
        """The JWK Set as served (``{"keys": [...]}``)."""
        with self._lock:
            keys = [
                public_jwk(k.private, k.kid, alg=k.alg if self._with_alg else None, use=self._use)
                for k in (self._keys[kid] for kid in self._published)
            ]
            return {"keys": keys + [dict(j) for j in self.extra_jwks]}

    def _sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None,
        alg: str | None,
        typ: str | None,
        headers: dict[str, Any] | None,
        key: PrivateKey | bytes | None,
    ) -> str:
        with self._lock:
            if key is None:
                chosen = self._keys.get(kid) if kid is not None else None
                chosen = chosen or self._keys[self._current]
                sign_key: PrivateKey | bytes = chosen.private
                default_alg = chosen.alg
                header_kid = kid if kid is not None else chosen.kid
            else:
                sign_key = key
                default_alg = "HS256" if isinstance(key, bytes) else natural_alg(key)
                header_kid = kid if kid is not None else self._current
        alg = alg or default_alg
        header = _drop_none({"alg": alg, "typ": typ, "kid": header_kid, **(headers or {})})
        return sign_jws(header, _drop_none(claims), sign_key, alg)

    # HTTP

    def _routes(self) -> dict[str, Callable[[], tuple[dict[str, Any], dict[str, str]]]]:
        raise NotImplementedError

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(req.path).path
        with self._lock:
            self.hits[path] += 1
            self.requests.append(RequestRecord(req.command, path, dict(req.headers.items())))
            fail, status, delay = self.fail, self.fail_status, self.delay
        if delay:
            time.sleep(delay)
        route = self._routes().get(path)
        extra: dict[str, str] = {}
        if fail:
            code, body = status, {"error": "temporarily_unavailable"}
        elif req.command != "GET":
            code, body = 405, {"error": "method_not_allowed"}
        elif route is None:
            code, body = 404, {"error": "not_found"}
        else:
            code = 200
            body, extra = route()
        data = json.dumps(body).encode()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(data)

    def _bind(self, port: int) -> http.server.ThreadingHTTPServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "FakeIdP/1.0"

            def do_GET(self) -> None:
                owner._handle(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        return self._httpd

    def start(self) -> Self:
        """Serve in a daemon thread; after ``stop()`` this re-binds the same port (an IdP coming back)."""
        if self._thread is not None:
            return self
        if self._httpd is None:
            self._bind(self.port)
        assert self._httpd is not None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True, name=f"fake-idp-{self.port}"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (connections are then refused)."""
        if self._httpd is not None:
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join(5)
            self._httpd.server_close()
        self._httpd, self._thread = None, None

    def hit_count(self, url_or_path: str) -> int:
        with self._lock:
            return self.hits[urllib.parse.urlsplit(url_or_path).path]

    def reset_hits(self) -> None:
        with self._lock:
            self.hits.clear()
            self.requests.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- an OpenID Connect issuer ----------------------------------------------------------------------


class FakeIssuer(_LocalServer):
    """An OIDC issuer: ``<issuer>/.well-known/openid-configuration`` and a JWK Set at ``jwks_path``.

    >>> with FakeIssuer(algs=("RS256",), path="/tenant-a") as idp:
    ...     token = idp.mint(github_actions_claims("sts.amazonaws.com"))
    """

    def __init__(
        self,
        *,
        algs: Iterable[str] = ("ES256",),
        path: str = "",
        jwks_path: str = "/jwks",
        max_age: int | None = 300,
        lifetime: int = 300,
        port: int = 0,
    ) -> None:
        super().__init__(algs=algs, port=port, use="sig", with_alg=True)
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.issuer = self.base_url + self.path
        self.jwks_path = "/" + jwks_path.lstrip("/")
        self.jwks_uri = self.base_url + self.jwks_path
        self.discovery_path = self.path + "/.well-known/openid-configuration"
        self.discovery_url = self.base_url + self.discovery_path
        self.max_age = max_age  # Cache-Control: max-age on the JWKS; None sends no Cache-Control
        self.lifetime = lifetime
        self.metadata_issuer_override: str | None = None
        self.metadata_extra: dict[str, Any] = {}  # merged into the discovery document (None removes a member)

    def metadata(self) -> dict[str, Any]:
        """The discovery document as served."""
        with self._lock:
            algs = sorted({self._keys[k].alg for k in self._published})
        doc = {
            "issuer": self.metadata_issuer_override or self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": algs,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
        }
        doc.update(self.metadata_extra)
        return _drop_none(doc)

    def _routes(self) -> dict[str, Callable[[], tuple[dict[str, Any], dict[str, str]]]]:
        cache = {"Cache-Control": f"max-age={self.max_age}"} if self.max_age is not None else {}
        return {self.discovery_path: lambda: (self.metadata(), {}), self.jwks_path: lambda: (self.jwks(), cache)}

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str | None = None,
        alg: str | None = None,
        typ: str | None = "JWT",
        headers: dict[str, Any] | None = None,
        key: PrivateKey | bytes | None = None,
        lifetime: int | None = None,
        now: float | None = None,
    ) -> str:
        """A signed JWT. ``iss``, ``iat``, ``exp`` (now + lifetime) and ``jti`` are filled unless given; a claim
        given as ``None`` is removed (``{"jti": None}``).

        * ``kid``: naming one of this issuer's keys (published or retired) signs with it; any other value is only
          put in the header while the current key signs. Default: the signing key's kid.
        * ``key``: a private key of the caller's (e.g. unpublished) signs instead; the header kid stays the current
          one unless ``kid`` says otherwise. Bytes are an HMAC secret.
        * ``alg``: the signing algorithm (must fit the key), or ``"none"`` (empty signature), or ``"HS256"`` (HMAC
          keyed with the signing key's public PEM: algorithm confusion).
        * ``headers``: merged into the header last, so it can lie (``{"alg": "ES384"}``) or remove (``{"kid": None}``).
        """
        now = time.time() if now is None else now
        full: dict[str, Any] = {
            "iss": self.issuer,
            "iat": int(now),
            "exp": int(now) + (self.lifetime if lifetime is None else lifetime),
            "jti": secrets.token_urlsafe(16),
        }
        full.update(claims or {})
        return self._sign(full, kid=kid, alg=alg, typ=typ, headers=headers, key=key)


# -- SPIFFE ----------------------------------------------------------------------------------------


class FakeSpiffeBundleEndpoint(_LocalServer):
    """A SPIFFE bundle endpoint for one trust domain, serving its bundle (JWT-SVID keys only) at ``url``.

    The bundle is a JWK Set whose keys carry ``"use": "jwt-svid"`` and a ``kid``, plus ``spiffe_sequence``
    (incremented by every ``rotate``) and ``spiffe_refresh_hint`` (seconds), per the SPIFFE Trust Domain and Bundle
    specification.
    """

    def __init__(
        self,
        trust_domain: str = "example.org",
        *,
        algs: Iterable[str] = ("ES256",),
        path: str = "/bundle",
        refresh_hint: int | None = 300,
        sequence: int = 1,
        lifetime: int = 300,
        port: int = 0,
    ) -> None:
        super().__init__(algs=algs, port=port, use="jwt-svid", with_alg=False)
        self.trust_domain = trust_domain
        self.path = "/" + path.lstrip("/")
        self.url = self.base_url + self.path
        self.refresh_hint = refresh_hint
        self.sequence = sequence
        self.lifetime = lifetime

    def spiffe_id(self, path: str = "/ns/prod/sa/api") -> str:
        return f"spiffe://{self.trust_domain}/{path.lstrip('/')}"

    def bundle(self) -> dict[str, Any]:
        """The bundle document (also the thing to configure inline)."""
        with self._lock:
            doc: dict[str, Any] = self.jwks()
            doc["spiffe_sequence"] = self.sequence
            if self.refresh_hint is not None:
                doc["spiffe_refresh_hint"] = self.refresh_hint
            return doc

    def rotate(self, alg: str | None = None, *, drop_old: bool = False, kid: str | None = None) -> str:
        with self._lock:
            new = super().rotate(alg, drop_old=drop_old, kid=kid)
            self.sequence += 1
            return new

    def retire(self, kid: str) -> None:
        with self._lock:
            super().retire(kid)
            self.sequence += 1

    def _routes(self) -> dict[str, Callable[[], tuple[dict[str, Any], dict[str, str]]]]:
        return {self.path: lambda: (self.bundle(), {})}

    def mint_svid(
        self,
        spiffe_id: str,
        aud: str | list[str],
        *,
        kid: str | None = None,
        alg: str | None = None,
        typ: str | None = "JWT",
        headers: dict[str, Any] | None = None,
        key: PrivateKey | bytes | None = None,
        lifetime: int | None = None,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A JWT-SVID: ``sub`` the SPIFFE ID, ``aud``, ``exp`` (now + lifetime) and ``iat``; extra claims as keyword
        arguments (``None`` removes one, e.g. ``exp=None``). ``typ`` may be "JWT", "JOSE" or None; the other options
        are those of `FakeIssuer.mint`.
        """
        now = time.time() if now is None else now
        full: dict[str, Any] = {
            "sub": spiffe_id,
            "aud": aud,
            "exp": int(now) + (self.lifetime if lifetime is None else lifetime),
            "iat": int(now),
        }
        full.update(claims)
        return self._sign(full, kid=kid, alg=alg, typ=typ, headers=headers, key=key)


# -- claim profiles --------------------------------------------------------------------------------


def github_actions_claims(
    aud: str | list[str],
    repository: str = "octo-org/octo-repo",
    repository_owner: str = "octo-org",
    repository_owner_id: str = "1234567",
    ref: str = "refs/heads/main",
    workflow: str = "deploy",
    *,
    environment: str | None = None,
    event_name: str = "push",
    **overrides: Any,
) -> dict[str, Any]:
    """The claims of a GitHub Actions OIDC token (``iss`` is left to the issuer, ``iat``/``exp``/``jti`` to mint).

    ``sub`` follows GitHub's default template: ``repo:<repo>:environment:<env>`` when the job names an environment,
    ``repo:<repo>:pull_request`` for pull_request events, ``repo:<repo>:ref:<ref>`` otherwise. Overrides win; an
    override of ``None`` removes the claim.
    """
    ref_type = "tag" if ref.startswith("refs/tags/") else "branch"
    if environment is not None:
        sub = f"repo:{repository}:environment:{environment}"
    elif event_name == "pull_request":
        sub = f"repo:{repository}:pull_request"
    else:
        sub = f"repo:{repository}:ref:{ref}"
    sha = secrets.token_hex(20)
    workflow_ref = f"{repository}/.github/workflows/{workflow}.yml@{ref}"
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "aud": aud,
        "nbf": now - 5,
        "ref": ref,
        "ref_type": ref_type,
        "ref_protected": "true" if ref_type == "branch" else "false",
        "sha": sha,
        "repository": repository,
        "repository_id": "690123456",
        "repository_owner": repository_owner,
        "repository_owner_id": repository_owner_id,
        "repository_visibility": "private",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": workflow,
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "event_name": event_name,
        "head_ref": "",
        "base_ref": "",
        "run_id": str(secrets.randbelow(9 * 10**9) + 10**9),
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "environment": environment,
    }
    claims.update(overrides)
    return _drop_none(claims)


def kubernetes_sa_claims(
    aud: str | list[str],
    namespace: str = "prod",
    service_account: str = "api",
    pod: str = "api-7d9f",
    **overrides: Any,
) -> dict[str, Any]:
    """The claims of a projected (bound) Kubernetes service-account token. ``aud`` is always a list, as the API
    server emits it; the ``kubernetes.io`` object binds the token to the service account and pod by name and uid.
    """
    import uuid

    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": [aud] if isinstance(aud, str) else list(aud),
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "nbf": now,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            "pod": {"name": pod, "uid": str(uuid.uuid4())},
        },
    }
    claims.update(overrides)
    return _drop_none(claims)


def gitlab_claims(
    aud: str | list[str],
    project_path: str = "group/project",
    namespace_id: str = "42",
    ref: str = "main",
    *,
    ref_type: str = "branch",
    environment: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The claims of a GitLab CI/CD ID token (``id_tokens:``); ``sub`` is
    ``project_path:<path>:ref_type:<type>:ref:<ref>``. GitLab sends IDs and booleans as strings, except runner_id.
    """
    namespace_path = project_path.rsplit("/", 1)[0]
    sha = secrets.token_hex(20)
    prefix = "refs/heads/" if ref_type == "branch" else "refs/tags/"
    host = "gitlab.example.com"
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": f"project_path:{project_path}:ref_type:{ref_type}:ref:{ref}",
        "aud": aud,
        "nbf": now - 5,
        "namespace_id": namespace_id,
        "namespace_path": namespace_path,
        "project_id": "4242",
        "project_path": project_path,
        "project_visibility": "private",
        "user_id": "1001",
        "user_login": "jdoe",
        "user_email": "jdoe@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": str(secrets.randbelow(9 * 10**8) + 10**8),
        "pipeline_source": "push",
        "job_id": str(secrets.randbelow(9 * 10**9) + 10**9),
        "ref": ref,
        "ref_type": ref_type,
        "ref_path": prefix + ref,
        "ref_protected": "true",
        "runner_id": 7,
        "runner_environment": "gitlab-hosted",
        "sha": sha,
        "ci_config_ref_uri": f"{host}/{project_path}//.gitlab-ci.yml@{prefix}{ref}",
        "ci_config_sha": sha,
        "environment": environment,
        "environment_protected": "true" if environment else None,
        "deployment_tier": "production" if environment else None,
    }
    claims.update(overrides)
    return _drop_none(claims)


# -- an independent relying party ------------------------------------------------------------------


class Refused(Exception):
    """The relying party refused a token; ``str()`` says why."""


class AwsStyleRelyingParty:
    """A relying party that validates web-identity tokens the way AWS STS does for an IAM OIDC provider.

    * ``<provider_url>/.well-known/openid-configuration`` is fetched; its ``issuer`` must equal ``provider_url``
      exactly; its ``jwks_uri`` is fetched (no redirects followed) and cached, and re-fetched once when a token
      names an unknown kid.
    * The key is selected by ``kid`` (a token without one is accepted only if the set has a single key); the header
      ``alg`` must be in ``algorithms`` (never ``none`` or HS*) and match the key's type.
    * ``iss`` must equal ``provider_url``, ``aud`` must contain one of ``client_ids``, ``sub`` must be present,
      ``exp`` must be in the future and ``iat`` present (and not in the future).
    """

    def __init__(
        self,
        provider_url: str,
        client_ids: Iterable[str],
        *,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        leeway: float = 0,
        timeout: float = 5.0,
    ) -> None:
        self.provider_url = provider_url
        self.client_ids = list(client_ids)
        self.algorithms = tuple(a for a in algorithms if a != "none" and not a.startswith("HS"))
        self.leeway = leeway
        self.timeout = timeout
        self._keys: dict[str | None, dict[str, Any]] | None = None
        self.fetches = 0  # JWKS refreshes performed

    def _get_json(self, url: str) -> dict[str, Any]:
        r = httpx.get(url, timeout=self.timeout, follow_redirects=False)
        if r.status_code != 200:
            raise Refused(f"GET {url} answered {r.status_code}")
        doc = r.json()
        if not isinstance(doc, dict):
            raise Refused(f"GET {url} did not return a JSON object")
        return doc

    def refresh(self) -> None:
        """Fetch discovery then the JWK Set."""
        meta = self._get_json(self.provider_url.rstrip("/") + "/.well-known/openid-configuration")
        if meta.get("issuer") != self.provider_url:
            raise Refused(f"discovery names issuer {meta.get('issuer')!r}, not {self.provider_url!r}")
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise Refused("discovery has no jwks_uri")
        keys = self._get_json(jwks_uri).get("keys")
        if not isinstance(keys, list):
            raise Refused("JWK Set has no keys array")
        self._keys = {k.get("kid"): k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"}
        self.fetches += 1

    def _select(self, kid: str | None) -> dict[str, Any]:
        if self._keys is None:
            self.refresh()
        assert self._keys is not None
        if kid is None:
            if len(self._keys) != 1:
                raise Refused("token has no kid and the JWK Set does not hold exactly one key")
            return next(iter(self._keys.values()))
        if kid not in self._keys:
            self.refresh()
        if kid not in self._keys:
            raise Refused(f"no key with kid {kid!r}")
        return self._keys[kid]

    def accept(self, token: str) -> dict[str, Any]:
        """The verified claims, or `Refused`."""
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg not in self.algorithms:
                raise Refused(f"alg {alg!r} not accepted")
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise Refused("kid is not a string")
            jwk = self._select(kid)
            pyjwk = jwt.PyJWK(jwk)
            if pyjwk.algorithm_name != alg:
                raise Refused(f"alg {alg!r} does not fit the {jwk.get('kty')} key {kid!r}")
            claims = jwt.decode(
                token,
                pyjwk.key,
                algorithms=[alg],
                audience=self.client_ids,
                issuer=self.provider_url,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "sub", "exp", "iat"], "verify_iat": True},
            )
        except Refused:
            raise
        except (jwt.PyJWTError, httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise Refused(f"{type(e).__name__}: {e}") from e
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Refused("sub is empty")
        return claims

    def accepts(self, token: str) -> bool:
        with contextlib.suppress(Refused):
            self.accept(token)
            return True
        return False
