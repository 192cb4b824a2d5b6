from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import update

from konsil.audit.service import SYSTEM
from konsil.cli import main
from konsil.errors import ConfigError, Conflict, ValidationError
from tests.workflow.helpers import SECRET, Workflow, minimal_cda
from workflow.documents import NewDocument, verify_document
from workflow.models import ClinicalDocument, SigningKey
from workflow.signing import KeyRing


async def test_final_document_is_signed_and_verifies(wf: Workflow) -> None:
    patient = await wf.patient(1)
    doc, _ = await wf.issue_certificate(patient)
    assert doc.status == "final" and doc.signature and len(doc.signature) == 64
    async with wf.db.session() as s:
        assert (await verify_document(s, doc.id)).ok
        key = await s.get(SigningKey, doc.signing_key_id)
        assert key is not None
        # the private key is stored sealed, never in clear
        assert len(key.sealed_private_key) == 32 + 40


async def test_one_changed_byte_breaks_the_signature(wf: Workflow, db_url: str) -> None:
    patient = await wf.patient(2)
    doc, _ = await wf.issue_certificate(patient)
    args = ["documents", "verify", doc.id, "--database-url", db_url]
    assert await asyncio.to_thread(main, args) == 0
    tampered = bytearray(doc.content)
    tampered[-30] ^= 0x01
    async with wf.db.transaction() as s:
        # a forger who also fixes the recorded hash: only the signature can tell
        from workflow.documents import sha256_hex

        await s.execute(
            update(ClinicalDocument)
            .where(ClinicalDocument.id == doc.id)
            .values(content=bytes(tampered), sha256=sha256_hex(bytes(tampered)))
        )
    async with wf.db.session() as s:
        outcome = await verify_document(s, doc.id)
    assert not outcome.ok and "signature" in outcome.reason
    assert await asyncio.to_thread(main, args) == 1
    assert await asyncio.to_thread(main, [*args[:2], "nope", *args[3:]]) == 1


async def test_final_is_immutable_and_corrections_are_new_versions(wf: Workflow) -> None:
    patient = await wf.patient(3)
    doc, _ = await wf.issue_certificate(patient)
    async with wf.db.transaction() as s:
        with pytest.raises(Conflict):
            await wf.documents.do_update_draft(s, wf.author, doc.id, b"<x/>")
    new = NewDocument(
        kind="sick-leave",
        type_code="DT-20002",
        patient_id=patient.id,
        organisation_id=wf.org.id,
        content=minimal_cda(patient.matricule, "v2"),
    )
    async with wf.db.transaction() as s:
        v2 = await wf.documents.do_replace(s, wf.author, doc.id, new)
    assert (v2.set_id, v2.version, v2.replaces_id, v2.status) == (doc.set_id, 2, doc.id, "final")
    async with wf.db.session() as s:
        old = await s.get(ClinicalDocument, doc.id)
        assert old is not None and old.status == "amended"
        assert old.content == doc.content  # the old version's bytes are kept as they were
        assert (await verify_document(s, v2.id)).ok
    async with wf.db.transaction() as s:
        with pytest.raises(Conflict):  # an amended version cannot be replaced again
            await wf.documents.do_replace(s, wf.author, doc.id, new)
        await wf.documents.do_mark_entered_in_error(s, wf.author, v2.id)


async def test_drafts_change_until_finalised(wf: Workflow) -> None:
    patient = await wf.patient(4)
    new = NewDocument(
        kind="sick-leave",
        type_code="DT-20002",
        patient_id=patient.id,
        organisation_id=wf.org.id,
        content=minimal_cda(patient.matricule, "d1"),
    )
    async with wf.db.transaction() as s:
        draft = await wf.documents.do_create(s, wf.author, new, status="draft")
        assert draft.signature is None
        await wf.documents.do_update_draft(
            s, wf.author, draft.id, minimal_cda(patient.matricule, "d2")
        )
        final = await wf.documents.do_finalise(s, wf.author, draft.id)
    async with wf.db.session() as s:
        assert (await verify_document(s, final.id)).ok
    with pytest.raises(ValidationError):
        async with wf.db.transaction() as s:
            await wf.documents.do_create(
                s, wf.author, dataclasses.replace(new, type_code="X", confidentiality="Z")
            )


async def test_signing_key_needs_the_right_secret(wf: Workflow) -> None:
    patient = await wf.patient(5)
    await wf.issue_certificate(patient)
    other = KeyRing("another-secret-0123456789abcdef", wf.clock)
    async with wf.db.session() as s:
        with pytest.raises(ConfigError, match="signing_key_secret"):
            await other.signer_for(s, wf.org.id)
    with pytest.raises(ConfigError):
        KeyRing("short", wf.clock)


async def test_a_signing_key_from_a_rolled_back_transaction_is_not_reused(wf: Workflow) -> None:
    """The ring remembers an organisation's key only once it is known to be committed."""
    org = await wf.identity.do_create_organisation(SYSTEM, "Cabinet rollback", "practice")
    ring = KeyRing(SECRET, wf.clock)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        async with wf.db.transaction() as s:
            first = await ring.signer_for(s, org.id)
            raise Rollback
    async with wf.db.transaction() as s:
        second = await ring.signer_for(s, org.id)
    assert second.key_id != first.key_id
    async with wf.db.session() as s:
        assert (await s.get(SigningKey, second.key_id)) is not None
        assert (await s.get(SigningKey, first.key_id)) is None
    # A ring that finds the committed key uses it.
    fresh = KeyRing(SECRET, wf.clock)
    async with wf.db.session() as s:
        found = await fresh.signer_for(s, org.id)
    async with wf.db.session() as s:
        again = await fresh.signer_for(s, org.id)
    assert found.key_id == again.key_id == second.key_id
