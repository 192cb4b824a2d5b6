"""The DSP simulator: an XDS.b Document Repository + Registry (ITI-41) and an MHD Document
Recipient (ITI-65), storing what it accepts under ``--store``.

It checks what a real repository and registry check: the SOAP action, the MTOM package, the ebRIM
metadata (required classifications, external identifiers and slots), that the submission set and
the document entry name the same patient and that it is the CDA's patient, the document's hash and
size, and the CDA itself through the injected validator. A repeated document uniqueId with the same
hash gets the original answer; with another hash, XDSNonIdenticalHash.

Withdrawals: ITI-57 Update Document Set at ``/xds/iti57`` (Approved → Deprecated of one entry)
and an ITI-65 Bundle updating a DocumentReference to ``entered-in-error`` (``PUT``) at ``/fhir``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from typing import Any

from aiohttp import web
from lxml import etree

from workflow.cda.xsd import parse
from workflow.connectors import xds
from workflow.connectors.withdrawal import (
    UPDATE_ACTION,
    UPDATE_AVAILABILITY_STATUS,
    UPDATE_RESPONSE_ACTION,
)
from workflow.connectors.xds import NS, RegistryError
from workflow.simulators.common import (
    SimulatorSettings,
    SubmissionStore,
    apply_faults,
    cda_patient_matricule,
    matricule_problem,
)

ITI41_PATH = "/xds/iti41"
MHD_PATH = "/fhir"
SETTINGS = web.AppKey("dsp_settings", SimulatorSettings)
STORE = web.AppKey("dsp_store", SubmissionStore)

DE_REQUIRED_CLASSIFICATIONS = {
    xds.DE_CLASS_CODE: "classCode",
    xds.DE_CONFIDENTIALITY: "confidentialityCode",
    xds.DE_FORMAT_CODE: "formatCode",
    xds.DE_FACILITY_TYPE: "healthcareFacilityTypeCode",
    xds.DE_PRACTICE_SETTING: "practiceSettingCode",
    xds.DE_TYPE_CODE: "typeCode",
}
DE_REQUIRED_SLOTS = ("creationTime", "languageCode", "sourcePatientId")


class SoapFault(Exception):
    def __init__(self, code: str, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason


# ---------------------------------------------------------------- MTOM


def mime_parts(body: bytes, content_type: str) -> tuple[dict[str, tuple[str, bytes]], str]:
    """Content-ID → (content type, bytes), and the start part's Content-ID."""
    params: dict[str, str] = {}
    for piece in content_type.split(";")[1:]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    boundary = params.get("boundary")
    if not content_type.lower().startswith("multipart/related") or not boundary:
        raise SoapFault("Sender", "InvalidMessage", "expected an MTOM multipart/related package")
    parts: dict[str, tuple[str, bytes]] = {}
    first = ""
    for chunk in body.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        cid = (headers.get("Content-ID") or "").strip().strip("<>")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        parts[cid] = (headers.get("Content-Type") or "", content)
        first = first or cid
    start = params.get("start", "").strip("<>") or first
    if start not in parts:
        raise SoapFault("Sender", "InvalidMessage", "the MTOM start part is missing")
    return parts, start


# ---------------------------------------------------------------- ebRIM checks


def _slot(obj: etree._Element, name: str) -> str | None:
    v = obj.find(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)
    return None if v is None else (v.text or "")


def _ext(obj: etree._Element, scheme: str) -> str | None:
    e = obj.find(f"rim:ExternalIdentifier[@identificationScheme='{scheme}']", NS)
    return None if e is None else e.get("value")


def _matricule_of_cx(value: str) -> str | None:
    ident, _, rest = value.partition("^^^")
    if rest not in (f"&{xds.MATRICULE_OID}&ISO",):
        return None
    return ident


def check_submission(
    request_el: etree._Element, parts: dict[str, tuple[str, bytes]], settings: SimulatorSettings
) -> tuple[list[RegistryError], list[dict[str, Any]]]:
    errors: list[RegistryError] = []
    entries: list[dict[str, Any]] = []
    rol = request_el.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    if rol is None:
        return [RegistryError("XDSRegistryMetadataError", "no SubmitObjectsRequest")], []
    package = rol.find("rim:RegistryPackage", NS)
    if package is None:
        return [RegistryError("XDSRegistryMetadataError", "no SubmissionSet RegistryPackage")], []
    ss_patient = _ext(package, xds.SS_PATIENT_ID)
    for name, scheme in (
        ("XDSSubmissionSet.uniqueId", xds.SS_UNIQUE_ID),
        ("XDSSubmissionSet.sourceId", xds.SS_SOURCE_ID),
        ("XDSSubmissionSet.patientId", xds.SS_PATIENT_ID),
    ):
        if not _ext(package, scheme):
            errors.append(
                RegistryError("XDSRegistryMetadataError", f"{name} missing", package.get("id", ""))
            )
    if _slot(package, "submissionTime") is None:
        errors.append(RegistryError("XDSRegistryMetadataError", "submissionTime missing"))
    replaced = {
        a.get("sourceObject", ""): a.get("targetObject", "")
        for a in rol.iterfind("rim:Association", NS)
        if a.get("associationType") == xds.RPLC
    }
    documents = {d.get("id", ""): d for d in request_el.iterfind("xdsb:Document", NS)}
    eos = rol.findall("rim:ExtrinsicObject", NS)
    if not eos:
        errors.append(RegistryError("XDSRegistryMetadataError", "no DocumentEntry"))
    for eo in eos:
        entry_id = eo.get("id", "")
        if eo.get("objectType") != xds.STABLE_DOCUMENT_ENTRY:
            errors.append(
                RegistryError(
                    "XDSRegistryMetadataError", "objectType is not a stable DocumentEntry", entry_id
                )
            )
        present = {c.get("classificationScheme") for c in eo.iterfind("rim:Classification", NS)}
        for scheme, name in DE_REQUIRED_CLASSIFICATIONS.items():
            if scheme not in present:
                errors.append(
                    RegistryError("XDSRegistryMetadataError", f"{name} missing", entry_id)
                )
        for slot in DE_REQUIRED_SLOTS:
            if not _slot(eo, slot):
                errors.append(
                    RegistryError("XDSRegistryMetadataError", f"{slot} missing", entry_id)
                )
        unique_id = _ext(eo, xds.DE_UNIQUE_ID)
        patient = _ext(eo, xds.DE_PATIENT_ID)
        if not unique_id or not patient:
            errors.append(
                RegistryError(
                    "XDSRegistryMetadataError", "uniqueId and patientId are required", entry_id
                )
            )
            continue
        matricule = _matricule_of_cx(patient)
        if matricule is None or matricule_problem(matricule):
            errors.append(
                RegistryError(
                    "XDSUnknownPatientId", f"not a Luxembourg matricule CX: {patient}", entry_id
                )
            )
            continue
        if ss_patient and patient != ss_patient:
            errors.append(
                RegistryError(
                    "XDSPatientIdDoesNotMatch",
                    "DocumentEntry and SubmissionSet patients differ",
                    entry_id,
                )
            )
            continue
        doc_el = documents.get(entry_id)
        include = None if doc_el is None else doc_el.find("xop:Include", NS)
        href = "" if include is None else include.get("href", "")
        part = parts.get(href.removeprefix("cid:"))
        if part is None:
            errors.append(
                RegistryError("XDSMissingDocument", "no document for this entry", entry_id)
            )
            continue
        content = part[1]
        sha1 = hashlib.sha1(content).hexdigest()  # noqa: S324 - XDS hash is SHA-1 by spec
        if (h := _slot(eo, "hash")) is not None and h.lower() != sha1:
            errors.append(
                RegistryError(
                    "XDSRepositoryMetadataError", "hash does not match the document", entry_id
                )
            )
            continue
        if (sz := _slot(eo, "size")) is not None and sz != str(len(content)):
            errors.append(
                RegistryError(
                    "XDSRepositoryMetadataError", "size does not match the document", entry_id
                )
            )
            continue
        problems = settings.validator(content)
        if problems:
            errors.extend(
                RegistryError("XDSRepositoryError", f"CDA validation: {p}", entry_id)
                for p in problems[:10]
            )
            continue
        if cda_patient_matricule(content) != matricule:
            errors.append(
                RegistryError(
                    "XDSPatientIdDoesNotMatch",
                    "the CDA's patient is not the DocumentEntry's patient",
                    entry_id,
                )
            )
            continue
        entries.append(
            {
                "unique_id": unique_id,
                "entry_uuid": entry_id,
                "patient_id": patient,
                "sha1": sha1,
                "size": len(content),
                "mime_type": eo.get("mimeType", ""),
                "content": content,
                "creation_time": _slot(eo, "creationTime"),
                "replaces_entry_uuid": replaced.get(entry_id),
            }
        )
    return errors, entries


def response_envelope(
    errors: list[RegistryError], relates_to: str, action: str = xds.RESPONSE_ACTION
) -> bytes:
    body = xds.registry_response(errors)
    env = xds.soap_envelope(body, "", f"urn:uuid:{uuid.uuid4()}", action=action)
    if relates_to:
        root = parse(env)
        header = root.find("soap:Header", NS)
        assert header is not None
        etree.SubElement(header, f"{{{NS['wsa']}}}RelatesTo").text = relates_to
        env = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return env


def soap_response(envelope: bytes, status: int = 200) -> web.Response:
    return web.Response(
        body=envelope,
        status=status,
        content_type="application/soap+xml",
        charset="utf-8",
    )


def fault_response(f: SoapFault) -> web.Response:
    env = etree.Element(f"{{{NS['soap']}}}Envelope", nsmap={"soap": NS["soap"]})
    body = etree.SubElement(env, f"{{{NS['soap']}}}Body")
    fault = etree.SubElement(body, f"{{{NS['soap']}}}Fault")
    code = etree.SubElement(fault, f"{{{NS['soap']}}}Code")
    etree.SubElement(code, f"{{{NS['soap']}}}Value").text = f"soap:{f.code}"
    sub = etree.SubElement(code, f"{{{NS['soap']}}}Subcode")
    etree.SubElement(sub, f"{{{NS['soap']}}}Value").text = f.subcode
    reason = etree.SubElement(fault, f"{{{NS['soap']}}}Reason")
    text = etree.SubElement(reason, f"{{{NS['soap']}}}Text")
    text.text = f.reason
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    return soap_response(
        etree.tostring(env, xml_declaration=True, encoding="UTF-8"),
        400 if f.code == "Sender" else 500,
    )


async def iti41(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    fault = await apply_faults(settings)
    raw = await request.read()
    try:
        parts, start = mime_parts(raw, request.headers.get("Content-Type", ""))
        try:
            envelope = parse(parts[start][1])
        except etree.XMLSyntaxError:
            raise SoapFault(
                "Sender", "InvalidMessage", "the SOAP part is not well-formed XML"
            ) from None
        action = envelope.findtext("soap:Header/wsa:Action", namespaces=NS)
        if (action or "").strip() != xds.ACTION:
            raise SoapFault("Sender", "wsa:ActionNotSupported", f"unsupported action {action!r}")
        message_id = envelope.findtext("soap:Header/wsa:MessageID", default="", namespaces=NS)
        req = envelope.find("soap:Body/xdsb:ProvideAndRegisterDocumentSetRequest", NS)
        if req is None:
            raise SoapFault("Sender", "InvalidMessage", "no ProvideAndRegisterDocumentSetRequest")
    except SoapFault as f:
        return fault_response(f)
    errors, entries = check_submission(req, parts, settings)
    if errors:
        return soap_response(response_envelope(errors, message_id))
    # Dedupe on the document uniqueId: a repeat with the same hash is answered like the first.
    for e in entries:
        async with store.lock(e["unique_id"]):
            previous = store.get(e["unique_id"])
            if previous is not None:
                if previous["sha1"] != e["sha1"]:
                    err = RegistryError(
                        "XDSNonIdenticalHash",
                        "uniqueId already registered with another hash",
                        e["entry_uuid"],
                    )
                    return soap_response(response_envelope([err], message_id))
                continue
            target = None
            if e["replaces_entry_uuid"]:
                target = store.find("entry_uuid", e["replaces_entry_uuid"])
                error = replacement_error(target, e["patient_id"], e["replaces_entry_uuid"])
                if error is not None:
                    err = RegistryError(error[0], error[1], e["entry_uuid"])
                    return soap_response(response_envelope([err], message_id))
            meta = {k: v for k, v in e.items() if k != "content"}
            meta.update(
                transport="ITI-41",
                received_at=datetime.now(UTC).isoformat(),
                idempotency_key=request.headers.get("Idempotency-Key"),
            )
            store.put(e["unique_id"], e["content"], "document.xml", meta)
            if target is not None:
                deprecate(store, target, e["unique_id"])
    if fault == "lost":
        raise web.HTTPServiceUnavailable(text="simulated lost answer")
    return soap_response(response_envelope([], message_id))


def replacement_error(
    target: dict[str, Any] | None, patient_id: str, reference: str
) -> tuple[str, str] | None:
    """Why a registry refuses a replacement (ITI TF-3 4.2.2.2: RPLC needs an Approved target of
    the same patient), or None."""
    if target is None:
        return ("UnresolvedReferenceException", f"the replaced entry {reference} is not registered")
    if _patient_key(str(target.get("patient_id"))) != _patient_key(patient_id):
        return ("XDSPatientIdDoesNotMatch", "the replaced entry is another patient's")
    if target.get("availability") == "Deprecated":
        return ("XDSRegistryDeprecatedDocumentError", "the replaced entry is already deprecated")
    return None


def _patient_key(value: str) -> str:
    """The matricule, whether given as an XDS CX (ITI-41) or a plain identifier value (ITI-65)."""
    return _matricule_of_cx(value) or value


def deprecate(store: SubmissionStore, target: dict[str, Any], by_unique_id: str) -> None:
    store.annotate(
        target["dedupe_key"], {"availability": "Deprecated", "replaced_by": by_unique_id}
    )


# ---------------------------------------------------------------- MHD ITI-65


def operation_outcome(status: int, *issues: tuple[str, str]) -> web.Response:
    return web.json_response(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": code, "diagnostics": text} for code, text in issues
            ],
        },
        status=status,
        content_type="application/fhir+json",
    )


def _identifier_value(res: dict[str, Any], use: str) -> str | None:
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("use") == use:
            v = ident.get("value")
            return v if isinstance(v, str) else None
    return None


def check_bundle(
    bundle: Any, settings: SimulatorSettings
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return [("structure", "expected a Bundle")], {}
    if bundle.get("type") != "transaction":
        return [("structure", "the Bundle must be a transaction")], {}
    by_type: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for e in bundle.get("entry") or []:
        res = e.get("resource") if isinstance(e, dict) else None
        if isinstance(res, dict):
            by_type.setdefault(str(res.get("resourceType")), []).append(
                (str(e.get("fullUrl", "")), res)
            )
    missing = [t for t in ("List", "DocumentReference", "Binary") if t not in by_type]
    if missing:
        return [("required", f"missing {', '.join(missing)}")], {}
    _, lst = by_type["List"][0]
    _, docref = by_type["DocumentReference"][0]
    binaries = dict(by_type["Binary"])
    issues: list[tuple[str, str]] = []
    code = ((lst.get("code") or {}).get("coding") or [{}])[0]
    if code.get("code") != "submissionset":
        issues.append(("invariant", "List.code must be submissionset"))
    master = (docref.get("masterIdentifier") or {}).get("value")
    if not master:
        issues.append(("required", "DocumentReference.masterIdentifier missing"))
    subject = (docref.get("subject") or {}).get("identifier") or {}
    if subject.get("system") != f"urn:oid:{xds.MATRICULE_OID}" or matricule_problem(
        str(subject.get("value", ""))
    ):
        issues.append(("value", "DocumentReference.subject must be a Luxembourg matricule"))
    if ((lst.get("subject") or {}).get("identifier") or {}) != subject:
        issues.append(
            ("invariant", "XDSPatientIdDoesNotMatch: List and DocumentReference subjects differ")
        )
    for field in ("type", "category", "securityLabel", "date"):
        if not docref.get(field):
            issues.append(("required", f"DocumentReference.{field} missing"))
    try:
        att = docref["content"][0]["attachment"]
        binary = binaries[att["url"]]
        content = base64.b64decode(binary["data"], validate=True)
    except (KeyError, IndexError, TypeError, binascii.Error):
        issues.append(("required", "attachment.url must point to a Binary in the Bundle"))
        return issues, {}
    sha1 = hashlib.sha1(content).digest()  # noqa: S324 - FHIR attachment hash is SHA-1
    if att.get("hash") and att["hash"] != base64.b64encode(sha1).decode():
        issues.append(("value", "attachment.hash does not match the Binary"))
    if att.get("size") is not None and att["size"] != len(content):
        issues.append(("value", "attachment.size does not match the Binary"))
    if issues:
        return issues, {}
    problems = settings.validator(content)
    if problems:
        return [("invalid", f"CDA validation: {p}") for p in problems[:10]], {}
    if cda_patient_matricule(content) != subject.get("value"):
        return [("invariant", "XDSPatientIdDoesNotMatch: the CDA's patient differs")], {}
    replaces = None
    for rel in docref.get("relatesTo") or []:
        if isinstance(rel, dict) and rel.get("code") == "replaces":
            value = ((rel.get("target") or {}).get("identifier") or {}).get("value")
            if not isinstance(value, str) or not value:
                return [("required", "relatesTo.target.identifier.value missing")], {}
            replaces = value.removeprefix("urn:oid:")
    return [], {
        "replaces_unique_id": replaces,
        "unique_id": str(master).removeprefix("urn:oid:"),
        "entry_uuid": _identifier_value(docref, "official"),
        "patient_id": subject.get("value"),
        "sha1": sha1.hex(),
        "size": len(content),
        "mime_type": att.get("contentType", ""),
        "content": content,
    }


async def iti65(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    fault = await apply_faults(settings)
    try:
        bundle = json.loads(await request.read())
    except ValueError:
        return operation_outcome(400, ("structure", "the body is not JSON"))
    update = _update_entry(bundle) if isinstance(bundle, dict) else None
    if update is not None:  # DocumentReference entered-in-error (a withdrawal)
        return await mhd_update(request, bundle, update, fault)
    issues, entry = check_bundle(bundle, settings)
    if issues:
        return operation_outcome(422, *issues)
    key = entry["unique_id"]
    async with store.lock(key):
        previous = store.get(key)
        if previous is not None and previous["sha1"] != entry["sha1"]:
            return operation_outcome(422, ("duplicate", "XDSNonIdenticalHash: uniqueId reused"))
        target = None
        if previous is None and entry["replaces_unique_id"]:
            target = store.get(entry["replaces_unique_id"])
            error = replacement_error(target, entry["patient_id"], entry["replaces_unique_id"])
            if error is not None:
                status = 404 if error[0] == "UnresolvedReferenceException" else 422
                return operation_outcome(
                    status,
                    ("not-found" if status == 404 else "business-rule", f"{error[0]}: {error[1]}"),
                )
        if previous is None:
            meta = {k: v for k, v in entry.items() if k != "content"}
            meta.update(
                transport="ITI-65",
                received_at=datetime.now(UTC).isoformat(),
                idempotency_key=request.headers.get("Idempotency-Key"),
            )
            store.put(key, entry["content"], "document.xml", meta)
            if target is not None:
                deprecate(store, target, key)
    if fault == "lost":
        raise web.HTTPServiceUnavailable(text="simulated lost answer")
    return transaction_response(
        ("201 Created", f"List/{uuid.uuid5(uuid.NAMESPACE_OID, key)}"),
        ("201 Created", f"DocumentReference/{uuid.uuid5(uuid.NAMESPACE_URL, key)}"),
        ("201 Created", f"Binary/{uuid.uuid5(uuid.NAMESPACE_DNS, key)}"),
    )


def transaction_response(*entries: tuple[str, str]) -> web.Response:
    """A FHIR transaction-response Bundle: one (status, location) per entry of the request."""
    return web.json_response(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": st, "location": loc}} for st, loc in entries],
        },
        status=200,
        content_type="application/fhir+json",
    )


def create_app(settings: SimulatorSettings) -> web.Application:
    app = web.Application(client_max_size=50 * 1024**2)
    app[SETTINGS] = settings
    app[STORE] = SubmissionStore(settings.store, journal=settings.journal)
    app.on_cleanup.append(close_store)
    app.router.add_post(ITI41_PATH, iti41)
    app.router.add_post(MHD_PATH, iti65)
    app.router.add_post(ITI57_PATH, iti57)
    return app


async def close_store(app: web.Application) -> None:
    app[STORE].close()


# ---------------------------------------------------------------- withdrawals (entered in error)
# XDS ITI-57 Update Document Set (availability status only) and the MHD entered-in-error update.
# Each accepted update is stored as its own folder (the request as received + metadata.json) and
# the withdrawn entry's metadata becomes ``availability: Deprecated`` with ``withdrawn_by``.

ITI57_PATH = "/xds/iti57"


def _status_name(urn: str | None) -> str:
    return (urn or "").rpartition(":")[2]


def check_update(sor: etree._Element) -> tuple[list[RegistryError], dict[str, Any]]:
    """An ITI-57 SubmitObjectsRequest that changes one DocumentEntry's availability status."""
    rol = sor.find("rim:RegistryObjectList", NS)
    package = None if rol is None else rol.find("rim:RegistryPackage", NS)
    if rol is None or package is None:
        return [RegistryError("XDSRegistryMetadataError", "no SubmissionSet RegistryPackage")], {}
    ss = package.get("id", "")
    errors: list[RegistryError] = []
    values: dict[str, str] = {}
    for name, scheme in (
        ("uniqueId", xds.SS_UNIQUE_ID),
        ("sourceId", xds.SS_SOURCE_ID),
        ("patientId", xds.SS_PATIENT_ID),
    ):
        v = _ext(package, scheme)
        if not v:
            errors.append(
                RegistryError("XDSRegistryMetadataError", f"XDSSubmissionSet.{name} missing", ss)
            )
        values[name] = v or ""
    if _slot(package, "submissionTime") is None:
        errors.append(RegistryError("XDSRegistryMetadataError", "submissionTime missing", ss))
    marked = any(
        c.get("classifiedObject") == ss and c.get("classificationNode") == xds.SUBMISSION_SET_NODE
        for c in rol.iterfind("rim:Classification", NS)
    )
    if not marked:
        errors.append(
            RegistryError("XDSRegistryMetadataError", "the RegistryPackage is no SubmissionSet", ss)
        )
    if rol.find("rim:ExtrinsicObject", NS) is not None:
        errors.append(
            RegistryError(
                "XDSMetadataUpdateOperationError",
                "this registry accepts availability status updates only",
                ss,
            )
        )
    updates = [
        a
        for a in rol.iterfind("rim:Association", NS)
        if a.get("associationType") == UPDATE_AVAILABILITY_STATUS
    ]
    if len(updates) != 1:
        errors.append(
            RegistryError(
                "XDSMetadataUpdateOperationError",
                "expected one UpdateAvailabilityStatus association",
                ss,
            )
        )
        return errors, {}
    [assoc] = updates
    original, new = _slot(assoc, "OriginalStatus"), _slot(assoc, "NewStatus")
    if assoc.get("sourceObject") != ss:
        errors.append(
            RegistryError(
                "XDSRegistryMetadataError", "the association must come from the SubmissionSet", ss
            )
        )
    if not original or not new:
        errors.append(
            RegistryError("XDSRegistryMetadataError", "OriginalStatus and NewStatus required", ss)
        )
    elif (_status_name(original), _status_name(new)) != ("Approved", "Deprecated"):
        errors.append(
            RegistryError(
                "XDSMetadataUpdateOperationError",
                f"unsupported status change {_status_name(original)} -> {_status_name(new)}",
                ss,
            )
        )
    matricule = _matricule_of_cx(values["patientId"]) if values["patientId"] else None
    if values["patientId"] and (matricule is None or matricule_problem(matricule)):
        errors.append(RegistryError("XDSUnknownPatientId", "not a Luxembourg matricule CX", ss))
    return errors, {
        "ss_unique_id": values["uniqueId"],
        "patient_id": values["patientId"],
        "target_entry_uuid": assoc.get("targetObject", ""),
        "original_status": _status_name(original),
        "new_status": _status_name(new),
    }


def status_update_error(
    target: dict[str, Any] | None, patient_id: str, original: str, reference: str
) -> tuple[str, str] | None:
    """Why a registry refuses to change an entry's availability status, or None."""
    if target is None:
        return ("UnresolvedReferenceException", f"the entry {reference} is not registered")
    if _patient_key(str(target.get("patient_id"))) != _patient_key(patient_id):
        return ("XDSPatientIdDoesNotMatch", "the entry is another patient's")
    current = str(target.get("availability") or "Approved")
    if current != original:
        return (
            "XDSMetadataUpdateError",
            f"OriginalStatus {original} does not match the entry's status {current}",
        )
    return None


def _withdraw(store: SubmissionStore, target: dict[str, Any], by: str, **extra: str) -> None:
    store.annotate(
        target["dedupe_key"],
        {
            "availability": "Deprecated",
            "withdrawn_by": by,
            "withdrawn_at": datetime.now(UTC).isoformat(),
            **extra,
        },
    )


async def iti57(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    fault = await apply_faults(settings)
    raw = await request.read()
    try:
        try:
            envelope = parse(xds.soap_part(raw, request.headers.get("Content-Type", "")))
        except (etree.XMLSyntaxError, IndexError):
            raise SoapFault("Sender", "InvalidMessage", "the body is not a SOAP envelope") from None
        action = (envelope.findtext("soap:Header/wsa:Action", namespaces=NS) or "").strip()
        if action != UPDATE_ACTION:
            raise SoapFault("Sender", "wsa:ActionNotSupported", f"unsupported action {action!r}")
        message_id = envelope.findtext("soap:Header/wsa:MessageID", default="", namespaces=NS)
        sor = envelope.find("soap:Body/lcm:SubmitObjectsRequest", NS)
        if sor is None:
            raise SoapFault("Sender", "InvalidMessage", "no SubmitObjectsRequest")
    except SoapFault as f:
        return fault_response(f)

    def answer(errors: list[RegistryError]) -> web.Response:
        return soap_response(response_envelope(errors, message_id, UPDATE_RESPONSE_ACTION))

    errors, update = check_update(sor)
    if errors:
        return answer(errors)
    entry = update["target_entry_uuid"]
    async with store.lock(f"entry:{entry}"):
        previous = store.get(update["ss_unique_id"])
        if previous is not None:  # a retry of the same submission: the first answer
            if previous.get("target_entry_uuid") != entry:
                return answer(
                    [
                        RegistryError(
                            "XDSDuplicateUniqueIdInRegistry",
                            "SubmissionSet uniqueId already used",
                            entry,
                        )
                    ]
                )
        else:
            target = store.find("entry_uuid", entry)
            error = status_update_error(
                target, update["patient_id"], update["original_status"], entry
            )
            if error is not None:
                return answer([RegistryError(error[0], error[1], entry)])
            assert target is not None
            store.put(
                update["ss_unique_id"],
                raw,
                "update.xml",
                {
                    **update,
                    "transport": "ITI-57",
                    "received_at": datetime.now(UTC).isoformat(),
                    "idempotency_key": request.headers.get("Idempotency-Key"),
                },
            )
            _withdraw(store, target, update["ss_unique_id"])
    if fault == "lost":
        raise web.HTTPServiceUnavailable(text="simulated lost answer")
    return answer([])


def _update_entry(bundle: dict[str, Any]) -> dict[str, Any] | None:
    """The DocumentReference entry of an update Bundle (``PUT``), or None for a publication."""
    for e in bundle.get("entry") or []:
        if not isinstance(e, dict):
            continue
        req, res = e.get("request") or {}, e.get("resource") or {}
        if req.get("method") == "PUT" and res.get("resourceType") == "DocumentReference":
            return e
    return None


def check_update_bundle(
    bundle: dict[str, Any], entry: dict[str, Any]
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    if bundle.get("type") != "transaction":
        return [("structure", "the Bundle must be a transaction")], {}
    docref = entry["resource"]
    lists = [
        e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e, dict) and (e.get("resource") or {}).get("resourceType") == "List"
    ]
    if not lists:
        return [("required", "missing List (SubmissionSet)")], {}
    issues: list[tuple[str, str]] = []
    code = ((lists[0].get("code") or {}).get("coding") or [{}])[0]
    if code.get("code") != "submissionset":
        issues.append(("invariant", "List.code must be submissionset"))
    if docref.get("status") != "entered-in-error":
        issues.append(
            ("not-supported", "only DocumentReference.status entered-in-error can be updated")
        )
    master = str((docref.get("masterIdentifier") or {}).get("value") or "")
    url = str(entry["request"].get("url") or "")
    if (
        not url.startswith("DocumentReference?identifier=")
        or not url.endswith(master)
        or not master
    ):
        issues.append(("value", "request.url must select the masterIdentifier"))
    subject = (docref.get("subject") or {}).get("identifier") or {}
    if subject.get("system") != f"urn:oid:{xds.MATRICULE_OID}" or matricule_problem(
        str(subject.get("value", ""))
    ):
        issues.append(("value", "DocumentReference.subject must be a Luxembourg matricule"))
    if ((lists[0].get("subject") or {}).get("identifier") or {}) != subject:
        issues.append(
            ("invariant", "XDSPatientIdDoesNotMatch: List and DocumentReference subjects differ")
        )
    return issues, {
        "target_unique_id": master.removeprefix("urn:oid:"),
        "patient_id": str(subject.get("value", "")),
    }


async def mhd_update(
    request: web.Request, bundle: dict[str, Any], entry: dict[str, Any], fault: str | None
) -> web.Response:
    store = request.app[STORE]
    issues, update = check_update_bundle(bundle, entry)
    if issues:
        return operation_outcome(422, *issues)
    unique = update["target_unique_id"]
    key = request.headers.get("Idempotency-Key") or f"update-{uuid.uuid4()}"
    async with store.lock(unique):
        target = store.get(unique)
        if target is None:
            return operation_outcome(
                404, ("not-found", f"UnresolvedReferenceException: no DocumentReference {unique}")
            )
        if _patient_key(str(target.get("patient_id"))) != update["patient_id"]:
            return operation_outcome(
                422, ("business-rule", "XDSPatientIdDoesNotMatch: another patient's document")
            )
        if target.get("replaced_by"):
            return operation_outcome(
                422,
                (
                    "business-rule",
                    "XDSRegistryDeprecatedDocumentError: the document was replaced",
                ),
            )
        if store.get(key) is None and target.get("status") != "entered-in-error":
            store.put(
                key,
                json.dumps(bundle, indent=1).encode(),
                "update.json",
                {
                    **update,
                    "transport": "ITI-65 update",
                    "new_status": "entered-in-error",
                    "received_at": datetime.now(UTC).isoformat(),
                    "idempotency_key": request.headers.get("Idempotency-Key"),
                },
            )
            _withdraw(store, target, key, status="entered-in-error")
    if fault == "lost":
        raise web.HTTPServiceUnavailable(text="simulated lost answer")
    return transaction_response(
        ("201 Created", f"List/{uuid.uuid5(uuid.NAMESPACE_OID, key)}"),
        ("200 OK", f"DocumentReference/{uuid.uuid5(uuid.NAMESPACE_URL, unique)}"),
    )
