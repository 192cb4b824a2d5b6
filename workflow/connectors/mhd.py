"""DSP via FHIR MHD ITI-65 Provide Document Bundle: a transaction Bundle with a List
(SubmissionSet), a DocumentReference (DocumentEntry) and a Binary (the document)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp

from workflow.connectors.http import classify_status
from workflow.connectors.xds import (
    CONFIDENTIALITY_SYSTEM,
    MATRICULE_OID,
    TYPE_CODE_SYSTEM,
    oid_of,
    replaced_of,
)
from workflow.outbox import Delivery, DeliveryResult

PROFILE_BUNDLE = (
    "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.ProvideBundle"
)
PROFILE_LIST = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.SubmissionSet"
PROFILE_DOCREF = (
    "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.DocumentReference"
)
LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
SOURCE_ID_EXT = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
FHIR_JSON = "application/fhir+json"


def provide_bundle(d: Delivery, now: datetime) -> dict[str, Any]:
    doc = d.document
    if doc is None:
        raise ValueError("an ITI-65 message must carry a document")
    matricule = str(d.payload["patient_matricule"])
    subject = {"identifier": {"system": f"urn:oid:{MATRICULE_OID}", "value": matricule}}
    list_id, docref_id, binary_id = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    sha1 = hashlib.sha1(doc.content).digest()  # noqa: S324 - attachment.hash is SHA-1 in FHIR
    docref = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [PROFILE_DOCREF]},
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid_of(doc.id)}"},
        "identifier": [
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": uuid.UUID(hex=doc.id).urn}
        ],
        "status": "current",
        "type": {"coding": [{"system": f"urn:oid:{TYPE_CODE_SYSTEM}", "code": doc.type_code}]},
        "category": [
            {"coding": [{"system": f"urn:oid:{TYPE_CODE_SYSTEM}", "code": doc.type_code}]}
        ],
        "subject": subject,
        "date": doc.created_at.isoformat(),
        "securityLabel": [
            {
                "coding": [
                    {"system": f"urn:oid:{CONFIDENTIALITY_SYSTEM}", "code": doc.confidentiality}
                ]
            }
        ],
        "content": [
            {
                "attachment": {
                    "contentType": doc.mime_type,
                    "language": str(d.payload.get("language") or "fr-LU"),
                    "url": binary_id,
                    "size": doc.size,
                    "hash": base64.b64encode(sha1).decode(),
                    "creation": doc.created_at.isoformat(),
                },
                "format": {
                    "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                },
            }
        ],
    }
    replaced = replaced_of(doc, d.payload)
    if replaced:
        docref["relatesTo"] = [
            {
                "code": "replaces",
                "target": {"identifier": {"value": f"urn:oid:{oid_of(replaced)}"}},
            }
        ]
    submission = {
        "resourceType": "List",
        "meta": {"profile": [PROFILE_LIST]},
        "extension": [{"url": SOURCE_ID_EXT, "valueIdentifier": {"value": "urn:oid:1.3.182.99.1"}}],
        "identifier": [
            {"use": "usual", "system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid_of(doc.id)}.1"},
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": list_id},
        ],
        "status": "current",
        "mode": "working",
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]},
        "subject": subject,
        "date": now.isoformat(),
        "entry": [{"item": {"reference": docref_id}}],
    }
    binary = {
        "resourceType": "Binary",
        "contentType": doc.mime_type,
        "data": base64.b64encode(doc.content).decode(),
    }
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [PROFILE_BUNDLE]},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": list_id,
                "resource": submission,
                "request": {"method": "POST", "url": "List"},
            },
            {
                "fullUrl": docref_id,
                "resource": docref,
                "request": {"method": "POST", "url": "DocumentReference"},
            },
            {
                "fullUrl": binary_id,
                "resource": binary,
                "request": {"method": "POST", "url": "Binary"},
            },
        ],
    }


def outcome_text(body: Any) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") or []
        parts = [
            f"{i.get('code', '?')}: {i.get('diagnostics', '')}"
            for i in issues
            if isinstance(i, dict)
        ]
        if parts:
            return "; ".join(parts)[:2000]
    return "rejected"


class MhdConnector:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def deliver(self, d: Delivery) -> DeliveryResult:
        status, verdict, body = await post_transaction(
            self.session, self.url, provide_bundle(d, datetime.now(UTC)), d.idempotency_key
        )
        if verdict == "delivered":
            ref = document_reference_of(body, d.document.id if d.document else None)
            return DeliveryResult("delivered", self.url, status, reference=ref)
        if verdict == "rejected":
            return DeliveryResult("rejected", self.url, status, error=outcome_text(body))
        return DeliveryResult("retry", self.url, status, error=f"HTTP {status}")


async def post_transaction(
    session: aiohttp.ClientSession, url: str, bundle: dict[str, Any], idempotency_key: str
) -> tuple[int, str, Any]:
    """POST a FHIR transaction Bundle: (HTTP status, its verdict, the JSON body or None)."""
    async with session.post(
        url,
        json=bundle,
        headers={
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            "Idempotency-Key": idempotency_key,
        },
    ) as resp:
        verdict = classify_status(resp.status)
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        return resp.status, verdict, body


def document_reference_of(body: Any, default: str | None) -> str | None:
    """The ``DocumentReference/…`` location a transaction-response names, else ``default``."""
    ref = default
    if isinstance(body, dict):
        for e in body.get("entry") or []:
            loc = (e.get("response") or {}).get("location", "")
            if isinstance(loc, str) and loc.startswith("DocumentReference/"):
                ref = loc
    return ref
