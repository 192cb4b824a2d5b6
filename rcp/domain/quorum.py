"""Quorum of a board session: who is present and which required specialties are missing.

Default rule (after the national RCP facts): at least 3 physicians of at least 3 distinct
specialties, among them a surgeon (any surgical specialty), a medical oncologist and a radiation
oncologist. Each board may change the minimums and the required set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from konsil.errors import Reason, ValidationError
from konsil.identity.specialties import BY_CODE

# A requirement is a specialty code, or this token meaning "any surgical specialty".
ANY_SURGERY = "surgical"
DEFAULT_REQUIRED = (ANY_SURGERY, "medical-oncology", "radiation-oncology")


@dataclass(frozen=True)
class QuorumRule:
    min_physicians: int = 3
    min_specialties: int = 3
    required: tuple[str, ...] = DEFAULT_REQUIRED

    def to_json(self) -> dict[str, object]:
        return {
            "min_physicians": self.min_physicians,
            "min_specialties": self.min_specialties,
            "required": list(self.required),
        }


def check_rule(min_physicians: int, min_specialties: int, required: Iterable[str]) -> QuorumRule:
    errors: dict[str, str] = {}
    req = tuple(dict.fromkeys(r.strip() for r in required if r.strip()))
    if not 1 <= min_physicians <= 50:
        errors["min_physicians"] = "must be between 1 and 50"
    if not 1 <= min_specialties <= 30:
        errors["min_specialties"] = "must be between 1 and 30"
    elif min_specialties > min_physicians:
        errors["min_specialties"] = "cannot exceed the minimum number of physicians"
    bad = [r for r in req if r != ANY_SURGERY and r not in BY_CODE]
    if bad:
        errors["required"] = Reason("unknown specialty code(s): {codes}", codes=", ".join(bad))
    if errors:
        raise ValidationError("the quorum rule is not valid", fields=errors)
    return QuorumRule(min_physicians, min_specialties, req)


@dataclass(frozen=True)
class Attendee:
    account_id: str
    name: str
    specialty: str | None  # None: not a physician with a specialty (e.g. a coordinator)
    present: bool


@dataclass(frozen=True)
class QuorumStatus:
    met: bool
    physicians_present: int
    specialties_present: tuple[str, ...]
    missing_required: tuple[str, ...]
    present: tuple[Attendee, ...]
    reasons: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> Reason:
        """The reasons as one text a page translates (``joined``)."""
        return joined(self.reasons)

    def to_json(self) -> dict[str, object]:
        return {
            "met": self.met,
            "physicians_present": self.physicians_present,
            "specialties_present": list(self.specialties_present),
            "missing_required": list(self.missing_required),
            "present": [
                {"account_id": a.account_id, "name": a.name, "specialty": a.specialty}
                for a in self.present
            ],
            "reasons": list(self.reasons),
        }


def joined(reasons: Sequence[str]) -> Reason:
    """The reasons as one text, ``a; b``, that a page translates reason by reason."""
    names = [f"r{i}" for i in range(len(reasons))]
    template = "; ".join(f"{{{n}}}" for n in names)
    return Reason(template, **dict(zip(names, reasons, strict=True)))


def _satisfies(requirement: str, specialty: str) -> bool:
    if requirement == ANY_SURGERY:
        s = BY_CODE.get(specialty)
        return s is not None and s.surgical
    return requirement == specialty


def evaluate(rule: QuorumRule, attendees: Sequence[Attendee]) -> QuorumStatus:
    present = tuple(a for a in attendees if a.present)
    physicians = [a for a in present if a.specialty]
    # Distinct specialties: two physicians of one specialty count once.
    specialties = tuple(sorted({a.specialty for a in physicians if a.specialty}))
    missing = tuple(r for r in rule.required if not any(_satisfies(r, s) for s in specialties))
    reasons: list[str] = []
    if len(physicians) < rule.min_physicians:
        reasons.append(
            Reason(
                "{physicians} of {min_physicians} physicians present",
                physicians=len(physicians),
                min_physicians=rule.min_physicians,
            )
        )
    if len(specialties) < rule.min_specialties:
        reasons.append(
            Reason(
                "{specialties} of {min_specialties} distinct specialties present",
                specialties=len(specialties),
                min_specialties=rule.min_specialties,
            )
        )
    if missing:
        reasons.append(Reason("missing: {missing}", missing=", ".join(missing)))
    return QuorumStatus(
        met=not reasons,
        physicians_present=len(physicians),
        specialties_present=specialties,
        missing_required=missing,
        present=present,
        reasons=tuple(reasons),
    )
