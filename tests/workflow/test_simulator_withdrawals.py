"""Withdrawals on the wire: the connectors' messages (ITI-57, MHD entered-in-error, CNS
cancellation) against the simulators, which check them, refuse what they cannot resolve, mark the
stored document and deduplicate on the idempotency key."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.workflow.helpers import stored_documents
from tests.workflow.test_simulator_replacements import replacement
from tests.workflow.test_simulators import MATRICULE, OTHER, delivery, http  # noqa: F401
from workflow.cda.xsd import schema_available
from workflow.connectors import xds
from workflow.connectors.cns import CnsConnector
from workflow.connectors.mhd import MhdConnector
from workflow.connectors.withdrawal import (
    NOT_HELD,
    ByKind,
    CnsWithdrawal,
    MhdWithdrawal,
    XdsWithdrawal,
    update_envelope,
    update_request,
    update_unique_id,
    update_url,
)
from workflow.connectors.xds import XdsConnector
from workflow.outbox import Delivery, Transport
from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings, scripted_faults

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]


def withdrawal(
    of: Delivery,
    reference: str | None,
    *,
    matricule: str = MATRICULE,
    if_held: bool = False,
    key: str | None = None,
) -> Delivery:
    assert of.document is not None
    return dataclasses.replace(
        of,
        kind="withdrawal",
        idempotency_key=key or f"w-{of.document.id}",
        payload={
            "patient_matricule": matricule,
            "withdraws": {"document_id": of.document.id, "reference": reference},
            "entered_in_error_id": of.document.id,
            "if_held": if_held,
            "reason": "entered-in-error",
        },
    )


async def check_withdrawals(
    conn: Transport, unknown: str, other_patient: str, twice: str | None
) -> tuple[Delivery, str]:
    """The same story at every receiver; returns the withdrawn delivery and the withdrawal's
    reference."""
    never = delivery()
    res = await conn.deliver(withdrawal(never, None))
    assert res.outcome == "rejected" and unknown in (res.error or ""), res.error
    # after a delivery of unknown outcome, "unknown document" means nothing to withdraw
    res = await conn.deliver(withdrawal(never, None, if_held=True))
    assert (res.outcome, res.reference) == ("delivered", NOT_HELD), res.error

    v1 = delivery()
    sent = await conn.deliver(v1)
    assert sent.outcome == "delivered", sent.error
    res = await conn.deliver(withdrawal(v1, sent.reference, matricule=OTHER))
    assert res.outcome == "rejected" and other_patient in (res.error or ""), res.error
    ok = await conn.deliver(withdrawal(v1, sent.reference))
    assert ok.outcome == "delivered" and ok.reference, ok.error
    again = await conn.deliver(withdrawal(v1, sent.reference))  # a retry: the first answer
    assert (again.outcome, again.reference) == ("delivered", ok.reference), again.error
    other = await conn.deliver(withdrawal(v1, sent.reference, key="another-key"))
    if twice is None:  # a FHIR update is idempotent in itself
        assert other.outcome == "delivered", other.error
    else:
        assert other.outcome == "rejected" and twice in (other.error or ""), other.error
    return v1, ok.reference or ""


def by_key(root: Path) -> dict[str, dict[str, Any]]:
    return {str(m["dedupe_key"]): m for m in stored_documents(root)}


async def test_xds_registry_deprecates_on_iti57(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    conn = ByKind(
        XdsConnector(http, str(server.make_url(dsp.ITI41_PATH))),
        withdrawal=XdsWithdrawal(http, update_url(str(server.make_url(dsp.ITI41_PATH)))),
    )
    v1, ref = await check_withdrawals(
        conn, "UnresolvedReferenceException", "XDSPatientIdDoesNotMatch", "XDSMetadataUpdateError"
    )
    assert v1.document is not None
    stored = by_key(tmp_path / "dsp")
    entry = stored[xds.oid_of(v1.document.id)]
    assert entry["availability"] == "Deprecated" and entry["withdrawn_by"] == ref
    update = stored[ref]
    assert update["transport"] == "ITI-57" and update["file"] == "update.xml"
    assert update["target_entry_uuid"] == xds.uuid_urn(v1.document.id)
    assert (update["original_status"], update["new_status"]) == ("Approved", "Deprecated")
    assert ref == update_unique_id(f"w-{v1.document.id}")
    body = (tmp_path / "dsp" / ref / "update.xml").read_bytes()
    assert b"urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus" in body

    # a replaced (deprecated) entry cannot be withdrawn: the replacement is what is shown
    v2 = delivery()
    assert (await conn.deliver(v2)).outcome == "delivered"
    assert (await conn.deliver(replacement(v2))).outcome == "delivered"
    res = await conn.deliver(withdrawal(v2, None))
    assert res.outcome == "rejected" and "OriginalStatus Approved" in (res.error or "")


async def test_iti57_message_checks(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    url = str(server.make_url(dsp.ITI57_PATH))
    w = withdrawal(delivery(), None)
    now = datetime(2026, 11, 27, 10, tzinfo=UTC)
    # a Provide and Register action at the update endpoint: a SOAP fault
    wrong = update_envelope(w, url, now).replace(
        b"urn:ihe:iti:2010:UpdateDocumentSet", b"urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    )
    async with http.post(url, data=wrong, headers={"Content-Type": "application/soap+xml"}) as r:
        assert r.status == 400 and b"ActionNotSupported" in await r.read()
    # the registry's own check of the request: no association, no status change
    sor = update_request(w, now)
    rol = sor.find("rim:RegistryObjectList", xds.NS)
    assert rol is not None
    assoc = rol.find("rim:Association", xds.NS)
    assert assoc is not None
    rol.remove(assoc)
    errors, _ = dsp.check_update(sor)
    assert [e.code for e in errors] == ["XDSMetadataUpdateOperationError"]
    errors, update = dsp.check_update(update_request(w, now))
    assert w.document is not None
    assert errors == [] and update["target_entry_uuid"] == xds.uuid_urn(w.document.id)
    assert update_url("https://dsp.example/xds/iti41") == "https://dsp.example/xds/iti57"
    assert update_url("https://dsp.example/registry") == "https://dsp.example/registry"


async def test_mhd_recipient_marks_entered_in_error(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    url = str(server.make_url(dsp.MHD_PATH))
    conn = ByKind(MhdConnector(http, url), withdrawal=MhdWithdrawal(http, url))
    v1, ref = await check_withdrawals(
        conn, "UnresolvedReferenceException", "XDSPatientIdDoesNotMatch", None
    )
    assert v1.document is not None and ref.startswith("DocumentReference/")
    stored = by_key(tmp_path / "dsp")
    entry = stored[xds.oid_of(v1.document.id)]
    assert (entry["status"], entry["availability"]) == ("entered-in-error", "Deprecated")
    update = stored[entry["withdrawn_by"]]
    assert update["transport"] == "ITI-65 update" and update["file"] == "update.json"
    sent = json.loads((tmp_path / "dsp" / entry["withdrawn_by"] / "update.json").read_text())
    [docref] = [e for e in sent["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    assert docref["request"]["method"] == "PUT"
    assert docref["resource"]["status"] == "entered-in-error"


async def test_cns_cancels_the_certificate(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    server = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    url = str(server.make_url(cns.PATH))
    conn = ByKind(CnsConnector(http, url), withdrawal=CnsWithdrawal(http, url))
    v1, ref = await check_withdrawals(
        conn, "UNKNOWN_CERTIFICATE", "PATIENT_MISMATCH", "ALREADY_CANCELLED"
    )
    assert v1.document is not None and ref.startswith("CNS-ANN-")
    stored = by_key(tmp_path / "cns")
    cert = stored[v1.idempotency_key]
    assert (cert["status"], cert["cancelled_by"]) == ("cancelled", ref)
    cancellation = stored[f"w-{v1.document.id}"]
    assert cancellation["cancels_document_id"] == v1.document.id
    assert (
        cancellation["acknowledgement"]["cns_reference"] == cert["acknowledgement"]["cns_reference"]
    )
    # a wrong CNS reference is refused
    v2 = delivery()
    assert (await conn.deliver(v2)).outcome == "delivered"
    res = await conn.deliver(withdrawal(v2, "CNS-CIT-99999999"))
    assert res.outcome == "rejected" and "REFERENCE_MISMATCH" in (res.error or "")


async def test_receivers_down_mean_retry(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,  # noqa: F811
) -> None:
    settings = SimulatorSettings(tmp_path / "cns", faults=scripted_faults([None, "503", "lost"]))
    server = await aiohttp_server(cns.create_app(settings))
    url = str(server.make_url(cns.PATH))
    conn = ByKind(CnsConnector(http, url), withdrawal=CnsWithdrawal(http, url))
    v1 = delivery()
    sent = await conn.deliver(v1)
    w = withdrawal(v1, sent.reference)
    assert (await conn.deliver(w)).outcome == "retry"  # 503 before anything happened
    assert (await conn.deliver(w)).outcome == "retry"  # stored, then the answer was lost
    ok = await conn.deliver(w)  # the retry gets the first acknowledgement
    assert ok.outcome == "delivered" and (ok.reference or "").startswith("CNS-ANN-")
    assert len([m for m in stored_documents(tmp_path / "cns") if m.get("kind")]) == 1
