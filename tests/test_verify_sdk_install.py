"""The relying-party SDK installs and works on its own (README "Verifying tokens"; pyproject base dependencies).

"A relying party installs only the SDK (pip install of the package without server extras) in a fresh
virtual environment and verifies tokens": one fresh venv per test session, ``pip install`` of this
repository *without* ``[server]``; inside it, none of the server's dependencies is importable, yet
``tessera.verify`` verifies a token (keys served through ``httpx.MockTransport``), ``tessera.client`` obtains one,
and the ``tessera verify`` and ``tessera token`` commands work.

The package is installed from a copy of the repository's build inputs (``pyproject.toml``, ``README.md``,
``src/``) so pip's in-tree build leaves no ``build/`` or ``*.egg-info`` behind in the working tree.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from support import free_port

REPO = pathlib.Path(__file__).resolve().parents[1]
SERVER_ONLY = ("starlette", "fastapi", "sqlalchemy", "pydantic", "joserfc", "uvicorn", "alembic", "psycopg")


class SdkVenv:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.python = str(self.bin / "python")
        self.tessera = str(self.bin / "tessera")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "PYTHON", "VIRTUAL_ENV"))}

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.root
        )


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkVenv]:
    root = tmp_path_factory.mktemp("sdk")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    venv = SdkVenv(root)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, capture_output=True, timeout=300)
    pip = venv.run(venv.python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source), timeout=900)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    yield venv


def test_server_dependencies_are_absent_and_the_sdk_verifies(sdk: SdkVenv) -> None:
    script = textwrap.dedent("""
        import base64, importlib.util, json, sys, time

        server_only = %r
        present = [m for m in server_only if importlib.util.find_spec(m) is not None]
        assert not present, f"server dependencies installed without [server]: {present}"

        import httpx
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        import tessera.verify.asgi  # importable without any web framework
        from tessera.verify import BadSignature, Verifier

        def b64u(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        def sign(key, claims):
            si = b64u(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}).encode()) + "." + \\
                b64u(json.dumps(claims).encode())
            r, s = decode_dss_signature(key.sign(si.encode(), ec.ECDSA(hashes.SHA256())))
            return si + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

        issuer = "https://issuer.example"
        key = ec.generate_private_key(ec.SECP256R1())
        n = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
               "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}

        def handler(request):
            url = str(request.url)
            if url == issuer + "/.well-known/oauth-authorization-server":
                return httpx.Response(200, json={"issuer": issuer, "jwks_uri": issuer + "/oauth/jwks"})
            if url == issuer + "/oauth/jwks":
                return httpx.Response(200, json={"keys": [jwk]})
            return httpx.Response(404)

        verifier = Verifier(issuer, audiences=["https://api.example"], transport=httpx.MockTransport(handler),
                            background_refresh=False)
        now = int(time.time())
        claims = verifier.verify(sign(key, {"iss": issuer, "sub": "svc", "aud": "https://api.example",
                                             "iat": now, "exp": now + 300, "jti": "j1", "scope": "read"}))
        assert claims["sub"] == "svc" and claims.report.source == "network", claims
        forged = sign(ec.generate_private_key(ec.SECP256R1()),
                      {"iss": issuer, "sub": "svc", "aud": "https://api.example", "iat": now, "exp": now + 300,
                       "jti": "j2"})
        try:
            verifier.verify(forged)
        except BadSignature:
            pass
        else:
            raise AssertionError("a forged token verified")

        try:
            tessera.verify.asgi.bearer_dependency(verifier)
        except ImportError:
            pass  # the FastAPI glue needs the framework, and says so only when used
        else:
            raise AssertionError("bearer_dependency worked without Starlette")

        # the workload client SDK too: a token from a token endpoint (served through httpx.MockTransport)
        from tessera.client import ClientSecret, TokenSource

        def token_endpoint(request):
            assert request.headers["authorization"].startswith("Basic ")
            return httpx.Response(200, json={"access_token": "at", "token_type": "Bearer", "expires_in": 300})

        source = TokenSource(issuer, ClientSecret("svc", "s3cret"), token_endpoint=issuer + "/oauth/token",
                             transport=httpx.MockTransport(token_endpoint))
        assert source.token() == "at"

        leaked = sorted(m for m in sys.modules
                        if m.split(".")[0] in server_only
                        or m.startswith(("tessera.oauth", "tessera.store", "tessera.http", "tessera.audit",
                                         "tessera.runtime", "tessera.settings")))
        assert not leaked, f"the SDK imported server code: {leaked}"
        print("SDK-OK")
    """) % (SERVER_ONLY,)
    r = sdk.run(sdk.python, "-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "SDK-OK"


def test_the_package_is_a_real_install_not_the_working_tree(sdk: SdkVenv) -> None:
    r = sdk.run(sdk.python, "-c", "import tessera.verify, sys; print(tessera.verify.__file__)")
    assert r.returncode == 0, r.stderr
    installed = pathlib.Path(r.stdout.strip())
    assert "site-packages" in installed.parts and REPO not in installed.parents


def test_cli_help_works_in_the_sdk_install(sdk: SdkVenv) -> None:
    r = sdk.run(sdk.tessera, "--help")
    assert r.returncode == 0, r.stderr
    assert "verify" in r.stdout


def test_cli_verify_help_and_usage_errors_in_the_sdk_install(sdk: SdkVenv) -> None:
    r = sdk.run(sdk.tessera, "verify", "--help")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--issuer" in r.stdout and "Traceback" not in r.stderr
    usage = sdk.run(sdk.tessera, "verify", "x.y.z", "--audience", "https://api.example")
    assert usage.returncode == 2 and "Missing option '--issuer'" in usage.stderr, usage.stderr


def test_cli_verify_refuses_with_a_reason_in_the_sdk_install(sdk: SdkVenv) -> None:
    malformed = sdk.run(
        sdk.tessera, "verify", "not-a-token", "--issuer", "https://issuer.example", "--audience", "https://api.example"
    )
    assert malformed.returncode == 1, malformed.stderr
    out = json.loads(malformed.stdout)
    assert out["valid"] is False and out["reason"] == "malformed"

    # a well-formed token, and an issuer nobody listens for on loopback: fail closed, no traceback
    token = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsxIn0.eyJzdWIiOiJzdmMifQ." + "A" * 86
    unreachable = sdk.run(
        sdk.tessera,
        "verify",
        "-",
        "--issuer",
        f"http://127.0.0.1:{free_port()}",
        "--audience",
        "https://api.example",
        stdin=token + "\n",
    )
    assert unreachable.returncode == 1, unreachable.stderr
    assert json.loads(unreachable.stdout)["reason"] == "trust_data_stale"


def test_cli_token_works_in_the_sdk_install(sdk: SdkVenv) -> None:
    r = sdk.run(sdk.tessera, "token", "--help")
    assert r.returncode == 0 and "--assertion-file" in r.stdout, r.stdout + r.stderr
    sdk.env["TOKEN_SECRET"] = "s3cret"
    try:
        unreachable = sdk.run(
            sdk.tessera,
            "token",
            "--issuer",
            f"http://127.0.0.1:{free_port()}",
            "--client-id",
            "svc",
            "--secret-env",
            "TOKEN_SECRET",
        )
    finally:
        del sdk.env["TOKEN_SECRET"]
    assert unreachable.returncode == 1 and unreachable.stdout == "", unreachable.stdout + unreachable.stderr
    assert unreachable.stderr.startswith("tessera: unreachable") and "Traceback" not in unreachable.stderr


def test_server_commands_say_the_server_is_not_installed(sdk: SdkVenv) -> None:
    r = sdk.run(sdk.tessera, "serve", timeout=60)
    assert r.returncode == 1
    assert "pip install 'tessera[server]'" in r.stderr and "Traceback" not in r.stderr
