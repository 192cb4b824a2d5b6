"""Reading Konsil's own CDA back into values: the header, the sick-leave certificate, the
teleconsultation report and the medication prescription.

What a stored document says is in its signed bytes; the database keeps no second copy of the
clinical values. The author's view reads them back to print the certificate's copies and to
pre-fill a correction, which then goes through the builder's checks again like any new value.
Only documents Konsil built are expected here: anything else raises ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Final, TypeAlias

from lxml import etree

from . import codes
from .prescription import Medication, Prescription, PrescriptionLine
from .sick_leave import Accident, Child, Diagnosis, SickLeave
from .teleconsultation import Teleconsultation
from .values import Address, Header, Identifier, Organisation, Patient, Practitioner, Replacement
from .xsd import parse

NS = {"h": codes.HL7_NS, "sdtc": codes.SDTC_NS, "xsi": codes.XSI_NS}
Element: TypeAlias = etree._Element


@dataclass(frozen=True)
class ReadHeader:
    header: Header
    effective_time: datetime  # when the document was made (its "now")


def _one(el: Element, path: str) -> Element:
    found = el.find(path, NS)
    if found is None:
        raise ValueError(f"the document has no {path}")
    return found


def _text(el: Element, path: str) -> str:
    found = el.find(path, NS)
    return "" if found is None else " ".join((found.text or "").split())


def _attr(el: Element, path: str, name: str) -> str:
    return _one(el, path).get(name) or ""


def _day(value: str) -> date:
    return datetime.strptime(value[:8], "%Y%m%d").date()  # noqa: DTZ007 - a date, no time


def _moment(value: str) -> datetime:
    """A CDA TS with its offset (20261127143000+0100) as an aware datetime."""
    return datetime.strptime(value, "%Y%m%d%H%M%S%z")


def _ident(el: Element) -> Identifier:
    return Identifier(el.get("root") or "", el.get("extension"))


def _address(el: Element | None) -> Address | None:
    if el is None:
        return None
    return Address(
        _text(el, "h:streetAddressLine"),
        _text(el, "h:postalCode"),
        _text(el, "h:city"),
        _text(el, "h:country") or "LU",
    )


def _practitioner(ent: Element) -> Practitioner:
    ids = ent.findall("h:id", NS)
    own = next((i for i in ids if i.get("root") != codes.OID_CNS_PROVIDER), None)
    cns = next((i for i in ids if i.get("root") == codes.OID_CNS_PROVIDER), None)
    if own is None:
        raise ValueError("the practitioner has no id")
    person = _one(ent, "h:assignedPerson/h:name")
    return Practitioner(
        _ident(own),
        _text(person, "h:given"),
        _text(person, "h:family"),
        _attr(ent, "h:code", "code"),
        None if cns is None else cns.get("extension"),
        _text(person, "h:prefix") or "Dr",
    )


def read_header(xml: bytes) -> ReadHeader:
    root = parse(xml)
    role = _one(root, "h:recordTarget/h:patientRole")
    pat = _one(role, "h:patient")
    patient = Patient(
        _attr(role, f"h:id[@root='{codes.OID_MATRICULE}']", "extension"),
        _text(pat, "h:name/h:given"),
        _text(pat, "h:name/h:family"),
        _day(_attr(pat, "h:birthTime", "value")),
        _attr(pat, "h:administrativeGenderCode", "code"),
        _address(role.find("h:addr", NS)),
    )
    author = _practitioner(_one(root, "h:author/h:assignedAuthor"))
    legal = root.find("h:legalAuthenticator/h:assignedEntity", NS)
    custodian = _one(root, "h:custodian/h:assignedCustodian/h:representedCustodianOrganization")
    organisation = Organisation(
        _ident(_one(custodian, "h:id")),
        _text(custodian, "h:name"),
        _address(custodian.find("h:addr", NS)),
    )
    replaces = None
    parent = root.find("h:relatedDocument[@typeCode='RPLC']/h:parentDocument", NS)
    if parent is not None:
        replaces = Replacement(
            _ident(_one(parent, "h:id")), int(_attr(parent, "h:versionNumber", "value"))
        )
    header = Header(
        document_id=_ident(_one(root, "h:id")),
        set_id=_ident(_one(root, "h:setId")),
        patient=patient,
        author=author,
        organisation=organisation,
        legal_authenticator=None if legal is None else _practitioner(legal),
        version=int(_attr(root, "h:versionNumber", "value") or "1"),
        replaces=replaces,
        confidentiality=_attr(root, "h:confidentialityCode", "code"),
        recipients=tuple(
            " ".join((n.text or "").split())
            for n in root.iterfind(
                "h:informationRecipient/h:intendedRecipient/h:receivedOrganization/h:name", NS
            )
        ),
    )
    return ReadHeader(header, _moment(_attr(root, "h:effectiveTime", "value")))


def _observations(root: Element, section: codes.Code) -> dict[str, Element]:
    """The observations of one section, by code."""
    found: dict[str, Element] = {}
    for sec in root.iterfind(".//h:section", NS):
        code = sec.find("h:code", NS)
        if code is None or code.get("code") != section.code:
            continue
        for obs in sec.iterfind("h:entry/h:observation", NS):
            c = obs.find("h:code", NS)
            if c is not None and c.get("code"):
                found[str(c.get("code"))] = obs
    return found


def _bool(obs: Element | None) -> bool:
    return obs is not None and _attr(obs, "h:value", "value") == "true"


def read_sick_leave(xml: bytes) -> SickLeave:
    """The certificate a DT-20002 CDA built by ``build_sick_leave`` carries."""
    root = parse(xml)
    if _attr(root, "h:code", "code") != codes.BY_KIND["sick-leave"].code:
        raise ValueError("not a sick-leave certificate")
    inc = _observations(root, codes.SEC_INCAPACITY)
    period = inc.get(codes.OBS_INCAPACITY.code)
    if period is None:
        raise ValueError("the certificate has no incapacity period")
    start = _day(_attr(period, "h:effectiveTime/h:low", "value"))
    first_off = inc.get(codes.OBS_FIRST_DAY_OFF.code)
    first_day = (
        _day(_attr(first_off, "h:effectiveTime", "value")) if first_off is not None else None
    )
    stay = inc.get(codes.OBS_STAY_ADDRESS.code)
    diagnosis = None
    dx = _observations(root, codes.SEC_DIAGNOSIS).get(codes.OBS_DIAGNOSIS.code)
    if dx is not None:
        value = _one(dx, "h:value")
        diagnosis = Diagnosis(value.get("code") or "", value.get("displayName") or "")
    accident = None
    acc = _observations(root, codes.SEC_ACCIDENT).get(codes.OBS_ACCIDENT.code)
    if acc is not None:
        ref = acc.find("h:id", NS)
        accident = Accident(
            _attr(acc, "h:value", "code"),
            _day(_attr(acc, "h:effectiveTime", "value")),
            None if ref is None else ref.get("extension"),
        )
    child = None
    for sec in root.iterfind(".//h:section", NS):
        code = sec.find("h:code", NS)
        if code is not None and code.get("code") == codes.SEC_FAMILY.code:
            person = _one(sec, "h:subject/h:relatedSubject/h:subject")
            child = Child(
                _attr(person, "sdtc:id", "extension"),
                _text(person, "h:name/h:given"),
                _text(person, "h:name/h:family"),
            )
    delivery = _observations(root, codes.SEC_MATERNITY).get(codes.OBS_EXPECTED_DELIVERY.code)
    return SickLeave(
        kind=_attr(period, "h:value", "code"),
        start=start,
        end=_day(_attr(period, "h:effectiveTime/h:high", "value")),
        first_day_off=None if first_day == start else first_day,
        diagnosis=diagnosis,
        accident=accident,
        child=child,
        expected_delivery=None if delivery is None else _day(_attr(delivery, "h:value", "value")),
        outings_allowed=_bool(inc.get(codes.OBS_OUTINGS.code)),
        hospitalised=_bool(inc.get(codes.OBS_HOSPITALISED.code)),
        stay_address=None if stay is None else _address(stay.find("h:value", NS)),
        extension=_bool(inc.get(codes.OBS_EXTENSION.code)),
    )


# --- the teleconsultation report and the prescription ----------------------------------------
# Their free texts live in the narrative only (``templates/documents/*.xml`` writes each value as
# the whole text of its own ``<paragraph>``), so they are read from there, exactly as written.

_FREQUENCY_RE: Final = re.compile(r"(\d+) fois par (?:(\d+) )?(heure|jour|semaine)s?\b")
_FREQUENCY_UNIT_OF: Final = {v: k for k, v in codes.FREQUENCY_UNITS.items()}


def _check_kind(root: Element, kind: str) -> None:
    if _attr(root, "h:code", "code") != codes.BY_KIND[kind].code:
        raise ValueError(f"not a {codes.BY_KIND[kind].display} document")


def _section(root: Element, code: codes.Code) -> Element | None:
    for sec in root.iterfind("h:component/h:structuredBody/h:component/h:section", NS):
        found = sec.find("h:code", NS)
        if found is not None and found.get("code") == code.code:
            return sec
    return None


def _exact(el: Element | None) -> str | None:
    """An element's text exactly as written (no whitespace folding), None when absent."""
    return None if el is None else "".join(el.itertext())


def _paragraphs(section: Element) -> list[str]:
    return ["".join(p.itertext()) for p in section.iterfind("h:text/h:paragraph", NS)]


def _entries(section: Element | None, tag: str) -> list[Element]:
    return [] if section is None else list(section.iterfind(f"h:entry/h:{tag}", NS))


def _coded(obs: Element, c: codes.Code) -> bool:
    return _attr(obs, "h:code", "code") == c.code


def read_teleconsultation(xml: bytes) -> Teleconsultation:
    """The report a DT-91002 CDA built by ``build_teleconsultation`` carries. Times are read to
    the second, as the CDA writes them, with their offset."""
    root = parse(xml)
    _check_kind(root, "teleconsultation-report")
    enc = _one(root, "h:componentOf/h:encompassingEncounter")
    reason = _section(root, codes.SEC_REASON)
    findings = _section(root, codes.SEC_FINDINGS)
    plan = _section(root, codes.SEC_PLAN)
    if reason is None or findings is None or plan is None:
        raise ValueError("the report lacks its reason, findings or plan section")
    modality = consent = None
    for obs in _entries(reason, "observation"):
        if _coded(obs, codes.OBS_TELE_MODALITY):
            modality = _attr(obs, "h:value", "code")
        elif _coded(obs, codes.OBS_TELE_CONSENT):
            consent = _bool(obs)
    reason_texts = _paragraphs(reason)  # the call (modality, times), then the reason
    if modality is None or consent is None or len(reason_texts) < 2:
        raise ValueError("the report's reason section is incomplete")
    illness = _section(root, codes.SEC_PRESENT_ILLNESS)
    follow_up = None
    for obs in _entries(plan, "observation"):
        if _coded(obs, codes.OBS_FOLLOW_UP):
            follow_up = _day(_attr(obs, "h:effectiveTime", "value"))
    return Teleconsultation(
        start=_moment(_attr(enc, "h:effectiveTime/h:low", "value")),
        end=_moment(_attr(enc, "h:effectiveTime/h:high", "value")),
        modality=modality,
        patient_consent=consent,
        reason=reason_texts[1],
        findings=_paragraphs(findings)[0],
        plan=_paragraphs(plan)[0],
        present_illness=None if illness is None else _paragraphs(illness)[0],
        diagnoses=tuple(
            Diagnosis(_attr(obs, "h:value", "code"), _attr(obs, "h:value", "displayName"))
            for obs in _entries(_section(root, codes.SEC_DIAGNOSIS), "observation")
            if _coded(obs, codes.OBS_DIAGNOSIS)
        ),
        follow_up=follow_up,
        consultants=tuple(
            _practitioner(ent)
            for ent in enc.iterfind("h:encounterParticipant[@typeCode='CON']/h:assignedEntity", NS)
        ),
    )


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None


def _typed_time(sa: Element, xsi_type: str) -> Element:
    for el in sa.iterfind("h:effectiveTime", NS):
        if el.get(f"{{{codes.XSI_NS}}}type") == xsi_type:
            return el
    raise ValueError(f"a medication line has no {xsi_type} effectiveTime")


def _frequency(cell: str) -> tuple[int, int, str]:
    """``3 fois par jour`` → (3, 1, "d"), from a line's narrative."""
    m = _FREQUENCY_RE.search(cell)
    if m is None:
        raise ValueError("a medication line's narrative has no frequency")
    times, per, unit = int(m.group(1)), int(m.group(2) or "1"), _FREQUENCY_UNIT_OF[m.group(3)]
    return times, per, unit


def read_prescription(xml: bytes) -> Prescription:
    """The prescription a DT-91003 CDA built by ``build_prescription`` carries.

    The frequency ("3 times a day") is read from the line's narrative, where it is written as the
    prescriber gave it, and must agree with the entry's ``PIVL_TS`` period (8 h) — which alone
    could not tell "3 times a day" from "every 8 hours"."""
    root = parse(xml)
    _check_kind(root, "prescription")
    section = _section(root, codes.SEC_PRESCRIPTIONS)
    if section is None:
        raise ValueError("the prescription has no prescriptions section")
    cells = [
        "".join(row[1].itertext()) if len(row) > 1 else ""
        for row in section.iterfind("h:text/h:table/h:tbody/h:tr", NS)
    ]
    lines: list[PrescriptionLine] = []
    starts: set[date] = set()
    items = _entries(section, "substanceAdministration")
    if len(cells) != len(items):
        raise ValueError("the prescription's narrative and entries do not match")
    for sa, cell in zip(items, cells, strict=True):
        period = _typed_time(sa, "IVL_TS")
        start = _day(_attr(period, "h:low", "value"))
        starts.add(start)
        hours = _decimal(_attr(_typed_time(sa, "PIVL_TS"), "h:period", "value"))
        times, per, unit = _frequency(cell)
        material = _one(sa, "h:consumable/h:manufacturedProduct/h:manufacturedMaterial")
        supply = _one(sa, "h:entryRelationship/h:supply/h:quantity")
        reimbursable = next(
            (
                obs
                for obs in sa.iterfind("h:entryRelationship/h:observation", NS)
                if _coded(obs, codes.OBS_REIMBURSABLE)
            ),
            None,
        )
        if reimbursable is None:
            raise ValueError("a medication line does not say whether the CNS reimburses it")
        line = PrescriptionLine(
            Medication(
                _attr(material, "h:code", "code"), _exact(material.find("h:name", NS)) or ""
            ),
            dose=_decimal(_attr(sa, "h:doseQuantity", "value")),
            dose_unit=_attr(sa, "h:doseQuantity", "unit"),
            route=_attr(sa, "h:routeCode", "code"),
            times=times,
            per=per,
            period_unit=unit,
            duration_days=(_day(_attr(period, "h:high", "value")) - start).days + 1,
            quantity=_decimal(supply.get("value") or ""),
            quantity_unit=supply.get("unit") or "",
            reimbursable=_bool(reimbursable),
            instructions=_exact(sa.find("h:text", NS)),
        )
        if line.period_hours != hours:
            raise ValueError(f"a medication line says {cell!r} but every {hours} h in its entry")
        lines.append(line)
    if len(starts) != 1:
        raise ValueError("the prescription's lines do not start on one day")
    notes = _paragraphs(section)
    return Prescription(tuple(lines), starts.pop(), notes[0] if notes else None)
