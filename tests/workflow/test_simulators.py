from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from konsil.identity.matricule import make_matricule
from tests.workflow.helpers import (
    certificate_cda,
    minimal_cda,
    stored_documents,
    teleconsultation_cda,
)
from workflow.cda.xsd import schema_available
from workflow.connectors import xds
from workflow.connectors.cns import CnsConnector, envelope
from workflow.connectors.mhd import MhdConnector, provide_bundle
from workflow.connectors.xds import XdsConnector
from workflow.models import new_id
from workflow.outbox import Delivery, DocumentPayload
from workflow.simulators import cns, dsp
from workflow.simulators.common import (
    JOURNAL,
    SimulatorSettings,
    SubmissionStore,
    journal_submissions,
)

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]
MATRICULE = make_matricule("19650312", 1)
OTHER = make_matricule("19781124", 2)


def delivery(
    content: bytes | None = None, matricule: str = MATRICULE, key: str | None = None
) -> Delivery:
    doc_id = new_id()
    content = content or certificate_cda(MATRICULE, doc_id)
    return Delivery(
        message_id=new_id(),
        target="dsp",
        kind="document",
        idempotency_key=key or f"k-{doc_id}",
        attempt=1,
        max_attempts=3,
        payload={"patient_matricule": matricule},
        document=DocumentPayload(
            id=doc_id,
            patient_id="p",
            set_id=doc_id,
            version=1,
            replaces_id=None,
            type_code="DT-20002",
            confidentiality="N",
            mime_type="text/xml",
            created_at=datetime(2026, 11, 27, 9, tzinfo=UTC),
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
            signature=b"s" * 64,
            signing_key_id="key",
        ),
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def dsp_url(aiohttp_server: ServerFactory, tmp_path: Path) -> str:
    server = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    return str(server.make_url("/"))


async def test_xds_submission_is_validated_stored_and_deduplicated(
    dsp_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    conn = XdsConnector(http, dsp_url + "xds/iti41")
    d = delivery()
    first = await conn.deliver(d)
    assert first.outcome == "delivered", first.error
    again = await conn.deliver(d)  # the same uniqueId and hash: the original answer, no new copy
    assert again.outcome == "delivered"
    stored = stored_documents(tmp_path / "dsp")
    assert len(stored) == 1
    assert stored[0]["unique_id"] == xds.oid_of(d.document.id)  # type: ignore[union-attr]
    assert stored[0]["patient_id"] == f"{MATRICULE}^^^&1.3.182.4.4&ISO"
    folder = tmp_path / "dsp" / str(stored[0]["unique_id"])
    assert (folder / "document.xml").read_bytes() == d.document.content  # type: ignore[union-attr]


async def test_xds_rejections_carry_registry_error_codes(
    dsp_url: str, http: aiohttp.ClientSession
) -> None:
    conn = XdsConnector(http, dsp_url + "xds/iti41")
    wrong_patient = await conn.deliver(delivery(matricule=OTHER))
    assert wrong_patient.outcome == "rejected"
    assert "XDSPatientIdDoesNotMatch" in (wrong_patient.error or "")
    bad_cda = await conn.deliver(delivery(content=b"<ClinicalDocument xmlns='urn:hl7-org:v3'/>"))
    assert bad_cda.outcome == "rejected" and "XDSRepositoryError" in (bad_cda.error or "")
    unknown = await conn.deliver(delivery(matricule="1965031200100"))
    assert "XDSUnknownPatientId" in (unknown.error or "")


async def test_xds_metadata_problems(dsp_url: str, http: aiohttp.ClientSession) -> None:
    d = delivery()
    pkg = xds.build_request(d, dsp_url, datetime.now(UTC))

    async def post(body: bytes, ctype: str = pkg.content_type) -> xds.RegistryResponse:
        async with http.post(
            dsp_url + "xds/iti41", data=body, headers={"Content-Type": ctype}
        ) as r:
            assert r.status == 200
            return xds.parse_registry_response(await r.read())

    doc = d.document
    assert doc is not None
    sha1 = hashlib.sha1(doc.content).hexdigest()  # noqa: S324
    wrong_hash = await post(pkg.body.replace(sha1.encode(), b"0" * 40))
    assert not wrong_hash.success
    assert wrong_hash.errors[0].code == "XDSRepositoryMetadataError"
    no_class = await post(pkg.body.replace(xds.DE_CLASS_CODE.encode(), b"urn:uuid:nothing"))
    assert [e.context for e in no_class.errors] == ["classCode missing"]
    ok = await post(pkg.body)
    assert ok.success
    # the same uniqueId again with other bytes
    other = dataclasses.replace(doc, content=doc.content.replace(b"27/11", b"28/11"))
    twin = dataclasses.replace(d, document=other)
    clash = xds.build_request(twin, dsp_url, datetime.now(UTC))
    res = await post(clash.body, clash.content_type)
    assert [e.code for e in res.errors] == ["XDSNonIdenticalHash"]
    async with http.post(
        dsp_url + "xds/iti41",
        data=pkg.body.replace(xds.ACTION.encode(), b"urn:wrong", 1),
        headers={"Content-Type": pkg.content_type.replace(xds.ACTION, "urn:wrong")},
    ) as r:
        assert r.status == 400 and b"ActionNotSupported" in await r.read()
    async with http.post(
        dsp_url + "xds/iti41", data=b"<x/>", headers={"Content-Type": "text/xml"}
    ) as r:
        assert r.status == 400 and b"Fault" in await r.read()


async def test_mhd_bundle_is_validated_and_stored(
    dsp_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    conn = MhdConnector(http, dsp_url + "fhir")
    d = delivery()
    ok = await conn.deliver(d)
    assert ok.outcome == "delivered" and (ok.reference or "").startswith("DocumentReference/")
    assert (await conn.deliver(d)).outcome == "delivered"
    assert len(stored_documents(tmp_path / "dsp")) == 1
    mismatch = await conn.deliver(delivery(matricule=OTHER))
    assert mismatch.outcome == "rejected" and "XDSPatientIdDoesNotMatch" in (mismatch.error or "")
    bundle: dict[str, Any] = provide_bundle(delivery(), datetime.now(UTC))
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["size"] = 1
    async with http.post(dsp_url + "fhir", json=bundle) as r:
        body = await r.json()
        assert r.status == 422 and "size" in body["issue"][0]["diagnostics"]


async def test_cns_validates_and_rejects_with_reasons(
    aiohttp_server: ServerFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    url = str(server.make_url(cns.PATH))
    conn = CnsConnector(http, url)
    d = delivery()
    ok = await conn.deliver(d)
    assert ok.outcome == "delivered" and (ok.reference or "").startswith("CNS-CIT-")
    assert (await conn.deliver(d)).reference == ok.reference
    body = envelope(d)
    body["sha256"] = "0" * 64
    async with http.post(url, json=body) as r:  # same key, other content
        assert r.status == 409
    body = envelope(delivery())
    body["document"] = base64.b64encode(b"<ClinicalDocument/>").decode()
    body["sha256"] = hashlib.sha256(b"<ClinicalDocument/>").hexdigest()
    async with http.post(url, json=body) as r:
        reasons = {x["code"] for x in (await r.json())["reasons"]}
        assert r.status == 422 and {"SIZE_MISMATCH", "CDA_INVALID"} <= reasons
    other_type = delivery(content=teleconsultation_cda(MATRICULE, new_id()))
    res = await conn.deliver(other_type)
    assert res.outcome == "rejected" and "UNSUPPORTED_DOCUMENT_TYPE" in (res.error or "")
    # schema-valid but not the LU profile: refused by the same validator the builders use
    lu = await conn.deliver(delivery(content=minimal_cda(MATRICULE, new_id())))
    assert lu.outcome == "rejected" and "CDA_INVALID" in (lu.error or "")
    async with http.post(url, data=b"not json") as r:
        assert r.status == 400
    assert len(stored_documents(tmp_path / "cns")) == 1
    meta = json.loads(next((tmp_path / "cns").glob("*/metadata.json")).read_text())
    assert meta["acknowledgement"]["cns_reference"] == ok.reference
    # a restarted simulator still knows the key
    again = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    res = await CnsConnector(http, str(again.make_url(cns.PATH))).deliver(d)
    assert res.reference == ok.reference


async def test_cns_journal_store_dedupes_and_survives_a_restart(
    aiohttp_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = SimulatorSettings(tmp_path / "cns", journal=True)
    server = await aiohttp_server(cns.create_app(settings))
    conn = CnsConnector(http, str(server.make_url(cns.PATH)))
    d, other = delivery(), delivery()
    first = await conn.deliver(d)
    assert first.outcome == "delivered", first.error
    assert (await conn.deliver(d)).reference == first.reference  # the first answer again
    assert (await conn.deliver(other)).outcome == "delivered"
    assert not list((tmp_path / "cns").glob("*/metadata.json"))  # no folder per submission
    stored = journal_submissions(tmp_path / "cns")
    assert d.document is not None and other.document is not None
    assert [m["document_id"] for m, _ in stored] == [d.document.id, other.document.id]
    assert stored[0][1] == d.document.content  # the exact bytes
    assert stored[0][0]["acknowledgement"]["cns_reference"] == first.reference
    await server.close()
    # a crash in mid-append leaves a torn last line: never acknowledged, cut off on restart
    with (tmp_path / "cns" / JOURNAL).open("ab") as f:
        f.write(b'{"key":"torn","metad')
    again = await aiohttp_server(cns.create_app(settings))
    res = await CnsConnector(http, str(again.make_url(cns.PATH))).deliver(d)
    assert res.reference == first.reference
    assert len(journal_submissions(tmp_path / "cns")) == 2
    assert (tmp_path / "cns" / JOURNAL).read_bytes().endswith(b"\n")


def test_journal_replays_annotations(tmp_path: Path) -> None:
    store = SubmissionStore(tmp_path, journal=True)
    store.put("a", b"<doc/>", "document.xml", {"document_id": "d1"})
    store.annotate("a", {"status": "replaced", "replaced_by": "d2"})
    store.close()
    reopened = SubmissionStore(tmp_path, journal=True)
    assert reopened.count == 1
    assert reopened.get("a") == {
        "document_id": "d1",
        "dedupe_key": "a",
        "file": "document.xml",
        "status": "replaced",
        "replaced_by": "d2",
    }
    assert reopened.find("replaced_by", "d2") is not None
    reopened.close()
