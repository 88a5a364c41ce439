"""Token Status List (draft-ietf-oauth-status-list-20) on the relying-party side of ``tessera.verify``.

- §4.1 encoding: the SDK's decoder reads every example and 2^20-entry test vector of the draft
  (``shared/vectors/token_status_list_draft20.json``) to exactly the listed statuses, all others 0,
  and ``encode_status_list`` reproduces each ``lst`` byte for byte;
- §5.1/§8.3 validation of a Status List Token: ``typ`` ``statuslist+jwt``, signed by the issuer, ``sub``
  equal to the referenced URI, ``iat`` present, not expired, ``ttl`` positive; anything else means the
  status cannot be established (``StatusUnavailable``; ``WrongType`` for the type);
- §7.1 status values: 0x00 VALID passes, 0x01 INVALID is ``Revoked``, 0x02 SUSPENDED is ``Suspended``,
  anything else (0x03, application-specific) is not accepted;
- §6.2 references: ``idx`` a non-negative integer inside the list, ``uri`` one of the issuer's;
- §13.1 caching: the list is used until ``ttl`` and then refetched (a revocation is seen then, not
  before); an unreachable issuer means the cached list is used (``report.stale``) up to
  ``status_max_age``, then ``TrustDataStale``;
- §11.x (security): a ZLIB bomb is refused without inflating it past ``max_status_list_bytes``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import pathlib
import tracemalloc
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support import b64u
from tessera.verify import (
    Revoked,
    StatusUnavailable,
    Suspended,
    TrustDataStale,
    VerificationError,
    Verifier,
    WrongType,
)
from tessera.verify.status_list import StatusList, decode_status_list, encode_status_list
from verify_support import (
    ISSUER,
    JWKS_URL,
    STATUS_URL,
    T0,
    Clock,
    FakeIssuer,
    make_verifier,
    sign,
    status_list_token,
)


def _vectors_path() -> pathlib.Path:
    here = pathlib.Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1].parent, here.parents[1]):
        candidate = root / "shared" / "vectors" / "token_status_list_draft20.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("shared/vectors/token_status_list_draft20.json not found next to the repository")


VECTORS = json.loads(_vectors_path().read_text())
ALL_VECTORS = VECTORS["small_examples"] + VECTORS["vectors"]


def _pack(bits: int, size: int, statuses: list[list[int]]) -> bytes:
    """The draft's byte array, built independently of the SDK: LSB-first, index i at byte i*bits // 8."""
    data = bytearray((size * bits + 7) // 8)
    for index, value in statuses:
        bit = index * bits
        data[bit // 8] |= value << (bit % 8)
    return bytes(data)


# -- decoding and encoding against the draft's vectors -------------------------------------------------


def test_the_vector_file_is_the_one_expected() -> None:
    assert VECTORS["draft"] == "draft-ietf-oauth-status-list-20"
    assert len(VECTORS["small_examples"]) == 2 and len(VECTORS["vectors"]) == 4
    assert {v["bits"] for v in VECTORS["vectors"]} == {1, 2, 4, 8}


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=[v["name"] for v in ALL_VECTORS])
def test_decoder_reads_every_vector_exactly(vector: dict[str, Any]) -> None:
    bits, size, statuses = vector["bits"], vector["size"], vector["statuses"]
    decoded = decode_status_list(bits, vector["lst"])
    assert isinstance(decoded, StatusList) and decoded.bits == bits
    expected = _pack(bits, size, statuses)
    assert decoded.data == expected, "decoded byte array differs: some status other than the listed ones"
    assert decoded.size == size
    listed = dict((i, v) for i, v in statuses)
    for index, value in listed.items():
        assert decoded.get(index) == value, f"status[{index}]"
        for neighbour in (index - 1, index + 1):
            if 0 <= neighbour < size and neighbour not in listed:
                assert decoded.get(neighbour) == 0, f"status[{neighbour}]"
    if size <= 4096:
        assert [decoded.get(i) for i in range(size)] == [listed.get(i, 0) for i in range(size)]
    else:  # every listed entry above; a spread of the 2^20 others through get() as well
        for index in range(0, size, 997):
            assert decoded.get(index) == listed.get(index, 0)
    assert sum(1 for i, v in listed.items() if v) == sum(
        bin(b).count("1") if bits == 1 else sum(1 for k in range(0, 8, bits) if (b >> k) & ((1 << bits) - 1))
        for b in decoded.data
    )
    for outside in (size, size + 1, -1, 2**64):
        with pytest.raises(StatusUnavailable):
            decoded.get(outside)


@pytest.mark.parametrize("vector", VECTORS["small_examples"], ids=[v["name"] for v in VECTORS["small_examples"]])
def test_small_examples_byte_array_and_compressed_form(vector: dict[str, Any]) -> None:
    decoded = decode_status_list(vector["bits"], vector["lst"])
    assert decoded.data.hex() == vector["byte_array_hex"]
    assert base64.urlsafe_b64decode(vector["lst"] + "=" * (-len(vector["lst"]) % 4)).hex() == vector["compressed_hex"]


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=[v["name"] for v in ALL_VECTORS])
def test_encoder_reproduces_every_lst(vector: dict[str, Any]) -> None:
    statuses = {i: v for i, v in vector["statuses"]}
    assert encode_status_list(vector["bits"], statuses, vector["size"]) == vector["lst"]


def test_the_drafts_status_list_token_example_decodes() -> None:
    sl = VECTORS["status_list_token_jwt_example"]["payload"]["status_list"]
    decoded = decode_status_list(sl["bits"], sl["lst"])
    assert decoded.data.hex() == VECTORS["small_examples"][0]["byte_array_hex"]


@pytest.mark.parametrize(
    "bits,lst",
    [
        (3, "eNrbuRgAAhcBXQ"),
        (0, "eNrbuRgAAhcBXQ"),
        (16, "eNrbuRgAAhcBXQ"),
        (True, "eNrbuRgAAhcBXQ"),
        ("1", "eNrbuRgAAhcBXQ"),
        (1.0, "eNrbuRgAAhcBXQ"),
        (None, "eNrbuRgAAhcBXQ"),
        (1, ""),
        (1, None),
        (1, 42),
        (1, "eNrbuRgAAhcBXQ=="),
        (1, "eNrb*uRgAAhcBXQ"),
        (1, "eNrbuRgAAhcB"),
        (1, b64u(b"not zlib at all")),
        (1, b64u(zlib.compress(bytes(100))[:-6])),
        (1, b64u(zlib.compressobj(wbits=-15).compress(bytes(10)))),  # raw DEFLATE, no ZLIB header
    ],
)
def test_decoder_refusals(bits: Any, lst: Any) -> None:
    with pytest.raises(StatusUnavailable):
        decode_status_list(bits, lst)


def test_size_cap_is_exact() -> None:
    lst = encode_status_list(8, {1023: 1}, 1024)
    assert decode_status_list(8, lst, max_bytes=1024).size == 1024
    with pytest.raises(StatusUnavailable):
        decode_status_list(8, lst, max_bytes=1023)


def _zlib_bomb(mib: int) -> str:
    c = zlib.compressobj(9)
    chunk = bytes(1024 * 1024)
    return b64u(b"".join(c.compress(chunk) for _ in range(mib)) + c.flush())


def test_zlib_bomb_is_refused_without_inflating_it() -> None:
    """64 MiB of zeros in ~90 KB of base64: refused with a 16 MiB cap, peak memory far below 64 MiB."""
    lst = _zlib_bomb(64)
    assert len(lst) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(StatusUnavailable) as caught:
            decode_status_list(1, lst, max_bytes=16 * 1024 * 1024)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "inflates beyond" in caught.value.message
    assert peak < 40 * 1024 * 1024, f"peak {peak} bytes: the bomb was inflated"


# -- status in verification ------------------------------------------------------------------------


@pytest.fixture
def issuer() -> FakeIssuer:
    fake = FakeIssuer(Clock(T0))
    fake.add_key("k1")
    fake.publish_status({1: 1, 2: 2, 3: 3, 1023: 1})
    return fake


def token_with_status(issuer: FakeIssuer, idx: Any, uri: Any = STATUS_URL, **claims: Any) -> str:
    return issuer.token(status={"status_list": {"idx": idx, "uri": uri}}, **claims)


def refused(verifier: Verifier, token: str, error: type[VerificationError]) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token)
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    assert caught.value.reason == error.reason
    return caught.value


async def arefused(verifier: Verifier, token: str, error: type[VerificationError]) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        await verifier.averify(token)
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    return caught.value


def test_status_values(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    claims = v.verify(token_with_status(issuer, 0))
    assert claims.report.status_age == 0 and claims.report.stale is False
    assert claims["status"]["status_list"]["idx"] == 0
    refused(v, token_with_status(issuer, 1), Revoked)
    refused(v, token_with_status(issuer, 2), Suspended)
    refused(v, token_with_status(issuer, 3), StatusUnavailable)
    refused(v, token_with_status(issuer, 1023), Revoked)
    assert v.verify(token_with_status(issuer, 1022))
    assert issuer.count(STATUS_URL) == 1, "the list is fetched once and cached"


def test_status_values_async(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)

    async def scenario() -> None:
        assert (await v.averify(token_with_status(issuer, 0))).report.status_age == 0
        await arefused(v, token_with_status(issuer, 1), Revoked)
        await arefused(v, token_with_status(issuer, 2), Suspended)
        await arefused(v, token_with_status(issuer, 3), StatusUnavailable)
        assert issuer.count(STATUS_URL) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_other_widths(issuer: FakeIssuer, bits: int) -> None:
    issuer.publish_status({5: 1, 6: 0, 7: 2 if bits > 1 else 1}, bits=bits, size=64)
    v = make_verifier(issuer)
    assert v.verify(token_with_status(issuer, 6))
    refused(v, token_with_status(issuer, 5), Revoked)
    refused(v, token_with_status(issuer, 7), Suspended if bits > 1 else Revoked)
    refused(v, token_with_status(issuer, 64), StatusUnavailable)


# -- the status list token (§5.1, §8.3) -------------------------------------------------------------


def _hs256_with_public_key(issuer: FakeIssuer) -> str:
    pem = (
        issuer.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "statuslist+jwt", "kid": "k1"}
    claims = {
        "sub": STATUS_URL,
        "iat": int(T0),
        "ttl": 300,
        "status_list": {"bits": 2, "lst": encode_status_list(2, {}, 1024)},
    }
    si = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    return si + "." + b64u(hmac.new(pem, si.encode(), hashlib.sha256).digest())


BAD_LISTS: dict[str, Any] = {
    "signed by another key under the issuer's kid": lambda f: status_list_token(
        ec.generate_private_key(ec.SECP256R1()), kid="k1", uri=STATUS_URL, now=T0, statuses={}
    ),
    "signature of another list": lambda f: (
        f.publish_status({}).rsplit(".", 1)[0] + "." + f.publish_status({0: 1}).rsplit(".", 1)[1]
    ),
    "alg none": lambda f: (
        b64u(b'{"alg":"none","typ":"statuslist+jwt"}') + "." + f.publish_status({}).split(".")[1] + "."
    ),
    "HS256 with the public key as secret": _hs256_with_public_key,
    "wrong sub": lambda f: f.publish_status({}, sub=ISSUER + "/oauth/status/2"),
    "missing sub": lambda f: f.publish_status({}, sub=None),
    "wrong iss": lambda f: f.publish_status({}, iss="https://evil.test"),
    "expired": lambda f: f.publish_status({}, exp=int(T0) - 31, iat=int(T0) - 600),
    "expired at the leeway boundary": lambda f: f.publish_status({}, exp=int(T0) - 30, iat=int(T0) - 600),
    "missing iat": lambda f: f.publish_status({}, iat=None),
    "iat in the future": lambda f: f.publish_status({}, iat=int(T0) + 31),
    "iat a string": lambda f: f.publish_status({}, iat=str(int(T0))),
    "exp a string": lambda f: f.publish_status({}, exp=str(int(T0) + 600)),
    "ttl zero": lambda f: f.publish_status({}, ttl=0),
    "ttl negative": lambda f: f.publish_status({}, ttl=-5),
    "ttl a string": lambda f: f.publish_status({}, ttl="300"),
    "no status_list": lambda f: f.publish_status({}, status_list=None),
    "status_list not an object": lambda f: f.publish_status({}, status_list="eNrbuRgAAhcBXQ"),
    "bits 1.0": lambda f: f.publish_status({}, status_list={"bits": 1.0, "lst": "eNrbuRgAAhcBXQ"}),
    "bits 3": lambda f: f.publish_status({}, status_list={"bits": 3, "lst": "eNrbuRgAAhcBXQ"}),
    "lst not zlib": lambda f: f.publish_status({}, status_list={"bits": 1, "lst": b64u(b"plain")}),
    "not a JWT": lambda f: "not a status list",
    "three garbage segments": lambda f: "x.y.z",
    "JSON instead of a JWT": lambda f: json.dumps({"status_list": {"bits": 1, "lst": "eNrbuRgAAhcBXQ"}}),
    "empty body": lambda f: "",
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_invalid_status_list_tokens_make_the_status_unavailable(issuer: FakeIssuer, case: str) -> None:
    issuer.documents[STATUS_URL] = BAD_LISTS[case](issuer)
    refused(make_verifier(issuer), token_with_status(issuer, 0), StatusUnavailable)


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_invalid_status_list_tokens_async(issuer: FakeIssuer, case: str) -> None:
    issuer.documents[STATUS_URL] = BAD_LISTS[case](issuer)
    asyncio.run(arefused(make_verifier(issuer), token_with_status(issuer, 0), StatusUnavailable))


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "statuslist+cwt", "application/jwt", 1])
def test_status_list_token_type(issuer: FakeIssuer, typ: Any) -> None:
    """§5.1: typ MUST be statuslist+jwt."""
    if typ is None:
        issuer.publish_status({}, typ=None)
    else:
        issuer.documents[STATUS_URL] = sign(
            {"alg": "ES256", "kid": "k1", "typ": typ},
            {
                "sub": STATUS_URL,
                "iat": int(T0),
                "ttl": 300,
                "status_list": {"bits": 1, "lst": encode_status_list(1, {}, 8)},
            },
            issuer.keys["k1"],
        )
    refused(make_verifier(issuer), token_with_status(issuer, 0), WrongType)


@pytest.mark.parametrize("typ", ["statuslist+jwt", "application/statuslist+jwt", "StatusList+JWT"])
def test_status_list_token_type_accepted_forms(issuer: FakeIssuer, typ: str) -> None:
    issuer.publish_status({}, typ=typ)
    assert make_verifier(issuer).verify(token_with_status(issuer, 0))


def test_status_list_token_without_iss_is_accepted(issuer: FakeIssuer) -> None:
    """§5.1 lists iss as optional for the Status List Token; sub and the signature bind it to the issuer."""
    issuer.publish_status({}, iss=None)
    assert make_verifier(issuer).verify(token_with_status(issuer, 0))


def test_status_list_http_errors(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    refused(v, token_with_status(issuer, 0, uri=ISSUER + "/oauth/status/404"), StatusUnavailable)
    issuer.documents[STATUS_URL] = issuer.documents[STATUS_URL] + "x" * 2048
    refused(make_verifier(issuer, max_status_list_bytes=1024), token_with_status(issuer, 0), StatusUnavailable)


def test_status_list_token_under_an_unknown_kid(issuer: FakeIssuer) -> None:
    issuer.documents[STATUS_URL] = status_list_token(
        ec.generate_private_key(ec.SECP256R1()), kid="nope", uri=STATUS_URL, now=T0, statuses={}
    )
    refused(make_verifier(issuer), token_with_status(issuer, 0), StatusUnavailable)


def test_zlib_bomb_in_a_status_list_token(issuer: FakeIssuer) -> None:
    issuer.publish_status({}, status_list={"bits": 1, "lst": _zlib_bomb(64)})
    tracemalloc.start()
    try:
        refused(make_verifier(issuer), token_with_status(issuer, 0), StatusUnavailable)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 1024 * 1024


# -- the reference in the access token (§6.2) ------------------------------------------------------------


@pytest.mark.parametrize("idx", [1024, 10**9, -1, True, False, 1.0, "0", None, [0]])
def test_bad_index(issuer: FakeIssuer, idx: Any) -> None:
    refused(make_verifier(issuer), token_with_status(issuer, idx), StatusUnavailable)


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.test/oauth/status/1",
        "https://issuer.test.evil.test/oauth/status/1",
        "http://issuer.test/oauth/x",
        ISSUER,
        "https://ISSUER.TEST/oauth/status/1",
        "//issuer.test/oauth/status/1",
        "/oauth/status/1",
        1,
        None,
    ],
)
def test_status_uri_outside_the_issuer_is_never_fetched(issuer: FakeIssuer, uri: Any) -> None:
    refused(make_verifier(issuer), token_with_status(issuer, 0, uri=uri), StatusUnavailable)
    assert all(r in (JWKS_URL, ISSUER + "/.well-known/oauth-authorization-server") for r in issuer.requests)


@pytest.mark.parametrize(
    "status",
    [
        "revoked",
        1,
        [],
        {},
        {"status_list": None},
        {"status_list": "x"},
        {"status_list": {"idx": 0}},
        {"status_list": {"uri": STATUS_URL}},
    ],
)
def test_malformed_status_claim(issuer: FakeIssuer, status: Any) -> None:
    refused(make_verifier(issuer), issuer.token(status=status), StatusUnavailable)


def test_status_uri_prefix_option(issuer: FakeIssuer) -> None:
    other = "https://status.test/lists/7"
    issuer.publish_status({0: 1}, uri=other)
    v = make_verifier(issuer, status_uri_prefix="https://status.test/")
    refused(v, token_with_status(issuer, 0, uri=other), Revoked)
    refused(v, token_with_status(issuer, 0), StatusUnavailable)


def test_require_status(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, require_status=True)
    refused(v, issuer.token(), StatusUnavailable)
    assert v.verify(token_with_status(issuer, 0))
    assert make_verifier(issuer).verify(issuer.token()).report.status_age is None


# -- caching (§13.1) ------------------------------------------------------------------------------------


def test_list_is_refetched_after_ttl_and_a_revocation_is_seen_then(issuer: FakeIssuer) -> None:
    clock = issuer.clock
    v = make_verifier(issuer, keys_ttl=86400)
    assert v.verify(token_with_status(issuer, 0))
    clock.advance(10)
    issuer.publish_status({0: 1})  # revoked at the issuer
    clock.advance(289)
    claims = v.verify(token_with_status(issuer, 0))
    assert claims.report.status_age == 299 and claims.report.stale is False
    assert issuer.count(STATUS_URL) == 1
    clock.advance(1)
    refused(v, token_with_status(issuer, 0), Revoked)
    assert issuer.count(STATUS_URL) == 2
    issuer.publish_status({})  # reinstated
    clock.advance(299)
    refused(v, token_with_status(issuer, 0), Revoked)
    clock.advance(1)
    # Refetched now; the list itself was issued 300 s ago, and status_age says how old the information is.
    assert v.verify(token_with_status(issuer, 0)).report.status_age == 300


def test_list_is_refetched_at_its_exp_when_that_comes_before_ttl(issuer: FakeIssuer) -> None:
    issuer.publish_status({}, ttl=3600, exp=int(T0) + 100)
    v = make_verifier(issuer, keys_ttl=86400)
    assert v.verify(token_with_status(issuer, 0))
    issuer.clock.advance(99)
    assert v.verify(token_with_status(issuer, 0))
    assert issuer.count(STATUS_URL) == 1
    issuer.clock.advance(1)
    issuer.publish_status({0: 2}, ttl=3600)
    refused(v, token_with_status(issuer, 0), Suspended)


def test_list_refetch_async(issuer: FakeIssuer) -> None:
    clock = issuer.clock
    v = make_verifier(issuer, keys_ttl=86400)

    async def scenario() -> None:
        assert await v.averify(token_with_status(issuer, 0))
        issuer.publish_status({0: 1})
        clock.advance(299)
        assert await v.averify(token_with_status(issuer, 0))
        clock.advance(1)
        await arefused(v, token_with_status(issuer, 0), Revoked)
        assert issuer.count(STATUS_URL) == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("failure", ["connect", 500, "garbage", "foreign"])
def test_issuer_down_after_ttl_uses_the_cached_list_until_status_max_age(issuer: FakeIssuer, failure: str) -> None:
    clock = issuer.clock
    v = make_verifier(issuer, keys_ttl=86400, status_max_age=3600)
    assert v.verify(token_with_status(issuer, 0))
    if failure == "garbage":
        issuer.documents[STATUS_URL] = "x.y.z"
    elif failure == "foreign":
        issuer.documents[STATUS_URL] = status_list_token(
            ec.generate_private_key(ec.SECP256R1()), kid="k1", uri=STATUS_URL, now=T0, statuses={0: 1}
        )
    else:
        issuer.down = failure if failure == "connect" else int(failure)
    clock.advance(301)
    claims = v.verify(token_with_status(issuer, 0))
    assert claims.report.stale is True and claims.report.status_age == 301
    refused(v, token_with_status(issuer, 2), Suspended)  # the cached list still answers
    clock.advance(3600 - 301)
    assert v.verify(token_with_status(issuer, 0)).report.status_age == 3600
    clock.advance(1)
    refused(v, token_with_status(issuer, 0), TrustDataStale)
    assert v.verify(issuer.token()), "tokens without a status entry do not depend on the list"
    issuer.down = None
    issuer.publish_status({})
    # After a failure the verifier backs off (5 s doubling to 60 s) instead of fetching on every call.
    fetched = issuer.count(STATUS_URL)
    refused(v, token_with_status(issuer, 0), TrustDataStale)
    assert issuer.count(STATUS_URL) == fetched, "no new fetch inside the back-off window"
    clock.advance(61)
    claims = v.verify(token_with_status(issuer, 0))
    assert claims.report.stale is False and claims.report.status_age == 61  # the list was issued 61 s ago


@pytest.mark.parametrize("failure", ["connect", "garbage"])
def test_issuer_down_after_ttl_async(issuer: FakeIssuer, failure: str) -> None:
    clock = issuer.clock
    v = make_verifier(issuer, keys_ttl=86400, status_max_age=3600)

    async def scenario() -> None:
        await v.averify(token_with_status(issuer, 0))
        if failure == "garbage":
            issuer.documents[STATUS_URL] = "x.y.z"
        else:
            issuer.down = "connect"
        clock.advance(301)
        claims = await v.averify(token_with_status(issuer, 0))
        assert claims.report.stale is True and claims.report.status_age == 301
        clock.advance(3300)
        await arefused(v, token_with_status(issuer, 0), TrustDataStale)

    asyncio.run(scenario())


def test_cached_list_is_not_used_past_its_own_exp(issuer: FakeIssuer) -> None:
    issuer.publish_status({}, ttl=3600, exp=int(T0) + 100)
    v = make_verifier(issuer, keys_ttl=86400)
    assert v.verify(token_with_status(issuer, 0))
    issuer.down = "connect"
    issuer.clock.advance(129)  # exp passed, still within the leeway
    assert v.verify(token_with_status(issuer, 0))
    issuer.clock.advance(1)
    refused(v, token_with_status(issuer, 0), TrustDataStale)
