"""TOTP (RFC 6238) against the RFC's Appendix B vectors and HOTP (RFC 4226) Appendix D; the
verification window, single use of a time step (§5.2) and strict code syntax."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from tessera.approvals.totp import CodeRejected, code_at, new_secret, provisioning_uri, verify_code

# RFC 6238 Appendix B: the seed for each mode is the ASCII "12345678901234567890" repeated to the
# hash's length (the errata-corrected reference implementation uses 20, 32 and 64 bytes).
SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
APPENDIX_B = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]
VECTORS = [
    (t, algorithm, code)
    for t, sha1, sha256, sha512 in APPENDIX_B
    for algorithm, code in (("SHA1", sha1), ("SHA256", sha256), ("SHA512", sha512))
]

# RFC 4226 Appendix D: HOTP values for counts 0..9 with the SHA1 seed; TOTP at t = count * 30 is HOTP(count).
HOTP = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]

SECRET = SEEDS["SHA1"]
NOW = 1_800_000_015.0  # mid-step
STEP = int(NOW // 30)


def test_the_appendix_b_table_has_eighteen_rows() -> None:
    assert len(VECTORS) == 18
    assert all(len(seed) == size for seed, size in zip(SEEDS.values(), (20, 32, 64), strict=True))


@pytest.mark.parametrize(("t", "algorithm", "expected"), VECTORS)
def test_rfc6238_appendix_b(t: int, algorithm: str, expected: str) -> None:
    assert code_at(SEEDS[algorithm], t, digits=8, algorithm=algorithm) == expected
    step = t // 30
    assert verify_code(SEEDS[algorithm], expected, now=t, last_step=None, digits=8, algorithm=algorithm) == step


@pytest.mark.parametrize(("count", "expected"), list(enumerate(HOTP)))
def test_rfc4226_appendix_d(count: int, expected: str) -> None:
    assert code_at(SECRET, count * 30, digits=6) == expected


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_one_step_either_side_is_accepted(offset: int) -> None:
    code = code_at(SECRET, NOW + offset * 30)
    assert verify_code(SECRET, code, now=NOW, last_step=None) == STEP + offset


@pytest.mark.parametrize("offset", [-2, 2])
def test_two_steps_away_is_refused(offset: int) -> None:
    code = code_at(SECRET, NOW + offset * 30)
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, code, now=NOW, last_step=None)
    assert caught.value.reason == "wrong_code"
    assert verify_code(SECRET, code, now=NOW, last_step=None, window=2) == STEP + offset


def test_window_zero_accepts_only_the_current_step() -> None:
    assert verify_code(SECRET, code_at(SECRET, NOW), now=NOW, last_step=None, window=0) == STEP
    with pytest.raises(CodeRejected):
        verify_code(SECRET, code_at(SECRET, NOW - 30), now=NOW, last_step=None, window=0)


def test_steps_are_counted_from_the_epoch_in_whole_periods() -> None:
    assert code_at(SECRET, 59.999, digits=8) == "94287082"
    assert code_at(SECRET, 60, digits=8) != "94287082"
    assert code_at(SECRET, 60, digits=6) == HOTP[2]
    assert code_at(SECRET, 59, digits=6, period=60) == HOTP[0]


def test_a_code_is_accepted_at_most_once() -> None:
    code = code_at(SECRET, NOW)
    step = verify_code(SECRET, code, now=NOW, last_step=None)
    # RFC 6238 §5.2: the verifier MUST NOT accept the second attempt of the same OTP.
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, code, now=NOW + 5, last_step=step)
    assert caught.value.reason == "replayed"


def test_an_earlier_step_is_refused_after_a_later_one_was_used() -> None:
    later = verify_code(SECRET, code_at(SECRET, NOW + 30), now=NOW, last_step=None)
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, code_at(SECRET, NOW), now=NOW, last_step=later)
    assert caught.value.reason == "replayed"
    # The next step is fresh.
    assert verify_code(SECRET, code_at(SECRET, NOW + 60), now=NOW + 60, last_step=later) == later + 1


def test_a_wrong_code_is_not_reported_as_a_replay() -> None:
    code = code_at(SECRET, NOW)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, wrong, now=NOW, last_step=STEP)
    assert caught.value.reason == "wrong_code"


@pytest.mark.parametrize(
    "code",
    [
        "",
        "12345",
        "1234567",
        "12345a",
        "abcdef",
        " 12345",
        "123456 ",
        "123456\n",
        "+12345",
        "-12345",
        "12 345",
        "1234.5",
        "\u0661\u0662\u0663\u0664\u0665\u0666",  # Arabic-Indic digits: str.isdigit() says yes, RFC 4226 says no
        "\uff11\uff12\uff13\uff14\uff15\uff16",  # fullwidth digits
        "12345\u00b2",  # superscript two
    ],
)
def test_a_code_that_is_not_exactly_six_ascii_digits_is_malformed(code: str) -> None:
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, code, now=NOW, last_step=None)
    assert caught.value.reason == "malformed"


@pytest.mark.parametrize("code", [None, 123456, b"123456"])
def test_a_code_that_is_not_a_string_is_malformed(code: object) -> None:
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, code, now=NOW, last_step=None)  # type: ignore[arg-type]
    assert caught.value.reason == "malformed"


def test_digits_must_match_the_enrolment() -> None:
    eight = code_at(SECRET, NOW, digits=8)
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, eight, now=NOW, last_step=None)
    assert caught.value.reason == "malformed"
    assert verify_code(SECRET, eight, now=NOW, last_step=None, digits=8) == STEP


def test_a_rejection_never_echoes_the_code() -> None:
    code = code_at(SECRET, NOW)
    step = verify_code(SECRET, code, now=NOW, last_step=None)
    with pytest.raises(CodeRejected) as caught:
        verify_code(SECRET, code, now=NOW, last_step=step)
    assert code not in str(caught.value)
    assert str(caught.value).startswith("replayed: ")


@pytest.mark.parametrize(
    "kwargs", [{"digits": 5}, {"digits": 10}, {"period": 0}, {"algorithm": "MD5"}, {"algorithm": "sha1"}]
)
def test_bad_parameters_are_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        code_at(SECRET, NOW, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        verify_code(SECRET, "123456", now=NOW, last_step=None, **kwargs)  # type: ignore[arg-type]


def test_new_secrets_are_160_random_bits() -> None:
    secrets = {new_secret() for _ in range(32)}
    assert len(secrets) == 32
    assert all(len(s) == 20 for s in secrets)


def test_provisioning_uri() -> None:
    secret = new_secret()
    uri = provisioning_uri(secret, account="alice@example.com", issuer="Tessera Approvals")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/Tessera%20Approvals:alice%40example.com"
    query = {k: v[0] for k, v in parse_qs(parts.query, strict_parsing=True).items()}
    assert query == {
        "secret": query["secret"],
        "issuer": "Tessera Approvals",
        "algorithm": "SHA1",
        "digits": "6",
        "period": "30",
    }
    assert "=" not in query["secret"]
    assert base64.b32decode(query["secret"] + "=" * (-len(query["secret"]) % 8)) == secret


def test_provisioning_uri_refuses_colons_in_the_label() -> None:
    with pytest.raises(ValueError):
        provisioning_uri(new_secret(), account="a:b", issuer="Tessera")
    with pytest.raises(ValueError):
        provisioning_uri(new_secret(), account="alice", issuer="")
