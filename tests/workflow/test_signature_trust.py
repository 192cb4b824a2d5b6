"""The CNS simulator verifies detached signatures with the keys ``documents export-keys`` wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import update

from konsil.cli import main
from tests.workflow.helpers import Workflow
from workflow.cda.xsd import schema_available
from workflow.connectors.cns import CnsConnector
from workflow.documents import sha256_hex
from workflow.models import ClinicalDocument
from workflow.outbox import DeliveryWorker
from workflow.signing import public_key_from_pem, public_key_pem
from workflow.simulators import cns
from workflow.simulators.common import SimulatorSettings, load_trust

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]


def test_pem_round_trip() -> None:
    raw = bytes(range(32))
    pem = public_key_pem(raw)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")  # Ed25519 SPKI
    assert public_key_from_pem(pem) == raw
    with pytest.raises(ValueError, match="Ed25519"):
        public_key_from_pem(pem.replace("MCowBQYDK2VwAyEA", "MCowBQYDK2VuAyEA"))  # X25519


async def test_cns_rejects_a_changed_byte_and_unknown_keys(
    wf: Workflow, db_url: str, aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    good, _ = await wf.issue_certificate(await wf.patient(1))
    forged, forged_msg = await wf.issue_certificate(await wf.patient(2))
    # one changed byte in the narrative, the recorded hash fixed to match: the CDA stays valid,
    # only the signature can tell
    tampered = forged.content.replace(b"Grippe avec", b"Grippe aveC", 1)
    assert tampered != forged.content
    async with wf.db.transaction() as s:
        await s.execute(
            update(ClinicalDocument)
            .where(ClinicalDocument.id == forged.id)
            .values(content=tampered, sha256=sha256_hex(tampered), size=len(tampered))
        )

    keys = tmp_path / "trust"
    args = ["documents", "export-keys", "--database-url", db_url, "--out", str(keys)]
    assert await asyncio.to_thread(main, args) == 0
    assert [p.name for p in keys.glob("*.pem")] == [f"{good.signing_key_id}.pem"]

    server = await aiohttp_server(
        cns.create_app(SimulatorSettings(tmp_path / "cns", trusted_keys=load_trust(keys)))
    )
    async with aiohttp.ClientSession() as http:
        worker = DeliveryWorker(
            wf.db,
            wf.clock,
            {"cns": CnsConnector(http, str(server.make_url(cns.PATH)))},
            worker_id="trust",
        )
        assert await worker.run_once() == 2
    good_msg = (await wf.outbox.messages(status="delivered"))[0].message
    assert good_msg.document_id == good.id
    refused = (await wf.outbox.message(forged_msg.id)).message
    assert refused.status == "rejected"
    assert refused.last_error == (
        "SIGNATURE_INVALID: the detached signature does not match the document"
    )

    # a receiver that does not know the organisation's key refuses too
    stranger = await aiohttp_server(
        cns.create_app(SimulatorSettings(tmp_path / "cns2", trusted_keys={}))
    )
    v3, msg3 = await wf.issue_certificate(await wf.patient(3))
    async with aiohttp.ClientSession() as http:
        worker = DeliveryWorker(
            wf.db,
            wf.clock,
            {"cns": CnsConnector(http, str(stranger.make_url(cns.PATH)))},
            worker_id="trust",
        )
        await worker.run_once()
    assert "SIGNATURE_KEY_UNKNOWN" in ((await wf.outbox.message(msg3.id)).message.last_error or "")
    assert v3.signing_key_id == good.signing_key_id


def test_simulate_refuses_a_bad_trust_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "k.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    args = ["simulate", "cns", "--port", "1", "--store", str(tmp_path / "s")]
    assert main([*args, "--trust", str(tmp_path)]) == 2
    assert "k.pem: not an Ed25519 public key" in capsys.readouterr().err
