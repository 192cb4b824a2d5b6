"""Entered in error: what is queued, cancelled or refused per receiver, in the status's transaction
(``workflow.withdrawal``). The delivery of withdrawals to the simulators is in
test_withdrawal_delivery.py."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from konsil.audit.models import AuditEvent
from konsil.audit.service import SYSTEM
from konsil.auth.service import Principal
from konsil.config import WorkflowConfig
from konsil.errors import Conflict
from konsil.identity.models import Account, Patient
from tests.workflow.helpers import Workflow, stored_documents
from tests.workflow.test_replacements import certificate
from workflow.connectors import build_transports
from workflow.documents import DocumentStore
from workflow.models import ClinicalDocument, OutboxMessage
from workflow.outbox import DeliveryWorker
from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings
from workflow.views import DocumentViews, Filters
from workflow.withdrawal import SETTLE_SECONDS

ServerFactory = Callable[..., Awaitable[TestServer]]


def store(wf: Workflow) -> DocumentStore:
    return DocumentStore(wf.clock, wf.audit, wf.keys, wf.outbox)


async def settle(
    wf: Workflow,
    message_id: str,
    status: str,
    reference: str | None = None,
    *,
    attempts: int = 1,
) -> None:
    """What the worker would have recorded (the delivery itself is tested elsewhere)."""
    async with wf.db.transaction() as s:
        m = await s.get(OutboxMessage, message_id)
        assert m is not None
        m.status, m.remote_reference, m.attempts = status, reference, attempts
        if status == "in_flight":
            m.lease_until = wf.clock.now() + timedelta(seconds=60)
            m.claimed_by = "w1"


async def mark(wf: Workflow, document_id: str) -> ClinicalDocument:
    async with wf.db.transaction() as s:
        return await store(wf).do_mark_entered_in_error(s, wf.author, document_id)


async def messages(wf: Workflow, patient: Patient) -> list[OutboxMessage]:
    async with wf.db.session() as s:
        rows = await s.execute(
            select(OutboxMessage)
            .join(ClinicalDocument, ClinicalDocument.id == OutboxMessage.document_id)
            .where(ClinicalDocument.patient_id == patient.id)
            .order_by(OutboxMessage.created_at, OutboxMessage.target)
        )
        return list(rows.scalars())


async def issue_both(wf: Workflow, patient: Patient) -> tuple[str, dict[str, str]]:
    """A certificate queued for CNS and DSP, as the issuers do: (document id, target → msg id)."""
    doc, cns = await wf.issue_certificate(patient, target="cns")
    async with wf.db.transaction() as s:
        dsp = await wf.outbox.enqueue(
            s,
            "dsp",
            {"patient_matricule": patient.matricule},
            f"dsp-{doc.id}",
            document_id=doc.id,
            author_account_id=wf.author_id,
        )
    return doc.id, {"cns": cns.id, "dsp": dsp.id}


async def test_delivered_document_gets_one_withdrawal_per_receiver(wf: Workflow) -> None:
    patient = await wf.patient(11)
    doc_id, sent = await issue_both(wf, patient)
    await settle(wf, sent["cns"], "delivered", "CNS-CIT-00000007")
    await settle(wf, sent["dsp"], "delivered", "2.25.1")
    marked = await mark(wf, doc_id)
    assert marked.status == "entered-in-error"

    withdrawals = {m.target: m for m in await messages(wf, patient) if m.kind == "withdrawal"}
    assert set(withdrawals) == {"cns", "dsp"}
    cns = withdrawals["cns"]
    assert cns.idempotency_key == f"cns-withdraw-{doc_id}"
    assert (cns.document_id, cns.author_account_id, cns.status) == (
        doc_id,
        wf.author_id,
        "pending",
    )
    assert json.loads(cns.payload) == {
        "patient_matricule": patient.matricule,
        "withdraws": {"document_id": doc_id, "reference": "CNS-CIT-00000007"},
        "entered_in_error_id": doc_id,
        "if_held": False,
        "reason": "entered-in-error",
    }
    assert cns.next_attempt_at == wf.clock.now()  # due at once
    async with wf.db.session() as s:
        [event] = (
            await s.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "document.entered-in-error",
                    AuditEvent.resource == f"document/{doc_id}",
                )
            )
        ).scalars()
    assert json.loads(event.details or "{}") == {"withdrawn_at": "cns,dsp", "cancelled_for": ""}

    # entered in error is final: no second withdrawal, no operator re-send of the document
    with pytest.raises(Conflict):
        await mark(wf, doc_id)


async def test_never_sent_document_is_cancelled_and_nothing_goes_out(
    wf: Workflow, aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    patient = await wf.patient(12)
    doc_id, _sent = await issue_both(wf, patient)
    await mark(wf, doc_id)
    msgs = await messages(wf, patient)
    assert [(m.target, m.kind, m.status) for m in msgs] == [
        ("cns", "document", "cancelled"),
        ("dsp", "document", "cancelled"),
    ]
    assert "entered in error" in (msgs[0].last_error or "")
    # a worker with both receivers configured finds nothing to send; they receive nothing
    cns_sim = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    dsp_sim = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    config = WorkflowConfig(
        cns_url=str(cns_sim.make_url(cns.PATH)), dsp_url=str(dsp_sim.make_url(dsp.ITI41_PATH))
    )
    async with aiohttp.ClientSession() as http:
        worker = DeliveryWorker(wf.db, wf.clock, build_transports(config, http), worker_id="w-test")
        assert await worker.run_once() == 0
    assert stored_documents(tmp_path / "cns") == stored_documents(tmp_path / "dsp") == []


async def test_unknown_outcome_is_cancelled_and_followed_by_a_tolerant_withdrawal(
    wf: Workflow,
) -> None:
    """A lost answer (pending for a retry) or a delivery in flight may have reached the
    receiver: the document is never sent again, and a withdrawal follows once it can have
    arrived, taking "unknown document" for "nothing to withdraw"."""
    patient = await wf.patient(13)
    doc_id, sent = await issue_both(wf, patient)
    await settle(wf, sent["cns"], "pending", attempts=1)  # e.g. 503 after storing
    await settle(wf, sent["dsp"], "in_flight")
    now = wf.clock.now()
    await mark(wf, doc_id)
    msgs = await messages(wf, patient)
    docs = {m.target: m for m in msgs if m.kind == "document"}
    withdrawals = {m.target: m for m in msgs if m.kind == "withdrawal"}
    assert {t: m.status for t, m in docs.items()} == {"cns": "cancelled", "dsp": "cancelled"}
    assert docs["dsp"].claimed_by is None  # the worker's answer will not update the row
    for target, m in withdrawals.items():
        payload = json.loads(m.payload)
        assert payload["if_held"] is True and payload["withdraws"]["reference"] is None, target
    settle_after = timedelta(seconds=SETTLE_SECONDS)
    assert withdrawals["cns"].next_attempt_at == now + settle_after
    assert withdrawals["dsp"].next_attempt_at == now + timedelta(seconds=60) + settle_after


async def test_receiver_holding_an_earlier_version_gets_that_one_withdrawn(
    wf: Workflow,
) -> None:
    patient = await wf.patient(14)
    v1, msg = await wf.issue_certificate(patient, target="cns")
    await settle(wf, msg.id, "delivered", "CNS-CIT-00000001")
    async with wf.db.transaction() as s:
        v2 = await store(wf).do_replace(s, wf.author, v1.id, certificate(wf, patient))
    [m2] = [m for m in await messages(wf, patient) if m.document_id == v2.id]
    await settle(wf, m2.id, "rejected")  # the CNS refused v2: it still pays on v1
    await mark(wf, v2.id)
    [w] = [m for m in await messages(wf, patient) if m.kind == "withdrawal"]
    assert (w.target, w.document_id, w.idempotency_key) == ("cns", v1.id, f"cns-withdraw-{v1.id}")
    assert json.loads(w.payload)["withdraws"] == {
        "document_id": v1.id,
        "reference": "CNS-CIT-00000001",
    }
    # the author sees it on the version they marked (and on the one withdrawn)
    views = DocumentViews(wf.db, wf.audit)
    async with wf.db.session() as s:
        account = await s.get(Account, wf.author_id)
        assert account is not None
        principal = Principal.of(account)
    rows = {d.id: d for d in (await views.authored(wf.author, principal, Filters())).rows}
    assert [(x.label, x.status) for x in rows[v2.id].deliveries] == [
        ("CNS", "rejected"),
        ("CNS withdrawal", "pending"),
    ]
    assert ("CNS withdrawal", "pending") in [(x.label, x.status) for x in rows[v1.id].deliveries]


async def test_uncertain_replacement_over_a_held_version_waits(wf: Workflow) -> None:
    """Whether the receiver shows v1 or v2 depends on an answer not yet known: as for
    corrections, the author marks it once the receiver answered."""
    patient = await wf.patient(15)
    v1, msg = await wf.issue_certificate(patient, target="cns")
    await settle(wf, msg.id, "delivered", "CNS-CIT-00000001")
    async with wf.db.transaction() as s:
        v2 = await store(wf).do_replace(s, wf.author, v1.id, certificate(wf, patient))
    [m2] = [m for m in await messages(wf, patient) if m.document_id == v2.id]
    await settle(wf, m2.id, "pending", attempts=2)
    with pytest.raises(Conflict, match="CNS acknowledged"):
        await mark(wf, v2.id)
    async with wf.db.session() as s:
        doc = await s.get(ClinicalDocument, v2.id)
        still = await s.get(OutboxMessage, m2.id)
    assert doc is not None and doc.status == "final"  # nothing changed
    assert still is not None and still.status == "pending"


async def test_rejected_document_needs_no_withdrawal_and_cannot_be_resent(wf: Workflow) -> None:
    patient = await wf.patient(16)
    doc, msg = await wf.issue_certificate(patient, target="cns")
    await settle(wf, msg.id, "rejected")
    await mark(wf, doc.id)
    assert [m.kind for m in await messages(wf, patient)] == ["document"]
    with pytest.raises(Conflict, match="entered in error"):
        await wf.outbox.do_retry(SYSTEM, msg.id)
