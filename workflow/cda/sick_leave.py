"""Sick-leave certificate (certificat d'incapacité de travail, CIT): eSanté ``DT-20002``.

Variants: illness, accident (with the accident's date, kind and insurer reference), leave for
family reasons (the sick child's matricule) and maternity (presumed delivery date). The CNS gets
the CDA; the patient and the employer get printable copies (``workflow.cda.printable``), the
employer's without any medical detail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

from lxml import etree

from konsil.identity.matricule import birth_date_of

from . import codes
from .builder import (
    DocumentSpec,
    Element,
    Section,
    ad_xml,
    bl_xml,
    build,
    cd_xml,
    observation_xml,
    sub,
    ts_xml,
)
from .codes import Code
from .values import (
    Address,
    Header,
    Identifier,
    Problems,
    check_address,
    check_choice,
    check_header,
    check_icd10,
    local_time,
)

CNS_RECIPIENT = "Caisse nationale de santé (CNS)"
MAX_DAYS = 366  # one certificate never covers more than a year
MAX_BACKDATE_DAYS = 7  # the start may precede the certificate by a few days, no more
CHILD_MAX_AGE = 18  # congé pour raisons familiales: children under 18


@dataclass(frozen=True)
class Diagnosis:
    code: str  # ICD-10
    label: str


@dataclass(frozen=True)
class Accident:
    kind: str  # codes.ACCIDENT_KINDS
    date: date
    reference: str | None = None  # the insurer's (AAA) file number, if known


@dataclass(frozen=True)
class Child:
    matricule: str
    given_name: str
    family_name: str


@dataclass(frozen=True)
class SickLeave:
    kind: str  # codes.SICK_LEAVE_KINDS
    start: date
    end: date
    first_day_off: date | None = None  # defaults to start
    diagnosis: Diagnosis | None = None
    accident: Accident | None = None
    child: Child | None = None
    expected_delivery: date | None = None
    outings_allowed: bool = False
    hospitalised: bool = False
    stay_address: Address | None = None  # only when not at home
    extension: bool = False  # a prolongation of an earlier certificate

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def check_sick_leave(cert: SickLeave, header: Header, *, now: datetime) -> None:
    p = Problems()
    check_header(p, header, now=now)
    today = local_time(now).date()
    check_choice(p, cert.kind, codes.SICK_LEAVE_KINDS, "kind")
    if cert.end < cert.start:
        p.add("end", "the incapacity ends before it starts")
    elif cert.days > MAX_DAYS:
        p.add("end", "one certificate covers at most {days} days", days=MAX_DAYS)
    if cert.start < today - timedelta(days=MAX_BACKDATE_DAYS):
        p.add(
            "start",
            "cannot start more than {days} days before the certificate",
            days=MAX_BACKDATE_DAYS,
        )
    if cert.first_day_off is not None and cert.first_day_off > cert.start:
        p.add("first_day_off", "is after the start of the incapacity")
    needs_diagnosis = cert.kind in ("illness", "accident", "family-reason")
    if cert.diagnosis is None:
        if needs_diagnosis:
            p.add("diagnosis", "a diagnosis (ICD-10) is required")
    else:
        check_icd10(p, cert.diagnosis.code, "diagnosis.code")
        p.text(cert.diagnosis.label, "diagnosis.label", limit=300)
    if cert.kind == "accident":
        if cert.accident is None:
            p.add("accident", "an accident certificate needs the accident's kind and date")
        else:
            check_choice(p, cert.accident.kind, codes.ACCIDENT_KINDS, "accident.kind")
            if cert.accident.date > today:
                p.add("accident.date", "is in the future")
            elif cert.accident.date > cert.start:
                p.add("accident.date", "is after the start of the incapacity")
            if cert.accident.reference is not None:
                p.text(cert.accident.reference, "accident.reference", limit=64)
    elif cert.accident is not None:
        p.add("accident", "only an accident certificate has accident details")
    if cert.kind == "family-reason":
        if cert.child is None:
            p.add("child", "leave for family reasons names the sick child")
        else:
            p.matricule(cert.child.matricule, "child.matricule", today=today)
            p.text(cert.child.given_name, "child.given_name", limit=100)
            p.text(cert.child.family_name, "child.family_name", limit=100)
            born = (
                birth_date_of(cert.child.matricule) if "child.matricule" not in p.fields else None
            )
            if born is not None and born.replace(year=born.year + CHILD_MAX_AGE) <= cert.start:
                p.add("child.matricule", "the child is {age} or older", age=CHILD_MAX_AGE)
            if cert.child.matricule == header.patient.matricule:
                p.add("child.matricule", "is the patient's own matricule")
    elif cert.child is not None:
        p.add("child", "only leave for family reasons names a child")
    if cert.kind == "maternity":
        if cert.expected_delivery is None:
            p.add("expected_delivery", "maternity leave needs the presumed delivery date")
        elif header.patient.sex != "F":
            p.add("kind", "maternity leave is for the mother")
    elif cert.expected_delivery is not None:
        p.add("expected_delivery", "only maternity leave has a presumed delivery date")
    if cert.stay_address is not None:
        check_address(p, cert.stay_address, "stay_address")
    p.raise_if_any("the sick-leave certificate")


def build_sick_leave(cert: SickLeave, header: Header, *, now: datetime) -> bytes:
    """Check, then build the CDA bytes (UTF-8). Raises ValidationError listing every problem."""
    check_sick_leave(cert, header, now=now)
    kind = Code(cert.kind, codes.OID_KONSIL_CODES, codes.SICK_LEAVE_KINDS[cert.kind])

    incapacity = (
        observation_xml(codes.OBS_INCAPACITY, cd_xml(kind), when=(cert.start, cert.end))
        + observation_xml(codes.OBS_FIRST_DAY_OFF, when=cert.first_day_off or cert.start)
        + observation_xml(codes.OBS_EXTENSION, bl_xml(cert.extension))
        + observation_xml(codes.OBS_OUTINGS, bl_xml(cert.outings_allowed))
        + observation_xml(codes.OBS_HOSPITALISED, bl_xml(cert.hospitalised))
    )
    if cert.stay_address is not None:
        incapacity += observation_xml(codes.OBS_STAY_ADDRESS, ad_xml(cert.stay_address))
    sections = [
        Section(codes.SEC_INCAPACITY, "Incapacité de travail", "incapacity", entries_xml=incapacity)
    ]
    if cert.diagnosis is not None:
        icd = Code(cert.diagnosis.code, codes.OID_ICD10, cert.diagnosis.label)
        sections.append(
            Section(
                codes.SEC_DIAGNOSIS,
                "Diagnostic",
                "diagnosis",
                entries_xml=observation_xml(codes.OBS_DIAGNOSIS, cd_xml(icd)),
            )
        )
    if cert.accident is not None:
        acc = cert.accident
        acc_kind = Code(acc.kind, codes.OID_KONSIL_CODES, codes.ACCIDENT_KINDS[acc.kind])
        ref = Identifier(codes.OID_ACCIDENT_REFERENCE, acc.reference) if acc.reference else None
        sections.append(
            Section(
                codes.SEC_ACCIDENT,
                "Accident",
                "accident",
                entries_xml=observation_xml(
                    codes.OBS_ACCIDENT, cd_xml(acc_kind), when=acc.date, ident=ref
                ),
            )
        )
    if cert.child is not None:
        child = cert.child
        sections.append(
            Section(
                codes.SEC_FAMILY,
                "Enfant malade",
                "family",
                subject=lambda s: _child_subject(s, child),
            )
        )
    if cert.expected_delivery is not None:
        sections.append(
            Section(
                codes.SEC_MATERNITY,
                "Maternité",
                "maternity",
                entries_xml=observation_xml(
                    codes.OBS_EXPECTED_DELIVERY, ts_xml(cert.expected_delivery)
                ),
            )
        )
    if not header.recipients:
        # The CNS is the certificate's addressee; the patient and employer get printed copies.
        header = replace(header, recipients=(CNS_RECIPIENT,))
    spec = DocumentSpec(
        kind="sick-leave",
        header=header,
        now=now,
        sections=sections,
        narrative="sick_leave.xml",
        context={
            "cert": cert,
            "kind_label": codes.SICK_LEAVE_KINDS[cert.kind],
            "accident_label": codes.ACCIDENT_KINDS[cert.accident.kind] if cert.accident else "",
        },
    )
    return build(spec)


def _ignore(_: object) -> None:
    return None


def _child_subject(section: Element, child: Child) -> None:
    subject = sub(section, "subject")
    related = sub(subject, "relatedSubject", classCode="PRS")
    sub(related, "code", code="CHILD", codeSystem=codes.OID_ROLE_CODE, displayName="Enfant")
    person = sub(related, "subject")
    etree.SubElement(
        person,
        f"{{{codes.SDTC_NS}}}id",
        {"root": codes.OID_MATRICULE, "extension": child.matricule},
    )
    name = sub(person, "name")
    sub(name, "given", child.given_name)
    sub(name, "family", child.family_name)
    born = birth_date_of(child.matricule)
    if born is not None:
        sub(person, "birthTime", value=born.strftime("%Y%m%d"))
