"""Assurance levels (NIST SP 800-63B rev. 4): each level against each combination of proofs, and
which authenticator combinations a person's enrolment can offer."""

from __future__ import annotations

import pytest

from tessera.approvals.assurance import AAL, Proof, achieved, needs, parse_aal, satisfies

TOTP = Proof("totp")
PASSKEY = Proof("passkey")  # no user verification, synced
PASSKEY_UV = Proof("passkey", user_verified=True)  # user-verified, synced
PASSKEY_BOUND = Proof("passkey", device_bound=True)  # device-bound, no user verification
PASSKEY_UV_BOUND = Proof("passkey", user_verified=True, device_bound=True)  # hardware-bound, user-verified

LEVELS: list[AAL] = ["aal1", "aal2", "aal3"]

# (proofs, the highest level they reach together)
TABLE: list[tuple[list[Proof], AAL | None]] = [
    ([], None),
    ([TOTP], "aal1"),
    ([TOTP, TOTP], "aal1"),
    ([Proof("totp", user_verified=True, device_bound=True)], "aal1"),  # TOTP alone is never above aal1
    ([PASSKEY], "aal1"),
    ([PASSKEY_BOUND], "aal1"),
    ([PASSKEY, PASSKEY_BOUND], "aal1"),
    ([PASSKEY_UV], "aal2"),
    ([PASSKEY, TOTP], "aal2"),
    ([TOTP, PASSKEY_BOUND], "aal2"),
    ([PASSKEY_UV, TOTP], "aal2"),
    ([PASSKEY_UV, PASSKEY_BOUND], "aal2"),  # UV and device binding must be on the same passkey
    ([PASSKEY_UV_BOUND], "aal3"),
    ([PASSKEY_UV_BOUND, TOTP], "aal3"),
    ([PASSKEY, PASSKEY_UV_BOUND], "aal3"),
]


@pytest.mark.parametrize(("proofs", "level"), TABLE)
def test_achieved(proofs: list[Proof], level: AAL | None) -> None:
    assert achieved(proofs) == level
    assert achieved(list(reversed(proofs))) == level


@pytest.mark.parametrize(("proofs", "level"), TABLE)
@pytest.mark.parametrize("required", LEVELS)
def test_satisfies_each_level_against_each_combination(proofs: list[Proof], level: AAL | None, required: AAL) -> None:
    expected = level is not None and LEVELS.index(level) >= LEVELS.index(required)
    assert satisfies(required, proofs) is expected


def test_satisfies_spot_checks() -> None:
    assert satisfies("aal1", [TOTP])
    assert not satisfies("aal2", [TOTP])
    assert satisfies("aal2", [PASSKEY, TOTP])
    assert not satisfies("aal3", [PASSKEY_UV, TOTP])
    assert satisfies("aal3", [PASSKEY_UV_BOUND])
    assert not satisfies("aal1", [])


def test_satisfies_refuses_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="aal4"):
        satisfies("aal4", [PASSKEY_UV_BOUND])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", LEVELS)
def test_parse_aal(value: str) -> None:
    assert parse_aal(value) == value


@pytest.mark.parametrize("value", ["", "AAL2", "aal0", "aal4", " aal1", "2", "aal2 "])
def test_parse_aal_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match="expected one of aal1, aal2, aal3"):
        parse_aal(value)


def test_a_proof_of_an_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sms"):
        Proof("sms")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("required", "enrolled", "combinations"),
    [
        ("aal1", {"passkey", "totp"}, [["passkey"], ["totp"]]),
        ("aal1", {"passkey"}, [["passkey"]]),
        ("aal1", {"totp"}, [["totp"]]),
        ("aal1", set(), []),
        ("aal2", {"passkey", "totp"}, [["passkey"], ["passkey", "totp"]]),
        ("aal2", {"passkey"}, [["passkey"]]),
        ("aal2", {"totp"}, []),
        ("aal2", set(), []),
        ("aal3", {"passkey", "totp"}, [["passkey"]]),
        ("aal3", {"passkey"}, [["passkey"]]),
        ("aal3", {"totp"}, []),
        ("aal3", set(), []),
    ],
)
def test_needs(required: AAL, enrolled: set[str], combinations: list[list[str]]) -> None:
    assert needs(required, enrolled) == combinations


def test_needs_refuses_unknown_kinds_and_levels() -> None:
    with pytest.raises(ValueError, match="webauthn"):
        needs("aal1", {"webauthn"})
    with pytest.raises(ValueError, match="aal9"):
        needs("aal9", {"passkey"})  # type: ignore[arg-type]


def test_every_combination_needs_offers_can_reach_the_level() -> None:
    # Each combination, proven at its best (user-verified, device-bound passkey), satisfies the level.
    best = {"passkey": PASSKEY_UV_BOUND, "totp": TOTP}
    for required in LEVELS:
        for combination in needs(required, {"passkey", "totp"}):
            assert satisfies(required, [best[kind] for kind in combination])
