"""Identifiers from the operating system's CSPRNG, read in blocks.

On this project's benchmark machine one ``os.urandom`` call cost as much as a fifth of a whole
token request (the sandbox makes ``getrandom`` slow), so token identifiers are sliced from 4 KiB
blocks of ``secrets.token_bytes`` output. Every byte is used once; the output is the same CSPRNG's.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading

__all__ = ["random_id"]

_BLOCK = 4096
_lock = threading.Lock()
_buf = b""
_pos = 0


def _take(n: int) -> bytes:
    global _buf, _pos
    with _lock:
        if _pos + n > len(_buf):
            _buf, _pos = secrets.token_bytes(_BLOCK), 0
        out = _buf[_pos : _pos + n]
        _pos += n
        return out


def _reset() -> None:
    global _buf, _pos
    _buf, _pos = b"", 0


# A forked child must never reuse bytes its parent already holds.
os.register_at_fork(after_in_child=_reset)


def random_id(nbytes: int = 18) -> str:
    """A URL-safe identifier carrying ``nbytes`` random bytes (144 bits by default)."""
    return base64.urlsafe_b64encode(_take(nbytes)).rstrip(b"=").decode("ascii")
