"""Luxembourg national identification number (matricule): 13 digits.

YYYYMMDD + 3-digit sequence + Luhn check digit + Verhoeff check digit, both check digits computed
over the first 11 digits. Month and day may be 00 when unknown.
"""

from __future__ import annotations

from datetime import date

from konsil.errors import ValidationError

_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_VERHOEFF_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


def luhn_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # the digit next to the check digit is doubled
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def verhoeff_digit(digits: str) -> int:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[(i + 1) % 8][int(ch)]]
    return _VERHOEFF_INV[c]


def make_matricule(birth: str, sequence: int) -> str:
    """Build a valid matricule from YYYYMMDD and a sequence number (for demo data and tests)."""
    base = f"{birth}{sequence:03d}"
    return f"{base}{luhn_digit(base)}{verhoeff_digit(base)}"


def birth_date_of(matricule: str) -> date | None:
    """The birth date the digits encode, or None where month or day is 00 (unknown)."""
    y, m, d = int(matricule[0:4]), int(matricule[4:6]), int(matricule[6:8])
    if m == 0 or d == 0:
        return None
    return date(y, m, d)


def check_matricule(
    value: str, *, birth_date: date | None = None, today: date | None = None
) -> str:
    """Return the normalised matricule or raise ValidationError saying exactly what is wrong."""
    raw = value.replace(" ", "")
    if not raw.isdigit() or len(raw) != 13:
        raise ValidationError(
            "a matricule has exactly 13 digits", fields={"matricule": "must be 13 digits"}
        )
    year, month, day = int(raw[0:4]), int(raw[4:6]), int(raw[6:8])
    if year < 1850 or month > 12 or (today is not None and year > today.year):
        raise ValidationError(
            "the matricule does not start with a possible birth date",
            fields={"matricule": "impossible birth date"},
        )
    encoded: date | None = None
    if month and day:
        try:
            encoded = date(year, month, day)
        except ValueError:
            raise ValidationError(
                "the matricule does not start with a possible birth date",
                fields={"matricule": "impossible birth date"},
            ) from None
        if today is not None and encoded > today:
            raise ValidationError(
                "the matricule's birth date is in the future",
                fields={"matricule": "impossible birth date"},
            )
    elif day > 31:
        raise ValidationError(
            "the matricule does not start with a possible birth date",
            fields={"matricule": "impossible birth date"},
        )
    base = raw[:11]
    if int(raw[11]) != luhn_digit(base):
        raise ValidationError(
            "the matricule's Luhn check digit (12th digit) is wrong",
            fields={"matricule": "wrong Luhn check digit"},
        )
    if int(raw[12]) != verhoeff_digit(base):
        raise ValidationError(
            "the matricule's Verhoeff check digit (13th digit) is wrong",
            fields={"matricule": "wrong Verhoeff check digit"},
        )
    if birth_date is not None:
        if (
            birth_date.year != year
            or (month and birth_date.month != month)
            or (day and birth_date.day != day)
        ):
            raise ValidationError(
                "the birth date does not match the matricule",
                fields={"birth_date": "does not match the matricule"},
            )
    return raw
