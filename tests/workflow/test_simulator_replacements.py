"""What the receivers say about replacements: RPLC/relatesTo/replaces of what they hold only."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.workflow.helpers import certificate_cda, stored_documents
from tests.workflow.test_simulators import MATRICULE, OTHER, delivery, http  # noqa: F401
from workflow.cda.xsd import schema_available
from workflow.connectors.cns import CnsConnector
from workflow.connectors.mhd import MhdConnector
from workflow.connectors.xds import XdsConnector
from workflow.models import new_id
from workflow.outbox import Delivery, DeliveryResult, Transport
from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]


def replacement(
    of: Delivery, *, matricule: str = MATRICULE, send_relation: bool = True
) -> Delivery:
    """Version 2 of ``of``'s document (another patient's CDA when ``matricule`` differs)."""
    assert of.document is not None
    doc_id = new_id()
    content = certificate_cda(matricule, doc_id)
    payload: dict[str, object] = {"patient_matricule": matricule}
    payload["replaces"] = (
        {"document_id": of.document.id, "reference": "R"} if send_relation else None
    )
    return dataclasses.replace(
        of,
        idempotency_key=f"k-{doc_id}",
        payload=payload,
        document=dataclasses.replace(
            of.document,
            id=doc_id,
            version=2,
            replaces_id=of.document.id,
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
        ),
    )


async def check_replacements(
    conn: Transport, unresolved: str, other_patient: str, twice: str
) -> None:
    v1 = delivery()
    orphan = replacement(delivery())  # replaces a document the receiver never got
    res = await conn.deliver(orphan)
    assert res.outcome == "rejected" and unresolved in (res.error or ""), res.error
    assert (await conn.deliver(v1)).outcome == "delivered"
    foreign = replacement(v1, matricule=OTHER)
    res = await conn.deliver(foreign)
    assert res.outcome == "rejected" and other_patient in (res.error or ""), res.error
    v2 = replacement(v1)
    ok: DeliveryResult = await conn.deliver(v2)
    assert ok.outcome == "delivered", ok.error
    assert (await conn.deliver(v2)).outcome == "delivered"  # a repeat: the first answer
    res = await conn.deliver(replacement(v1))
    assert res.outcome == "rejected" and twice in (res.error or ""), res.error
    # without the relation (the receiver never had v1) it is an original
    assert (await conn.deliver(replacement(delivery(), send_relation=False))).outcome == "delivered"


async def test_xds_registry_resolves_rplc(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    conn = XdsConnector(http, str(server.make_url(dsp.ITI41_PATH)))
    await check_replacements(
        conn,
        "UnresolvedReferenceException",
        "XDSPatientIdDoesNotMatch",
        "XDSRegistryDeprecatedDocumentError",
    )
    stored = {m["unique_id"]: m for m in stored_documents(tmp_path / "dsp")}
    [new] = [m for m in stored.values() if m.get("replaces_entry_uuid")]
    old = next(m for m in stored.values() if m["entry_uuid"] == new["replaces_entry_uuid"])
    assert old["availability"] == "Deprecated" and old["replaced_by"] == new["unique_id"]


async def test_mhd_recipient_resolves_relates_to(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    conn = MhdConnector(http, str(server.make_url(dsp.MHD_PATH)))
    await check_replacements(
        conn,
        "UnresolvedReferenceException",
        "XDSPatientIdDoesNotMatch",
        "XDSRegistryDeprecatedDocumentError",
    )
    stored = {m["unique_id"]: m for m in stored_documents(tmp_path / "dsp")}
    [new] = [m for m in stored.values() if m.get("replaces_unique_id")]
    assert stored[new["replaces_unique_id"]]["availability"] == "Deprecated"


async def test_cns_resolves_replaces(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    conn = CnsConnector(http, str(server.make_url(cns.PATH)))
    await check_replacements(conn, "REPLACED_UNKNOWN", "PATIENT_MISMATCH", "ALREADY_REPLACED")
    stored = {m["document_id"]: m for m in stored_documents(tmp_path / "cns")}
    [new] = [m for m in stored.values() if m.get("replaces")]
    replaced = new["replaces"]
    assert isinstance(replaced, dict)
    old = stored[replaced["document_id"]]
    assert old["status"] == "replaced" and old["replaced_by"] == new["document_id"]
