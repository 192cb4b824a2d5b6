"""Publishing a signed RCP report through the workflow package.

``WorkflowReportPublisher.publish`` runs inside the VALIDATED → PUBLISHED transaction: it maps
``RcpReportData`` to ``workflow.cda.rcp_report.RcpReport``, builds and checks the CDA (any problem
is one ``ValidationError`` listing every missing or invalid field, raised before anything is
written), stores it as a final signed document of the board's host organisation with the signing
chair as legal authenticator, and enqueues its delivery to the DSP — all in the caller's session.
The reference it returns is ``document/<id>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor
from konsil.clock import Clock
from konsil.errors import Reason, ValidationError
from konsil.identity.models import Organisation
from rcp.domain.fiche import Fiche
from rcp.domain.report import RcpReportData, ReportPerson
from rcp.models import Board
from workflow.cda import codes
from workflow.cda import values as cda
from workflow.cda.rcp_report import (
    M_RE,
    N_RE,
    STAGE_RE,
    T_RE,
    CancerDiagnosis,
    RcpReport,
    Tnm,
    build_rcp_report,
)
from workflow.cda.rcp_report import ProposalItem as CdaProposalItem
from workflow.connectors.xds import oid_of
from workflow.documents import DocumentStore, NewDocument
from workflow.models import new_id
from workflow.outbox import Outbox

REF_PREFIX = "document/"
SEX = {"F": "F", "M": "M", "U": "UN", "UN": "UN"}


def document_id_of(ref: str | None) -> str | None:
    """The clinical document id in a publication reference, if it is one."""
    return ref[len(REF_PREFIX) :] if ref and ref.startswith(REF_PREFIX) else None


def practitioner(person: ReportPerson) -> cda.Practitioner | None:
    """A CDA practitioner, or None for someone without a specialty (e.g. a coordinator)."""
    if not person.specialty:
        return None
    return cda.Practitioner(
        cda.Identifier(codes.OID_KONSIL_PRACTITIONER, person.practitioner_id or person.account_id),
        person.given_name or person.name,
        person.family_name or person.name,
        person.specialty,
        person.cns_provider_code,
    )


def fiche_problems(f: Fiche) -> dict[str, str]:
    """What the RCP report CDA could not carry in a fiche that passed ``check_fiche``: its TNM
    grammar is narrower than the fiche's (no N1mi, N0(i+), T category sub-suffixes, stage 0is…).
    Checked at submission and decision, so that publication does not fail on it."""
    problems: dict[str, str] = {}
    for name, value, pattern, allowed in (
        ("tnm_t", f.tnm_t, T_RE, "TX, T0, Tis, T1mi or T1-T4 with a-d"),
        ("tnm_n", f.tnm_n, N_RE, "NX, N0 or N1-N3 with a-c"),
        ("tnm_m", f.tnm_m, M_RE, "MX, M0 or M1 with a-d"),
        ("stage_group", f.stage_group, STAGE_RE, "0, I-III with A-C, IV with A-C"),
    ):
        if value and not pattern.match(value):
            problems[name] = Reason(
                "the RCP report carries {allowed}: {value!r} cannot be published",
                allowed=allowed,
                value=value,
            )
    return problems


def to_cda(report: RcpReportData) -> RcpReport:
    """Map the signed report to the CDA builder's value; refuse what the CDA cannot carry."""
    missing: dict[str, str] = {}
    if report.tnm is None:
        missing["tnm"] = "the RCP report CDA needs a TNM classification (T, N and M)"
    elif not (report.tnm.t and report.tnm.n and report.tnm.m):
        missing["tnm"] = "the RCP report CDA needs T, N and M"
    if report.ecog is None:
        missing["ecog"] = "the RCP report CDA needs the WHO/ECOG performance status"
    participants = tuple(p for p in map(practitioner, report.participants) if p is not None)
    if not participants:
        missing["participants"] = "no participant with a specialty"
    if report.legal_authenticator is None or report.signed_at is None:
        missing["legal_authenticator"] = "the report is not signed"
    elif practitioner(report.legal_authenticator) is None:
        missing["legal_authenticator"] = "the signing chair has no specialty"
    if missing:
        listed = "; ".join(f"{k}: {v}" for k, v in missing.items())
        raise ValidationError(
            Reason("the RCP report cannot be published — {problems}", problems=listed),
            fields=missing,
        )
    assert report.tnm is not None and report.ecog is not None
    tnm = report.tnm
    edition = f"UICC {tnm.edition}e édition" if tnm.edition else "UICC 8e édition"
    d = report.diagnosis
    return RcpReport(
        board=report.board_name,
        meeting=report.session_start,
        case_status=report.presentation,
        question=report.question,
        history=report.history,
        diagnosis=CancerDiagnosis(
            d.icd10,
            d.label,
            d.icdo_topography,
            d.topography_label,
            d.icdo_morphology,
            d.morphology_label,
            d.origin,
        ),
        tnm=Tnm(tnm.t, tnm.n, tnm.m, tnm.stage_group or None, edition),
        ecog=report.ecog,
        proposal=tuple(CdaProposalItem(i.kind, i.detail or i.kind) for i in report.proposal),
        guideline_conform=report.guideline_conform,
        participants=participants,
        quorum_met=report.quorum.met,
        patient_informed=report.patient_informed,
        guideline=report.guideline or None,
        deviation_reason=report.deviation_justification or None,
        trial_proposed=report.trial_proposed,
        trial_id=report.trial_id or None,
        trial_name=report.trial_name or None,
    )


def header(report: RcpReportData, document_id: str, organisation: Organisation) -> cda.Header:
    chair = report.legal_authenticator
    assert chair is not None
    author = practitioner(chair)
    assert author is not None
    ident = cda.Identifier(oid_of(document_id))
    pat = report.patient
    return cda.Header(
        document_id=ident,
        set_id=ident,
        patient=cda.Patient(
            pat.matricule, pat.given_name, pat.family_name, pat.birth_date, SEX.get(pat.sex, "UN")
        ),
        author=author,
        organisation=cda.Organisation(
            cda.Identifier(codes.OID_KONSIL_ORGANISATION, organisation.id), organisation.name
        ),
        legal_authenticator=author,
    )


@dataclass
class WorkflowReportPublisher:
    """The ``ReportPublisher`` that stores the signed CDA and queues it for the DSP.

    ``documents`` and ``outbox`` are looked up at publication time (the workflow feature creates
    them at startup, possibly after the RCP feature)."""

    clock: Clock
    documents: Callable[[], DocumentStore]
    outbox: Callable[[], Outbox]

    async def publish(self, session: AsyncSession, report: RcpReportData) -> str:
        value = to_cda(report)
        board = await session.get(Board, report.board_id)
        org = (
            await session.get(Organisation, board.host_organisation_id)
            if board is not None and board.host_organisation_id
            else None
        )
        if org is None:
            raise ValidationError(
                "the RCP report cannot be published — the board has no host organisation",
                fields={"host_organisation_id": "required to sign and publish reports"},
            )
        chair = report.legal_authenticator
        assert chair is not None and report.signed_at is not None
        doc_id = new_id()
        content = build_rcp_report(value, header(report, doc_id, org), now=report.signed_at)
        doc, _ = await self.documents().do_issue(
            session,
            Actor(chair.account_id),
            NewDocument(
                kind="rcp-report",
                type_code=codes.BY_KIND["rcp-report"].code,
                patient_id=report.patient.id,
                organisation_id=org.id,
                content=content,
                author_account_id=chair.account_id,
                author_practitioner_id=chair.practitioner_id,
                legal_authenticator_id=chair.practitioner_id,
                document_id=doc_id,
            ),
            self.outbox(),
            [("dsp", {"patient_matricule": report.patient.matricule})],
        )
        return f"{REF_PREFIX}{doc.id}"
