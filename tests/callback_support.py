"""An OAuth client's redirect endpoint on loopback (RFC 8252 §7.3): a tiny HTTP server that records the
authorization response's query parameters and answers with a plain page."""

from __future__ import annotations

import http.server
import threading
import time
from urllib.parse import parse_qs, urlsplit

from support import free_port


class Callback:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/callback"
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/callback":
                    outer.received.append({k: v[0] for k, v in parse_qs(parts.query).items()})
                body = b"<!doctype html><title>Agent</title><h1 id='done'>You can close this window.</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int = 1, timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return self.received[count - 1]
            time.sleep(0.05)
        raise AssertionError(f"no authorization response #{count} within {timeout}s")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
