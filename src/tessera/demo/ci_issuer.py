"""The demo's CI platform: an OpenID-style issuer of workload identity tokens on loopback.

It serves what a real CI issuer (GitHub Actions, GitLab CI) serves — OpenID Connect Discovery 1.0 §4
metadata at ``/.well-known/openid-configuration`` and a JWK Set (RFC 7517) at ``/jwks`` — and mints
ES256 JWTs (RFC 7519) shaped like a GitHub Actions job's OIDC token, signed with joserfc. Tessera
fetches the keys over real HTTP, exactly as it does from a real platform.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from tessera.demo.loopback import LoopbackServer

__all__ = ["CiIssuer"]


class CiIssuer(LoopbackServer):
    name = "ci-issuer"

    def __init__(self, *, lifetime: int = 300) -> None:
        super().__init__()
        self.issuer = self.base_url
        self.lifetime = lifetime
        self.kid = "ci-" + secrets.token_hex(4)
        self._key = ECKey.generate_key("P-256", parameters={"kid": self.kid, "alg": "ES256", "use": "sig"})
        self.fetches = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.base_url + "/jwks",
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository"],
        }

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        doc: dict[str, Any] | None = None
        if method == "GET" and path == "/.well-known/openid-configuration":
            doc = self.metadata()
        elif method == "GET" and path == "/jwks":
            self.fetches += 1
            doc = {"keys": [self._key.as_dict(private=False)]}
        if doc is None:
            return 404, {"content-type": "application/json"}, b'{"error":"not_found"}'
        headers = {"content-type": "application/json", "cache-control": "max-age=300"}
        return 200, headers, json.dumps(doc).encode()

    def job_token(
        self, audience: str, *, repository: str, owner_id: str, ref: str = "refs/heads/main", workflow: str = "deploy"
    ) -> str:
        """A job's identity token, with the claims a GitHub Actions token carries (``sub`` in GitHub's
        default ``repo:<repository>:ref:<ref>`` form)."""
        now = int(time.time())
        sha = secrets.token_hex(20)
        owner = repository.split("/", 1)[0]
        claims = {
            "iss": self.issuer,
            "sub": f"repo:{repository}:ref:{ref}",
            "aud": audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.lifetime,
            "jti": secrets.token_urlsafe(16),
            "ref": ref,
            "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
            "sha": sha,
            "repository": repository,
            "repository_owner": owner,
            "repository_owner_id": owner_id,
            "workflow": workflow,
            "job_workflow_ref": f"{repository}/.github/workflows/{workflow}.yml@{ref}",
            "run_id": str(secrets.randbelow(9 * 10**9) + 10**9),
            "event_name": "push",
            "runner_environment": "github-hosted",
        }
        return jwt.encode({"alg": "ES256", "kid": self.kid, "typ": "JWT"}, claims, self._key)
