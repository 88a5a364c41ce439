"""Token Status List encoding (draft-ietf-oauth-status-list-20 §4) against the draft's own vectors.

Every vector of ``../shared/vectors/token_status_list_draft20.json`` (the §4.1 worked examples and the
2^20-entry test vectors of the appendix, for 1, 2, 4 and 8 bits) decodes to exactly the listed
statuses, every other entry VALID, and re-encodes (ZLIB level 9, base64url without padding) to the
identical ``lst``. The decoder refuses what a hostile ``lst`` could be: padding, non-base64url, a
stream with trailing data or cut short, and a ZLIB bomb.
"""

from __future__ import annotations

import base64
import json
import pathlib
import zlib
from typing import Any

import pytest

from tessera.oauth.status_list import INVALID, SUSPENDED, VALID, StatusListError, decode, encode, pack

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "vectors" / "token_status_list_draft20.json"
DATA = json.loads(VECTORS.read_text())
ALL = DATA["small_examples"] + DATA["vectors"]


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("vector", ALL, ids=[v["name"] for v in ALL])
def test_vector_decodes_to_exactly_the_listed_statuses(vector: dict[str, Any]) -> None:
    array = decode(vector["lst"], vector["bits"])
    assert array.bits == vector["bits"]
    assert len(array) == vector["size"]
    listed = dict(vector["statuses"])
    for index, status in listed.items():
        assert array[index] == status, index
    assert dict(array.nonzero()) == {i: s for i, s in listed.items() if s != VALID}


@pytest.mark.parametrize("vector", ALL, ids=[v["name"] for v in ALL])
def test_vector_re_encodes_to_the_identical_lst(vector: dict[str, Any]) -> None:
    assert encode(dict(vector["statuses"]), bits=vector["bits"], size=vector["size"]) == vector["lst"]


@pytest.mark.parametrize("vector", DATA["small_examples"], ids=[v["name"] for v in DATA["small_examples"]])
def test_worked_examples_byte_array_and_compressed_bytes(vector: dict[str, Any]) -> None:
    assert pack(vector["statuses"], bits=vector["bits"], size=vector["size"]).hex() == vector["byte_array_hex"]
    assert base64.urlsafe_b64decode(vector["lst"] + "==").hex() == vector["compressed_hex"]


def test_status_list_token_example_lst_decodes() -> None:
    # The draft's Status List Token example (§5.1) carries the 1-bit worked example's list.
    example = DATA["status_list_token_jwt_example"]
    assert example["header"]["typ"] == "statuslist+jwt"
    sl = example["payload"]["status_list"]
    assert [decode(sl["lst"], sl["bits"])[i] for i in range(16)] == [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]


def test_status_types() -> None:
    assert (VALID, INVALID, SUSPENDED) == (0x00, 0x01, 0x02)


def test_index_outside_the_list_is_an_error_not_valid() -> None:
    array = decode(DATA["small_examples"][0]["lst"], 1)
    for index in (16, -1, 10**9):
        with pytest.raises(IndexError):
            array[index]


@pytest.mark.parametrize("bits", [0, 3, 16, -1, True, "1", None, 1.0])
def test_bits_other_than_1_2_4_8_are_refused(bits: Any) -> None:
    with pytest.raises(StatusListError):
        decode("eNrbuRgAAhcBXQ", bits)
    with pytest.raises(StatusListError):
        encode({}, bits=bits, size=8)


@pytest.mark.parametrize(
    "lst",
    [
        "eNrbuRgAAhcBXQ==",
        "eNrbuRgAAhcBXQ=",
        "eNrb+RgAAhcBXQ",
        "eNrb/RgAAhcBXQ",
        "eNrb uRgAAhcBXQ",
        "eNrbuRgAAhcBX",
        "",
        "!!!!",
    ],
)
def test_lst_must_be_base64url_without_padding_of_a_zlib_stream(lst: str) -> None:
    with pytest.raises(StatusListError):
        decode(lst, 1)


def test_trailing_data_and_truncated_streams_are_refused() -> None:
    stream = zlib.compress(b"\x00" * 64, 9)
    assert len(decode(b64u(stream), 1)) == 512
    with pytest.raises(StatusListError):
        decode(b64u(stream + b"\x00"), 1)
    with pytest.raises(StatusListError):
        decode(b64u(stream[:-3]), 1)
    with pytest.raises(StatusListError):
        decode(b64u(zlib.compress(b"\x00" * 64, 9)[2:]), 1)  # raw DEFLATE: not the ZLIB format of §4.1


def test_a_zlib_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\x00" * (64 << 20), 9)  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(StatusListError, match="inflates to more than"):
        decode(b64u(bomb), 1)
    with pytest.raises(StatusListError):
        decode(b64u(zlib.compress(b"\x00" * 4097, 9)), 1, max_bytes=4096)
    assert len(decode(b64u(zlib.compress(b"\x00" * 4096, 9)), 1, max_bytes=4096)) == 32768


def test_pack_refuses_values_and_indices_that_do_not_fit() -> None:
    with pytest.raises(StatusListError):
        pack({0: 2}, bits=1, size=8)
    with pytest.raises(StatusListError):
        pack({0: 256}, bits=8, size=8)
    with pytest.raises(StatusListError):
        pack({8: 1}, bits=1, size=8)
    with pytest.raises(StatusListError):
        pack({}, bits=2, size=5)  # not a whole number of bytes
    assert pack([(3, 3), (0, 1)], bits=2, size=4) == bytearray([0b11_00_00_01])
