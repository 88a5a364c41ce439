"""The development channel: each message is appended to a file as one JSON line, links included.

The file is created readable by its owner only (0600) and written under a lock (a thread lock and an
``flock``), so sends from several tasks or processes never interleave. It is not for production: the
links it holds are live credentials for whoever can read the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from pathlib import Path

import orjson

from tessera.channels.message import DeliveryError, Message

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileChannel"]

log = logging.getLogger("tessera.channels.file")


class FileChannel:
    def __init__(self, path: str | os.PathLike[str], name: str = "file") -> None:
        self.name = name
        self.path = Path(path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileChannel({str(self.path)!r})"

    async def send(self, message: Message) -> None:
        line = orjson.dumps(dataclasses.asdict(message), option=orjson.OPT_SORT_KEYS) + b"\n"
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as e:
            raise DeliveryError(f"could not write to {self.path} ({type(e).__name__})") from None
        log.info("message %s (%s) for %s written to %s", message.id, message.kind, message.recipient, self.path)

    def _append(self, line: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o600)  # a file created by hand with wider permissions is narrowed
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)  # closing releases the flock
