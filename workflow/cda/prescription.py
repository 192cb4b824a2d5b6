"""Medication prescription (ordonnance): one ``substanceAdministration`` (mood INT) per line.

Each line: the medication coded in ATC with its product name, dose (UCUM), route (EDQM),
frequency (``PIVL_TS``, institution-specified: "3 times a day", not "every 8 hours sharp"),
treatment duration (``IVL_TS``), the quantity to dispense (a ``supply`` request) and whether the
CNS reimburses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Final

from . import codes
from .builder import DocumentSpec, Element, Section, build, code_el, day, observation_in, sub, v_bl
from .codes import Code
from .values import Header, Problems, check_choice, check_header, local_time

ATC_RE: Final = re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")
MAX_LINES: Final = 30
MAX_DURATION_DAYS: Final = 366
HOURS: Final[dict[str, int]] = {"h": 1, "d": 24, "wk": 168}


@dataclass(frozen=True)
class Medication:
    atc: str  # ATC code, 7 characters (e.g. J01CA04)
    name: str  # product as prescribed, e.g. "Amoxicilline 500 mg, gélule"


@dataclass(frozen=True)
class PrescriptionLine:
    medication: Medication
    dose: Decimal
    dose_unit: str  # codes.UNITS (UCUM)
    route: str  # codes.ROUTES (EDQM)
    times: int  # administrations …
    per: int  # … per this many …
    period_unit: str  # … hours, days or weeks (codes.FREQUENCY_UNITS)
    duration_days: int
    quantity: Decimal  # to dispense
    quantity_unit: str  # codes.UNITS
    reimbursable: bool  # by the CNS
    instructions: str | None = None

    @property
    def period_hours(self) -> Decimal:
        """Hours between administrations, for PIVL_TS."""
        hours = Decimal(self.per * HOURS[self.period_unit]) / Decimal(self.times)
        return hours.quantize(Decimal("0.01")).normalize()


@dataclass(frozen=True)
class Prescription:
    lines: tuple[PrescriptionLine, ...]
    start: date
    note: str | None = None


def check_prescription(rx: Prescription, header: Header, *, now: datetime) -> None:
    p = Problems()
    check_header(p, header, now=now)
    today = local_time(now).date()
    if not rx.lines:
        p.add("lines", "a prescription has at least one medication")
    elif len(rx.lines) > MAX_LINES:
        p.add("lines", "at most {count} medications per prescription", count=MAX_LINES)
    if rx.start < today:
        p.add("start", "a prescription cannot start in the past")
    elif rx.start > today + timedelta(days=90):
        p.add("start", "a prescription starts within 90 days")
    if rx.note is not None:
        p.text(rx.note, "note")
    for i, line in enumerate(rx.lines):
        f = f"lines.{i}"
        if not ATC_RE.match(line.medication.atc):
            p.add(
                f"{f}.medication.atc",
                "{code!r} is not an ATC code (e.g. J01CA04)",
                code=line.medication.atc,
            )
        p.text(line.medication.name, f"{f}.medication.name", limit=200)
        if not line.dose.is_finite() or line.dose <= 0:
            p.add(f"{f}.dose", "must be more than 0")
        check_choice(p, line.dose_unit, codes.UNITS, f"{f}.dose_unit")
        check_choice(p, line.route, codes.ROUTES, f"{f}.route")
        if not 1 <= line.times <= 24:
            p.add(f"{f}.times", "1 to 24 administrations")
        if line.per < 1:
            p.add(f"{f}.per", "must be at least 1")
        check_choice(p, line.period_unit, codes.FREQUENCY_UNITS, f"{f}.period_unit")
        if not 1 <= line.duration_days <= MAX_DURATION_DAYS:
            p.add(f"{f}.duration_days", "1 to {days} days", days=MAX_DURATION_DAYS)
        if not line.quantity.is_finite() or line.quantity <= 0:
            p.add(f"{f}.quantity", "must be more than 0")
        check_choice(p, line.quantity_unit, codes.UNITS, f"{f}.quantity_unit")
        if line.instructions is not None:
            p.text(line.instructions, f"{f}.instructions", limit=500)
    p.raise_if_any("the prescription")


def _typed(parent: Element, tag: str, xsi_type: str, **attrs: str | None) -> Element:
    el = sub(parent, tag, **attrs)
    el.set(f"{{{codes.XSI_NS}}}type", xsi_type)
    return el


def build_prescription(rx: Prescription, header: Header, *, now: datetime) -> bytes:
    check_prescription(rx, header, now=now)

    def lines(s: Element) -> None:
        for line in rx.lines:
            sa = sub(sub(s, "entry"), "substanceAdministration", classCode="SBADM", moodCode="INT")
            if line.instructions:
                sub(sa, "text", line.instructions)
            sub(sa, "statusCode", code="active")
            period = _typed(sa, "effectiveTime", "IVL_TS")
            sub(period, "low", value=day(rx.start))
            end = rx.start + timedelta(days=line.duration_days - 1)
            sub(period, "high", value=day(end))
            freq = _typed(sa, "effectiveTime", "PIVL_TS", institutionSpecified="true", operator="A")
            sub(freq, "period", value=str(line.period_hours), unit="h")
            route = Code(line.route, codes.OID_EDQM_ROUTE, codes.ROUTES[line.route])
            code_el(sa, "routeCode", route)
            sub(sa, "doseQuantity", value=str(line.dose), unit=line.dose_unit)
            product = sub(sub(sa, "consumable"), "manufacturedProduct")
            material = sub(product, "manufacturedMaterial")
            code_el(
                material, "code", Code(line.medication.atc, codes.OID_ATC, line.medication.name)
            )
            sub(material, "name", line.medication.name)
            supply = sub(
                sub(sa, "entryRelationship", typeCode="COMP"),
                "supply",
                classCode="SPLY",
                moodCode="RQO",
            )
            sub(supply, "quantity", value=str(line.quantity), unit=line.quantity_unit)
            rel = sub(sa, "entryRelationship", typeCode="COMP")
            observation_in(rel, codes.OBS_REIMBURSABLE, partial(v_bl, value=line.reimbursable))

    spec = DocumentSpec(
        kind="prescription",
        header=header,
        now=now,
        sections=[Section(codes.SEC_PRESCRIPTIONS, "Prescription", "lines", lines)],
        narrative="prescription.xml",
        context={
            "rx": rx,
            "units": codes.UNITS,
            "routes": codes.ROUTES,
            "per_unit": codes.FREQUENCY_UNITS,
            "ends": [rx.start + timedelta(days=x.duration_days - 1) for x in rx.lines],
        },
    )
    return build(spec)
