"""``DocumentStore.do_issue``: document + audit event + outbox messages, all or nothing.

On PostgreSQL the three are one statement (data-modifying CTEs); on SQLite they are
``do_create`` + ``Outbox.enqueue``. Both must leave the same rows.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from konsil.audit.models import AuditEvent
from konsil.audit.service import verify_chain
from konsil.errors import ValidationError
from tests.workflow.helpers import Workflow, certificate_cda
from workflow.documents import NewDocument, verify_document
from workflow.models import ClinicalDocument, OutboxMessage, new_id


def _certificate(wf: Workflow, patient_id: str, matricule: str, doc_id: str) -> NewDocument:
    return NewDocument(
        kind="sick-leave",
        type_code="DT-20002",
        patient_id=patient_id,
        organisation_id=wf.org.id,
        content=certificate_cda(matricule, doc_id),
        author_account_id=wf.author_id,
        document_id=doc_id,
    )


async def _counts(wf: Workflow) -> tuple[int, int, int]:
    async with wf.db.session() as s:
        docs = (await s.execute(select(func.count()).select_from(ClinicalDocument))).scalar_one()
        events = (
            await s.execute(select(func.count()).where(AuditEvent.action == "document.create"))
        ).scalar_one()
        msgs = (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar_one()
    return int(docs), int(events), int(msgs)


async def test_issue_stores_signs_audits_and_queues_in_one_transaction(wf: Workflow) -> None:
    patient = await wf.patient(41)
    doc_id = new_id()
    payload: dict[str, Any] = {"patient_matricule": patient.matricule, "type_display": "AT"}
    async with wf.db.transaction() as s:
        doc, msgs = await wf.documents.do_issue(
            s,
            wf.author,
            _certificate(wf, patient.id, patient.matricule, doc_id),
            wf.outbox,
            [("cns", payload), ("dsp", payload)],
        )
    assert doc.id == doc_id and doc.status == "final"
    assert [m.idempotency_key for m in msgs] == [f"cns-{doc_id}", f"dsp-{doc_id}"]
    async with wf.db.session() as s:
        assert (await verify_document(s, doc_id)).ok
        stored = await s.get(ClinicalDocument, doc_id)
        assert stored is not None
        assert (stored.content, stored.signature, stored.sha256, stored.version) == (
            doc.content,
            doc.signature,
            doc.sha256,
            1,
        )
        assert stored.set_id == doc.set_id and stored.finalised_at == doc.finalised_at
        rows = (
            (
                await s.execute(
                    select(OutboxMessage)
                    .where(OutboxMessage.document_id == doc_id)
                    .order_by(OutboxMessage.target)
                )
            )
            .scalars()
            .all()
        )
        assert [(m.target, m.status, m.idempotency_key, m.attempts) for m in rows] == [
            ("cns", "pending", f"cns-{doc_id}", 0),
            ("dsp", "pending", f"dsp-{doc_id}", 0),
        ]
        assert json.loads(rows[0].payload) == payload
        assert rows[0].next_attempt_at == msgs[0].next_attempt_at
        assert rows[0].author_account_id == wf.author_id
        event = (
            await s.execute(select(AuditEvent).where(AuditEvent.resource == f"document/{doc_id}"))
        ).scalar_one()
        assert (event.actor, event.action, event.patient_id, event.position) == (
            wf.author.id,
            "document.create",
            patient.id,
            None,  # unsealed until the sealer links it
        )
        assert event.details == '{"status":"final","type":"DT-20002","version":1}'
    # the sealer links the row into the chain, which verifies
    result = await verify_chain(wf.db)
    assert result.ok and result.unsealed == 0 and result.checked >= 1


async def test_a_failing_message_leaves_neither_document_nor_audit_event(wf: Workflow) -> None:
    patient = await wf.patient(42)
    doc_id = new_id()
    async with wf.db.transaction() as s:  # the key the issue will need is already taken
        await wf.outbox.enqueue(s, "cns", {}, f"cns-{doc_id}", kind="withdrawal")
    before = await _counts(wf)
    with pytest.raises(IntegrityError):
        async with wf.db.transaction() as s:
            await wf.documents.do_issue(
                s,
                wf.author,
                _certificate(wf, patient.id, patient.matricule, doc_id),
                wf.outbox,
                [("cns", {"patient_matricule": patient.matricule})],
            )
    assert await _counts(wf) == before
    async with wf.db.session() as s:
        assert await s.get(ClinicalDocument, doc_id) is None


async def test_issue_checks_its_input_before_writing(wf: Workflow) -> None:
    patient = await wf.patient(43)
    before = await _counts(wf)
    new = _certificate(wf, patient.id, patient.matricule, new_id())
    cases: list[tuple[list[tuple[str, dict[str, Any]]], str]] = [
        ([], "targets"),
        ([("fax", {})], "target"),
    ]
    for deliveries, field in cases:
        with pytest.raises(ValidationError) as err:
            async with wf.db.transaction() as s:
                await wf.documents.do_issue(s, wf.author, new, wf.outbox, deliveries)
        assert field in err.value.fields
    assert await _counts(wf) == before
