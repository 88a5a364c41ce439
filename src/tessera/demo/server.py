"""Tessera as the demo runs it: ``tessera serve`` in its own process, the CLI in short-lived ones.

Why a subprocess rather than uvicorn in a thread of the demo: it is the embedded default exactly as an
operator starts it (same command, same lifespan: outbox worker, sweepers, key refresh), it does not
share the demo's GIL with the phone and the CI issuer, and a process group can always be stopped —
SIGTERM, then SIGKILL — even when a step hangs. On Linux the server also gets SIGTERM if the demo
itself dies, even by SIGKILL (``PR_SET_PDEATHSIG``), so nothing outlives a killed demo.

Configuration is only ``TESSERA_*`` environment variables (lists as JSON); the inherited environment's
own ``TESSERA_*`` variables are dropped so that a developer's settings never leak into the demo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ServerError", "TesseraServer", "free_port"]

# The ``tessera`` command, run by this very interpreter (so the demo's own installation serves).
_MAIN = "import sys; from tessera.cli.main import main; sys.exit(main(prog_name='tessera'))"
_TESSERA = [sys.executable, "-c", _MAIN]
# ``tessera serve`` that exits with the demo: on Linux it asks for SIGTERM when its parent dies
# (PR_SET_PDEATHSIG, set after exec — a preexec_fn is unsafe in a process running threads), and
# exits at once if the parent is already gone. argv[1] is the parent's pid.
_SERVE = [
    sys.executable,
    "-c",
    "import os, sys\n"
    "if sys.platform == 'linux':\n"
    "    import ctypes, signal\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv.pop(1)):\n"
    "    sys.exit(1)\n" + _MAIN,
]


class ServerError(Exception):
    """The server did not start or a CLI command failed; the message says what it printed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TesseraServer:
    def __init__(self, data_dir: Path, settings: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        self.env.update(
            {
                "TESSERA_ISSUER": self.issuer,
                "TESSERA_HOST": "127.0.0.1",
                "TESSERA_PORT": str(self.port),
                "TESSERA_DATA_DIR": str(data_dir / "tessera"),
                "TESSERA_LOG_LEVEL": "warning",
            }
        )
        self.env.update({"TESSERA_" + k.upper(): str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def _set_port(self, port: int) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.env.update({"TESSERA_ISSUER": self.issuer, "TESSERA_PORT": str(port)})

    def cli(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``tessera ARGV`` against the same settings; raises ``ServerError`` with its output on failure."""
        r = subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
            [*_TESSERA, *argv], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            said = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
            raise ServerError(f"`tessera {' '.join(argv[:2])}` exited {r.returncode}: " + " / ".join(said))
        return r

    def start(self, timeout: float = 60) -> None:
        """Start ``tessera serve`` and wait for its discovery document. A port taken meanwhile by another
        program (the free port is picked before the server binds it) gets two more tries."""
        for attempt in range(3):
            if attempt:
                self._set_port(free_port())
            if self._start_once(timeout):
                return
        raise ServerError("tessera serve could not bind a free port: " + self.log_tail())

    def _start_once(self, timeout: float) -> bool:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
                [*_SERVE, str(os.getpid()), "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole, untouched by the terminal's ^C
            )
        deadline = time.monotonic() + timeout
        url = self.issuer + "/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log_tail().lower():
                    return False
                raise ServerError(f"tessera serve exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return True
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"tessera serve did not answer within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return " / ".join(line for line in text.strip().splitlines()[-lines:]) or "(the server printed nothing)"

    def exited(self) -> bool:
        """The server was started and has exited on its own (a crash, not ``stop()``)."""
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it has not exited after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
