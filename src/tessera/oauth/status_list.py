"""Token Status List encoding — draft-ietf-oauth-status-list-20 §4 (Status List) and §7 (Status Types).

§4.1: each Referenced Token's status is ``bits`` bits (1, 2, 4 or 8) of a byte array, packed from the
least significant bit: index ``i`` lives in byte ``i // (8 // bits)`` at bit offset
``(i % (8 // bits)) * bits``. The array is compressed with DEFLATE in the ZLIB format ("RECOMMENDED to
use the highest compression level available": level 9) and §4.2: ``lst`` is its base64url encoding
without padding.

The decoder treats ``lst`` as untrusted: strict base64url, a complete ZLIB stream with nothing after
it, and a cap on the decompressed size (a few hundred bytes of ``lst`` can inflate to gigabytes).
The relying-party SDK has its own decoder (``tessera.verify`` does not import the server side).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping

__all__ = [
    "ALLOWED_BITS",
    "INVALID",
    "MAX_DECODED_BYTES",
    "SUSPENDED",
    "VALID",
    "StatusArray",
    "StatusListError",
    "decode",
    "encode",
    "pack",
]

# §7.1 Status Type values.
VALID = 0x00
INVALID = 0x01
SUSPENDED = 0x02

ALLOWED_BITS = (1, 2, 4, 8)
#: Largest decompressed byte array :func:`decode` accepts by default: 2^24 entries of 8 bits.
MAX_DECODED_BYTES = 1 << 24
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_NONZERO = re.compile(rb"[^\x00]")


class StatusListError(ValueError):
    """The status list is malformed, too large, or a value does not fit its ``bits``."""


def _check_bits(bits: object) -> int:
    # §4.2: "The allowed values for bits are 1,2,4 and 8."
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise StatusListError(f"bits must be one of {ALLOWED_BITS}, got {bits!r}")
    return bits


class StatusArray:
    """A decompressed status list: ``array[i]`` is the status of index ``i``."""

    __slots__ = ("bits", "data")

    def __init__(self, data: bytes, bits: int) -> None:
        self.bits = _check_bits(bits)
        self.data = bytes(data)

    def __len__(self) -> int:
        return len(self.data) * 8 // self.bits

    def __getitem__(self, index: int) -> int:
        # §8.3 step 6: an index out of bounds of the Status List is an error, never a default value.
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise IndexError(f"status list index {index!r} out of range (size {len(self)})")
        per_byte = 8 // self.bits
        return (self.data[index // per_byte] >> ((index % per_byte) * self.bits)) & ((1 << self.bits) - 1)

    def nonzero(self) -> Iterator[tuple[int, int]]:
        """(index, status) for every entry that is not VALID, in index order."""
        per_byte, mask = 8 // self.bits, (1 << self.bits) - 1
        for match in _NONZERO.finditer(self.data):
            pos, byte = match.start(), self.data[match.start()]
            for slot in range(per_byte):
                value = (byte >> (slot * self.bits)) & mask
                if value:
                    yield pos * per_byte + slot, value


def pack(statuses: Mapping[int, int] | Iterable[tuple[int, int]], *, bits: int, size: int) -> bytearray:
    """The uncompressed byte array of ``size`` entries, all VALID except the given (index, status) pairs."""
    _check_bits(bits)
    per_byte = 8 // bits
    if size < 0 or size % per_byte:
        raise StatusListError(f"size must be a non-negative multiple of {per_byte} for bits={bits}")
    data = bytearray(size // per_byte)
    limit = 1 << bits
    pairs = statuses.items() if isinstance(statuses, Mapping) else statuses
    for index, status in pairs:
        if not 0 <= index < size:
            raise StatusListError(f"index {index} is outside the list (size {size})")
        if not 0 <= status < limit:
            raise StatusListError(f"status {status} does not fit in {bits} bits")
        pos, shift = index // per_byte, (index % per_byte) * bits
        data[pos] = (data[pos] & ~((limit - 1) << shift) & 0xFF) | (status << shift)
    return data


def encode(statuses: Mapping[int, int] | Iterable[tuple[int, int]], *, bits: int, size: int) -> str:
    """The ``lst`` value (§4.2): base64url(ZLIB level 9(byte array)), without padding."""
    raw = zlib.compress(bytes(pack(statuses, bits=bits, size=size)), 9)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(lst: str, bits: int, *, max_bytes: int = MAX_DECODED_BYTES) -> StatusArray:
    """Decode an ``lst`` value; refuses padding, non-base64url characters, trailing data and
    decompressed arrays larger than ``max_bytes``."""
    _check_bits(bits)
    if not isinstance(lst, str) or not _B64URL.fullmatch(lst) or len(lst) % 4 == 1:
        raise StatusListError("lst is not base64url without padding")
    try:
        compressed = base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4))
    except (binascii.Error, ValueError):
        raise StatusListError("lst is not base64url without padding") from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, max_bytes + 1)
        if len(data) > max_bytes or inflater.unconsumed_tail:
            raise StatusListError(f"the status list inflates to more than {max_bytes} bytes")
        data += inflater.flush()
    except zlib.error:
        raise StatusListError("lst is not a ZLIB (RFC 1950) stream") from None
    if not inflater.eof or inflater.unused_data or len(data) > max_bytes:
        raise StatusListError("lst is not exactly one complete ZLIB stream")
    return StatusArray(data, bits)
