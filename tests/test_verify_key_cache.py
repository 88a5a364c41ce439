"""The SDK verifier's key cache: RFC 8414 discovery, RFC 7517 JWK Sets, RFC 9111 ``Cache-Control``.

What ``tessera.verify`` promises (``src/tessera/verify/trust.py``), checked with a fake issuer behind
``httpx.MockTransport`` and a clock that only moves when the test moves it:

- RFC 8414 §3.3: metadata whose ``issuer`` is not exactly the configured issuer is refused
  (``WrongIssuer``); discovery and the JWK Set are fetched once, then served from the cache;
- the cache lives for the JWKS response's ``max-age`` (clamped to 30 s .. 12 x ``keys_ttl``);
- an unknown ``kid`` causes at most one refetch per ``unknown_kid_cooldown``, however many arrive; a key
  added at the issuer is found through that refetch, a key removed stops verifying at the next refresh;
- when the issuer is unreachable the last good keys are used (``report.stale``) until ``keys_max_stale``,
  then verification fails closed (``TrustDataStale``) and recovers when the issuer answers again;
- the async API (``averify`` over ``async_transport``) behaves identically.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.verify import (
    BadSignature,
    TrustDataStale,
    UnknownKey,
    VerificationError,
    Verifier,
    WrongIssuer,
)
from verify_support import (
    ISSUER,
    JWKS_URL,
    METADATA_URL,
    T0,
    Clock,
    FakeIssuer,
    make_verifier,
)


@pytest.fixture
def issuer() -> FakeIssuer:
    fake = FakeIssuer(Clock(T0))
    fake.add_key("k1")
    return fake


def refused(verifier: Verifier, token: str, error: type[VerificationError]) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(token)
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    assert caught.value.reason == error.reason
    return caught.value


def flood(issuer: FakeIssuer, verifier: Verifier, n: int = 100) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    for _ in range(n):
        refused(verifier, issuer.token(secrets.token_hex(8), key=attacker), UnknownKey)


# -- discovery --------------------------------------------------------------------------------------


def test_discovery_then_jwks_fetched_once(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    for _ in range(5):
        claims = v.verify(issuer.token())
        assert claims.report.keys_age == 0 and claims.report.stale is False
        assert claims.report.status_age is None and claims.report.source == "network"
    assert issuer.requests == [METADATA_URL, JWKS_URL]


def test_pinned_jwks_uri_skips_discovery(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, jwks_uri=JWKS_URL)
    v.verify(issuer.token())
    v.verify(issuer.token())
    assert issuer.requests == [JWKS_URL]


def test_warm_fetches_ahead_of_the_first_request(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    v.warm()
    assert issuer.requests == [METADATA_URL, JWKS_URL]
    v.verify(issuer.token())
    assert len(issuer.requests) == 2


@pytest.mark.parametrize(
    "named", ["https://evil.test", ISSUER + "/", "HTTPS://ISSUER.TEST", ISSUER + "/tenant", None, 1, [ISSUER]]
)
def test_metadata_naming_another_issuer_is_refused(issuer: FakeIssuer, named: Any) -> None:
    """RFC 8414 §3.3: the issuer value returned MUST be identical to the issuer identifier used."""
    if named is None:
        del issuer.metadata["issuer"]
    else:
        issuer.metadata["issuer"] = named
    v = make_verifier(issuer)
    refused(v, issuer.token(), WrongIssuer)
    assert issuer.count(JWKS_URL) == 0, "keys named by a foreign issuer's metadata must never be fetched"


def test_metadata_that_is_not_an_object_is_refused(issuer: FakeIssuer) -> None:
    issuer.metadata = ["issuer", ISSUER]  # type: ignore[assignment]
    refused(make_verifier(issuer), issuer.token(), WrongIssuer)


def test_metadata_without_jwks_uri_fails_closed(issuer: FakeIssuer) -> None:
    del issuer.metadata["jwks_uri"]
    refused(make_verifier(issuer), issuer.token(), TrustDataStale)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": "k1"}', b'{"no": "keys"}', b"\x00" * 10])
def test_a_jwks_that_is_not_a_jwk_set_fails_closed_on_first_fetch(issuer: FakeIssuer, body: bytes) -> None:
    issuer.jwks_body = body
    refused(make_verifier(issuer), issuer.token(), TrustDataStale)


@pytest.mark.parametrize(
    "bad",
    [
        {"kty": "EC", "crv": "P-256", "kid": "bad", "x": "AAAA=", "y": "AAAA"},  # padded base64url
        {"kty": "EC", "crv": "P-256", "kid": "bad", "x": "A*AA", "y": "AAAA"},  # outside the alphabet
        {"kty": "EC", "crv": "P-256", "kid": "bad", "x": "AQ", "y": "AQ"},  # wrong length
        {"kty": "EC", "crv": "P-256", "kid": "bad", "x": "A" * 43, "y": "A" * 43},  # not on the curve
        {"kty": "EC", "crv": "P-256", "kid": "bad", "x": 1, "y": 2},
        {"kty": "EC", "crv": "P-384", "kid": "bad", "x": "A" * 64, "y": "A" * 64},
        {"kty": "OKP", "crv": "Ed25519", "kid": "bad", "x": "!!!!"},
        {"kty": "OKP", "crv": "X25519", "kid": "bad", "x": "A" * 43},
        {"kty": "RSA", "kid": "bad", "n": "n=", "e": "AQAB"},
        {"kty": "oct", "kid": "bad", "k": "c2VjcmV0"},
        {"kid": "bad"},
        "not an object",
    ],
)
def test_an_unusable_jwk_is_skipped_and_the_rest_of_the_set_still_verifies(issuer: FakeIssuer, bad: Any) -> None:
    issuer.published["bad"] = bad
    v = make_verifier(issuer)
    assert v.verify(issuer.token()).report.stale is False
    refused(v, issuer.token("bad", key=ec.generate_private_key(ec.SECP256R1())), UnknownKey)


def test_an_oversized_jwks_is_refused(issuer: FakeIssuer) -> None:
    issuer.jwks_body = b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'
    refused(make_verifier(issuer), issuer.token(), TrustDataStale)


def test_issuer_down_on_cold_start_fails_closed(issuer: FakeIssuer) -> None:
    issuer.down = "connect"
    refused(make_verifier(issuer), issuer.token(), TrustDataStale)
    issuer.down = 500
    refused(make_verifier(issuer), issuer.token(), TrustDataStale)


# -- Cache-Control ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cache_control,ttl",
    [
        ("max-age=600", 600),
        ("public, max-age=120, must-revalidate", 120),
        ("MAX-AGE=90", 90),
        (None, 300),  # the verifier's keys_ttl
        ("public", 300),
        ("max-age=5", 30),  # raised to the 30 s floor
        ("max-age=0", 30),
        ("no-store", 30),
        ("no-cache, max-age=600", 30),
        ("max-age=999999", 3600),  # capped at 12 x keys_ttl
    ],
)
def test_cache_control_max_age_is_honoured(issuer: FakeIssuer, cache_control: str | None, ttl: int) -> None:
    issuer.jwks_cache_control = cache_control
    clock = issuer.clock
    v = make_verifier(issuer)
    v.verify(issuer.token())
    assert issuer.count(JWKS_URL) == 1
    clock.advance(ttl - 1)
    assert v.verify(issuer.token()).report.keys_age == ttl - 1
    assert issuer.count(JWKS_URL) == 1, "refetched before max-age ran out"
    clock.advance(1)
    claims = v.verify(issuer.token())
    assert issuer.count(JWKS_URL) == 2, "not refetched once max-age ran out"
    assert claims.report.keys_age == 0 and claims.report.stale is False
    assert issuer.count(METADATA_URL) == 1, "the jwks_uri from discovery is reused"


# -- unknown kid --------------------------------------------------------------------------------------


def test_unknown_kid_flood_costs_one_refetch_per_cooldown(issuer: FakeIssuer) -> None:
    clock = issuer.clock
    v = make_verifier(issuer)
    v.verify(issuer.token())
    assert issuer.count(JWKS_URL) == 1
    flood(issuer, v)
    assert issuer.count(JWKS_URL) == 2
    v.verify(issuer.token())
    clock.advance(29.5)
    flood(issuer, v)
    assert issuer.count(JWKS_URL) == 2, "a second refetch inside the 30 s cooldown"
    clock.advance(0.5)
    flood(issuer, v)
    assert issuer.count(JWKS_URL) == 3
    assert v.verify(issuer.token()).report.stale is False
    assert issuer.count(JWKS_URL) == 3
    assert issuer.count(METADATA_URL) == 1


def test_unknown_kid_flood_on_a_cold_cache(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    flood(issuer, v)
    assert issuer.count(METADATA_URL) == 1
    assert issuer.count(JWKS_URL) <= 2


def test_unknown_kid_cooldown_is_configurable(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, unknown_kid_cooldown=300)
    v.verify(issuer.token())
    flood(issuer, v, 10)
    issuer.clock.advance(299)
    flood(issuer, v, 10)
    assert issuer.count(JWKS_URL) == 2
    issuer.clock.advance(1)
    flood(issuer, v, 10)
    assert issuer.count(JWKS_URL) == 3


def test_a_key_added_at_the_issuer_is_found_by_the_unknown_kid_refetch(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    v.verify(issuer.token())
    issuer.clock.advance(10)  # well inside the 300 s cache lifetime
    issuer.add_key("k2")
    assert v.verify(issuer.token("k2"))["sub"] == "svc-reporting"
    assert issuer.count(JWKS_URL) == 2
    v.verify(issuer.token("k2"))
    v.verify(issuer.token("k1"))
    assert issuer.count(JWKS_URL) == 2


def test_a_key_added_during_the_cooldown_is_found_once_it_ends(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    v.verify(issuer.token())
    flood(issuer, v, 5)  # spends the refetch
    issuer.clock.advance(1)
    issuer.add_key("k2")
    refused(v, issuer.token("k2"), UnknownKey)
    issuer.clock.advance(29)
    assert v.verify(issuer.token("k2"))
    assert issuer.count(JWKS_URL) == 3


def test_a_key_removed_at_the_issuer_stops_verifying_after_the_next_refresh(issuer: FakeIssuer) -> None:
    issuer.add_key("k2")
    v = make_verifier(issuer)
    early = issuer.token("k2", exp=int(T0) + 3600)
    v.verify(early)
    issuer.remove_key("k2")
    issuer.clock.advance(299)
    assert v.verify(issuer.token("k2")), "cached keys are used until the cache runs out"
    assert v.verify(early)
    issuer.clock.advance(1)
    refused(v, issuer.token("k2"), UnknownKey)
    refused(v, early, UnknownKey)  # a token verified before is not let through by any cache
    assert v.verify(issuer.token("k1"))


def test_a_key_replaced_under_the_same_kid(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    old = issuer.token(exp=int(T0) + 3600)
    assert v.verify(old)
    issuer.add_key("k1")  # new key material, same kid
    issuer.clock.advance(300)
    refused(v, old, BadSignature)
    assert v.verify(issuer.token())


# -- issuer unreachable ----------------------------------------------------------------------------------


@pytest.mark.parametrize("down", ["connect", 500, 503, 404])
def test_issuer_down_keeps_last_good_keys_until_keys_max_stale(issuer: FakeIssuer, down: str | int) -> None:
    clock = issuer.clock
    v = make_verifier(issuer, keys_max_stale=3600)
    v.verify(issuer.token())
    issuer.down = down
    clock.advance(301)
    claims = v.verify(issuer.token())
    assert claims.report.stale is True and claims.report.keys_age == 301
    assert issuer.count(JWKS_URL) == 2, "the due refresh was attempted"
    clock.advance(3600 - 301)
    claims = v.verify(issuer.token())
    assert claims.report.stale is True and claims.report.keys_age == 3600
    clock.advance(1)
    error = refused(v, issuer.token(), TrustDataStale)
    assert "3601" in error.message
    clock.advance(86400)
    refused(v, issuer.token(), TrustDataStale)
    issuer.down = None
    fetches = issuer.count(JWKS_URL)
    refused(v, issuer.token(), TrustDataStale)  # inside the back-off after the last failure: no fetch, no wait
    assert issuer.count(JWKS_URL) == fetches
    clock.advance(61)  # the back-off (5 s doubling, at most 60 s) is over
    claims = v.verify(issuer.token())
    assert claims.report.stale is False and claims.report.keys_age == 0


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b'{"keys": 1}', b""])
def test_a_broken_jwks_answer_is_a_failed_refresh_not_an_empty_key_set(issuer: FakeIssuer, body: bytes) -> None:
    v = make_verifier(issuer)
    v.verify(issuer.token())
    issuer.jwks_body = body
    issuer.clock.advance(300)
    claims = v.verify(issuer.token())
    assert claims.report.stale is True and claims.report.keys_age == 300


def test_unknown_kid_while_the_issuer_is_down(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer)
    v.verify(issuer.token())
    issuer.down = "connect"
    issuer.add_key("k2")
    refused(v, issuer.token("k2"), UnknownKey)
    assert v.verify(issuer.token("k1")).report.stale is False


# -- background refresh (the default) ---------------------------------------------------------------------


def _join_refresh_threads() -> None:
    for t in threading.enumerate():
        if t.name.startswith("tessera-verify-refresh"):
            t.join(10)
            assert not t.is_alive()


def test_background_refresh_serves_cached_keys_and_refreshes_off_the_request_path(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, background_refresh=True)
    v.verify(issuer.token())
    issuer.clock.advance(300)
    issuer.gate = threading.Event()  # hold the refresh so the answer below cannot race it
    claims = v.verify(issuer.token())
    assert claims.report.stale is True and claims.report.keys_age == 300
    assert v.verify(issuer.token()).report.stale is True  # one refresh in flight, not one per request
    issuer.gate.set()
    _join_refresh_threads()
    assert issuer.count(JWKS_URL) == 2
    claims = v.verify(issuer.token())
    assert claims.report.stale is False and claims.report.keys_age == 0


def test_background_refresh_still_fails_closed(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, background_refresh=True, keys_max_stale=600)
    v.verify(issuer.token())
    issuer.down = "connect"
    issuer.clock.advance(300)
    assert v.verify(issuer.token()).report.stale is True
    _join_refresh_threads()
    issuer.clock.advance(301)
    refused(v, issuer.token(), TrustDataStale)


# -- async API ------------------------------------------------------------------------------------------


async def arefused(verifier: Verifier, token: str, error: type[VerificationError]) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        await verifier.averify(token)
    assert type(caught.value) is error, f"expected {error.__name__}, got {caught.value!r}"
    return caught.value


def test_async_discovery_cache_control_and_flood(issuer: FakeIssuer) -> None:
    issuer.jwks_cache_control = "max-age=120"
    clock = issuer.clock
    v = make_verifier(issuer, transport=None)  # any sync use would go to the real network and fail

    async def scenario() -> None:
        for _ in range(3):
            assert (await v.averify(issuer.token())).report.keys_age == 0
        assert issuer.requests == [METADATA_URL, JWKS_URL]
        attacker = ec.generate_private_key(ec.SECP256R1())
        for _ in range(100):
            await arefused(v, issuer.token(secrets.token_hex(8), key=attacker), UnknownKey)
        assert issuer.count(JWKS_URL) == 2
        clock.advance(119)
        await v.averify(issuer.token())
        assert issuer.count(JWKS_URL) == 2
        clock.advance(1)
        await v.averify(issuer.token())
        assert issuer.count(JWKS_URL) == 3
        issuer.add_key("k2")
        assert (await v.averify(issuer.token("k2")))["sub"] == "svc-reporting"
        assert issuer.count(JWKS_URL) == 4

    asyncio.run(scenario())


def test_async_metadata_naming_another_issuer(issuer: FakeIssuer) -> None:
    issuer.metadata["issuer"] = "https://evil.test"
    v = make_verifier(issuer)
    asyncio.run(arefused(v, issuer.token(), WrongIssuer))
    assert issuer.count(JWKS_URL) == 0


@pytest.mark.parametrize("down", ["connect", 500])
def test_async_issuer_down_then_back(issuer: FakeIssuer, down: str | int) -> None:
    clock = issuer.clock
    v = make_verifier(issuer, keys_max_stale=3600)

    async def scenario() -> None:
        await v.averify(issuer.token())
        issuer.down = down
        clock.advance(301)
        claims = await v.averify(issuer.token())
        assert claims.report.stale is True and claims.report.keys_age == 301
        clock.advance(3299)
        assert (await v.averify(issuer.token())).report.keys_age == 3600
        clock.advance(1)
        await arefused(v, issuer.token(), TrustDataStale)
        issuer.down = None
        clock.advance(61)  # past the fetch back-off
        claims = await v.averify(issuer.token())
        assert claims.report.stale is False and claims.report.keys_age == 0

    asyncio.run(scenario())


def test_async_key_removed_stops_verifying(issuer: FakeIssuer) -> None:
    issuer.add_key("k2")
    v = make_verifier(issuer)

    async def scenario() -> None:
        early = issuer.token("k2", exp=int(T0) + 3600)
        await v.averify(early)
        issuer.remove_key("k2")
        issuer.clock.advance(300)
        await arefused(v, early, UnknownKey)

    asyncio.run(scenario())


def test_async_background_refresh(issuer: FakeIssuer) -> None:
    v = make_verifier(issuer, background_refresh=True)

    async def scenario() -> None:
        await v.averify(issuer.token())
        issuer.clock.advance(300)
        assert (await v.averify(issuer.token())).report.stale is True
        for _ in range(100):  # let the refresh task run; no wall-clock wait
            if issuer.count(JWKS_URL) == 2 and not v.trust._refreshing:
                break
            await asyncio.sleep(0)
        assert issuer.count(JWKS_URL) == 2
        claims = await v.averify(issuer.token())
        assert claims.report.stale is False and claims.report.keys_age == 0

    asyncio.run(scenario())
