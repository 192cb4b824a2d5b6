"""Teleconsultation report (compte rendu de téléconsultation).

The encounter is in the header (``componentOf/encompassingEncounter``, ActCode ``VR`` virtual,
with its start and end); sections: reason with the patient's consent and the modality, history
of the present illness, findings, diagnoses (ICD-10, optional) and plan with a follow-up date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import Final

from . import codes
from .builder import (
    DocumentSpec,
    Element,
    Section,
    assigned_entity,
    build,
    observation,
    sub,
    ts,
    v_bl,
    v_cd,
)
from .codes import Code
from .sick_leave import Diagnosis
from .values import (
    Header,
    Practitioner,
    Problems,
    check_choice,
    check_header,
    check_icd10,
    check_practitioner,
    local_time,
)

MAX_DURATION: Final = timedelta(hours=4)


@dataclass(frozen=True)
class Teleconsultation:
    start: datetime
    end: datetime
    modality: str  # codes.TELE_MODALITIES
    patient_consent: bool
    reason: str
    findings: str
    plan: str
    present_illness: str | None = None
    diagnoses: tuple[Diagnosis, ...] = ()
    follow_up: date | None = None
    consultants: tuple[Practitioner, ...] = ()  # other practitioners in the call


def check_teleconsultation(tc: Teleconsultation, header: Header, *, now: datetime) -> None:
    p = Problems()
    check_header(p, header, now=now)
    if tc.start.tzinfo is None or tc.end.tzinfo is None:
        p.add("start", "start and end need a timezone")
    else:
        if tc.end <= tc.start:
            p.add("end", "the teleconsultation ends before it starts")
        elif tc.end - tc.start > MAX_DURATION:
            p.add("end", "a teleconsultation lasts at most 4 hours")
        if tc.end > now:
            p.add("end", "the teleconsultation has not ended yet")
    check_choice(p, tc.modality, codes.TELE_MODALITIES, "modality")
    if not tc.patient_consent:
        p.add("patient_consent", "the patient must consent to the teleconsultation")
    p.text(tc.reason, "reason")
    p.text(tc.findings, "findings")
    p.text(tc.plan, "plan")
    if tc.present_illness is not None:
        p.text(tc.present_illness, "present_illness")
    for i, d in enumerate(tc.diagnoses):
        check_icd10(p, d.code, f"diagnoses.{i}.code")
        p.text(d.label, f"diagnoses.{i}.label", limit=300)
    if tc.follow_up is not None and tc.follow_up < local_time(now).date():
        p.add("follow_up", "is in the past")
    for i, c in enumerate(tc.consultants):
        check_practitioner(p, c, f"consultants.{i}")
        if c.id == header.author.id:
            p.add(f"consultants.{i}", "the author is not also a consultant")
    p.raise_if_any("the teleconsultation report")


def build_teleconsultation(tc: Teleconsultation, header: Header, *, now: datetime) -> bytes:
    check_teleconsultation(tc, header, now=now)

    def reason(s: Element) -> None:
        modality = Code(tc.modality, codes.OID_KONSIL_CODES, codes.TELE_MODALITIES[tc.modality])
        observation(s, codes.OBS_TELE_MODALITY, partial(v_cd, c=modality))
        observation(s, codes.OBS_TELE_CONSENT, partial(v_bl, value=tc.patient_consent))

    def diagnoses(s: Element) -> None:
        for d in tc.diagnoses:
            icd = Code(d.code, codes.OID_ICD10, d.label)
            observation(s, codes.OBS_DIAGNOSIS, partial(v_cd, c=icd))

    def plan(s: Element) -> None:
        if tc.follow_up is not None:
            observation(s, codes.OBS_FOLLOW_UP, when=tc.follow_up, mood="INT")

    def encounter(root: Element) -> None:
        enc = sub(sub(root, "componentOf"), "encompassingEncounter")
        sub(
            enc,
            "code",
            code="VR",
            codeSystem=codes.OID_ACT_CODE,
            displayName="Consultation à distance",
        )
        moment = sub(enc, "effectiveTime")
        sub(moment, "low", value=ts(tc.start))
        sub(moment, "high", value=ts(tc.end))
        for c in tc.consultants:
            participant = sub(enc, "encounterParticipant", typeCode="CON")
            assigned_entity(participant, "assignedEntity", c, None)

    sections = [Section(codes.SEC_REASON, "Motif de la téléconsultation", "reason", reason)]
    if tc.present_illness is not None:
        sections.append(Section(codes.SEC_PRESENT_ILLNESS, "Histoire de la maladie", "illness"))
    sections.append(Section(codes.SEC_FINDINGS, "Constatations", "findings"))
    if tc.diagnoses:
        sections.append(Section(codes.SEC_DIAGNOSIS, "Diagnostic", "diagnosis", diagnoses))
    sections.append(Section(codes.SEC_PLAN, "Conduite à tenir", "plan", plan))
    spec = DocumentSpec(
        kind="teleconsultation-report",
        header=header,
        now=now,
        sections=sections,
        narrative="teleconsultation.xml",
        context={"tc": tc, "modality": codes.TELE_MODALITIES[tc.modality]},
        component_of=encounter,
    )
    return build(spec)
