"""RCP web pages (French by default): boards, sessions and agenda, case form, live session,
decision form, report preview and signature, PPS, "my cases"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiohttp import web

from konsil import appkeys as K
from konsil.errors import KonsilError, ValidationError
from konsil.identity.specialties import SPECIALTIES
from konsil.web.request import (
    actor_of,
    file_response,
    form_text,
    read_form,
    render,
    require_role,
)
from rcp.domain.fiche import LATERALITIES, ORIGINS, TNM_KINDS
from rcp.domain.lifecycle import XDW_TASK, CaseState, actions_from
from rcp.domain.quorum import ANY_SURGERY
from rcp.domain.report import PROPOSAL_KINDS
from rcp.notices import MAX_ATTEMPTS
from rcp.service import TUMOUR_DOMAINS
from rcp.web.api import ics
from rcp.web.common import as_int, base_url, caller, svc
from rcp.web.keys import NOTICES

routes = web.RouteTableDef()
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def next_or(form: dict[str, str], default: str) -> str:
    """A redirect target from the form, only within the RCP pages."""
    target = form.get("next") or ""
    return target if target.startswith("/rcp/") else default


# ---------------------------------------------------------------- boards


@routes.get("/rcp", name="rcp_boards")
async def boards(request: web.Request) -> web.Response:
    caller(request)
    return render(request, "rcp/boards.html", await _boards_ctx(request))


async def _boards_ctx(request: web.Request) -> dict[str, Any]:
    return {
        "boards": await svc(request).boards(),
        "domains": TUMOUR_DOMAINS,
        "orgs": await request.app[K.IDENTITY].organisations(),
    }


@routes.post("/rcp/boards")
async def board_create(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await read_form(request)
    try:
        board = await svc(request).do_create_board(
            p,
            form.get("name", ""),
            form.get("tumour_domain", ""),
            form.get("host_organisation_id") or None,
            ip=ip,
        )
    except KonsilError as exc:
        ctx = await _boards_ctx(request)
        return render(
            request, "rcp/boards.html", {**ctx, "error": exc, "form": form}, status=exc.status
        )
    raise see_other(f"/rcp/boards/{board.id}")


@routes.get("/rcp/boards/{id}")
async def board_page(request: web.Request) -> web.Response:
    p, _ = caller(request)
    bv = await svc(request).board(request.match_info["id"])
    me = bv.member(p.account_id)
    return render(
        request,
        "rcp/board.html",
        {
            "bv": bv,
            "me": me,
            "manage": p.role == "admin" or (me is not None and me.is_coordinator),
            "sessions": await svc(request).sessions(bv.board.id),
            "specialties": SPECIALTIES,
            "any_surgery": ANY_SURGERY,
            "weekdays": WEEKDAYS,
        },
    )


@routes.post("/rcp/boards/{id}/members")
async def board_member(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await read_form(request)
    await svc(request).do_add_member(
        p,
        request.match_info["id"],
        form.get("username", ""),
        specialty=form.get("specialty") or None,
        chair=form.get("chair") == "1",
        coordinator=form.get("coordinator") == "1",
        ip=ip,
    )
    raise see_other(f"/rcp/boards/{request.match_info['id']}#members")


@routes.post("/rcp/boards/{id}/members/{account}/remove")
async def board_member_remove(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    await read_form(request)  # CSRF
    await svc(request).do_remove_member(
        p, request.match_info["id"], request.match_info["account"], ip=ip
    )
    raise see_other(f"/rcp/boards/{request.match_info['id']}#members")


@routes.post("/rcp/boards/{id}/quorum")
async def board_quorum(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await request.post()
    required = [str(v) for v in form.getall("required", []) if isinstance(v, str)]
    await svc(request).do_set_quorum(
        p,
        request.match_info["id"],
        as_int(form.get("min_physicians"), "min_physicians", 3),
        as_int(form.get("min_specialties"), "min_specialties", 3),
        required,
        ip=ip,
    )
    raise see_other(f"/rcp/boards/{request.match_info['id']}")


@routes.post("/rcp/boards/{id}/schedules")
async def board_schedule(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    f = await read_form(request)
    await svc(request).do_add_schedule(
        p,
        request.match_info["id"],
        weekday=as_int(f.get("weekday"), "weekday"),
        start=f.get("start", ""),
        duration_minutes=as_int(f.get("duration_minutes"), "duration_minutes", 90),
        capacity=as_int(f.get("capacity"), "capacity", 20),
        deadline_hours=as_int(f.get("deadline_hours"), "deadline_hours", 48),
        place=f.get("place", ""),
        video_link=f.get("video_link", ""),
        weeks=as_int(f.get("weeks"), "weeks", 8),
        ip=ip,
    )
    raise see_other(f"/rcp/boards/{request.match_info['id']}#sessions")


@routes.post("/rcp/boards/{id}/sessions")
async def board_session(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    f = await read_form(request)
    sess = await svc(request).do_create_session(
        p,
        request.match_info["id"],
        starts_local=f.get("starts_at", ""),
        duration_minutes=as_int(f.get("duration_minutes"), "duration_minutes", 90),
        capacity=as_int(f.get("capacity"), "capacity", 20),
        deadline_hours=as_int(f.get("deadline_hours"), "deadline_hours", 48),
        place=f.get("place", ""),
        video_link=f.get("video_link", ""),
        ip=ip,
    )
    raise see_other(f"/rcp/sessions/{sess.id}")


@routes.get("/rcp/boards/{id}/calendar.ics")
async def board_calendar(request: web.Request) -> web.Response:
    p, _ = caller(request)
    return ics(
        await svc(request).board_feed(p, request.match_info["id"], base_url(request)),
        "rcp-board.ics",
    )


@routes.get("/rcp/calendar.ics")
async def my_calendar(request: web.Request) -> web.Response:
    p, _ = caller(request)
    return ics(await svc(request).member_feed(p, base_url(request)), "rcp.ics")


# ---------------------------------------------------------------- sessions


@routes.get("/rcp/sessions/{id}")
async def session_page(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).session_view(p, request.match_info["id"], ip=ip)
    return render(request, "rcp/session.html", {"v": v, "live": False})


@routes.get("/rcp/sessions/{id}/live")
async def session_live(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).session_view(p, request.match_info["id"], ip=ip)
    return render(request, "rcp/live.html", {"v": v})


@routes.post("/rcp/sessions/{id}/attendance")
async def session_attendance(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    f = await read_form(request)
    await svc(request).do_check_in(
        p,
        request.match_info["id"],
        f.get("account_id") or p.account_id,
        f.get("present") == "1",
        ip=ip,
    )
    raise see_other(f"/rcp/sessions/{request.match_info['id']}/live")


async def act(request: web.Request, do: Callable[..., Awaitable[object]], then: str) -> NoReturn:
    """A button: ``do(caller, <id from the path>, ip=…)``, then see ``then`` (``{id}`` filled)."""
    p, ip = caller(request)
    target = request.match_info["id"]
    await do(p, target, ip=ip)
    raise see_other(then.format(id=target))


@routes.post("/rcp/sessions/{id}/cancel")
async def session_cancel(request: web.Request) -> web.StreamResponse:
    await act(request, svc(request).do_cancel_session, "/rcp/sessions/{id}")


@routes.get("/rcp/sessions/{id}/invite.ics")
async def session_invite(request: web.Request) -> web.Response:
    p, _ = caller(request)
    return ics(
        await svc(request).invitation(p, request.match_info["id"], base_url(request)),
        "rcp-session.ics",
    )


# ---------------------------------------------------------------- cases


def _fiche_ctx() -> dict[str, Any]:
    return {
        "origins": ORIGINS,
        "lateralities": LATERALITIES,
        "tnm_kinds": TNM_KINDS,
        "domains": TUMOUR_DOMAINS,
    }


@routes.get("/rcp/cases/new")
async def case_new(request: web.Request) -> web.Response:
    caller(request)
    form = {"board_id": request.query.get("board", ""), "patient": request.query.get("patient", "")}
    return render(
        request,
        "rcp/case_form.html",
        {**_fiche_ctx(), "form": form, "boards": await svc(request).boards(), "case": None},
    )


@routes.post("/rcp/cases")
async def case_create(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await read_form(request)
    try:
        case = await svc(request).do_create_case(
            p,
            form.get("board_id", ""),
            form.get("patient", ""),
            form,
            submit=form.get("action") == "submit",
            ip=ip,
        )
    except KonsilError as exc:
        return render(
            request,
            "rcp/case_form.html",
            {
                **_fiche_ctx(),
                "form": form,
                "boards": await svc(request).boards(),
                "error": exc,
                "case": None,
            },
            status=exc.status,
        )
    raise see_other(f"/rcp/cases/{case.id}")


@routes.get("/rcp/cases/{id}")
async def case_page(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).get_case(p, request.match_info["id"], ip=ip)
    sessions = []
    if v.can_triage:
        sessions = list(await svc(request).sessions(v.board.id, upcoming_only=True))
    return render(
        request,
        "rcp/case.html",
        {
            "v": v,
            "f": v.fiche,
            "actions": actions_from(v.state),
            "xdw": XDW_TASK[v.state],
            "sessions": sessions,
            "proposal_kinds": PROPOSAL_KINDS,
            "error": None,
        },
    )


@routes.get("/rcp/cases/{id}/edit")
async def case_edit(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).get_case(p, request.match_info["id"], purpose="edit", ip=ip)
    form = {k: ("" if val is None else val) for k, val in v.case.fiche.items()}
    form["version"] = v.case.version
    return render(
        request,
        "rcp/case_form.html",
        {**_fiche_ctx(), "form": form, "boards": await svc(request).boards(), "case": v.case},
    )


@routes.post("/rcp/cases/{id}/edit")
async def case_edit_submit(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await read_form(request)
    try:
        await svc(request).do_update_fiche(
            p,
            request.match_info["id"],
            form,
            submit=form.get("action") == "submit",
            expected_version=as_int(form.get("version"), "version")
            if form.get("version")
            else None,
            ip=ip,
        )
    except KonsilError as exc:
        v = await svc(request).get_case(p, request.match_info["id"], purpose="edit", ip=ip)
        return render(
            request,
            "rcp/case_form.html",
            {
                **_fiche_ctx(),
                "form": form,
                "boards": await svc(request).boards(),
                "case": v.case,
                "error": exc,
            },
            status=exc.status,
        )
    raise see_other(f"/rcp/cases/{request.match_info['id']}")


@routes.post("/rcp/cases/{id}/transition")
async def case_transition(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    f = await read_form(request)
    await svc(request).do_transition(
        p,
        request.match_info["id"],
        f.get("action", ""),
        session_id=f.get("session_id") or None,
        note=f.get("note", ""),
        expected_version=as_int(f["version"], "version") if f.get("version") else None,
        ip=ip,
    )
    raise see_other(next_or(f, f"/rcp/cases/{request.match_info['id']}"))


@routes.post("/rcp/cases/{id}/move")
async def case_move(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    f = await read_form(request)
    await svc(request).do_move(p, request.match_info["id"], as_int(f.get("delta"), "delta"), ip=ip)
    raise see_other(next_or(f, "/rcp"))


@routes.post("/rcp/cases/{id}/attachments")
async def case_attach(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise ValidationError("choose a file", fields={"file": "required"})
    await svc(request).do_add_attachment(
        p, request.match_info["id"], upload.filename, upload.content_type, upload.file.read(), ip=ip
    )
    raise see_other(f"/rcp/cases/{request.match_info['id']}#attachments")


@routes.get("/rcp/cases/{id}/attachments/{att}")
async def case_attachment(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    att, path = await svc(request).attachment(
        p, request.match_info["id"], request.match_info["att"], ip=ip
    )
    return file_response(await asyncio.to_thread(path.read_bytes), att.content_type, att.filename)


# ---------------------------------------------------------------- decision and report


@routes.get("/rcp/cases/{id}/decision")
async def decision_page(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).get_case(p, request.match_info["id"], purpose="decision", ip=ip)
    quorum = await svc(request).quorum(p, v.case.session_id) if v.case.session_id else None
    return render(
        request,
        "rcp/decision.html",
        {
            "v": v,
            "f": v.fiche,
            "quorum": quorum,
            "proposal_kinds": PROPOSAL_KINDS,
            "form": {},
            "chosen": [],
        },
    )


@routes.post("/rcp/cases/{id}/decision")
async def decision_submit(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    form = await request.post()
    kinds = [str(k) for k in form.getall("proposal", []) if isinstance(k, str)]
    text = {k: form_text(v) for k, v in form.items() if isinstance(v, str)}
    data = {
        "proposal": [{"kind": k, "detail": text.get(f"detail-{k}", "")} for k in kinds],
        "guideline_conform": text.get("guideline_conform"),
        "deviation_justification": text.get("deviation_justification"),
        "trial_proposed": text.get("trial_proposed"),
        "trial_name": text.get("trial_name"),
        "trial_id": text.get("trial_id"),
        "guideline": text.get("guideline"),
        "conclusion": text.get("conclusion"),
    }
    case_id = request.match_info["id"]
    version = form.get("version")
    try:
        await svc(request).do_decide(
            p,
            case_id,
            data,
            expected_version=as_int(version, "version")
            if isinstance(version, str) and version
            else None,
            ip=ip,
        )
    except KonsilError as exc:
        v = await svc(request).get_case(p, case_id, purpose="decision", ip=ip)
        quorum = await svc(request).quorum(p, v.case.session_id) if v.case.session_id else None
        flat = {k: str(val) for k, val in form.items() if isinstance(val, str)}
        return render(
            request,
            "rcp/decision.html",
            {
                "v": v,
                "f": v.fiche,
                "quorum": quorum,
                "proposal_kinds": PROPOSAL_KINDS,
                "form": flat,
                "chosen": kinds,
                "error": exc,
            },
            status=exc.status,
        )
    await svc(request).do_draft_report(p, case_id, ip=ip)
    raise see_other(f"/rcp/cases/{case_id}/report")


@routes.get("/rcp/cases/{id}/report")
async def report_page(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).get_case(p, request.match_info["id"], purpose="report", ip=ip)
    return render(
        request,
        "rcp/report.html",
        {
            "v": v,
            "r": v.report,
            "proposal_kinds": PROPOSAL_KINDS,
        },
    )


@routes.post("/rcp/cases/{id}/sign")
async def report_sign(request: web.Request) -> web.StreamResponse:
    p, ip = caller(request)
    f = await read_form(request)
    case_id = request.match_info["id"]
    try:
        await svc(request).do_sign(p, case_id, f.get("password", ""), ip=ip)
    except KonsilError as exc:
        v = await svc(request).get_case(p, case_id, purpose="report", ip=ip)
        return render(
            request,
            "rcp/report.html",
            {"v": v, "r": v.report, "proposal_kinds": PROPOSAL_KINDS, "error": exc},
            status=exc.status,
        )
    try:
        await svc(request).do_publish(p, case_id, ip=ip)
    except KonsilError as exc:
        # Signed but not published: the case stays VALIDATED, the page says why and offers
        # "Publish" again.
        v = await svc(request).get_case(p, case_id, purpose="report", ip=ip)
        return render(
            request,
            "rcp/report.html",
            {
                "v": v,
                "r": v.report,
                "proposal_kinds": PROPOSAL_KINDS,
                "error": exc,
                "publication_failed": True,
            },
            status=exc.status,
        )
    raise see_other(f"/rcp/cases/{case_id}/report")


@routes.post("/rcp/cases/{id}/publish")
async def report_publish(request: web.Request) -> web.StreamResponse:
    await act(request, svc(request).do_publish, "/rcp/cases/{id}/report")


@routes.get("/rcp/cases/{id}/pps")
async def pps_page(request: web.Request) -> web.Response:
    p, ip = caller(request)
    v = await svc(request).get_case(p, request.match_info["id"], purpose="pps", ip=ip)
    if v.state not in (CaseState.VALIDATED, CaseState.PUBLISHED) or v.report is None:
        raise ValidationError("the personalised care plan exists once the report is signed")
    return render(
        request, "rcp/pps.html", {"v": v, "r": v.report, "proposal_kinds": PROPOSAL_KINDS}
    )


@routes.get("/rcp/my")
async def my_cases(request: web.Request) -> web.Response:
    p, ip = caller(request)
    return render(request, "rcp/my_cases.html", {"rows": await svc(request).my_cases(p, ip=ip)})


# ---------------------------------------------------------------- operators


@routes.get("/admin/rcp/notices", name="rcp_admin_notices")
async def notices_page(request: web.Request) -> web.Response:
    """Notices to referring physicians not posted yet (given up after MAX_ATTEMPTS first)."""
    require_role(request, "admin")
    return render(
        request,
        "rcp/notices.html",
        {
            "rows": await request.app[NOTICES].pending(),
            "max_attempts": MAX_ATTEMPTS,
            "retried": request.query.get("retried"),
        },
    )


@routes.post("/admin/rcp/notices/{id}/retry")
async def notice_retry(request: web.Request) -> web.Response:
    require_role(request, "admin")
    await read_form(request)  # the CSRF token was checked by the middleware
    notices = request.app[NOTICES]
    notice = await notices.do_retry(actor_of(request), request.match_info["id"])
    await notices.deliver_due()  # at once; a failure is recorded on the row and retried later
    raise see_other(f"/admin/rcp/notices?retried={notice.id}")
