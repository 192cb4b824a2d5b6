"""Reading Konsil's own CDA back into values: the header and the sick-leave certificate.

What a stored document says is in its signed bytes; the database keeps no second copy of the
clinical values. The author's view reads them back to print the certificate's copies and to
pre-fill a correction, which then goes through the builder's checks again like any new value.
Only documents Konsil built are expected here: anything else raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeAlias

from lxml import etree

from . import codes
from .sick_leave import Accident, Child, Diagnosis, SickLeave
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
