"""Konsil's eSanté Luxembourg profile: the rules the XML Schema cannot express.

``profile_problems(doc)`` reads a parsed CDA document and returns readable problems (empty when
the document follows the profile): header rules (realm, language, templates, type code,
confidentiality, ids, version chain), the patient's matricule under its OID, required sections
per document type, code systems and codes in entries, and consistent dates. The DSP and CNS
simulators reject submissions with the same checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, time
from functools import lru_cache
from typing import Final

from lxml import etree

from konsil.errors import ValidationError
from konsil.identity.matricule import check_matricule
from konsil.identity.specialties import BY_CODE as SPECIALTIES

from . import codes
from .codes import Code
from .rcp_report import (
    M_RE,
    MORPHOLOGY_RE,
    N_RE,
    QUORUM_SPECIALTIES,
    STAGE_RE,
    T_RE,
    TOPOGRAPHY_RE,
)
from .sick_leave import MAX_BACKDATE_DAYS
from .values import ICD10_RE, OID_RE

NS: Final = {"h": codes.HL7_NS, "sdtc": codes.SDTC_NS, "xsi": codes.XSI_NS}
XSI_TYPE: Final = f"{{{codes.XSI_NS}}}type"
TS_RE: Final = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?$")
DT_RE: Final = re.compile(r"^DT-\d{5}$")
LOINC_RE: Final = re.compile(r"^(LA)?\d{1,7}-\d$")
ATC_RE: Final = re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")

_KONSIL_CODES: Final = frozenset(
    {
        v.code
        for v in vars(codes).values()
        if isinstance(v, Code) and v.system == codes.OID_KONSIL_CODES
    }
    | set(codes.SICK_LEAVE_KINDS)
    | set(codes.ACCIDENT_KINDS)
    | set(codes.TUMOUR_STATUS)
    | set(codes.PROPOSAL_KINDS)
    | set(codes.CASE_STATUS)
    | set(codes.TELE_MODALITIES)
)


def _code_pattern(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda c: bool(pattern.match(c))


# code system → (name, is this code possible?)
CODE_SYSTEMS: Final[dict[str, tuple[str, Callable[[str], bool]]]] = {
    codes.OID_LOINC: ("LOINC", _code_pattern(LOINC_RE)),
    codes.OID_ICD10: ("ICD-10", _code_pattern(ICD10_RE)),
    codes.OID_ATC: ("ATC", _code_pattern(ATC_RE)),
    codes.OID_EDQM_ROUTE: ("EDQM route", lambda c: c in codes.ROUTES),
    codes.OID_KONSIL_CODES: ("Konsil codes", lambda c: c in _KONSIL_CODES),
    codes.OID_KONSIL_SPECIALTIES: ("specialty", lambda c: c in SPECIALTIES),
    codes.OID_KONSIL_TNM: ("TNM", lambda c: any(r.match(c) for r in (T_RE, N_RE, M_RE, STAGE_RE))),
    codes.OID_ADMIN_GENDER: ("AdministrativeGender", lambda c: c in codes.ADMIN_GENDER),
    codes.OID_CONFIDENTIALITY: ("Confidentiality", lambda c: c in codes.CONFIDENTIALITY),
    codes.OID_ROLE_CODE: ("RoleCode", lambda c: c.isupper()),
    codes.OID_ACT_CODE: ("ActCode", lambda c: c.isupper()),
}
ICD_O_3_CODES: Final[dict[str, re.Pattern[str]]] = {
    codes.OBS_TOPOGRAPHY.code: TOPOGRAPHY_RE,
    codes.OBS_MORPHOLOGY.code: MORPHOLOGY_RE,
}

# What each coded observation's value may be.
OBSERVATION_VALUES: Final[dict[str, tuple[str, Callable[[str], bool]]]] = {
    codes.OBS_T.code: ("clinical T category", _code_pattern(T_RE)),
    codes.OBS_N.code: ("clinical N category", _code_pattern(N_RE)),
    codes.OBS_M.code: ("clinical M category", _code_pattern(M_RE)),
    codes.OBS_STAGE.code: ("stage group", _code_pattern(STAGE_RE)),
    codes.OBS_ECOG.code: (
        "WHO/ECOG answer (LOINC LL529-9)",
        lambda c: c in {x.code for x in codes.ECOG.values()},
    ),
    codes.OBS_INCAPACITY.code: ("sick-leave kind", lambda c: c in codes.SICK_LEAVE_KINDS),
    codes.OBS_ACCIDENT.code: ("accident kind", lambda c: c in codes.ACCIDENT_KINDS),
    codes.OBS_TUMOUR_STATUS.code: ("tumour status", lambda c: c in codes.TUMOUR_STATUS),
    codes.OBS_CASE_STATUS.code: ("case status", lambda c: c in codes.CASE_STATUS),
    codes.OBS_TELE_MODALITY.code: (
        "teleconsultation modality",
        lambda c: c in codes.TELE_MODALITIES,
    ),
}

SICK_LEAVE_REQUIRED: Final[dict[str, tuple[Code, ...]]] = {
    "illness": (codes.SEC_INCAPACITY, codes.SEC_DIAGNOSIS),
    "accident": (codes.SEC_INCAPACITY, codes.SEC_DIAGNOSIS, codes.SEC_ACCIDENT),
    "family-reason": (codes.SEC_INCAPACITY, codes.SEC_DIAGNOSIS, codes.SEC_FAMILY),
    "maternity": (codes.SEC_INCAPACITY, codes.SEC_MATERNITY),
}
REQUIRED_SECTIONS: Final[dict[str, tuple[Code, ...]]] = {
    "sick-leave": (codes.SEC_INCAPACITY,),  # and per variant, SICK_LEAVE_REQUIRED
    "rcp-report": (
        codes.SEC_RCP_QUESTION,
        codes.SEC_HISTORY,
        codes.SEC_DIAGNOSIS,
        codes.SEC_STAGING,
        codes.SEC_PROPOSAL,
        codes.SEC_CONFORMITY,
        codes.SEC_TRIAL,
        codes.SEC_QUORUM,
    ),
    "teleconsultation-report": (codes.SEC_REASON, codes.SEC_FINDINGS, codes.SEC_PLAN),
    "prescription": (codes.SEC_PRESCRIPTIONS,),
}
REQUIRED_OBSERVATIONS: Final[dict[str, tuple[Code, ...]]] = {
    "sick-leave": (codes.OBS_INCAPACITY,),
    "rcp-report": (
        codes.OBS_DIAGNOSIS,
        codes.OBS_T,
        codes.OBS_N,
        codes.OBS_M,
        codes.OBS_ECOG,
        codes.OBS_CONFORMITY,
        codes.OBS_TRIAL,
        codes.OBS_QUORUM,
    ),
}


def parse_ts(value: str) -> date | None:
    """The date part of an HL7 TS (at least YYYYMMDD), or None when it is not a valid time."""
    m = TS_RE.match(value)
    if not m or m.group(2) is None or m.group(3) is None:
        return None
    try:
        hh, mm, ss = (int(g) if g else 0 for g in m.group(4, 5, 6))
        time(hh, mm, ss)
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


@lru_cache(maxsize=512)
def _xpath(path: str) -> etree.XPath:
    # Compiled once: the simulators validate every submission with the same paths.
    return etree.XPath(path, namespaces=NS)


_H: Final = f"{{{codes.HL7_NS}}}"
_OBSERVATION: Final = f"{_H}observation"
_CODE: Final = f"{_H}code"
_VALUE: Final = f"{_H}value"
_LOW: Final = f"{_H}low"
_HIGH: Final = f"{_H}high"
_CODED: Final = etree.XPath("descendant-or-self::*[@codeSystem and @code]")
_TIMES: Final = etree.XPath(
    ".//*[@value][self::h:low or self::h:high or self::h:effectiveTime "
    "or self::h:time or self::h:birthTime or @xsi:type='TS']",
    namespaces=NS,
)


def _elements(found: object) -> list[etree._Element]:
    return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []


class _Index:
    """What the rules look up below the root, gathered once (lxml's tag-filtered iteration, two
    XPath queries) instead of one XPath ``.//…`` walk of the whole tree per rule."""

    def __init__(self, doc: etree._Element) -> None:
        self.doc = doc
        # every element (the root included) with both @codeSystem and @code, in document order
        self.coded: list[etree._Element] = _elements(_CODED(doc))
        self.times: list[etree._Element] = _elements(_TIMES(doc))  # elements with a TS @value
        # an observation's code → the observations with such an h:code child
        self.observations: dict[str | None, list[etree._Element]] = {}
        self.observed: set[tuple[str | None, str | None]] = set()  # (system, code) of those
        for obs in doc.iter(_OBSERVATION):
            for code_el in obs.iterchildren(_CODE):
                code = code_el.get("code")
                self.observed.add((code_el.get("codeSystem"), code))
                same = self.observations.setdefault(code, [])
                if not same or same[-1] is not obs:
                    same.append(obs)
        # h:value xsi:type CD or CE
        self.coded_values = [v for v in doc.iter(_VALUE) if v.get(XSI_TYPE) in ("CD", "CE")]
        low: list[etree._Element] = []
        high: set[etree._Element] = set()
        for el in doc.iter(_LOW, _HIGH):
            parent = el.getparent()
            if parent is not None and parent is not doc:
                (low.append if el.tag == _LOW else high.add)(parent)
        self._intervals = list(dict.fromkeys(p for p in low if p in high))

    def observations_with(self, code: str) -> list[etree._Element]:
        """``.//h:observation[h:code/@code=code]``"""
        return self.observations.get(code, [])

    def observation_children(self, code: str, tag: str) -> list[etree._Element]:
        """``.//h:observation[h:code/@code=code]/h:<tag>``"""
        return [c for o in self.observations_with(code) for c in o.iterchildren(f"{_H}{tag}")]

    def intervals(self) -> list[etree._Element]:
        """``.//*[h:low and h:high]``, in document order."""
        if len(self._intervals) < 2:
            return self._intervals
        # nested intervals could be met out of order above: one walk puts them in order
        both = set(self._intervals)
        return [el for el in self.doc.iterdescendants() if el in both]


class _Checker:
    def __init__(self, doc: etree._Element) -> None:
        self.doc = doc
        self.problems: list[str] = []
        self._index: _Index | None = None

    @property
    def index(self) -> _Index:
        if self._index is None:
            self._index = _Index(self.doc)
        return self._index

    def x(self, path: str, node: etree._Element | None = None) -> list[etree._Element]:
        found = _xpath(path)(self.doc if node is None else node)
        return list(found) if isinstance(found, list) else []

    def one(self, path: str, node: etree._Element | None = None) -> etree._Element | None:
        found = self.x(path, node)
        return found[0] if found else None

    def attr(self, path: str, name: str, node: etree._Element | None = None) -> str | None:
        el = self.one(path, node)
        return None if el is None else el.get(name)

    def bad(self, message: str) -> None:
        self.problems.append(message)

    # -- header ---------------------------------------------------------------------------

    def header(self) -> tuple[str | None, date | None]:
        if self.doc.tag != f"{{{codes.HL7_NS}}}ClinicalDocument":
            self.bad("the root element is not an HL7 v3 ClinicalDocument")
            return None, None
        realms = [r.get("code") for r in self.x("h:realmCode")]
        if realms != [codes.LU_REALM]:
            self.bad(f"realmCode must be exactly {codes.LU_REALM!r}, found {realms or 'none'}")
        if (
            self.attr("h:typeId", "root") != codes.CDA_TYPE_ID_ROOT
            or self.attr("h:typeId", "extension") != codes.CDA_TYPE_ID_EXTENSION
        ):
            self.bad("typeId must be 2.16.840.1.113883.1.3 / POCD_HD000040")
        templates = {t.get("root") for t in self.x("h:templateId")}
        if codes.LU_HEADER_TEMPLATE not in templates:
            self.bad(f"the eSanté header templateId {codes.LU_HEADER_TEMPLATE} is missing")
        self.oid("h:id", "document id")
        kind = None
        system, code = self.attr("h:code", "codeSystem"), self.attr("h:code", "code")
        if system != codes.OID_DOCUMENT_TYPES:
            self.bad(f"the document type code must be in code system {codes.OID_DOCUMENT_TYPES}")
        elif code is None or not DT_RE.match(code):
            self.bad(f"document type code {code!r} is not a DT-xxxxx code")
        elif code not in codes.BY_DT_CODE:
            self.bad(f"unknown document type code {code}")
        else:
            dtype = codes.BY_DT_CODE[code]
            kind = dtype.kind
            if dtype.template not in templates:
                self.bad(f"a {code} document needs templateId {dtype.template}")
        title = self.one("h:title")
        if title is None or not "".join(title.itertext()).strip():
            self.bad("the document has no title")
        effective = self.attr("h:effectiveTime", "value") or ""
        when = parse_ts(effective)
        if when is None or not re.search(r"\d{14}[+-]\d{4}$", effective):
            self.bad(
                f"effectiveTime {effective!r} must be a local time to the second with its UTC offset"
            )
        conf_code = self.attr("h:confidentialityCode", "code")
        if self.attr("h:confidentialityCode", "codeSystem") != codes.OID_CONFIDENTIALITY:
            self.bad(f"confidentialityCode must be in code system {codes.OID_CONFIDENTIALITY}")
        elif conf_code not in codes.CONFIDENTIALITY:
            self.bad(f"unknown confidentiality code {conf_code!r} (N, R or V)")
        language = self.attr("h:languageCode", "code")
        if language != codes.LU_LANGUAGE:
            self.bad(f"languageCode must be {codes.LU_LANGUAGE!r}, found {language!r}")
        self.versions()
        self.patient(when)
        self.people()
        return kind, when

    def oid(self, path: str, what: str, node: etree._Element | None = None) -> None:
        root = self.attr(path, "root", node)
        if root is None:
            self.bad(f"{what} is missing")
        elif not OID_RE.match(root):
            self.bad(f"{what} root {root!r} is not an OID")

    def versions(self) -> None:
        self.oid("h:setId", "setId")
        raw = self.attr("h:versionNumber", "value")
        if raw is None or not raw.isdigit() or int(raw) < 1:
            self.bad(f"versionNumber must be a whole number from 1, found {raw!r}")
            return
        version = int(raw)
        replaced = self.x("h:relatedDocument[@typeCode='RPLC']/h:parentDocument")
        if version > 1 and not replaced:
            self.bad(f"version {version} must name the document it replaces (relatedDocument RPLC)")
        if version == 1 and replaced:
            self.bad("a first version cannot replace another document")
        for parent in replaced:
            self.oid("h:id", "the replaced document's id", parent)
            if self.attr("h:id", "root", parent) == self.attr("h:id", "root") and self.attr(
                "h:id", "extension", parent
            ) == self.attr("h:id", "extension"):
                self.bad("a document cannot replace itself")
            parent_set = self.attr("h:setId", "root", parent)
            if parent_set is not None and parent_set != self.attr("h:setId", "root"):
                self.bad("the replaced document belongs to another setId")
            pv = self.attr("h:versionNumber", "value", parent)
            if pv is not None and (not pv.isdigit() or int(pv) >= version):
                self.bad("the replaced document's version must be lower than this one")

    def patient(self, when: date | None) -> None:
        roles = self.x("h:recordTarget/h:patientRole")
        if len(roles) != 1:
            self.bad(f"a document has exactly one recordTarget patient, found {len(roles)}")
            return
        role = roles[0]
        ids = self.x(f"h:id[@root='{codes.OID_MATRICULE}']", role)
        if not ids:
            self.bad(f"the patient has no matricule id (root {codes.OID_MATRICULE})")
            return
        matricule = ids[0].get("extension") or ""
        birth = parse_ts(self.attr("h:patient/h:birthTime", "value", role) or "")
        try:
            check_matricule(matricule, birth_date=birth, today=when)
        except ValidationError as exc:
            self.bad(f"patient matricule: {exc.message}")
        if self.one("h:patient/h:name", role) is None:
            self.bad("the patient has no name")

    def people(self) -> None:
        if self.one("h:author/h:time") is None:
            self.bad("the author has no time")
        for who, path in (
            ("author", "h:author/h:assignedAuthor"),
            ("legal authenticator", "h:legalAuthenticator/h:assignedEntity"),
        ):
            entity = self.one(path)
            if entity is None:
                self.bad(f"the document has no {who}")
                continue
            self.oid("h:id", f"the {who}'s id", entity)
            if self.one("h:assignedPerson/h:name", entity) is None:
                self.bad(f"the {who} has no name")
        if self.one("h:legalAuthenticator") is not None:
            if self.attr("h:legalAuthenticator/h:signatureCode", "code") != "S":
                self.bad("the legal authenticator's signatureCode must be S (signed)")
        self.oid(
            "h:custodian/h:assignedCustodian/h:representedCustodianOrganization/h:id",
            "the custodian organisation's id",
        )

    # -- body -----------------------------------------------------------------------------

    def body(self, kind: str | None) -> None:
        sections = self.x("h:component/h:structuredBody/h:component/h:section")
        if not sections:
            self.bad("the document has no structured body sections")
            return
        present: set[tuple[str | None, str | None]] = set()
        for section in sections:
            code = self.one("h:code", section)
            key = (None, None) if code is None else (code.get("codeSystem"), code.get("code"))
            present.add(key)
            label = key[1] or "without code"
            text = self.one("h:text", section)
            if text is None or not "".join(text.itertext()).strip():
                self.bad(f"section {label} has no narrative text")
        required = list(REQUIRED_SECTIONS.get(kind or "", ()))
        if kind == "sick-leave":
            values = self.index.observation_children(codes.OBS_INCAPACITY.code, "value")
            variant = values[0].get("code") if values else None
            if variant not in codes.SICK_LEAVE_KINDS:
                self.bad(f"unknown sick-leave kind {variant!r}")
            required = list(SICK_LEAVE_REQUIRED.get(variant or "", required))
        for need in required:
            if (need.system, need.code) not in present:
                self.bad(f"required section {need.code} ({need.display}) is missing")
        observed = self.index.observed
        for need in REQUIRED_OBSERVATIONS.get(kind or "", ()):
            if (need.system, need.code) not in observed:
                self.bad(f"required entry {need.code} ({need.display}) is missing")
        if kind == "prescription":
            lines = self.x(".//h:substanceAdministration")
            if not lines:
                self.bad("a prescription has at least one medication line")
            for n, line in enumerate(lines, start=1):
                material = "h:consumable/h:manufacturedProduct/h:manufacturedMaterial/h:code"
                if self.attr(material, "codeSystem", line) != codes.OID_ATC:
                    self.bad(f"medication line {n} is not coded in ATC")
                if self.one("h:doseQuantity[@value]", line) is None:
                    self.bad(f"medication line {n} has no dose")
                reimbursable = self.x(
                    f"h:entryRelationship/h:observation[h:code/@code='{codes.OBS_REIMBURSABLE.code}']",
                    line,
                )
                if not reimbursable:
                    self.bad(f"medication line {n} does not say whether the CNS reimburses it")

    def coded(self) -> None:
        for el in self.index.coded:
            system, code = el.get("codeSystem"), el.get("code")
            if system is None or code is None:
                continue
            parent = el.getparent()
            if system == codes.OID_ICD_O_3:
                obs_code = self.attr("h:code", "code", parent) if parent is not None else None
                pattern = ICD_O_3_CODES.get(obs_code or "")
                if pattern is None or not pattern.match(code):
                    self.bad(f"{code!r} is not a valid ICD-O-3 code here")
                continue
            known = CODE_SYSTEMS.get(system)
            if known is None:
                if (
                    el.tag == f"{{{codes.HL7_NS}}}code"
                    and parent is not None
                    and parent.tag == (f"{{{codes.HL7_NS}}}ClinicalDocument")
                ):
                    continue  # checked with the header
                self.bad(f"unknown code system {system} for code {code!r}")
            elif not known[1](code):
                self.bad(f"{code!r} is not a known {known[0]} code")
        for value in self.index.coded_values:
            if value.get("code") is None:
                self.bad("a coded value has no code")
        for obs_code, (label, allowed) in OBSERVATION_VALUES.items():
            for value in self.index.observation_children(obs_code, "value"):
                if not allowed(value.get("code") or ""):
                    self.bad(f"{value.get('code')!r} is not a valid {label}")

    def quorum(self) -> None:
        values = self.index.observation_children(codes.OBS_QUORUM.code, "value")
        met = values[0].get("value") if values else None
        specialties = {
            c.get("code")
            for c in self.x("h:documentationOf/h:serviceEvent/h:performer/h:assignedEntity/h:code")
        }
        if met == "true" and len(specialties) < QUORUM_SPECIALTIES:
            self.bad(
                f"quorum declared met with {len(specialties)} specialties among the participants "
                f"(at least {QUORUM_SPECIALTIES} needed)"
            )

    def dates(self, kind: str | None, issued: date | None) -> None:
        for el in self.index.times:
            if parse_ts(el.get("value") or "") is None:
                self.bad(f"{el.get('value')!r} is not a valid date or time")
        for ivl in self.index.intervals():
            low = parse_ts(self.attr("h:low", "value", ivl) or "")
            high = parse_ts(self.attr("h:high", "value", ivl) or "")
            if low and high and high < low:
                self.bad(f"a period ends ({high}) before it starts ({low})")
        if kind == "sick-leave":
            found = self.index.observations_with(codes.OBS_INCAPACITY.code)
            inc = found[0] if found else None
            times = self.index.observation_children(codes.OBS_FIRST_DAY_OFF.code, "effectiveTime")
            first = times[0].get("value") if times else None
            if inc is not None:
                start = parse_ts(self.attr("h:effectiveTime/h:low", "value", inc) or "")
                end = parse_ts(self.attr("h:effectiveTime/h:high", "value", inc) or "")
                if start is None or end is None:
                    self.bad("the incapacity period needs a start and an end")
                elif first and (f := parse_ts(first)) is not None and f > start:
                    self.bad("the first day off work is after the start of the incapacity")
                if (
                    start is not None
                    and issued is not None
                    and (issued - start).days > MAX_BACKDATE_DAYS
                ):
                    self.bad(
                        f"the incapacity starts more than {MAX_BACKDATE_DAYS} days before "
                        "the certificate was issued"
                    )
        birth = parse_ts(
            self.attr("h:recordTarget/h:patientRole/h:patient/h:birthTime", "value") or ""
        )
        if birth is not None and issued is not None and birth > issued:
            self.bad("the patient is born after the document was written")


def profile_problems(doc: etree._Element) -> list[str]:
    checker = _Checker(doc)
    kind, issued = checker.header()
    if checker.doc.tag == f"{{{codes.HL7_NS}}}ClinicalDocument":
        checker.body(kind)
        checker.coded()
        checker.dates(kind, issued)
        if kind == "rcp-report":
            checker.quorum()
    return checker.problems
