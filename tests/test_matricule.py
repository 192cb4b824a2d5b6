from __future__ import annotations

from datetime import date

import pytest

from konsil.errors import ValidationError
from konsil.identity.matricule import (
    birth_date_of,
    check_matricule,
    luhn_digit,
    make_matricule,
    verhoeff_digit,
)

TODAY = date(2026, 11, 27)


def test_known_check_digits() -> None:
    # Textbook values: Luhn of 7992739871 is 3, Verhoeff of 236 is 3.
    assert luhn_digit("7992739871") == 3
    assert verhoeff_digit("236") == 3
    assert verhoeff_digit("12345") == 1


def test_valid_matricule_round_trip() -> None:
    m = make_matricule("19830412", 12)
    assert len(m) == 13
    assert check_matricule(m, today=TODAY) == m
    assert check_matricule(f"{m[:4]} {m[4:8]} {m[8:]}", today=TODAY) == m
    assert birth_date_of(m) == date(1983, 4, 12)


def test_unknown_month_and_day_allowed() -> None:
    m = make_matricule("19500000", 7)
    assert check_matricule(m, today=TODAY) == m
    assert birth_date_of(m) is None


@pytest.mark.parametrize("value", ["123", "19830412012645", "1983041201a64", ""])
def test_wrong_length_or_characters(value: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_matricule(value)
    assert err.value.fields == {"matricule": "must be 13 digits"}


def test_wrong_luhn_digit() -> None:
    m = make_matricule("19830412", 12)
    bad = m[:11] + str((int(m[11]) + 1) % 10) + m[12]
    with pytest.raises(ValidationError) as err:
        check_matricule(bad)
    assert "Luhn" in err.value.fields["matricule"]


def test_wrong_verhoeff_digit() -> None:
    m = make_matricule("19830412", 12)
    bad = m[:12] + str((int(m[12]) + 1) % 10)
    with pytest.raises(ValidationError) as err:
        check_matricule(bad)
    assert "Verhoeff" in err.value.fields["matricule"]


@pytest.mark.parametrize("birth", ["19830231", "19831301", "20990101", "18000101"])
def test_impossible_date(birth: str) -> None:
    m = make_matricule(birth, 1)  # check digits right, date impossible
    with pytest.raises(ValidationError) as err:
        check_matricule(m, today=TODAY)
    assert err.value.fields["matricule"] == "impossible birth date" or "future" in err.value.message


def test_birth_date_must_match() -> None:
    m = make_matricule("19830412", 12)
    with pytest.raises(ValidationError) as err:
        check_matricule(m, birth_date=date(1983, 4, 13))
    assert "birth_date" in err.value.fields
    assert check_matricule(m, birth_date=date(1983, 4, 12)) == m


def test_transposition_caught() -> None:
    m = make_matricule("19830412", 12)
    swapped = m[:8] + m[9] + m[8] + m[10:]
    if swapped != m:
        with pytest.raises(ValidationError):
            check_matricule(swapped)
