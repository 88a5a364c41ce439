"""A tiny HTTP server on 127.0.0.1 in a daemon thread: the base of the demo's fake CI issuer and phone.

Each binds port 0 (the kernel picks a free port, so there is no race with other programs) and stops
with ``close()``, which shuts the serving thread down and closes the socket.
"""

from __future__ import annotations

import http.server
import threading
from typing import Any, Self

__all__ = ["LoopbackServer"]


class LoopbackServer:
    """Subclasses answer in ``handle(method, path, headers, body) -> (status, headers, body)``."""

    name = "loopback"

    def __init__(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "TesseraDemo/1.0"
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length > 0 else b""
                try:
                    status, headers, out = owner.handle(
                        self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                except Exception:  # a bug in the demo must not hang the client
                    status, headers, out = 500, {"content-type": "text/plain"}, b"internal error"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name=f"demo-{self.name}"
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()
