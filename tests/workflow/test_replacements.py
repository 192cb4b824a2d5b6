"""``DocumentStore.do_replace`` with an outbox: the replacement is queued in its transaction."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from konsil.errors import Conflict
from konsil.identity.models import Patient
from tests.workflow.helpers import Workflow, certificate_cda
from workflow.documents import DocumentStore, NewDocument
from workflow.models import OutboxMessage, new_id


def certificate(wf: Workflow, patient: Patient) -> NewDocument:
    """A new sick-leave certificate of ``patient`` by the workflow's author, with its own id."""
    doc_id = new_id()
    return NewDocument(
        "sick-leave",
        "DT-20002",
        patient.id,
        wf.org.id,
        certificate_cda(patient.matricule, doc_id),
        author_account_id=wf.author_id,
        document_id=doc_id,
    )


def store(wf: Workflow) -> DocumentStore:
    return DocumentStore(wf.clock, wf.audit, wf.keys, wf.outbox)


async def test_replacement_waits_for_the_original_then_names_it(wf: Workflow) -> None:
    patient = await wf.patient(1)
    doc, msg = await wf.issue_certificate(patient, target="cns")
    docs = store(wf)
    new = certificate(wf, patient)
    with pytest.raises(Conflict, match="still being delivered"):
        async with wf.db.transaction() as s:
            await docs.do_replace(s, wf.author, doc.id, new)

    async with wf.db.transaction() as s:
        sent = await s.get(OutboxMessage, msg.id)
        assert sent is not None
        sent.status, sent.remote_reference = "delivered", "CNS-CIT-00000001"
    async with wf.db.transaction() as s:
        v2 = await docs.do_replace(s, wf.author, doc.id, new)
    async with wf.db.session() as s:
        rows = list(
            (
                await s.execute(select(OutboxMessage).where(OutboxMessage.document_id == v2.id))
            ).scalars()
        )
    # only where the original went (CNS), with the relation and the CNS's reference
    assert [m.target for m in rows] == ["cns"]
    assert rows[0].idempotency_key == f"cns-{v2.id}"
    assert json.loads(rows[0].payload) == {
        "patient_matricule": patient.matricule,
        "replaces": {"document_id": doc.id, "reference": "CNS-CIT-00000001"},
    }


async def test_replacement_of_an_unsent_document_goes_to_its_kinds_targets(wf: Workflow) -> None:
    patient = await wf.patient(2)
    docs = store(wf)
    async with wf.db.transaction() as s:
        doc = await docs.do_create(s, wf.author, certificate(wf, patient))
    async with wf.db.transaction() as s:
        v2 = await docs.do_replace(
            s,
            wf.author,
            doc.id,
            certificate(wf, patient),
        )
    async with wf.db.session() as s:
        rows = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.document_id == v2.id))
        ).scalars()
        payloads = {m.target: json.loads(m.payload) for m in rows}
    assert payloads == {
        "cns": {"patient_matricule": patient.matricule, "replaces": None},
        "dsp": {"patient_matricule": patient.matricule, "replaces": None},
    }


async def test_a_refused_version_is_skipped_the_accepted_one_is_replaced(wf: Workflow) -> None:
    patient = await wf.patient(3)
    v1, msg = await wf.issue_certificate(patient, target="cns")
    docs = store(wf)

    async def settle(message_id: str, status: str, reference: str | None = None) -> None:
        async with wf.db.transaction() as s:
            m = await s.get(OutboxMessage, message_id)
            assert m is not None
            m.status, m.remote_reference = status, reference

    async def sent_for(document_id: str) -> OutboxMessage:
        async with wf.db.session() as s:
            return (
                await s.execute(
                    select(OutboxMessage).where(OutboxMessage.document_id == document_id)
                )
            ).scalar_one()

    await settle(msg.id, "delivered", "CNS-CIT-00000001")
    async with wf.db.transaction() as s:
        v2 = await docs.do_replace(s, wf.author, v1.id, certificate(wf, patient))
    m2 = await sent_for(v2.id)
    assert json.loads(m2.payload)["replaces"]["document_id"] == v1.id
    await settle(m2.id, "rejected")  # the CNS refused v2: it still holds v1
    async with wf.db.transaction() as s:
        v3 = await docs.do_replace(s, wf.author, v2.id, certificate(wf, patient))
    m3 = await sent_for(v3.id)
    assert json.loads(m3.payload)["replaces"] == {
        "document_id": v1.id,
        "reference": "CNS-CIT-00000001",
    }
