"""CNS eCIT: the sick-leave certificate as a signed CDA in a JSON envelope over HTTPS.

Request ``POST <cns_url>`` with an ``Idempotency-Key`` header and the envelope::

    {"idempotency_key", "document_id", "type_code", "patient_matricule", "document" (base64 CDA),
     "signature" (base64 detached Ed25519), "signing_key_id", "sha256", "size", "created_at",
     "replaces" (only for a correction: {"document_id", "cns_reference"} of the certificate
     the CNS accepted earlier and this one replaces)}

A correction (a new version of a certificate the CNS holds) names the certificate it replaces;
the CNS refuses a replacement of a certificate it does not know, of another patient, or of one
already replaced (``REPLACED_UNKNOWN``, ``PATIENT_MISMATCH``, ``ALREADY_REPLACED``).

Answer: ``{"status": "accepted", "cns_reference": ...}`` (the same answer again for a repeated
key), or ``{"status": "rejected", "reasons": [{"code", "message"}]}`` with a 4xx status.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from workflow.connectors.http import classify_status
from workflow.connectors.xds import replaced_of
from workflow.outbox import Delivery, DeliveryResult


def envelope(d: Delivery) -> dict[str, Any]:
    doc = d.document
    if doc is None:
        raise ValueError("a CNS message must carry a document")
    body: dict[str, Any] = {
        "idempotency_key": d.idempotency_key,
        "document_id": doc.id,
        "type_code": doc.type_code,
        "patient_matricule": d.payload.get("patient_matricule"),
        "document": base64.b64encode(doc.content).decode(),
        "signature": base64.b64encode(doc.signature or b"").decode(),
        "signing_key_id": doc.signing_key_id,
        "sha256": doc.sha256,
        "size": doc.size,
        "created_at": doc.created_at.isoformat(),
    }
    replaced = replaced_of(doc, d.payload)
    if replaced:
        prev = d.payload.get("replaces")
        ref = prev.get("reference") if isinstance(prev, dict) else None
        body["replaces"] = {"document_id": replaced, "cns_reference": ref}
    return body


def reasons_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("reasons"), list):
        parts = []
        for r in body["reasons"]:
            if isinstance(r, dict):
                parts.append(f"{r.get('code', '?')}: {r.get('message', '')}")
        if parts:
            return "; ".join(parts)[:2000]
    return "rejected without reasons"


class CnsConnector:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def deliver(self, d: Delivery) -> DeliveryResult:
        async with self.session.post(
            self.url, json=envelope(d), headers={"Idempotency-Key": d.idempotency_key}
        ) as resp:
            verdict = classify_status(resp.status)
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if verdict == "delivered":
                ref = body.get("cns_reference") if isinstance(body, dict) else None
                if not isinstance(ref, str) or not ref:
                    return DeliveryResult(
                        "retry", self.url, resp.status, error="acknowledgement without reference"
                    )
                return DeliveryResult("delivered", self.url, resp.status, reference=ref)
            if verdict == "rejected":
                return DeliveryResult("rejected", self.url, resp.status, error=reasons_text(body))
            return DeliveryResult("retry", self.url, resp.status, error=f"HTTP {resp.status}")
