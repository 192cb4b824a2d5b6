"""DSP via IHE XDS.b ITI-41 Provide and Register Document Set-b (SOAP 1.2 + MTOM/XOP).

The request is a ``multipart/related`` MTOM package: the SOAP envelope (WS-Addressing action
``urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b``) with an ebRIM ``SubmitObjectsRequest`` — a
SubmissionSet ``RegistryPackage``, one stable ``ExtrinsicObject`` DocumentEntry, the HasMember
association (and an RPLC association for a replacement) — and the document itself as a binary
part referenced by ``xop:Include``. The answer is a ``RegistryResponse``, Success or Failure with
``RegistryError`` entries (ITI TF-3 §4.2, ITI TF-2 §3.41).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from lxml import etree

from konsil.clock import to_utc
from workflow.cda.xsd import parse
from workflow.connectors.http import classify_status
from workflow.outbox import Delivery, DeliveryResult, DocumentPayload

ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
RESPONSE_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"

NS = {
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "xop": "http://www.w3.org/2004/08/xop/include",
}

MATRICULE_OID = "1.3.182.4.4"
TYPE_CODE_SYSTEM = "1.3.182.5.9"
CONFIDENTIALITY_SYSTEM = "2.16.840.1.113883.5.25"

# ebRIM identifiers fixed by ITI TF-3 §4.2.5
STABLE_DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY_TYPE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
EXTERNAL_IDENTIFIER = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"

KONSIL_ROOT_OID = "1.3.182.99.1"  # placeholder OID arc for Konsil-assigned unique ids


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    display: str


@dataclass(frozen=True)
class EntryMetadata:
    """What the DSP needs to know about one document (the DocumentEntry's attributes)."""

    patient_matricule: str
    unique_id: str  # document uniqueId (OID form)
    entry_uuid: str  # urn:uuid:...
    submission_unique_id: str
    source_id: str
    type: Code
    class_code: Code
    format_code: Code
    confidentiality: Code
    practice_setting: Code
    facility_type: Code
    creation_time: str  # DTM, UTC: YYYYMMDDhhmmss
    language: str
    mime_type: str
    sha1: str
    size: int
    replaces_entry_uuid: str | None
    author_institution: str | None


def uuid_urn(hex_id: str) -> str:
    return uuid.UUID(hex=hex_id).urn


def oid_of(hex_id: str) -> str:
    """A document id (uuid hex) as an OID under the 2.25 UUID arc (ISO/IEC 9834-8)."""
    return f"2.25.{uuid.UUID(hex=hex_id).int}"


def replaced_of(doc: DocumentPayload | None, payload: Mapping[str, Any]) -> str | None:
    """The document a delivery replaces at the receiver: the payload's ``replaces.document_id``
    (the newest version that receiver accepted), none when the payload says ``"replaces": null``
    (send as an original), else the stored predecessor."""
    if doc is None or doc.replaces_id is None:
        return None
    if "replaces" in payload:
        named = payload["replaces"]
        if isinstance(named, Mapping) and isinstance(named.get("document_id"), str):
            return str(named["document_id"])
        return None
    return doc.replaces_id


def cx(matricule: str) -> str:
    return f"{matricule}^^^&{MATRICULE_OID}&ISO"


def dtm(value: datetime) -> str:
    return to_utc(value).strftime("%Y%m%d%H%M%S")


def entry_metadata(
    doc: DocumentPayload, payload: Mapping[str, Any], submitted_at: datetime
) -> EntryMetadata:
    def code(key: str, default: Code) -> Code:
        raw = payload.get(key)
        if isinstance(raw, Mapping):
            return Code(str(raw["code"]), str(raw["scheme"]), str(raw.get("display", "")))
        return default

    type_display = str(payload.get("type_display") or doc.type_code)
    replaced = replaced_of(doc, payload)
    return EntryMetadata(
        patient_matricule=str(payload["patient_matricule"]),
        unique_id=oid_of(doc.id),
        entry_uuid=uuid_urn(doc.id),
        submission_unique_id=f"{oid_of(doc.id)}.{int(submitted_at.timestamp())}",
        source_id=str(payload.get("source_id") or KONSIL_ROOT_OID),
        type=Code(doc.type_code, TYPE_CODE_SYSTEM, type_display),
        class_code=code("class_code", Code(doc.type_code, TYPE_CODE_SYSTEM, type_display)),
        format_code=code(
            "format_code",
            Code("urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3", "CDA R2"),
        ),
        confidentiality=Code(doc.confidentiality, CONFIDENTIALITY_SYSTEM, doc.confidentiality),
        practice_setting=code(
            "practice_setting", Code("general-practice", "1.3.182.5.1", "General practice")
        ),
        facility_type=code("facility_type", Code("hospital", "1.3.182.5.2", "Hospital")),
        creation_time=dtm(doc.created_at),
        language=str(payload.get("language") or "fr-LU"),
        mime_type=doc.mime_type,
        sha1=hashlib.sha1(doc.content).hexdigest(),  # noqa: S324 - XDS hash is SHA-1 by spec
        size=doc.size,
        replaces_entry_uuid=uuid_urn(replaced) if replaced else None,
        author_institution=payload.get("author_institution"),
    )


# ---------------------------------------------------------------- building the SOAP message


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _sub(parent: etree._Element, prefix: str, tag: str, /, **attrs: str) -> etree._Element:
    el: etree._Element = etree.SubElement(parent, _q(prefix, tag), attrs)
    return el


def _slot(parent: etree._Element, name: str, *values: str) -> None:
    slot = _sub(parent, "rim", "Slot", name=name)
    vl = _sub(slot, "rim", "ValueList")
    for v in values:
        _sub(vl, "rim", "Value").text = v


def _name(parent: etree._Element, text: str) -> None:
    n = _sub(parent, "rim", "Name")
    _sub(n, "rim", "LocalizedString", value=text)


def _classify(parent: etree._Element, scheme: str, obj: str, code: Code, cid: str) -> None:
    c = _sub(
        parent,
        "rim",
        "Classification",
        id=cid,
        objectType=CLASSIFICATION,
        classificationScheme=scheme,
        classifiedObject=obj,
        nodeRepresentation=code.code,
    )
    _slot(c, "codingScheme", code.scheme)
    _name(c, code.display)


def _ext_id(parent: etree._Element, scheme: str, obj: str, value: str, name: str, eid: str) -> None:
    e = _sub(
        parent,
        "rim",
        "ExternalIdentifier",
        id=eid,
        objectType=EXTERNAL_IDENTIFIER,
        identificationScheme=scheme,
        registryObject=obj,
        value=value,
    )
    _name(e, name)


def submit_objects_request(m: EntryMetadata, submission_time: str, doc_ref: str) -> etree._Element:
    """The ``ProvideAndRegisterDocumentSetRequest`` element, with the document as xop:Include."""
    req = etree.Element(_q("xdsb", "ProvideAndRegisterDocumentSetRequest"), nsmap=NS)
    sor = _sub(req, "lcm", "SubmitObjectsRequest")
    rol = _sub(sor, "rim", "RegistryObjectList")
    de = m.entry_uuid
    ss = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_OID, m.submission_unique_id))
    n = iter(range(1, 100))

    def cid() -> str:
        return f"cl{next(n):02d}"

    eo = _sub(
        rol,
        "rim",
        "ExtrinsicObject",
        id=de,
        mimeType=m.mime_type,
        objectType=STABLE_DOCUMENT_ENTRY,
    )
    _slot(eo, "creationTime", m.creation_time)
    _slot(eo, "hash", m.sha1)
    _slot(eo, "size", str(m.size))
    _slot(eo, "languageCode", m.language)
    _slot(eo, "sourcePatientId", cx(m.patient_matricule))
    _name(eo, m.type.display)
    auth = _sub(
        eo,
        "rim",
        "Classification",
        id=cid(),
        objectType=CLASSIFICATION,
        classificationScheme=DE_AUTHOR,
        classifiedObject=de,
        nodeRepresentation="",
    )
    if m.author_institution:
        _slot(auth, "authorInstitution", m.author_institution)
    _slot(auth, "authorRole", "physician")
    _classify(eo, DE_CLASS_CODE, de, m.class_code, cid())
    _classify(eo, DE_CONFIDENTIALITY, de, m.confidentiality, cid())
    _classify(eo, DE_FORMAT_CODE, de, m.format_code, cid())
    _classify(eo, DE_FACILITY_TYPE, de, m.facility_type, cid())
    _classify(eo, DE_PRACTICE_SETTING, de, m.practice_setting, cid())
    _classify(eo, DE_TYPE_CODE, de, m.type, cid())
    _ext_id(eo, DE_PATIENT_ID, de, cx(m.patient_matricule), "XDSDocumentEntry.patientId", "ei01")
    _ext_id(eo, DE_UNIQUE_ID, de, m.unique_id, "XDSDocumentEntry.uniqueId", "ei02")

    rp = _sub(rol, "rim", "RegistryPackage", id=ss)
    _slot(rp, "submissionTime", submission_time)
    _name(rp, "Konsil submission")
    _classify(rp, SS_CONTENT_TYPE, ss, m.class_code, cid())
    _ext_id(rp, SS_UNIQUE_ID, ss, m.submission_unique_id, "XDSSubmissionSet.uniqueId", "ei03")
    _ext_id(rp, SS_SOURCE_ID, ss, m.source_id, "XDSSubmissionSet.sourceId", "ei04")
    _ext_id(rp, SS_PATIENT_ID, ss, cx(m.patient_matricule), "XDSSubmissionSet.patientId", "ei05")
    _sub(
        rol,
        "rim",
        "Classification",
        id=cid(),
        objectType=CLASSIFICATION,
        classifiedObject=ss,
        classificationNode=SUBMISSION_SET_NODE,
    )
    assoc = _sub(
        rol,
        "rim",
        "Association",
        id="as01",
        associationType=HAS_MEMBER,
        sourceObject=ss,
        targetObject=de,
    )
    _slot(assoc, "SubmissionSetStatus", "Original")
    if m.replaces_entry_uuid:
        _sub(
            rol,
            "rim",
            "Association",
            id="as02",
            associationType=RPLC,
            sourceObject=de,
            targetObject=m.replaces_entry_uuid,
        )
    doc = _sub(req, "xdsb", "Document", id=de)
    _sub(doc, "xop", "Include", href=f"cid:{doc_ref}")
    return req


def soap_envelope(body: etree._Element, to: str, message_id: str, action: str = ACTION) -> bytes:
    env = etree.Element(_q("soap", "Envelope"), nsmap={"soap": NS["soap"], "wsa": NS["wsa"]})
    header = _sub(env, "soap", "Header")
    a = _sub(header, "wsa", "Action")
    a.set(_q("soap", "mustUnderstand"), "true")
    a.text = action
    _sub(header, "wsa", "MessageID").text = message_id
    if to:
        _sub(header, "wsa", "To").text = to
    reply = _sub(header, "wsa", "ReplyTo")
    _sub(reply, "wsa", "Address").text = "http://www.w3.org/2005/08/addressing/anonymous"
    _sub(env, "soap", "Body").append(body)
    out: bytes = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
    return out


@dataclass(frozen=True)
class Mtom:
    body: bytes
    content_type: str


def mtom_package(soap: bytes, doc_ref: str, document: bytes, mime_type: str) -> Mtom:
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    root = "<root.message@konsil>"
    parts = [
        f"--{boundary}\r\n".encode(),
        b'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n',
        b"Content-Transfer-Encoding: binary\r\n",
        f"Content-ID: {root}\r\n\r\n".encode(),
        soap,
        f"\r\n--{boundary}\r\n".encode(),
        f"Content-Type: {mime_type}\r\n".encode(),
        b"Content-Transfer-Encoding: binary\r\n",
        f"Content-ID: <{doc_ref}>\r\n\r\n".encode(),
        document,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    ctype = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
        f'start="{root}"; start-info="application/soap+xml"; action="{ACTION}"'
    )
    return Mtom(b"".join(parts), ctype)


def build_request(d: Delivery, to: str, now: datetime) -> Mtom:
    doc = d.document
    if doc is None:
        raise ValueError("an ITI-41 message must carry a document")
    meta = entry_metadata(doc, d.payload, now)
    doc_ref = f"doc-{doc.id}@konsil"
    req = submit_objects_request(meta, dtm(now), doc_ref)
    soap = soap_envelope(req, to, f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, d.idempotency_key)}")
    return mtom_package(soap, doc_ref, doc.content, doc.mime_type)


# ---------------------------------------------------------------- reading the answer


@dataclass(frozen=True)
class RegistryError:
    code: str
    context: str
    location: str = ""


@dataclass(frozen=True)
class RegistryResponse:
    success: bool
    errors: tuple[RegistryError, ...]


def soap_part(body: bytes, content_type: str) -> bytes:
    """The SOAP envelope of an answer, whether sent plain or as an MTOM package."""
    if not content_type.lower().startswith("multipart/"):
        return body
    marker = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip().strip('"')
    first = body.split(f"--{marker}".encode())[1]
    return first.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")


def parse_registry_response(envelope: bytes) -> RegistryResponse:
    root = parse(envelope)
    rr = root.find(".//rs:RegistryResponse", NS)
    if rr is None:
        raise ValueError("no RegistryResponse in the answer")
    errors = tuple(
        RegistryError(e.get("errorCode", ""), e.get("codeContext", ""), e.get("location", "") or "")
        for e in rr.iterfind(".//rs:RegistryError", NS)
    )
    return RegistryResponse(rr.get("status") == SUCCESS, errors)


def registry_response(errors: list[RegistryError]) -> etree._Element:
    rr = etree.Element(_q("rs", "RegistryResponse"), nsmap={"rs": NS["rs"]})
    rr.set("status", FAILURE if errors else SUCCESS)
    if errors:
        lst = _sub(rr, "rs", "RegistryErrorList")
        lst.set("highestSeverity", SEVERITY_ERROR)
        for e in errors:
            _sub(
                lst,
                "rs",
                "RegistryError",
                errorCode=e.code,
                codeContext=e.context,
                location=e.location,
                severity=SEVERITY_ERROR,
            )
    return rr


class XdsConnector:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def deliver(self, d: Delivery) -> DeliveryResult:
        # submissionTime is a protocol timestamp, not domain time
        pkg = build_request(d, self.url, datetime.now(UTC))
        async with self.session.post(
            self.url,
            data=pkg.body,
            headers={
                "Content-Type": pkg.content_type,
                "Idempotency-Key": d.idempotency_key,
                "SOAPAction": ACTION,
            },
        ) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
        if resp.status >= 500 and b"RegistryResponse" not in raw:
            return DeliveryResult("retry", self.url, resp.status, error=f"HTTP {resp.status}")
        try:
            rr = parse_registry_response(soap_part(raw, ctype))
        except (ValueError, etree.XMLSyntaxError, IndexError):
            verdict = classify_status(resp.status)
            return DeliveryResult(
                "rejected" if verdict == "rejected" else "retry",
                self.url,
                resp.status,
                error=f"HTTP {resp.status}: no RegistryResponse",
            )
        if rr.success:
            return DeliveryResult(
                "delivered",
                self.url,
                resp.status,
                reference=oid_of(d.document.id) if d.document else None,
            )
        reason = "; ".join(f"{e.code}: {e.context}" for e in rr.errors) or "Failure"
        transient = any(e.code in ("XDSRegistryBusy", "XDSRepositoryBusy") for e in rr.errors)
        return DeliveryResult(
            "retry" if transient else "rejected", self.url, resp.status, error=reason[:2000]
        )
