"""Withdrawal messages (outbox kind ``withdrawal``, see ``workflow.withdrawal``) per receiver.

- **XDS**: ITI-57 Update Document Set (Restricted Metadata Update, ITI TF-2 §3.57) over SOAP 1.2
  to the registry's update endpoint: an ebRIM ``SubmitObjectsRequest`` with a SubmissionSet and an
  ``UpdateAvailabilityStatus`` association from the submission set to the DocumentEntry
  (entryUUID), slots ``OriginalStatus`` = Approved and ``NewStatus`` = Deprecated. No document is
  sent, so no MTOM. The submission set's uniqueId is derived from the idempotency key: a retry is
  the same submission.
- **MHD**: an ITI-65 transaction Bundle with a SubmissionSet List and the DocumentReference,
  ``status`` ``entered-in-error``, as a conditional update (``PUT
  DocumentReference?identifier=<uniqueId>``).
- **CNS**: ``POST <cns_url>/<document id>/cancellation`` with a JSON cancellation envelope naming
  the CNS reference of the accepted certificate; answered ``{"status": "accepted",
  "cancellation_reference"}`` or ``{"status": "rejected", "reasons"}``.

A payload with ``if_held`` (the document's own delivery had an unknown outcome) takes the
receiver's "unknown document" for "nothing to withdraw": delivered, reference ``NOT_HELD``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from lxml import etree

from workflow.connectors import mhd, xds
from workflow.connectors.cns import reasons_text
from workflow.connectors.http import classify_status
from workflow.outbox import Delivery, DeliveryResult, DocumentPayload, Transport

UPDATE_ACTION = "urn:ihe:iti:2010:UpdateDocumentSet"
UPDATE_RESPONSE_ACTION = "urn:ihe:iti:2010:UpdateDocumentSetResponse"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"
NOT_HELD = "not held by the receiver"


class ByKind:
    """One target's transport: documents to ``document``, other kinds to their own connector."""

    def __init__(self, document: Transport, **kinds: Transport) -> None:
        self.document = document
        self.kinds = kinds

    async def deliver(self, d: Delivery) -> DeliveryResult:
        return await self.kinds.get(d.kind, self.document).deliver(d)


def _withdrawn(d: Delivery) -> DocumentPayload:
    if d.document is None:
        raise ValueError("a withdrawal must name the withdrawn document")
    return d.document


def _if_held(d: Delivery) -> bool:
    return bool(d.payload.get("if_held"))


def _reference(d: Delivery) -> str | None:
    w = d.payload.get("withdraws")
    ref = w.get("reference") if isinstance(w, Mapping) else None
    return ref if isinstance(ref, str) and ref else None


# ---------------------------------------------------------------- XDS ITI-57


def update_unique_id(idempotency_key: str) -> str:
    """The SubmissionSet uniqueId of a withdrawal: the same for every retry."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).int}"


def update_request(d: Delivery, submitted_at: datetime) -> etree._Element:
    """The ITI-57 ``SubmitObjectsRequest`` deprecating the withdrawn DocumentEntry."""
    doc = _withdrawn(d)
    patient = xds.cx(str(d.payload["patient_matricule"]))
    ss_unique = update_unique_id(d.idempotency_key)
    ss = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_OID, ss_unique))
    sor = etree.Element(xds._q("lcm", "SubmitObjectsRequest"), nsmap=xds.NS)
    rol = xds._sub(sor, "rim", "RegistryObjectList")
    rp = xds._sub(rol, "rim", "RegistryPackage", id=ss, objectType=REGISTRY_PACKAGE)
    xds._slot(rp, "submissionTime", xds.dtm(submitted_at))
    xds._name(rp, "Konsil: document entered in error")
    content_type = xds.Code(doc.type_code, xds.TYPE_CODE_SYSTEM, doc.type_code)
    xds._classify(rp, xds.SS_CONTENT_TYPE, ss, content_type, "cl01")
    xds._ext_id(rp, xds.SS_UNIQUE_ID, ss, ss_unique, "XDSSubmissionSet.uniqueId", "ei01")
    source = str(d.payload.get("source_id") or xds.KONSIL_ROOT_OID)
    xds._ext_id(rp, xds.SS_SOURCE_ID, ss, source, "XDSSubmissionSet.sourceId", "ei02")
    xds._ext_id(rp, xds.SS_PATIENT_ID, ss, patient, "XDSSubmissionSet.patientId", "ei03")
    xds._sub(
        rol,
        "rim",
        "Classification",
        id="cl02",
        objectType=xds.CLASSIFICATION,
        classifiedObject=ss,
        classificationNode=xds.SUBMISSION_SET_NODE,
    )
    assoc = xds._sub(
        rol,
        "rim",
        "Association",
        id="as01",
        associationType=UPDATE_AVAILABILITY_STATUS,
        sourceObject=ss,
        targetObject=xds.uuid_urn(doc.id),
    )
    xds._slot(assoc, "OriginalStatus", APPROVED)
    xds._slot(assoc, "NewStatus", DEPRECATED)
    return sor


def update_envelope(d: Delivery, to: str, now: datetime) -> bytes:
    message_id = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, d.idempotency_key)}"
    return xds.soap_envelope(update_request(d, now), to, message_id, action=UPDATE_ACTION)


def update_url(dsp_url: str) -> str:
    """The registry's ITI-57 endpoint next to the ITI-41 one (``…/iti41`` → ``…/iti57``)."""
    head, sep, last = dsp_url.rstrip("/").rpartition("/")
    return f"{head}{sep}iti57" if last == "iti41" else dsp_url


class XdsWithdrawal:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def deliver(self, d: Delivery) -> DeliveryResult:
        # submissionTime is a protocol timestamp, not domain time
        body = update_envelope(d, self.url, datetime.now(UTC))
        async with self.session.post(
            self.url,
            data=body,
            headers={
                "Content-Type": f'application/soap+xml; charset=utf-8; action="{UPDATE_ACTION}"',
                "Idempotency-Key": d.idempotency_key,
            },
        ) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
        if resp.status >= 500 and b"RegistryResponse" not in raw:
            return DeliveryResult("retry", self.url, resp.status, error=f"HTTP {resp.status}")
        try:
            rr = xds.parse_registry_response(xds.soap_part(raw, ctype))
        except (ValueError, etree.XMLSyntaxError, IndexError):
            verdict = classify_status(resp.status)
            return DeliveryResult(
                "rejected" if verdict == "rejected" else "retry",
                self.url,
                resp.status,
                error=f"HTTP {resp.status}: no RegistryResponse",
            )
        if rr.success:
            ref = update_unique_id(d.idempotency_key)
            return DeliveryResult("delivered", self.url, resp.status, reference=ref)
        codes = {e.code for e in rr.errors}
        if _if_held(d) and codes == {"UnresolvedReferenceException"}:
            return DeliveryResult("delivered", self.url, resp.status, reference=NOT_HELD)
        reason = "; ".join(f"{e.code}: {e.context}" for e in rr.errors) or "Failure"
        transient = bool(codes & {"XDSRegistryBusy", "XDSRegistryNotAvailable"})
        return DeliveryResult(
            "retry" if transient else "rejected", self.url, resp.status, error=reason[:2000]
        )


# ---------------------------------------------------------------- MHD


def entered_in_error_bundle(d: Delivery, now: datetime) -> dict[str, Any]:
    """ITI-65 transaction: the SubmissionSet and the DocumentReference, now entered-in-error."""
    doc = _withdrawn(d)
    provided = mhd.provide_bundle(d, now)  # the same metadata the document was published with
    submission = provided["entry"][0]["resource"]
    docref = provided["entry"][1]["resource"]
    docref["status"] = "entered-in-error"
    docref.pop("relatesTo", None)
    for content in docref["content"]:
        content["attachment"].pop("url", None)  # the bytes stay where they are
    docref_url = f"urn:uuid:{uuid.uuid4()}"
    submission["entry"] = [{"item": {"reference": docref_url}}]
    unique = f"urn:oid:{xds.oid_of(doc.id)}"
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [mhd.PROFILE_BUNDLE]},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": provided["entry"][0]["fullUrl"],
                "resource": submission,
                "request": {"method": "POST", "url": "List"},
            },
            {
                "fullUrl": docref_url,
                "resource": docref,
                "request": {
                    "method": "PUT",
                    "url": f"DocumentReference?identifier=urn:ietf:rfc:3986|{unique}",
                },
            },
        ],
    }


class MhdWithdrawal:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def deliver(self, d: Delivery) -> DeliveryResult:
        status, verdict, body = await mhd.post_transaction(
            self.session, self.url, entered_in_error_bundle(d, datetime.now(UTC)), d.idempotency_key
        )
        if verdict == "delivered":
            ref = mhd.document_reference_of(body, _reference(d))
            return DeliveryResult("delivered", self.url, status, reference=ref)
        if verdict == "rejected":
            if status == 404 and _if_held(d):
                return DeliveryResult("delivered", self.url, status, reference=NOT_HELD)
            return DeliveryResult("rejected", self.url, status, error=mhd.outcome_text(body))
        return DeliveryResult("retry", self.url, status, error=f"HTTP {status}")


# ---------------------------------------------------------------- CNS


def cancellation_envelope(d: Delivery) -> dict[str, Any]:
    doc = _withdrawn(d)
    return {
        "idempotency_key": d.idempotency_key,
        "document_id": doc.id,
        "cns_reference": _reference(d),
        "patient_matricule": d.payload.get("patient_matricule"),
        "reason": str(d.payload.get("reason") or "entered-in-error"),
    }


def cancellation_url(cns_url: str, document_id: str) -> str:
    return f"{cns_url.rstrip('/')}/{document_id}/cancellation"


class CnsWithdrawal:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url  # the certificates endpoint (cns_url)

    async def deliver(self, d: Delivery) -> DeliveryResult:
        url = cancellation_url(self.url, _withdrawn(d).id)
        async with self.session.post(
            url, json=cancellation_envelope(d), headers={"Idempotency-Key": d.idempotency_key}
        ) as resp:
            verdict = classify_status(resp.status)
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
        if verdict == "delivered":
            ref = body.get("cancellation_reference") if isinstance(body, dict) else None
            if not isinstance(ref, str) or not ref:
                return DeliveryResult(
                    "retry", url, resp.status, error="acknowledgement without reference"
                )
            return DeliveryResult("delivered", url, resp.status, reference=ref)
        if verdict == "rejected":
            if resp.status == 404 and _if_held(d):
                return DeliveryResult("delivered", url, resp.status, reference=NOT_HELD)
            return DeliveryResult("rejected", url, resp.status, error=reasons_text(body))
        return DeliveryResult("retry", url, resp.status, error=f"HTTP {resp.status}")
