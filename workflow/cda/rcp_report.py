"""RCP report (fiche de réunion de concertation pluridisciplinaire), after France's FRCP.

Sections: the question put to the board and the case status, history, the cancer diagnosis
(ICD-10, ICD-O-3 topography and morphology, primary or secondary), clinical TNM (LOINC
21905-5/21906-3/21907-1/21908-9) and WHO/ECOG performance status (LOINC 89247-1), the proposal
(the future personalised care plan), conformity to guidelines or the justified deviation, a
clinical-trial proposal, and the quorum with every participant's specialty. The meeting and its
participants are also in the header as ``documentationOf/serviceEvent`` performers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Final

from . import codes
from .builder import (
    DocumentSpec,
    Element,
    Section,
    assigned_entity,
    build,
    code_el,
    day,
    observation,
    sub,
    v_bl,
    v_cd,
    v_st,
)
from .codes import Code
from .values import (
    Header,
    Identifier,
    Practitioner,
    Problems,
    check_choice,
    check_header,
    check_icd10,
    check_practitioner,
    local_time,
)

T_RE: Final = re.compile(r"^T(X|0|is|1mi|[1-4][a-d]?)$")
N_RE: Final = re.compile(r"^N(X|0|[1-3][a-c]?)$")
M_RE: Final = re.compile(r"^M(X|0|1[a-d]?)$")
STAGE_RE: Final = re.compile(r"^(0|I{1,3}[A-C]?|IV[A-C]?)$")
TOPOGRAPHY_RE: Final = re.compile(r"^C\d{2}\.\d$")
MORPHOLOGY_RE: Final = re.compile(r"^\d{4}/[012369]$")  # behaviour /0 /1 /2 /3 /6 /9
NEOPLASM_RE: Final = re.compile(r"^(C\d{2}|D[0-4]\d)")
QUORUM_SPECIALTIES: Final = 3  # at least 3 physicians of 3 different specialties


@dataclass(frozen=True)
class CancerDiagnosis:
    icd10: str
    label: str
    topography: str  # ICD-O-3, e.g. C50.4
    topography_label: str
    morphology: str  # ICD-O-3, e.g. 8500/3
    morphology_label: str
    status: str  # codes.TUMOUR_STATUS
    diagnosed_on: date | None = None


@dataclass(frozen=True)
class Tnm:
    t: str
    n: str
    m: str
    stage: str | None = None
    edition: str = "UICC 8e édition"


@dataclass(frozen=True)
class ProposalItem:
    kind: str  # codes.PROPOSAL_KINDS
    description: str


@dataclass(frozen=True)
class RcpReport:
    board: str  # e.g. "RCP sénologie"
    meeting: datetime
    case_status: str  # codes.CASE_STATUS
    question: str
    history: str
    diagnosis: CancerDiagnosis
    tnm: Tnm
    ecog: int  # 0 to 5
    proposal: tuple[ProposalItem, ...]
    guideline_conform: bool
    participants: tuple[Practitioner, ...]
    quorum_met: bool
    patient_informed: bool
    guideline: str | None = None  # the guideline followed, e.g. "INCa 2024 — cancer du sein"
    deviation_reason: str | None = None
    trial_proposed: bool = False
    trial_id: str | None = None  # registry id, e.g. NCT05012345
    trial_name: str | None = None

    @property
    def specialties(self) -> set[str]:
        return {p.specialty for p in self.participants}


def quorum_reached(participants: tuple[Practitioner, ...]) -> bool:
    """The minimum rule: 3 physicians of 3 different specialties (boards may require more)."""
    return len({p.specialty for p in participants}) >= QUORUM_SPECIALTIES


def check_rcp_report(report: RcpReport, header: Header, *, now: datetime) -> None:
    p = Problems()
    check_header(p, header, now=now)
    if report.meeting.tzinfo is None:
        p.add("meeting", "needs a timezone")
    elif report.meeting > now:
        p.add("meeting", "is in the future")
    p.text(report.board, "board", limit=200)
    check_choice(p, report.case_status, codes.CASE_STATUS, "case_status")
    p.text(report.question, "question")
    p.text(report.history, "history")
    d = report.diagnosis
    check_icd10(p, d.icd10, "diagnosis.icd10")
    if "diagnosis.icd10" not in p.fields and not NEOPLASM_RE.match(d.icd10):
        p.add("diagnosis.icd10", "{code!r} is not a neoplasm code (C00 to D48)", code=d.icd10)
    p.text(d.label, "diagnosis.label", limit=300)
    if not TOPOGRAPHY_RE.match(d.topography):
        p.add(
            "diagnosis.topography",
            "{code!r} is not an ICD-O-3 topography (e.g. C50.4)",
            code=d.topography,
        )
    p.text(d.topography_label, "diagnosis.topography_label", limit=300)
    if not MORPHOLOGY_RE.match(d.morphology):
        p.add(
            "diagnosis.morphology",
            "{code!r} is not an ICD-O-3 morphology (e.g. 8500/3)",
            code=d.morphology,
        )
    p.text(d.morphology_label, "diagnosis.morphology_label", limit=300)
    check_choice(p, d.status, codes.TUMOUR_STATUS, "diagnosis.status")
    if d.diagnosed_on is not None and d.diagnosed_on > local_time(now).date():
        p.add("diagnosis.diagnosed_on", "is in the future")
    for name, value, pattern in (
        ("tnm.t", report.tnm.t, T_RE),
        ("tnm.n", report.tnm.n, N_RE),
        ("tnm.m", report.tnm.m, M_RE),
    ):
        if not pattern.match(value):
            p.add(name, "unknown TNM category {code!r}", code=value)
    if report.tnm.stage is not None and not STAGE_RE.match(report.tnm.stage):
        p.add("tnm.stage", "unknown stage group {code!r}", code=report.tnm.stage)
    if report.ecog not in codes.ECOG:
        p.add("ecog", "the WHO/ECOG performance status is 0 to 5")
    if not report.proposal:
        p.add("proposal", "the board's proposal is required")
    for i, item in enumerate(report.proposal):
        check_choice(p, item.kind, codes.PROPOSAL_KINDS, f"proposal.{i}.kind")
        p.text(item.description, f"proposal.{i}.description")
    if report.guideline is not None:
        p.text(report.guideline, "guideline", limit=300)
    if not report.guideline_conform:
        if not (report.deviation_reason or "").strip():
            p.add("deviation_reason", "a deviation from the guidelines must be justified")
        else:
            p.text(report.deviation_reason or "", "deviation_reason")
    elif report.deviation_reason:
        p.add("deviation_reason", "only a deviation from the guidelines is justified")
    if report.trial_proposed:
        p.text(report.trial_id or "", "trial_id", limit=64)
        if report.trial_name is not None:
            p.text(report.trial_name, "trial_name", limit=300)
    elif report.trial_id:
        p.add("trial_id", "only a proposed trial has an id")
    if not report.participants:
        p.add("participants", "the participants are required")
    for i, person in enumerate(report.participants):
        check_practitioner(p, person, f"participants.{i}")
    if len({x.id for x in report.participants}) != len(report.participants):
        p.add("participants", "a participant is listed twice")
    if report.quorum_met and not quorum_reached(report.participants):
        p.add(
            "quorum_met",
            "the quorum needs at least {count} physicians of {count} different specialties",
            count=QUORUM_SPECIALTIES,
        )
    if header.authenticator.id not in {x.id for x in report.participants}:
        p.add("legal_authenticator", "the report is authenticated by a participant")
    if not report.patient_informed:
        p.add("patient_informed", "the patient must be informed before the case is presented")
    p.raise_if_any("the RCP report")


def build_rcp_report(report: RcpReport, header: Header, *, now: datetime) -> bytes:
    check_rcp_report(report, header, now=now)
    d, tnm = report.diagnosis, report.tnm

    def konsil_value(table: dict[str, str], key: str) -> Code:
        return Code(key, codes.OID_KONSIL_CODES, table[key])

    def tnm_value(value: str) -> Code:
        return Code(value, codes.OID_KONSIL_TNM, f"{value} ({tnm.edition})")

    def question(s: Element) -> None:
        status = konsil_value(codes.CASE_STATUS, report.case_status)
        observation(s, codes.OBS_CASE_STATUS, partial(v_cd, c=status))
        observation(s, codes.OBS_PATIENT_INFORMED, partial(v_bl, value=report.patient_informed))

    def diagnosis(s: Element) -> None:
        icd = Code(d.icd10, codes.OID_ICD10, d.label)
        observation(s, codes.OBS_DIAGNOSIS, partial(v_cd, c=icd), when=d.diagnosed_on)
        topo = Code(d.topography, codes.OID_ICD_O_3, d.topography_label)
        observation(s, codes.OBS_TOPOGRAPHY, partial(v_cd, c=topo))
        morpho = Code(d.morphology, codes.OID_ICD_O_3, d.morphology_label)
        observation(s, codes.OBS_MORPHOLOGY, partial(v_cd, c=morpho))
        status = konsil_value(codes.TUMOUR_STATUS, d.status)
        observation(s, codes.OBS_TUMOUR_STATUS, partial(v_cd, c=status))

    def staging(s: Element) -> None:
        observation(s, codes.OBS_T, partial(v_cd, c=tnm_value(tnm.t)))
        observation(s, codes.OBS_N, partial(v_cd, c=tnm_value(tnm.n)))
        observation(s, codes.OBS_M, partial(v_cd, c=tnm_value(tnm.m)))
        if tnm.stage is not None:
            observation(s, codes.OBS_STAGE, partial(v_cd, c=tnm_value(tnm.stage)))
        observation(s, codes.OBS_ECOG, partial(v_cd, c=codes.ECOG[report.ecog]))

    def proposal(s: Element) -> None:
        for item in report.proposal:
            act = sub(sub(s, "entry"), "act", classCode="ACT", moodCode="PRP")
            code_el(act, "code", konsil_value(codes.PROPOSAL_KINDS, item.kind))
            sub(act, "text", item.description)
            sub(act, "statusCode", code="active")

    def conformity(s: Element) -> None:
        observation(s, codes.OBS_CONFORMITY, partial(v_bl, value=report.guideline_conform))
        if report.deviation_reason:
            observation(s, codes.OBS_DEVIATION, partial(v_st, value=report.deviation_reason))

    def trial(s: Element) -> None:
        ident = Identifier(codes.OID_CLINICAL_TRIAL, report.trial_id) if report.trial_id else None
        observation(s, codes.OBS_TRIAL, partial(v_bl, value=report.trial_proposed), ident=ident)

    def quorum(s: Element) -> None:
        observation(
            s,
            codes.OBS_QUORUM,
            partial(v_bl, value=report.quorum_met),
            when=local_time(report.meeting).date(),
        )

    def meeting(root: Element) -> None:
        event = sub(sub(root, "documentationOf"), "serviceEvent", classCode="ACT")
        code_el(event, "code", codes.ACT_RCP_MEETING)
        moment = sub(event, "effectiveTime")
        sub(moment, "low", value=day(local_time(report.meeting).date()))
        for person in report.participants:
            performer = sub(event, "performer", typeCode="PRF")
            assigned_entity(performer, "assignedEntity", person, None)

    sections = [
        Section(codes.SEC_RCP_QUESTION, "Question posée à la RCP", "question", question),
        Section(codes.SEC_HISTORY, "Histoire de la maladie et antécédents", "history"),
        Section(codes.SEC_DIAGNOSIS, "Diagnostic", "diagnosis", diagnosis),
        Section(codes.SEC_STAGING, "Stade TNM et état général", "staging", staging),
        Section(codes.SEC_PROPOSAL, "Proposition de la RCP", "proposal", proposal),
        Section(codes.SEC_CONFORMITY, "Conformité aux référentiels", "conformity", conformity),
        Section(codes.SEC_TRIAL, "Essai clinique", "trial", trial),
        Section(codes.SEC_QUORUM, "Quorum et participants", "quorum", quorum),
    ]
    spec = DocumentSpec(
        kind="rcp-report",
        header=header,
        now=now,
        sections=sections,
        narrative="rcp_report.xml",
        context={
            "r": report,
            "case_status": codes.CASE_STATUS[report.case_status],
            "tumour_status": codes.TUMOUR_STATUS[d.status],
            "ecog": codes.ECOG[report.ecog].display,
            "proposal_kinds": codes.PROPOSAL_KINDS,
        },
        documentation_of=meeting,
    )
    return build(spec)
