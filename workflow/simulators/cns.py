"""The CNS eCIT simulator: receives sick-leave certificates as signed CDA in a JSON envelope.

``POST /ecit/v1/certificates``. A repeated idempotency key gets the first acknowledgement again
(nothing is stored twice); the same key with other content is refused. Given the organisations'
public keys (``--trust DIR``, written by ``konsil documents export-keys``), it verifies each
detached signature over the CDA's exact bytes: an unknown key is ``SIGNATURE_KEY_UNKNOWN``, a
signature that does not match is ``SIGNATURE_INVALID``.

``POST /ecit/v1/certificates/{document_id}/cancellation`` cancels an accepted certificate (below).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from lxml import etree

from workflow.cda.validation import validate_cda, validate_tree
from workflow.cda.xsd import parse
from workflow.simulators.common import (
    SimulatorSettings,
    SubmissionStore,
    apply_faults,
    cda_patient_matricule,
    cda_type_code,
    matricule_problem,
    verify_signature,
)

PATH = "/ecit/v1/certificates"
SICK_LEAVE = "DT-20002"
SETTINGS = web.AppKey("cns_settings", SimulatorSettings)
STORE = web.AppKey("cns_store", SubmissionStore)

REQUIRED = (
    "idempotency_key",
    "document_id",
    "patient_matricule",
    "document",
    "signature",
    "sha256",
    "size",
)


def rejection(status: int, *reasons: tuple[str, str]) -> web.Response:
    return web.json_response(
        {"status": "rejected", "reasons": [{"code": c, "message": m} for c, m in reasons]},
        status=status,
    )


def check_envelope(
    body: Any, validate: Any, trusted: dict[str, bytes] | None = None
) -> tuple[list[tuple[str, str]], bytes]:
    if not isinstance(body, dict):
        return [("MALFORMED", "the body must be a JSON object")], b""
    missing = [k for k in REQUIRED if not body.get(k)]
    if missing:
        return [("MISSING_FIELD", f"missing: {', '.join(missing)}")], b""
    try:
        doc = base64.b64decode(body["document"], validate=True)
        sig = base64.b64decode(body["signature"], validate=True)
    except (binascii.Error, TypeError):
        return [("MALFORMED", "document and signature must be base64")], b""
    reasons: list[tuple[str, str]] = []
    if hashlib.sha256(doc).hexdigest() != body["sha256"]:
        reasons.append(("HASH_MISMATCH", "sha256 does not match the document"))
    if len(doc) != body["size"]:
        reasons.append(("SIZE_MISMATCH", "size does not match the document"))
    if len(sig) != 64:
        reasons.append(("SIGNATURE_INVALID", "a detached Ed25519 signature has 64 bytes"))
    elif trusted is not None:
        bad = verify_signature(trusted, body.get("signing_key_id"), doc, sig)
        if bad is not None:
            reasons.append(bad)
    problem = matricule_problem(str(body["patient_matricule"]))
    if problem:
        reasons.append(("INVALID_MATRICULE", problem))
    try:  # parsed once for the validation and the envelope checks
        root = parse(doc)
    except etree.XMLSyntaxError as exc:
        return [*reasons, ("CDA_INVALID", f"not well-formed XML: {exc}")], doc
    # The default validator (validate_cda) gets the tree; an injected one gets the bytes.
    errors = validate_tree(root) if validate is validate_cda else validate(doc)
    if errors:
        reasons.extend(("CDA_INVALID", e) for e in errors[:10])
        return reasons, doc
    if cda_type_code(root) != SICK_LEAVE:
        reasons.append(("UNSUPPORTED_DOCUMENT_TYPE", f"eCIT accepts {SICK_LEAVE} only"))
    if cda_patient_matricule(root) != body["patient_matricule"]:
        reasons.append(("PATIENT_MISMATCH", "the CDA's patient is not the envelope's patient"))
    return reasons, doc


def check_replaces(
    store: SubmissionStore, body: dict[str, Any]
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """A correction names a certificate this CNS accepted, of the same patient, not yet replaced."""
    replaces = body.get("replaces")
    if replaces is None:
        return None, None
    target = replaces.get("document_id") if isinstance(replaces, dict) else None
    if not isinstance(target, str) or not target:
        return None, ("MALFORMED", "replaces.document_id is required")
    previous = store.find("document_id", target)
    if previous is None:
        return None, ("REPLACED_UNKNOWN", "the replaced certificate was never accepted")
    if previous.get("patient_matricule") != body.get("patient_matricule"):
        return None, ("PATIENT_MISMATCH", "the replaced certificate is another patient's")
    if previous.get("replaced_by"):
        return None, ("ALREADY_REPLACED", "the replaced certificate was already replaced")
    return previous, None


async def submit(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    fault = await apply_faults(settings)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return rejection(400, ("MALFORMED", "the body is not JSON"))
    key = body.get("idempotency_key") if isinstance(body, dict) else None
    header = request.headers.get("Idempotency-Key")
    if header and key and header != key:
        return rejection(400, ("IDEMPOTENCY_KEY_MISMATCH", "header and body keys differ"))
    if isinstance(key, str) and key:
        previous = store.get(key)
        if previous is not None:  # a repeat (seen by this process): the first answer
            return repeated(previous, body)
        # Validated before taking the store (other processes may validate meanwhile), decided
        # and stored under it: a key is accepted once, whichever process gets it.
        reasons, doc = check_envelope(body, settings.validator, settings.trusted_keys)
        with store.exclusive():
            previous = store.get(key)
            if previous is not None:  # accepted meanwhile, here or by another process
                return repeated(previous, body)
            if reasons:
                return rejection(422, *reasons)
            replaced, problem = check_replaces(store, body)
            if problem is not None:
                return rejection(422 if problem[0] != "ALREADY_REPLACED" else 409, problem)
            ack = {
                "status": "accepted",
                "cns_reference": f"CNS-CIT-{store.count + 1:08d}",
                "idempotency_key": key,
                "received_at": datetime.now(UTC).isoformat(),
            }
            meta = {k: v for k, v in body.items() if k != "document"}
            store.put(key, doc, "document.xml", {**meta, "acknowledgement": ack})
            if replaced is not None:
                store.annotate(
                    replaced["dedupe_key"],
                    {"status": "replaced", "replaced_by": body["document_id"]},
                )
        if fault == "lost":
            raise web.HTTPServiceUnavailable(text="simulated lost answer")
        return web.json_response(ack, status=201)
    reasons, _ = check_envelope(body, settings.validator, settings.trusted_keys)
    return rejection(422, *(reasons or [("MISSING_FIELD", "missing: idempotency_key")]))


def repeated(previous: dict[str, Any], body: dict[str, Any]) -> web.Response:
    """A key seen before: the first acknowledgement again, unless it came with another document."""
    if previous["sha256"] != body.get("sha256"):
        return rejection(409, ("IDEMPOTENCY_KEY_REUSED", "this key was used for another document"))
    return web.json_response(previous["acknowledgement"], status=200)


def create_app(settings: SimulatorSettings) -> web.Application:
    app = web.Application(client_max_size=20 * 1024**2)
    app[SETTINGS] = settings
    app[STORE] = SubmissionStore(settings.store, journal=settings.journal)
    app.on_cleanup.append(close_store)
    app.router.add_post(PATH, submit)
    app.router.add_post(CANCEL_PATH, cancel)
    app.router.add_get("/healthz", healthz)
    return app


async def close_store(app: web.Application) -> None:
    app[STORE].close()


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


# ---------------------------------------------------------------- cancellations
# ``POST /ecit/v1/certificates/{document_id}/cancellation``: a certificate issued by mistake stops
# counting. The cancellation is stored as its own folder (``cancellation.json`` as received +
# metadata.json, deduplicated on its idempotency key); the certificate's metadata becomes
# ``status: cancelled`` with ``cancelled_by`` (the cancellation reference).

CANCEL_PATH = PATH + "/{document_id}/cancellation"
CANCEL_REQUIRED = ("idempotency_key", "document_id", "patient_matricule", "reason")


def check_cancellation(
    store: SubmissionStore, body: dict[str, Any], document_id: str
) -> tuple[int, tuple[str, str]] | tuple[None, dict[str, Any]]:
    """(status, reason) of a refusal, or (None, the certificate to cancel)."""
    missing = [k for k in CANCEL_REQUIRED if not body.get(k)]
    if missing:
        return 422, ("MISSING_FIELD", f"missing: {', '.join(missing)}")
    if body["document_id"] != document_id:
        return 400, ("MALFORMED", "the envelope names another certificate than the URL")
    cert = store.find("document_id", document_id)
    if cert is None:
        return 404, ("UNKNOWN_CERTIFICATE", "no certificate with this document id was accepted")
    ref = body.get("cns_reference")
    if ref is not None and ref != cert["acknowledgement"]["cns_reference"]:
        return 422, ("REFERENCE_MISMATCH", "cns_reference is not this certificate's")
    if cert.get("patient_matricule") != body["patient_matricule"]:
        return 422, ("PATIENT_MISMATCH", "the certificate is another patient's")
    if cert.get("replaced_by"):
        return 409, ("ALREADY_REPLACED", "the certificate was replaced: cancel its replacement")
    if cert.get("status") == "cancelled":
        return 409, ("ALREADY_CANCELLED", "the certificate was already cancelled")
    return None, cert


async def cancel(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    fault = await apply_faults(settings)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return rejection(400, ("MALFORMED", "the body is not JSON"))
    if not isinstance(body, dict):
        return rejection(400, ("MALFORMED", "the body must be a JSON object"))
    key, header = body.get("idempotency_key"), request.headers.get("Idempotency-Key")
    if header and key and header != key:
        return rejection(400, ("IDEMPOTENCY_KEY_MISMATCH", "header and body keys differ"))
    document_id = request.match_info["document_id"]
    with store.exclusive():
        previous = store.get(key) if isinstance(key, str) and key else None
        if previous is not None:
            if previous.get("cancels_document_id") != document_id:
                return rejection(
                    409, ("IDEMPOTENCY_KEY_REUSED", "this key was used for another message")
                )
            return web.json_response(previous["acknowledgement"], status=200)
        status, found = check_cancellation(store, body, document_id)
        if status is not None:
            assert isinstance(found, tuple)
            return rejection(status, found)
        assert isinstance(found, dict) and isinstance(key, str)
        ack = {
            "status": "accepted",
            "cancellation_reference": f"CNS-ANN-{store.count + 1:08d}",
            "cns_reference": found["acknowledgement"]["cns_reference"],
            "idempotency_key": key,
            "received_at": datetime.now(UTC).isoformat(),
        }
        store.put(
            key,
            raw,
            "cancellation.json",
            {
                "kind": "cancellation",
                "cancels_document_id": document_id,
                "cns_reference": body.get("cns_reference"),  # as the sender named it
                "patient_matricule": body["patient_matricule"],
                "reason": body["reason"],
                "acknowledgement": ack,
            },
        )
        store.annotate(
            found["dedupe_key"],
            {
                "status": "cancelled",
                "cancelled_by": ack["cancellation_reference"],
                "cancelled_at": ack["received_at"],
            },
        )
    if fault == "lost":
        raise web.HTTPServiceUnavailable(text="simulated lost answer")
    return web.json_response(ack, status=201)
