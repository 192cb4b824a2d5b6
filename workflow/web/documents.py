"""Documents on the web: the author's view, a patient's documents, downloads, corrections.

Pages under ``/documents`` and ``/patients/{id}/documents``; the same data as JSON under
``/api/v1`` (described in the OpenAPI document). Access rules and auditing live in
``workflow.views``; corrections in ``workflow.corrections``; handlers only parse and render.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from konsil.auth.service import Principal
from konsil.errors import Conflict, KonsilError, ValidationError
from konsil.web.api import PROBLEM
from konsil.web.request import (
    actor_of,
    file_response,
    json_response,
    read_form,
    read_json,
    render,
    require_role,
)
from workflow.cda import codes
from workflow.cda.prescription import MAX_LINES
from workflow.cda.printable import narrative_sections, printable_pdf
from workflow.corrections import BOARD_KINDS, CORRECTABLE, FLAGS, CorrectionForm, flatten
from workflow.models import DOC_STATUSES
from workflow.views import Cursor, DocumentSummary, Filters, Opened, Page
from workflow.web.keys import CORRECTIONS, VIEWS, WORKER

routes = web.RouteTableDef()
# The correction body's schema, per kind of document (workflow.corrections.CORRECTABLE).
CORRECTION_SCHEMAS = {
    "sick-leave": "SickLeaveCorrection",
    "teleconsultation-report": "TeleconsultationCorrection",
    "prescription": "PrescriptionCorrection",
}
API = "/api/v1"
COPIES = ("patient", "employer")


def _user(request: web.Request) -> Principal:
    return require_role(request, "admin", "practitioner", "coordinator")


def _filters(request: web.Request) -> Filters:
    return Filters.parse(request.query.get("status"), request.query.get("kind"))


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "200")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ValidationError("limit must be 1 to 500", fields={"limit": "1 to 500"})
    return int(raw)


def _after(request: web.Request) -> Cursor | None:
    return Cursor.parse(request.query.get("after"))


def _next_url(request: web.Request, page: Page) -> str | None:
    """The same listing (filters and limit kept), from the page's end."""
    if page.next_cursor is None:
        return None
    query = {k: v for k, v in request.query.items() if k != "after"}
    return str(request.rel_url.with_query({**query, "after": page.next_cursor}))


def _listing_json(request: web.Request, page: Page) -> dict[str, Any]:
    return {
        "documents": [summary_json(r) for r in page.rows],
        "next_cursor": page.next_cursor,
        "links": {"next": _next_url(request, page)},
    }


def _wake(request: web.Request) -> None:
    worker = request.app.get(WORKER)
    if worker is not None:
        worker.wake()


def summary_json(d: DocumentSummary) -> dict[str, Any]:
    return {
        "id": d.id,
        "set_id": d.set_id,
        "version": d.version,
        "kind": d.kind,
        "type_code": d.type_code,
        "type_display": d.type_display,
        "status": d.status,
        "confidentiality": d.confidentiality,
        "created_at": d.created_at.isoformat(),
        "patient": {"id": d.patient_id, "name": d.patient_name, "matricule": d.patient_matricule},
        "author": {"account_id": d.author_account_id, "name": d.author_name},
        "replaces_id": d.replaces_id,
        "replaced_by_id": d.replaced_by_id,
        "size": d.size,
        "sha256": d.sha256,
        "signed": d.signed,
        "rejection": d.rejection,
        "deliveries": [
            {
                "target": x.target,
                "status": x.status,
                "attempts": x.attempts,
                "reference": x.reference,
                "error": x.error,
                "delivered_at": x.delivered_at.isoformat() if x.delivered_at else None,
                "replaces": x.replaces,
                "kind": x.kind,
            }
            for x in d.deliveries
        ],
        "links": {
            "self": f"{API}/documents/{d.id}",
            "cda": f"{API}/documents/{d.id}/cda",
            "signature": f"{API}/documents/{d.id}/signature",
            "pdf": f"{API}/documents/{d.id}/pdf",
        },
    }


# ---------------------------------------------------------------- pages


@routes.get("/documents", name="documents")
async def my_documents(request: web.Request) -> web.Response:
    principal = _user(request)
    filters = _filters(request)
    page = await request.app[VIEWS].authored(
        actor_of(request), principal, filters, limit=_limit(request), after=_after(request)
    )
    return render(
        request,
        "workflow/documents.html",
        {
            "rows": page.rows,
            "next_url": _next_url(request, page),
            "filters": filters,
            "statuses": DOC_STATUSES,
            "kinds": codes.BY_KIND,
        },
    )


@routes.get("/patients/{patient_id}/documents", name="patient_documents")
async def patient_documents(request: web.Request) -> web.Response:
    principal = _user(request)
    filters = _filters(request)
    patient, page = await request.app[VIEWS].of_patient(
        actor_of(request),
        principal,
        request.match_info["patient_id"],
        filters,
        limit=_limit(request),
        after=_after(request),
    )
    return render(
        request,
        "workflow/patient_documents.html",
        {
            "patient": patient,
            "rows": page.rows,
            "next_url": _next_url(request, page),
            "filters": filters,
            "statuses": DOC_STATUSES,
            "kinds": codes.BY_KIND,
        },
    )


@routes.get("/documents/{document_id}", name="document")
async def document_page(request: web.Request) -> web.Response:
    principal = _user(request)
    opened = await request.app[VIEWS].open(
        actor_of(request), principal, request.match_info["document_id"]
    )
    sections = await asyncio.to_thread(narrative_sections, opened.document.content)
    return render(
        request,
        "workflow/document.html",
        {
            "d": opened.summary,
            "versions": opened.versions,
            "sections": sections,
            "is_author": opened.access == "author",
            "correctable": CORRECTABLE,
            "board_kinds": BOARD_KINDS,
            "corrected": request.query.get("corrected"),
        },
    )


@routes.get("/documents/{document_id}/correct", name="document_correct")
async def correct_form(request: web.Request) -> web.Response:
    page = await request.app[CORRECTIONS].form(
        actor_of(request), _user(request), request.match_info["document_id"]
    )
    return _correction_page(request, page, None)


@routes.post("/documents/{document_id}/correct")
async def correct_submit(request: web.Request) -> web.Response:
    principal = _user(request)
    form = await read_form(request)
    form.pop("csrf_token", None)  # checked by the middleware; not a field of the document
    document_id = request.match_info["document_id"]
    corrections = request.app[CORRECTIONS]
    try:
        new = await corrections.do_correct(actor_of(request), principal, document_id, form)
    except (ValidationError, Conflict) as exc:
        page = await corrections.form(
            actor_of(request), principal, document_id, submitted=form, refused=exc
        )
        return _correction_page(request, page, exc, status=exc.status)
    _wake(request)
    raise web.HTTPSeeOther(f"/documents/{new.id}?corrected=1")


def _correction_page(
    request: web.Request,
    page: CorrectionForm,
    error: KonsilError | None,
    *,
    status: int = 200,
) -> web.Response:
    return render(
        request,
        "workflow/correct.html",
        {
            "page": page,
            "form": page.values,
            "error": error,
            "kinds": codes.SICK_LEAVE_KINDS,
            "accident_kinds": codes.ACCIDENT_KINDS,
            "flags": FLAGS,
            "modalities": codes.TELE_MODALITIES,
            "units": codes.UNITS,
            "routes": codes.ROUTES,
            "frequency_units": codes.FREQUENCY_UNITS,
            "max_lines": MAX_LINES,
        },
        status=status,
    )


@routes.post("/documents/{document_id}/entered-in-error")
async def entered_in_error_page(request: web.Request) -> web.Response:
    principal = _user(request)
    await read_form(request)  # the CSRF token was checked by the middleware
    doc = await request.app[CORRECTIONS].do_enter_in_error(
        actor_of(request), principal, request.match_info["document_id"]
    )
    _wake(request)  # withdrawals were queued with the status change
    raise web.HTTPSeeOther(f"/documents/{doc.id}")


# ---------------------------------------------------------------- files (pages and API)


async def _open_for(request: web.Request, file: str) -> Opened:
    return await request.app[VIEWS].open(
        actor_of(request),
        _user(request),
        request.match_info["document_id"],
        action="document.print" if file == "pdf" else "document.download",
        details={
            "file": file,
            **({"copy": request.query["copy"]} if "copy" in request.query else {}),
        },
    )


@routes.get("/documents/{document_id}/cda")
@routes.get(API + "/documents/{document_id}/cda")
async def download_cda(request: web.Request) -> web.Response:
    doc = (await _open_for(request, "cda")).document
    return file_response(doc.content, doc.mime_type, f"{doc.type_code}-{doc.id}.xml")


@routes.get("/documents/{document_id}/signature")
@routes.get(API + "/documents/{document_id}/signature")
async def download_signature(request: web.Request) -> web.Response:
    doc = (await _open_for(request, "signature")).document
    if doc.signature is None:
        raise Conflict("the document is not signed", fields={"status": doc.status})
    # The raw 64-byte Ed25519 signature over the CDA's exact bytes (detached).
    return file_response(doc.signature, "application/octet-stream", f"{doc.type_code}-{doc.id}.sig")


@routes.get("/documents/{document_id}/pdf")
@routes.get(API + "/documents/{document_id}/pdf")
async def download_pdf(request: web.Request) -> web.Response:
    copy = request.query.get("copy", "patient")
    if copy not in COPIES:
        raise ValidationError("unknown copy", fields={"copy": "patient or employer"})
    doc = (await _open_for(request, "pdf")).document
    if doc.status != "final":
        raise Conflict(
            "only the current version of a document can be printed", fields={"status": doc.status}
        )
    pdf = await asyncio.to_thread(_pdf, doc.kind, doc.content, copy)
    name = f"{doc.type_code}-{doc.id}{'-' + copy if doc.kind == 'sick-leave' else ''}.pdf"
    return file_response(pdf, "application/pdf", name)


def _pdf(kind: str, xml: bytes, copy: str) -> bytes:
    return printable_pdf(kind, xml, "employer" if copy == "employer" else "patient")


# ---------------------------------------------------------------- JSON API


@routes.get(API + "/documents")
async def api_documents(request: web.Request) -> web.Response:
    page = await request.app[VIEWS].authored(
        actor_of(request),
        _user(request),
        _filters(request),
        limit=_limit(request),
        after=_after(request),
    )
    return json_response(_listing_json(request, page))


@routes.get(API + "/documents/{document_id}")
async def api_document(request: web.Request) -> web.Response:
    opened = await request.app[VIEWS].open(
        actor_of(request), _user(request), request.match_info["document_id"]
    )
    return json_response(
        {
            **summary_json(opened.summary),
            "versions": [
                {"id": v.id, "version": v.version, "status": v.status} for v in opened.versions
            ],
        }
    )


@routes.post(API + "/documents/{document_id}/corrections")
async def api_correct(request: web.Request) -> web.Response:
    principal = _user(request)
    body = flatten(await read_json(request))
    new = await request.app[CORRECTIONS].do_correct(
        actor_of(request), principal, request.match_info["document_id"], body
    )
    _wake(request)
    opened = await request.app[VIEWS].open(actor_of(request), principal, new.id)
    return json_response(summary_json(opened.summary), status=201)


@routes.post(API + "/documents/{document_id}/entered-in-error")
async def api_entered_in_error(request: web.Request) -> web.Response:
    principal = _user(request)
    doc = await request.app[CORRECTIONS].do_enter_in_error(
        actor_of(request), principal, request.match_info["document_id"]
    )
    _wake(request)
    opened = await request.app[VIEWS].open(actor_of(request), principal, doc.id)
    return json_response(summary_json(opened.summary))


@routes.get(API + "/patients/{patient_id}/documents")
async def api_patient_documents(request: web.Request) -> web.Response:
    patient, page = await request.app[VIEWS].of_patient(
        actor_of(request),
        _user(request),
        request.match_info["patient_id"],
        _filters(request),
        limit=_limit(request),
        after=_after(request),
    )
    return json_response({"patient_id": patient.id, **_listing_json(request, page)})


# ---------------------------------------------------------------- OpenAPI


def openapi_paths() -> dict[str, Any]:
    doc_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    pid = {"name": "patient_id", "in": "path", "required": True, "schema": {"type": "string"}}
    filters = [
        {"name": "status", "in": "query", "schema": {"enum": list(DOC_STATUSES)}},
        {"name": "kind", "in": "query", "schema": {"enum": list(codes.BY_KIND)}},
        {
            "name": "limit",
            "in": "query",
            "description": "newest first; default 200",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
        },
        {
            "name": "after",
            "in": "query",
            "description": "the next_cursor of the previous page (keyset paging: pages never "
            "shift when documents are added)",
            "schema": {"type": "string"},
        },
    ]
    errors = {"400": PROBLEM, "401": PROBLEM, "403": PROBLEM, "404": PROBLEM, "409": PROBLEM}

    def ok(schema: str) -> dict[str, Any]:
        return {
            "description": "ok",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }

    def file(ctype: str, what: str) -> dict[str, Any]:
        return {
            "tags": ["documents"],
            "summary": what,
            "parameters": [doc_id],
            "responses": {"200": {"description": what, "content": {ctype: {}}}, **errors},
        }

    pdf = file("application/pdf", "Printable PDF (sick leave: ?copy=patient|employer)")
    pdf["parameters"] = [doc_id, {"name": "copy", "in": "query", "schema": {"enum": list(COPIES)}}]
    return {
        f"{API}/documents": {
            "get": {
                "tags": ["documents"],
                "summary": "The documents the caller authored (newest first), with delivery status",
                "parameters": filters,
                "responses": {"200": ok("DocumentList"), **errors},
            }
        },
        f"{API}/documents/{{id}}": {
            "get": {
                "tags": ["documents"],
                "summary": "One document: author, or care relationship with its patient",
                "parameters": [doc_id],
                "responses": {"200": ok("Document"), **errors},
            }
        },
        f"{API}/documents/{{id}}/cda": {"get": file("text/xml", "The signed CDA, exact bytes")},
        f"{API}/documents/{{id}}/signature": {
            "get": file("application/octet-stream", "Detached Ed25519 signature (64 bytes)")
        },
        f"{API}/documents/{{id}}/pdf": {"get": pdf},
        f"{API}/documents/{{id}}/corrections": {
            "post": {
                "tags": ["documents"],
                "summary": "Author: replace a document by a corrected version, delivered where "
                "the old one went with the replacement relation (sick-leave certificate: CNS and "
                "DSP; teleconsultation report, prescription: DSP)",
                "description": "The body is the whole corrected value of the document's kind "
                "(sick-leave, teleconsultation-report, prescription): the schema is chosen by "
                "the document, not by the body. Field names are the CDA builder's; a refusal "
                "(problem+json, 400) names each wrong field the same way (diagnoses.0.code, "
                "lines.1.route), and a field the kind does not have is refused, not ignored. "
                "409: not the current final version, still being delivered, or an RCP report "
                "(a board's decision: marked entered in error and discussed again instead).",
                "parameters": [doc_id],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": f"#/components/schemas/{name}"}
                                    for name in CORRECTION_SCHEMAS.values()
                                ]
                            }
                        }
                    }
                },
                "responses": {"201": ok("Document"), **errors},
            }
        },
        f"{API}/documents/{{id}}/entered-in-error": {
            "post": {
                "tags": ["documents"],
                "summary": "Author: withdraw a document issued by mistake (receivers that "
                "accepted it are told: XDS ITI-57 / MHD entered-in-error / CNS cancellation)",
                "parameters": [doc_id],
                "responses": {"200": ok("Document"), **errors},
            }
        },
        f"{API}/patients/{{patient_id}}/documents": {
            "get": {
                "tags": ["documents"],
                "summary": "A patient's documents (admins, and practitioners who authored one)",
                "parameters": [pid, *filters],
                "responses": {"200": ok("DocumentList"), **errors},
            }
        },
    }


def openapi_schemas() -> dict[str, Any]:
    s = {"type": "string"}
    date = {"type": "string", "format": "date"}
    nullable = {"type": ["string", "null"]}
    number = {"type": ["number", "string"], "description": "decimal, e.g. 0.4"}
    return {
        "Document": {
            "type": "object",
            "properties": {
                "id": s,
                "set_id": s,
                "version": {"type": "integer"},
                "kind": {"enum": list(codes.BY_KIND)},
                "type_code": s,
                "status": {"enum": list(DOC_STATUSES)},
                "created_at": {"type": "string", "format": "date-time"},
                "patient": {"type": "object"},
                "replaces_id": nullable,
                "replaced_by_id": nullable,
                "rejection": nullable,
                "deliveries": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "target": {"enum": ["cns", "dsp"]},
                            "status": s,
                            "attempts": {"type": "integer"},
                            "reference": nullable,
                            "error": nullable,
                            "replaces": {"type": "boolean"},
                            "kind": {
                                "enum": ["document", "withdrawal"],
                                "description": "withdrawal: the document was entered in error "
                                "and the receiver is told to withdraw it",
                            },
                        },
                    },
                },
                "links": {"type": "object"},
            },
        },
        "DocumentList": {
            "type": "object",
            "properties": {
                "documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "pass as ?after= for the next page; null on the last page",
                },
                "links": {
                    "type": "object",
                    "properties": {"next": {"type": ["string", "null"]}},
                },
            },
        },
        "SickLeaveCorrection": {
            "type": "object",
            "required": ["kind", "start", "end"],
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": list(codes.SICK_LEAVE_KINDS)},
                "start": date,
                "end": date,
                "first_day_off": date,
                "diagnosis": {"type": "object", "properties": {"code": s, "label": s}},
                "accident": {
                    "type": "object",
                    "properties": {
                        "kind": {"enum": list(codes.ACCIDENT_KINDS)},
                        "date": date,
                        "reference": s,
                    },
                },
                "child": {
                    "type": "object",
                    "properties": {"matricule": s, "given_name": s, "family_name": s},
                },
                "expected_delivery": date,
                "stay_address": {
                    "type": "object",
                    "properties": {"street": s, "postal_code": s, "city": s, "country": s},
                },
                "outings_allowed": {"type": "boolean"},
                "hospitalised": {"type": "boolean"},
                "extension": {"type": "boolean"},
            },
        },
        "TeleconsultationCorrection": {
            "type": "object",
            "description": "The call (start, end, modality, patient_consent, consultants) is "
            "kept as signed and cannot be sent.",
            "required": ["reason", "findings", "plan"],
            "additionalProperties": False,
            "properties": {
                "reason": s,
                "present_illness": s,
                "findings": s,
                "plan": s,
                "diagnoses": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["code", "label"],
                        "properties": {"code": {**s, "description": "ICD-10"}, "label": s},
                    },
                },
                "follow_up": date,
            },
        },
        "PrescriptionCorrection": {
            "type": "object",
            "required": ["start", "lines"],
            "additionalProperties": False,
            "properties": {
                "start": date,
                "note": s,
                "lines": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_LINES,
                    "items": {"$ref": "#/components/schemas/PrescriptionLine"},
                },
            },
        },
        "PrescriptionLine": {
            "type": "object",
            "required": [
                "medication",
                "dose",
                "dose_unit",
                "route",
                "times",
                "period_unit",
                "duration_days",
                "quantity",
                "quantity_unit",
            ],
            "additionalProperties": False,
            "properties": {
                "medication": {
                    "type": "object",
                    "required": ["atc", "name"],
                    "properties": {"atc": {**s, "description": "ATC, e.g. J01CA04"}, "name": s},
                },
                "dose": number,
                "dose_unit": {"enum": list(codes.UNITS)},
                "route": {"enum": list(codes.ROUTES), "description": "EDQM route"},
                "times": {"type": "integer", "minimum": 1, "maximum": 24},
                "per": {"type": "integer", "minimum": 1, "default": 1},
                "period_unit": {"enum": list(codes.FREQUENCY_UNITS)},
                "duration_days": {"type": "integer", "minimum": 1},
                "quantity": number,
                "quantity_unit": {"enum": list(codes.UNITS)},
                "reimbursable": {"type": "boolean", "default": False},
                "instructions": s,
            },
        },
    }
