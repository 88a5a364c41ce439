"""Token Status List decoding for relying parties (IETF draft-ietf-oauth-status-list-20).

A status list is a byte array, ZLIB-compressed and base64url-encoded (``lst``), of ``bits``-bit
entries (1, 2, 4 or 8) packed least-significant first: index ``i`` lives in byte
``i // (8 // bits)`` at bit offset ``(i % (8 // bits)) * bits``. Status values: 0x00 VALID,
0x01 INVALID, 0x02 SUSPENDED; 0x03 and 0x0C-0x0F are application-specific.

Decompression is capped (``max_bytes``): a list that would inflate past the cap is refused, so a
small hostile ``lst`` cannot exhaust memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from tessera.verify.errors import StatusUnavailable
from tessera.verify.jws import b64url_decode

__all__ = ["INVALID", "SUSPENDED", "VALID", "StatusList", "decode_status_list", "encode_status_list"]

VALID, INVALID, SUSPENDED = 0x00, 0x01, 0x02
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StatusList:
    bits: int
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data) * (8 // self.bits)

    def get(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not (0 <= index < self.size):
            raise StatusUnavailable(f"status index {index!r} is outside the list (size {self.size})")
        per_byte = 8 // self.bits
        shift = (index % per_byte) * self.bits
        return (self.data[index // per_byte] >> shift) & ((1 << self.bits) - 1)


def decode_status_list(bits: object, lst: object, max_bytes: int = DEFAULT_MAX_BYTES) -> StatusList:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (1, 2, 4, 8):  # 1.0 == 1 in Python
        raise StatusUnavailable("status_list.bits must be 1, 2, 4 or 8")
    if not isinstance(lst, str) or not lst:
        raise StatusUnavailable("status_list.lst must be a non-empty string")
    try:
        compressed = b64url_decode(lst)
    except Exception:
        raise StatusUnavailable("status_list.lst is not base64url") from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, max_bytes)
    except zlib.error:
        raise StatusUnavailable("status_list.lst is not ZLIB data") from None
    if inflater.unconsumed_tail or (not inflater.eof and inflater.decompress(b"", 1)):
        raise StatusUnavailable(f"status list inflates beyond {max_bytes} bytes: refused")
    if not inflater.eof:
        raise StatusUnavailable("status_list.lst is truncated")
    if inflater.unused_data:
        raise StatusUnavailable("status_list.lst has bytes after the ZLIB stream")
    assert isinstance(bits, int)
    return StatusList(bits, data)


def encode_status_list(bits: int, statuses: dict[int, int], size: int) -> str:
    """The ``lst`` string for ``size`` entries, those in ``statuses`` set (for tests and tools)."""
    import base64

    per_byte = 8 // bits
    data = bytearray((size + per_byte - 1) // per_byte)
    for index, value in statuses.items():
        data[index // per_byte] |= value << ((index % per_byte) * bits)
    return base64.urlsafe_b64encode(zlib.compress(bytes(data), 9)).rstrip(b"=").decode()
