"""A client's ``jwks_uri`` is fetched on its behalf: the SSRF surface (RFC 7591 §2, RFC 7523 §2.2).

Outside development mode, addresses that are not public are never contacted, and the caller learns
nothing about what was (or was not) there. In development mode a loopback JWKS server works, is cached,
and a failing one is not hammered.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import ASSERTION_TYPE, LiveServer, client_assertion, ec_jwk, ec_key


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b"{}"
    status = 200
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, type[_Jwks]]]:
    handler = type("Handler", (_Jwks,), {"hits": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks", handler
    httpd.shutdown()
    httpd.server_close()


def _token(server: LiveServer, client_id: str, key: Any) -> httpx.Response:
    return httpx.post(
        server.token_endpoint,
        timeout=15,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(key, client_id, server.token_endpoint),
        },
    )


def test_non_public_jwks_uri_is_never_contacted_and_nothing_leaks(server: LiveServer) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        reg = server.register(token_endpoint_auth_method="private_key_jwt", jwks_uri=f"https://127.0.0.1:{port}/jwks")
        answers = [_token(server, reg["client_id"], ec_key()) for _ in range(3)]
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
    for r in answers:
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
        assert str(port) not in r.text and "127.0.0.1" not in r.text


def test_http_jwks_uri_needs_development_mode(server: LiveServer) -> None:
    r = httpx.post(
        server.issuer + "/oauth/register",
        timeout=10,
        headers={"Authorization": f"Bearer {server.reg_token}"},
        json={"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "http://127.0.0.1:9/jwks"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata"


@pytest.fixture
def dev_server(tmp_path: pathlib.Path) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_DEV_MODE": "true"}).start()
    yield srv
    srv.stop()


def test_dev_mode_loopback_jwks_uri_is_fetched_once_and_cached(dev_server: LiveServer, jwks_server) -> None:
    url, handler = jwks_server
    key = ec_key()
    handler.body = json.dumps({"keys": [ec_jwk(key, "k1")]}).encode()
    reg = dev_server.register(token_endpoint_auth_method="private_key_jwt", jwks_uri=url)
    assert _token(dev_server, reg["client_id"], key).status_code == 200
    assert _token(dev_server, reg["client_id"], key).status_code == 200
    assert handler.hits == 1


def test_dev_mode_failing_jwks_uri_is_not_hammered(dev_server: LiveServer, jwks_server) -> None:
    url, handler = jwks_server
    handler.status, handler.body = 500, b"oops"
    reg = dev_server.register(token_endpoint_auth_method="private_key_jwt", jwks_uri=url)
    for _ in range(4):
        r = _token(dev_server, reg["client_id"], ec_key())
        assert r.status_code == 401 and "500" not in r.text
    assert handler.hits == 1, "a failure is remembered for 30 s"
