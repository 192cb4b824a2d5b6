"""Test helpers: a schema-valid minimal CDA, and the workflow services over one database.

Certificates come from the real sick-leave builder, with a varying patient and document id (the
CDA id is the document's OID, which is also its XDS uniqueId).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal

from aiohttp import web
from sqlalchemy import select

from konsil.audit.service import SYSTEM, Actor, AuditLog
from konsil.auth.passwords import FAST_FOR_TESTS, PasswordHasher
from konsil.clock import Clock
from konsil.db import Database
from konsil.identity.matricule import birth_date_of, make_matricule
from konsil.identity.models import Organisation, Patient
from konsil.identity.service import IdentityService, NewAccount, NewPatient
from tests.workflow import samples
from workflow.cda.prescription import Medication, Prescription, PrescriptionLine, build_prescription
from workflow.cda.sick_leave import Diagnosis, SickLeave, build_sick_leave
from workflow.cda.teleconsultation import Teleconsultation, build_teleconsultation
from workflow.cda.values import Header, Identifier
from workflow.connectors.xds import oid_of
from workflow.documents import DocumentStore, NewDocument
from workflow.models import ClinicalDocument, OutboxMessage, new_id
from workflow.outbox import Outbox
from workflow.signing import KeyRing

SECRET = "signing-secret-for-tests-0123456789"


def minimal_cda(matricule: str, document_id: str, *, type_code: str = "DT-20002") -> bytes:
    """A small schema-valid CDA that does NOT pass the LU profile (for refusal tests)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="1.3.182.99.1" extension="{document_id}"/>
  <code code="{type_code}" codeSystem="1.3.182.5.9"/>
  <effectiveTime value="20261127100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <recordTarget><patientRole><id root="1.3.182.4.4" extension="{matricule}"/></patientRole></recordTarget>
  <author><time value="20261127"/><assignedAuthor><id root="1.2.3" extension="a"/></assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization><id root="1.2.3"/></representedCustodianOrganization></assignedCustodian></custodian>
  <component><nonXMLBody><text>x</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def _header(matricule: str, document_id: str) -> Header:
    birth = birth_date_of(matricule) or date(1980, 1, 1)
    patient = replace(samples.ANNE, matricule=matricule, birth_date=birth)
    ident = Identifier(oid_of(document_id))
    return Header(
        document_id=ident,
        set_id=ident,
        patient=patient,
        author=samples.GP,
        organisation=samples.CLINIC,
    )


def certificate_cda(matricule: str, document_id: str) -> bytes:
    """A real sick-leave certificate (the builders' output: XSD + LU profile valid)."""
    cert = SickLeave("illness", date(2026, 11, 27), date(2026, 12, 3), diagnosis=FLU)
    return build_sick_leave(cert, _header(matricule, document_id), now=samples.NOW)


def teleconsultation_cda(matricule: str, document_id: str) -> bytes:
    """A valid document of another type than the sick-leave certificate."""
    return build_teleconsultation(CONSULT, _header(matricule, document_id), now=samples.NOW)


def prescription_cda(matricule: str, document_id: str) -> bytes:
    """A real medication prescription (two lines), as the video issuer makes after a call."""
    return build_prescription(RX, _header(matricule, document_id), now=samples.NOW)


FLU = Diagnosis("J11.1", "Grippe avec d'autres manifestations respiratoires")
CONSULT = Teleconsultation(
    start=datetime(2026, 11, 26, 17, 0, tzinfo=UTC),
    end=datetime(2026, 11, 26, 17, 10, tzinfo=UTC),
    modality="phone",
    patient_consent=True,
    reason="Question sur un résultat de prise de sang.",
    findings="Hémoglobine 13,2 g/dL, normale.",
    plan="Pas de mesure.",
)
RX = Prescription(
    (
        PrescriptionLine(
            Medication("N02BE01", "Paracétamol 1 g, comprimé"),
            dose=Decimal(1),
            dose_unit="{tbl}",
            route="20053000",
            times=3,
            per=1,
            period_unit="d",
            duration_days=5,
            quantity=Decimal(15),
            quantity_unit="{tbl}",
            reimbursable=True,
            instructions="Si douleur",
        ),
        PrescriptionLine(
            Medication("J01CA04", "Amoxicilline 500 mg, gélule"),
            dose=Decimal(1),
            dose_unit="{caps}",
            route="20053000",
            times=3,
            per=1,
            period_unit="d",
            duration_days=7,
            quantity=Decimal(21),
            quantity_unit="{caps}",
            reimbursable=True,
        ),
    ),
    start=date(2026, 11, 27),
)


@dataclass
class Workflow:
    db: Database
    clock: Clock
    audit: AuditLog
    identity: IdentityService
    keys: KeyRing
    documents: DocumentStore
    outbox: Outbox
    org: Organisation
    author: Actor
    author_id: str

    async def patient(self, n: int) -> Patient:
        year = 1950 + n % 60
        return await self.identity.do_create_patient(
            SYSTEM,
            NewPatient(
                matricule=make_matricule(f"{year}0101", n % 1000),
                given_name="Test",
                family_name=f"Patient{n}",
                birth_date=date(year, 1, 1),
                sex="U",
            ),
        )

    async def issue_certificate(
        self,
        patient: Patient,
        *,
        target: str = "cns",
        content: bytes | None = None,
        envelope_matricule: str | None = None,
    ) -> tuple[ClinicalDocument, OutboxMessage]:
        """Sign and store a certificate and queue it for ``target``, in one transaction."""
        doc_id = new_id()
        async with self.db.transaction() as s:
            doc, msgs = await self.documents.do_issue(
                s,
                self.author,
                NewDocument(
                    kind="sick-leave",
                    type_code="DT-20002",
                    patient_id=patient.id,
                    organisation_id=self.org.id,
                    content=content or certificate_cda(patient.matricule, doc_id),
                    author_account_id=self.author_id,
                    document_id=doc_id,
                ),
                self.outbox,
                [(target, {"patient_matricule": envelope_matricule or patient.matricule})],
            )
        return doc, msgs[0]


async def make_workflow(db: Database, clock: Clock, *, max_attempts: int = 5) -> Workflow:
    audit = AuditLog(clock)
    identity = IdentityService(db, clock, PasswordHasher(FAST_FOR_TESTS), audit)
    org = await identity.do_create_organisation(SYSTEM, f"Hôpital {new_id()[:6]}", "hospital")
    account = await identity.do_create_account(
        SYSTEM,
        NewAccount(
            username=f"dr{new_id()[:8]}",
            password="pw-0123456789-abcdef",
            role="practitioner",
            display_name="Dr Test",
            organisation_id=org.id,
        ),
    )
    keys = KeyRing(SECRET, clock)
    return Workflow(
        db=db,
        clock=clock,
        audit=audit,
        identity=identity,
        keys=keys,
        documents=DocumentStore(clock, audit, keys),
        outbox=Outbox(db, clock, audit, max_attempts=max_attempts),
        org=org,
        author=Actor(account.id),
        author_id=account.id,
    )


def stored_documents(store_root: object) -> list[dict[str, object]]:
    from pathlib import Path

    from workflow.simulators.common import journal_submissions

    root = Path(str(store_root))
    folders = [json.loads(p.read_text()) for p in sorted(root.glob("*/metadata.json"))]
    return folders + [meta for meta, _ in journal_submissions(root)]


async def deliver_all(app: web.Application) -> None:
    """Until no message is pending or in flight: help the app's worker (which runs in the
    background too, so a round may find its claims taken) and yield to it."""
    from konsil import appkeys as K
    from workflow.web.keys import WORKER

    for _ in range(500):
        async with app[K.DB].session() as s:
            busy = (
                await s.execute(
                    select(OutboxMessage.id).where(
                        OutboxMessage.status.in_(("pending", "in_flight"))
                    )
                )
            ).first()
        if busy is None:
            return
        if not await app[WORKER].run_once():
            await asyncio.sleep(0.02)
    raise AssertionError("the outbox never drained")
