"""``/api/v1/rcp``: the JSON API, so a hospital record system (bearer API token) can submit
cases and fetch outcomes, and boards can be run without the web pages."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from konsil.errors import ValidationError
from konsil.web.request import file_response, json_response, read_json
from rcp.domain.lifecycle import CaseState
from rcp.service import MAX_ATTACHMENT_BYTES
from rcp.web.common import (
    as_int,
    base_url,
    board_json,
    board_view_json,
    caller,
    case_json,
    session_json,
    svc,
)

routes = web.RouteTableDef()
P = "/api/v1/rcp"


def _version(body: dict[str, Any]) -> int | None:
    v = body.get("version")
    return None if v is None else as_int(v, "version")


def ics(data: bytes, filename: str) -> web.Response:
    return file_response(data, "text/calendar", filename, inline=True, charset="utf-8")


# ---------------------------------------------------------------- boards


@routes.get(P + "/boards")
async def boards(request: web.Request) -> web.Response:
    caller(request)
    return json_response({"boards": [board_json(b) for b in await svc(request).boards()]})


@routes.post(P + "/boards")
async def board_create(request: web.Request) -> web.Response:
    p, ip = caller(request)
    body = await read_json(request)
    board = await svc(request).do_create_board(
        p,
        str(body.get("name", "")),
        str(body.get("tumour_domain", "")),
        body.get("host_organisation_id"),
        ip=ip,
    )
    return json_response(board_view_json(await svc(request).board(board.id)), status=201)


@routes.get(P + "/boards/{id}")
async def board_get(request: web.Request) -> web.Response:
    caller(request)
    return json_response(board_view_json(await svc(request).board(request.match_info["id"])))


@routes.post(P + "/boards/{id}/members")
async def board_member(request: web.Request) -> web.Response:
    p, ip = caller(request)
    body = await read_json(request)
    await svc(request).do_add_member(
        p,
        request.match_info["id"],
        str(body.get("username", "")),
        specialty=body.get("specialty") or None,
        chair=bool(body.get("chair")),
        coordinator=bool(body.get("coordinator")),
        ip=ip,
    )
    return json_response(board_view_json(await svc(request).board(request.match_info["id"])))


@routes.delete(P + "/boards/{id}/members/{account}")
async def board_member_remove(request: web.Request) -> web.Response:
    p, ip = caller(request)
    await svc(request).do_remove_member(
        p, request.match_info["id"], request.match_info["account"], ip=ip
    )
    return json_response(board_view_json(await svc(request).board(request.match_info["id"])))


@routes.put(P + "/boards/{id}/quorum")
async def board_quorum(request: web.Request) -> web.Response:
    p, ip = caller(request)
    body = await read_json(request)
    required = body.get("required", [])
    if not isinstance(required, list):
        raise ValidationError("required must be a list", fields={"required": "a list of codes"})
    rule = await svc(request).do_set_quorum(
        p,
        request.match_info["id"],
        as_int(body.get("min_physicians"), "min_physicians", 3),
        as_int(body.get("min_specialties"), "min_specialties", 3),
        [str(r) for r in required],
        ip=ip,
    )
    return json_response(rule.to_json())


@routes.post(P + "/boards/{id}/schedules")
async def board_schedule(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    sessions = await svc(request).do_add_schedule(
        p,
        request.match_info["id"],
        weekday=as_int(b.get("weekday"), "weekday"),
        start=str(b.get("start", "")),
        duration_minutes=as_int(b.get("duration_minutes"), "duration_minutes", 90),
        capacity=as_int(b.get("capacity"), "capacity", 20),
        deadline_hours=as_int(b.get("deadline_hours"), "deadline_hours", 48),
        place=str(b.get("place") or ""),
        video_link=str(b.get("video_link") or ""),
        weeks=as_int(b.get("weeks"), "weeks", 8),
        ip=ip,
    )
    return json_response({"sessions": [session_json(s) for s in sessions]}, status=201)


@routes.post(P + "/boards/{id}/sessions")
async def board_session(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    sess = await svc(request).do_create_session(
        p,
        request.match_info["id"],
        starts_local=str(b.get("starts_at", "")),
        duration_minutes=as_int(b.get("duration_minutes"), "duration_minutes", 90),
        capacity=as_int(b.get("capacity"), "capacity", 20),
        deadline_hours=as_int(b.get("deadline_hours"), "deadline_hours", 48),
        place=str(b.get("place") or ""),
        video_link=str(b.get("video_link") or ""),
        ip=ip,
    )
    return json_response(session_json(sess), status=201)


@routes.get(P + "/boards/{id}/sessions")
async def board_sessions(request: web.Request) -> web.Response:
    caller(request)
    rows = await svc(request).sessions(request.match_info["id"])
    return json_response({"sessions": [session_json(s) for s in rows]})


@routes.get(P + "/boards/{id}/cases")
async def board_cases(request: web.Request) -> web.Response:
    """A board's cases by state (members only; each listed case is an audited read)."""
    p, ip = caller(request)
    raw = request.query.get("state", "SUBMITTED")
    try:
        states = [CaseState(x.strip().upper()) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ValidationError(
            "unknown state", fields={"state": "comma-separated case states"}
        ) from None
    items = await svc(request).board_cases(p, request.match_info["id"], states, ip=ip)
    return json_response(
        {
            "cases": [
                {
                    "id": i.case.id,
                    "state": i.case.state,
                    "patient_id": i.patient.id,
                    "session_id": i.case.session_id,
                    "priority": i.case.fiche.get("priority", 0),
                }
                for i in items
            ]
        }
    )


@routes.get(P + "/boards/{id}/calendar.ics")
async def board_calendar(request: web.Request) -> web.Response:
    p, _ = caller(request)
    data = await svc(request).board_feed(p, request.match_info["id"], base_url(request))
    return ics(data, "rcp-board.ics")


@routes.get(P + "/calendar.ics")
async def my_calendar(request: web.Request) -> web.Response:
    p, _ = caller(request)
    return ics(await svc(request).member_feed(p, base_url(request)), "rcp.ics")


# ---------------------------------------------------------------- sessions


@routes.get(P + "/sessions/{id}")
async def session_get(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).session_view(p, request.match_info["id"], ip=ip)
    return json_response(
        {
            **session_json(v.session),
            "agenda": [
                {"case_id": i.case.id, "position": n, "state": i.case.state}
                for n, i in enumerate(v.agenda)
            ],
            "quorum": v.quorum.to_json(),
        }
    )


@routes.post(P + "/sessions/{id}/cancel")
async def session_cancel(request: web.Request) -> web.Response:
    p, ip = caller(request)
    postponed = await svc(request).do_cancel_session(p, request.match_info["id"], ip=ip)
    return json_response({"status": "cancelled", "postponed_cases": postponed})


@routes.get(P + "/sessions/{id}/quorum")
async def session_quorum(request: web.Request) -> web.Response:
    p, _ = caller(request)
    return json_response((await svc(request).quorum(p, request.match_info["id"])).to_json())


@routes.post(P + "/sessions/{id}/attendance")
async def session_attendance(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    status = await svc(request).do_check_in(
        p,
        request.match_info["id"],
        str(b.get("account_id") or p.account_id),
        b.get("present", True) is not False,
        ip=ip,
    )
    return json_response(status.to_json())


@routes.get(P + "/sessions/{id}/invite.ics")
async def session_invite(request: web.Request) -> web.Response:
    p, _ = caller(request)
    data = await svc(request).invitation(p, request.match_info["id"], base_url(request))
    return ics(data, "rcp-session.ics")


# ---------------------------------------------------------------- cases


async def _case(request: web.Request, case_id: str, status: int = 200) -> web.Response:
    p, ip = caller(request)
    return json_response(case_json(await svc(request).get_case(p, case_id, ip=ip)), status=status)


@routes.post(P + "/cases")
async def case_create(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    fiche = b.get("fiche") or {}
    if not isinstance(fiche, dict):
        raise ValidationError("fiche must be an object", fields={"fiche": "an object"})
    patient = b.get("patient_id") or b.get("matricule") or ""
    case = await svc(request).do_create_case(
        p, str(b.get("board_id", "")), str(patient), fiche, submit=bool(b.get("submit")), ip=ip
    )
    return await _case(request, case.id, 201)


@routes.get(P + "/cases")
async def case_list(request: web.Request) -> web.Response:
    p, ip = caller(request)
    rows = await svc(request).my_cases(p, ip=ip)
    return json_response(
        {
            "cases": [
                {
                    "id": c.id,
                    "board_id": b.id,
                    "patient_id": pat.id,
                    "state": c.state,
                    "updated_at": c.updated_at.isoformat(),
                }
                for c, pat, b in rows
            ]
        }
    )


@routes.get(P + "/cases/{id}")
async def case_get(request: web.Request) -> web.Response:
    return await _case(request, request.match_info["id"])


@routes.put(P + "/cases/{id}")
async def case_update(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    fiche = b.get("fiche") or {}
    if not isinstance(fiche, dict):
        raise ValidationError("fiche must be an object", fields={"fiche": "an object"})
    await svc(request).do_update_fiche(
        p,
        request.match_info["id"],
        fiche,
        submit=bool(b.get("submit")),
        expected_version=_version(b),
        ip=ip,
    )
    return await _case(request, request.match_info["id"])


@routes.post(P + "/cases/{id}/transitions")
async def case_transition(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    await svc(request).do_transition(
        p,
        request.match_info["id"],
        str(b.get("action", "")),
        session_id=b.get("session_id"),
        note=str(b.get("note") or ""),
        expected_version=_version(b),
        ip=ip,
    )
    return await _case(request, request.match_info["id"])


@routes.post(P + "/cases/{id}/move")
async def case_move(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    await svc(request).do_move(p, request.match_info["id"], as_int(b.get("delta"), "delta"), ip=ip)
    return await _case(request, request.match_info["id"])


@routes.post(P + "/cases/{id}/decision")
async def case_decision(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    await svc(request).do_decide(
        p, request.match_info["id"], b, expected_version=_version(b), ip=ip
    )
    return await _case(request, request.match_info["id"])


@routes.post(P + "/cases/{id}/report")
async def case_report_draft(request: web.Request) -> web.Response:
    p, ip = caller(request)
    report = await svc(request).do_draft_report(p, request.match_info["id"], ip=ip)
    return json_response(report.to_json(), status=201)


@routes.post(P + "/cases/{id}/sign")
async def case_sign(request: web.Request) -> web.Response:
    p, ip = caller(request)
    b = await read_json(request)
    await svc(request).do_sign(p, request.match_info["id"], str(b.get("password", "")), ip=ip)
    if b.get("publish", True) is not False:
        await svc(request).do_publish(p, request.match_info["id"], ip=ip)
    return await _case(request, request.match_info["id"])


@routes.post(P + "/cases/{id}/publish")
async def case_publish(request: web.Request) -> web.Response:
    p, ip = caller(request)
    await svc(request).do_publish(p, request.match_info["id"], ip=ip)
    return await _case(request, request.match_info["id"])


@routes.get(P + "/cases/{id}/outcome")
async def case_outcome(request: web.Request) -> web.Response:
    """What a hospital record system polls: state, and the signed report once there is one."""
    p, ip = caller(request)
    v = await svc(request).get_case(p, request.match_info["id"], purpose="outcome", ip=ip)
    state = CaseState(v.case.state)
    signed = state in (CaseState.VALIDATED, CaseState.PUBLISHED)
    return json_response(
        {
            "id": v.case.id,
            "state": state.value,
            "status_note": v.case.status_note,
            "report": v.case.report if signed else None,
            "publication_ref": v.case.publication_ref,
        }
    )


@routes.post(P + "/cases/{id}/attachments")
async def case_attach(request: web.Request) -> web.Response:
    """Raw file body; ``Content-Type`` is the file's type, ``?filename=`` its name."""
    p, ip = caller(request)
    if request.content_length is not None and request.content_length > MAX_ATTACHMENT_BYTES:
        raise ValidationError("too large", fields={"file": "at most 20 MiB"})
    data = await request.content.read(MAX_ATTACHMENT_BYTES + 1)
    att = await svc(request).do_add_attachment(
        p,
        request.match_info["id"],
        request.query.get("filename", "file"),
        request.content_type,
        data,
        ip=ip,
    )
    return json_response({"id": att.id, "filename": att.filename, "size": att.size}, status=201)


# ---------------------------------------------------------------- OpenAPI

PROBLEM = {"$ref": "#/components/responses/Problem"}
_PATHS: list[tuple[str, str, str, str | None]] = [
    # path, method, summary, request schema
    ("/boards", "get", "List tumour boards", None),
    ("/boards", "post", "Create a board (coordinators)", "RcpBoardInput"),
    ("/boards/{id}", "get", "A board with its members and quorum rule", None),
    (
        "/boards/{id}/members",
        "post",
        "Add or update a member (specialty, chair, coordinator)",
        None,
    ),
    (
        "/boards/{id}/members/{account}",
        "delete",
        "Remove a member (not the last coordinator); they leave the board's Matrix room",
        None,
    ),
    ("/boards/{id}/quorum", "put", "Set the board's quorum rule", "RcpQuorumRule"),
    ("/boards/{id}/schedules", "post", "Weekly schedule; generates the next sessions", None),
    ("/boards/{id}/sessions", "post", "A one-off session", None),
    ("/boards/{id}/sessions", "get", "The board's sessions", None),
    ("/boards/{id}/cases", "get", "The board's cases by state (?state=SUBMITTED,POSTPONED)", None),
    ("/boards/{id}/calendar.ics", "get", "iCalendar feed of the board's sessions", None),
    ("/calendar.ics", "get", "iCalendar feed of the caller's boards", None),
    ("/sessions/{id}", "get", "A session with its agenda and quorum", None),
    ("/sessions/{id}/cancel", "post", "Cancel a session; its cases are postponed", None),
    ("/sessions/{id}/quorum", "get", "Live quorum of a session", None),
    ("/sessions/{id}/attendance", "post", "Check a member in or out", None),
    ("/sessions/{id}/invite.ics", "get", "iCalendar invitation (REQUEST or CANCEL)", None),
    ("/cases", "post", "Create (and optionally submit) a fiche RCP", "RcpCaseInput"),
    ("/cases", "get", "The caller's referred cases", None),
    ("/cases/{id}", "get", "A case (audited read)", None),
    (
        "/cases/{id}",
        "put",
        "Edit the fiche of a draft or a case needing information",
        "RcpCaseInput",
    ),
    (
        "/cases/{id}/transitions",
        "post",
        "submit, request_info, reject, schedule, postpone, cancel",
        "RcpTransition",
    ),
    ("/cases/{id}/move", "post", "Move a case up or down its session's agenda", None),
    (
        "/cases/{id}/decision",
        "post",
        "Record the board's decision (quorum required)",
        "RcpDecision",
    ),
    ("/cases/{id}/report", "post", "Draft the RCP report from the decision", None),
    ("/cases/{id}/sign", "post", "A chair signs the report (password) and publishes it", None),
    ("/cases/{id}/publish", "post", "Publish a signed report (retry)", None),
    ("/cases/{id}/outcome", "get", "State and signed report of a case", None),
    (
        "/cases/{id}/attachments",
        "post",
        "Attach a file (PDF, PNG, JPEG, DICOM, text; 20 MiB)",
        None,
    ),
]


def openapi_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, method, summary, schema in _PATHS:
        op: dict[str, Any] = {
            "tags": ["rcp"],
            "summary": summary,
            "responses": {
                "200": {"description": "ok"},
                "400": PROBLEM,
                "401": PROBLEM,
                "403": PROBLEM,
                "404": PROBLEM,
                "409": PROBLEM,
            },
        }
        if "{id}" in path:
            op["parameters"] = [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        if schema:
            op["requestBody"] = {
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                }
            }
        paths.setdefault(P + path, {})[method] = op
    return paths


def openapi_schemas() -> dict[str, Any]:
    s, i, b = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    return {
        "RcpBoardInput": {
            "type": "object",
            "required": ["name", "tumour_domain"],
            "properties": {"name": s, "tumour_domain": s, "host_organisation_id": s},
        },
        "RcpQuorumRule": {
            "type": "object",
            "properties": {
                "min_physicians": i,
                "min_specialties": i,
                "required": {
                    "type": "array",
                    "items": s,
                    "description": "specialty codes; 'surgical' = any surgical specialty",
                },
            },
        },
        "RcpFiche": {
            "type": "object",
            "properties": {
                "question": s,
                "icd10": {
                    "type": "string",
                    "pattern": "^C(0[0-9]|[1-8][0-9]|9[0-7])(\\.[0-9]{1,2})?$",
                },
                "icdo_topography": {"type": "string", "pattern": "^C[0-9]{2}\\.[0-9]$"},
                "icdo_morphology": {"type": "string", "pattern": "^[0-9]{4}/[012369]$"},
                "origin": {"enum": ["primary", "secondary", "recurrence"]},
                "laterality": {
                    "enum": ["left", "right", "bilateral", "midline", "not-applicable", "unknown"]
                },
                "tnm_kind": {"enum": ["c", "p", "yc", "yp"]},
                "tnm_t": s,
                "tnm_n": s,
                "tnm_m": s,
                "stage_group": s,
                "tnm_edition": {"enum": [7, 8, 9]},
                "ecog": {"type": "integer", "minimum": 0, "maximum": 4},
                "history": s,
                "exams": s,
                "patient_informed": b,
                "priority": {"enum": [0, 1, 2]},
                "presentation": {
                    "enum": ["first-presentation", "re-presentation", "for-information"]
                },
                "diagnosis_label": s,
                "topography_label": s,
                "morphology_label": s,
            },
        },
        "RcpCaseInput": {
            "type": "object",
            "properties": {
                "board_id": s,
                "patient_id": s,
                "matricule": {"type": "string", "pattern": "^[0-9]{13}$"},
                "fiche": {"$ref": "#/components/schemas/RcpFiche"},
                "submit": b,
                "version": i,
            },
        },
        "RcpTransition": {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {
                    "enum": ["submit", "request_info", "reject", "schedule", "postpone", "cancel"]
                },
                "session_id": s,
                "note": s,
                "version": i,
            },
        },
        "RcpDecision": {
            "type": "object",
            "properties": {
                "proposal": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"kind": s, "detail": s}},
                },
                "guideline_conform": b,
                "deviation_justification": s,
                "trial_proposed": b,
                "trial_name": s,
                "trial_id": s,
                "guideline": s,
                "conclusion": s,
                "version": i,
            },
        },
    }
