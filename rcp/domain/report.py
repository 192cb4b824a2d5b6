"""The RCP report as a value, and the seam through which a signed report is published.

``RcpReportData`` carries everything an FRCP-style RCP report CDA needs (question, diagnosis,
TNM, ECOG, history, proposal, conformity, trial, conclusion, quorum, participants, legal
authenticator, board, session). It is built when the report is drafted, stored as JSON, shown in
the preview, and exactly that stored value is signed and handed to a ``ReportPublisher``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from konsil.errors import Reason, ValidationError

# Keys are the workflow CDA builder's care-plan vocabulary (workflow.cda.codes.PROPOSAL_KINDS),
# so the publisher adapter passes them through unchanged.
PROPOSAL_KINDS: dict[str, str] = {
    "surgery": "Surgery",
    "chemotherapy": "Chemotherapy",
    "radiotherapy": "Radiotherapy",
    "hormone-therapy": "Hormone therapy",
    "targeted-therapy": "Targeted therapy",
    "immunotherapy": "Immunotherapy",
    "surveillance": "Watchful waiting",
    "supportive-care": "Supportive care",
    "further-investigation": "Further investigations",
    "other": "Other",
}


@dataclass(frozen=True)
class ProposalItem:
    kind: str  # a PROPOSAL_KINDS key
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """What the board decided for one case (the decision form)."""

    proposal: tuple[ProposalItem, ...]
    guideline_conform: bool
    deviation_justification: str
    trial_proposed: bool
    trial_name: str
    conclusion: str
    guideline: str = ""  # the guideline followed, e.g. "INCa 2024 — cancer du sein"
    trial_id: str = ""  # registry id, e.g. NCT05012345


def check_decision(data: Mapping[str, Any]) -> Decision:
    errors: dict[str, str] = {}
    raw_items = data.get("proposal") or []
    items: list[ProposalItem] = []
    if not isinstance(raw_items, list):
        errors["proposal"] = "a list of care-plan items"
        raw_items = []
    for i, raw in enumerate(raw_items):
        if isinstance(raw, str):
            raw = {"kind": raw}
        if not isinstance(raw, Mapping) or raw.get("kind") not in PROPOSAL_KINDS:
            errors["proposal"] = Reason(
                "item {item}: kind must be one of {kinds}",
                item=i + 1,
                kinds=", ".join(PROPOSAL_KINDS),
            )
            continue
        detail = str(raw.get("detail") or "").strip()
        if len(detail) > 1000:
            errors["proposal"] = Reason("item {item}: detail at most 1000 characters", item=i + 1)
        items.append(ProposalItem(str(raw["kind"]), detail))
    if not items and "proposal" not in errors:
        errors["proposal"] = "choose at least one care-plan item"
    conform_raw = data.get("guideline_conform")
    if conform_raw in (None, ""):
        errors["guideline_conform"] = "say whether the proposal follows the guidelines"
        conform = True
    else:
        conform = conform_raw is True or str(conform_raw).lower() in ("1", "true", "yes", "on")
    justification = str(data.get("deviation_justification") or "").strip()
    if not conform and not justification:
        errors["deviation_justification"] = (
            "required when the proposal deviates from the guidelines"
        )
    trial = data.get("trial_proposed") is True or str(data.get("trial_proposed") or "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    trial_name = str(data.get("trial_name") or "").strip()
    if trial and not trial_name:
        errors["trial_name"] = "name the clinical trial proposed"
    guideline = str(data.get("guideline") or "").strip()
    if len(guideline) > 300:
        errors["guideline"] = "at most 300 characters"
    trial_id = str(data.get("trial_id") or "").strip()
    if trial_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_./-]{2,39}", trial_id):
        errors["trial_id"] = "a registry identifier such as NCT05012345"
    conclusion = str(data.get("conclusion") or "").strip()
    if not conclusion:
        errors["conclusion"] = "required"
    elif len(conclusion) > 8000:
        errors["conclusion"] = "at most 8000 characters"
    if errors:
        raise ValidationError("the decision is not complete", fields=errors)
    return Decision(
        tuple(items), conform, justification, trial, trial_name, conclusion, guideline, trial_id
    )


@dataclass(frozen=True)
class ReportPerson:
    account_id: str
    practitioner_id: str | None
    name: str
    specialty: str | None
    organisation: str | None = None
    given_name: str = ""
    family_name: str = ""
    cns_provider_code: str | None = None


@dataclass(frozen=True)
class ReportPatient:
    id: str
    matricule: str
    given_name: str
    family_name: str
    birth_date: date
    sex: str


@dataclass(frozen=True)
class ReportDiagnosis:
    icd10: str
    icdo_topography: str
    icdo_morphology: str
    origin: str  # primary | secondary | recurrence
    laterality: str
    label: str = ""
    topography_label: str = ""
    morphology_label: str = ""


@dataclass(frozen=True)
class ReportTnm:
    kind: str  # c | p | yc | yp
    t: str
    n: str
    m: str
    stage_group: str
    edition: int | None


@dataclass(frozen=True)
class ReportQuorum:
    met: bool
    physicians_present: int
    specialties_present: tuple[str, ...]
    missing_required: tuple[str, ...]


@dataclass(frozen=True)
class RcpReportData:
    case_id: str
    patient: ReportPatient
    board_id: str
    board_name: str
    tumour_domain: str
    host_organisation: str | None
    session_id: str
    session_start: datetime  # aware UTC
    question: str
    diagnosis: ReportDiagnosis
    tnm: ReportTnm | None
    ecog: int | None
    history: str
    exams: str
    proposal: tuple[ProposalItem, ...]
    guideline_conform: bool
    deviation_justification: str
    trial_proposed: bool
    trial_name: str
    conclusion: str
    quorum: ReportQuorum
    participants: tuple[ReportPerson, ...]
    referring_physician: ReportPerson
    case_status: str  # the case state the report was drafted in
    legal_authenticator: ReportPerson | None = None  # the signing chair
    signed_at: datetime | None = None
    presentation: str = "first-presentation"  # FRCP case status (first/re-presentation, ...)
    patient_informed: bool = False
    guideline: str = ""
    trial_id: str = ""

    def to_json(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, datetime | date):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [conv(x) for x in v]
            return v

        out: dict[str, Any] = conv(asdict(self))
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RcpReportData:
        def person(p: Mapping[str, Any] | None) -> ReportPerson | None:
            return None if p is None else ReportPerson(**p)

        pat = dict(d["patient"])
        pat["birth_date"] = date.fromisoformat(pat["birth_date"])
        q = dict(d["quorum"])
        ref = person(d["referring_physician"])
        assert ref is not None
        return cls(
            case_id=d["case_id"],
            patient=ReportPatient(**pat),
            board_id=d["board_id"],
            board_name=d["board_name"],
            tumour_domain=d["tumour_domain"],
            host_organisation=d.get("host_organisation"),
            session_id=d["session_id"],
            session_start=datetime.fromisoformat(d["session_start"]),
            question=d["question"],
            diagnosis=ReportDiagnosis(**d["diagnosis"]),
            tnm=ReportTnm(**d["tnm"]) if d.get("tnm") else None,
            ecog=d.get("ecog"),
            history=d.get("history", ""),
            exams=d.get("exams", ""),
            proposal=tuple(ProposalItem(**i) for i in d["proposal"]),
            guideline_conform=d["guideline_conform"],
            deviation_justification=d.get("deviation_justification", ""),
            trial_proposed=d["trial_proposed"],
            trial_name=d.get("trial_name", ""),
            conclusion=d["conclusion"],
            quorum=ReportQuorum(
                q["met"],
                q["physicians_present"],
                tuple(q["specialties_present"]),
                tuple(q["missing_required"]),
            ),
            participants=tuple(ReportPerson(**p) for p in d["participants"]),
            referring_physician=ref,
            case_status=d["case_status"],
            legal_authenticator=person(d.get("legal_authenticator")),
            signed_at=datetime.fromisoformat(d["signed_at"]) if d.get("signed_at") else None,
            presentation=d.get("presentation", "first-presentation"),
            patient_informed=d.get("patient_informed", False),
            guideline=d.get("guideline", ""),
            trial_id=d.get("trial_id", ""),
        )


class ReportPublisher(Protocol):
    """Publishes a signed RCP report to the patient's shared care record (DSP).

    Called inside the transaction that moves the case VALIDATED → PUBLISHED, with that
    transaction's session, so an implementation can write its outbox row atomically with the
    state change. Returns a reference to what it queued (shown to users and in the API).
    An implementation raises to refuse; then the case stays VALIDATED.
    """

    async def publish(self, session: AsyncSession, report: RcpReportData) -> str: ...
