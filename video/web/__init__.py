"""Teleconsultation web layer: practitioner pages, patient entry and room, signalling
WebSockets, pre-call check, ICE servers, files and the after-call form."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import segno
from aiohttp import BodyPartReader, WSMsgType, web

from konsil import appkeys as K
from konsil.appkeys import DashboardPanel
from konsil.auth.service import Principal
from konsil.clock import local
from konsil.errors import BadRequest, Forbidden, KonsilError, ValidationError
from konsil.turn import turn_credentials
from konsil.web.request import (
    actor_of,
    client_ip,
    file_response,
    gettext,
    json_response,
    principal_of,
    read_form,
    read_json,
    render,
    require_role,
)
from video.domain import mail
from video.domain.checkpeer import CheckPeers
from video.domain.documents import FREQUENCY_UNITS, ROUTES, UNITS
from video.domain.issuer import WorkflowIssuer
from video.domain.service import (
    ACTIVE,
    GuestPrincipal,
    Party,
    VideoService,
    check_schedule,
    files_limited,
)
from video.models import VideoAppointment
from video.web.hub import Hub
from video.web.i18n import FRENCH
from workflow.web.keys import DOCUMENTS, OUTBOX, WORKER

log = logging.getLogger("konsil.video")

SERVICE = web.AppKey("video_service", VideoService)
HUB = web.AppKey("video_hub", Hub)
CHECKS = web.AppKey("video_checks", CheckPeers)
GUEST = web.RequestKey("video_guest", GuestPrincipal)
GUEST_COOKIE = "konsil_video_guest"
DOCTOR_ROLES = ("practitioner", "admin")

routes = web.RouteTableDef()


# ---------------------------------------------------------------- helpers


def _svc(request: web.Request) -> VideoService:
    return request.app[SERVICE]


def _doctor(request: web.Request) -> Principal:
    return require_role(request, *DOCTOR_ROLES)


async def _guest(request: web.Request) -> GuestPrincipal | None:
    if GUEST in request:
        return request[GUEST]
    g = await _svc(request).guest_for(request.cookies.get(GUEST_COOKIE))
    if g is not None:
        request[GUEST] = g
    return g


async def _party(request: web.Request, action: str) -> tuple[Party, Any]:
    p = principal_of(request)
    return await _svc(request).party(
        request.match_info["appointment"],
        account_id=p.account_id if p else None,
        guest=await _guest(request),
        ip=client_ip(request),
        action=action,
    )


def _origin(request: web.Request) -> str:
    base = request.app[K.CONFIG].public_base_url
    return base.rstrip("/") if base else f"{request.scheme}://{request.host}"


def _same_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != _origin(request):
        raise Forbidden("cross-site WebSocket refused")


def _wants_json(request: web.Request) -> bool:
    """The page's script submitted the form (fetch) and continues in the page."""
    return request.headers.get("Accept", "").startswith("application/json")


def _fmt(dt: Any) -> str:
    return local(dt).strftime("%d/%m/%Y %H:%M")


async def _push_lobby(request: web.Request, account_id: str) -> None:
    await _push_lobby_of(request.app, account_id)


async def _push_lobby_of(app: web.Application, account_id: str) -> None:
    if not app[HUB].lobbies.get(account_id):
        return  # nobody is watching this practitioner's waiting room
    items = await app[SERVICE].waiting(account_id)
    await app[HUB].push_lobby(account_id, {"type": "waiting", "items": items})


# ---------------------------------------------------------------- practitioner pages

CHOICES = {
    "units": tuple(UNITS.items()),
    "routes": tuple(ROUTES.items()),
    "periods": tuple(FREQUENCY_UNITS.items()),
}


@routes.get("/video", name="video_home")
async def home(request: web.Request) -> web.Response:
    p = _doctor(request)
    rows = await _svc(request).todays(actor_of(request))
    now_local = local(request.app[K.CLOCK].now())
    return render(
        request,
        "video/home.html",
        {"rows": rows, "form": {"starts_at": now_local.strftime("%Y-%m-%dT%H:%M")}, "me": p},
    )


@routes.post("/video/appointments")
async def schedule(request: web.Request) -> web.Response:
    _doctor(request)
    form = await read_form(request)
    svc = _svc(request)
    try:
        req = check_schedule(form, request.app[K.CLOCK].now())
        appt = await svc.do_schedule(actor_of(request), req)
    except KonsilError as exc:
        if not isinstance(exc, ValidationError) and exc.status != 409:
            raise
        rows = await svc.todays(actor_of(request), audit=False)
        return render(
            request, "video/home.html", {"rows": rows, "form": form, "error": exc}, status=400
        )
    raise web.HTTPSeeOther(f"/video/appointments/{appt.id}")


async def _detail(
    request: web.Request, link: str | None = None, sent: str | None = None, error: Any = None
) -> web.Response:
    appt, patient = await _svc(request).appointment_for_doctor(
        actor_of(request), request.match_info["appointment"]
    )
    qr = segno.make(link, error="m").svg_inline(scale=4, title="QR") if link else None
    return render(
        request,
        "video/appointment.html",
        {
            "a": appt,
            "patient": patient,
            "link": link,
            "qr": qr,
            "sent": sent,
            "error": error,
            "check": json.loads(appt.check_result) if appt.check_result else None,
            "starts_local": local(appt.starts_at).strftime("%Y-%m-%dT%H:%M"),
            "docs": await _svc(request).documents(appt.id),
        },
        status=400 if error else 200,
    )


@routes.get("/video/appointments/{appointment}")
async def detail(request: web.Request) -> web.Response:
    _doctor(request)
    return await _detail(request)


@routes.post("/video/appointments/{appointment}/invite")
async def invite(request: web.Request) -> web.Response:
    p = _doctor(request)
    svc = _svc(request)
    form = await read_form(request)
    inv = await svc.do_invite(actor_of(request), request.match_info["appointment"])
    link = f"{_origin(request)}/video/join/{quote(inv.token, safe='.')}"
    appt = await svc.get(request.match_info["appointment"])
    cfg = request.app[K.CONFIG]
    sent = None
    if appt.contact_email and cfg.smtp.host and form.get("send_email", "on") == "on":
        msg = mail.invitation_message(
            cfg.smtp,
            appt.contact_email,
            doctor=p.display_name,
            when=_fmt(appt.starts_at),
            expires=_fmt(inv.expires_at),
            link=link,
            lang=form.get("mail_lang", "fr"),
        )
        try:
            await mail.send(cfg.smtp, msg)
            sent = "sent"
        except (OSError, TimeoutError) as exc:
            log.warning("invitation e-mail not sent: %s", type(exc).__name__)
            sent = "failed"
        async with svc.db.transaction() as s:
            await request.app[K.AUDIT].record(
                s,
                actor_of(request),
                "video.invite.email",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                outcome="success" if sent == "sent" else "failure",
            )
    return await _detail(request, link=link, sent=sent)


@routes.post("/video/appointments/{appointment}/cancel")
async def cancel(request: web.Request) -> web.Response:
    p = _doctor(request)
    appointment = request.match_info["appointment"]
    await _svc(request).do_cancel(actor_of(request), appointment)
    await request.app[HUB].broadcast(appointment, {"type": "status", "status": "cancelled"})
    await _push_lobby(request, p.account_id)
    raise web.HTTPSeeOther("/video")


@routes.post("/video/appointments/{appointment}/reschedule")
async def reschedule(request: web.Request) -> web.Response:
    _doctor(request)
    form = await read_form(request)
    try:
        await _svc(request).do_reschedule(
            actor_of(request), request.match_info["appointment"], form.get("starts_at", "")
        )
    except ValidationError as exc:
        return await _detail(request, error=exc)
    raise web.HTTPSeeOther(f"/video/appointments/{request.match_info['appointment']}")


@routes.post("/video/appointments/{appointment}/admit")
async def admit(request: web.Request) -> web.Response:
    p = _doctor(request)
    appointment = request.match_info["appointment"]
    hub = request.app[HUB]
    async with hub.lock(appointment):
        await _svc(request).do_admit(actor_of(request), appointment, True)
        # Both parties' pages hear it at once: a connection prepared while the patient waited
        # (the doctor's dashboard holds the socket) only has to start sending; otherwise the
        # doctor's page offers now.
        await hub.broadcast(appointment, {"type": "status", "status": "admitted"})
    await _push_lobby(request, p.account_id)
    if _wants_json(request):
        return json_response({"call": f"/video/call/{appointment}"})
    raise web.HTTPSeeOther(f"/video/call/{appointment}")


@routes.post("/video/appointments/{appointment}/postpone")
async def postpone(request: web.Request) -> web.Response:
    p = _doctor(request)
    appointment = request.match_info["appointment"]
    await _svc(request).do_admit(actor_of(request), appointment, False)
    await request.app[HUB].send(appointment, "patient", {"type": "status", "status": "postponed"})
    await _push_lobby(request, p.account_id)
    raise web.HTTPSeeOther("/video")


@routes.get("/video/call/{appointment}")
async def call_page(request: web.Request) -> web.Response:
    _doctor(request)
    appt, patient = await _svc(request).appointment_for_doctor(
        actor_of(request), request.match_info["appointment"], purpose="call"
    )
    return render(request, "video/call.html", {"a": appt, "patient": patient, "role": "doctor"})


@routes.get("/video/appointments/{appointment}/after")
async def after_form(request: web.Request) -> web.Response:
    _doctor(request)
    appt, patient = await _svc(request).appointment_for_doctor(
        actor_of(request), request.match_info["appointment"], purpose="documents"
    )
    today = local(appt.starts_at).date().isoformat()
    docs = await _svc(request).documents(appt.id)
    return render(
        request,
        "video/after.html",
        {"a": appt, "patient": patient, "form": {"sl_start": today}, "docs": docs, **CHOICES},
    )


@routes.post("/video/appointments/{appointment}/after")
async def after_submit(request: web.Request) -> web.Response:
    _doctor(request)
    form = await read_form(request)
    svc = _svc(request)
    appointment = request.match_info["appointment"]
    try:
        await svc.do_after_call(actor_of(request), appointment, form)
    except ValidationError as exc:
        appt, patient = await svc.appointment_for_doctor(
            actor_of(request), appointment, purpose="documents"
        )
        return render(
            request,
            "video/after.html",
            {"a": appt, "patient": patient, "form": form, "error": exc, "docs": [], **CHOICES},
            status=400,
        )
    await request.app[HUB].broadcast(appointment, {"type": "status", "status": "ended"})
    raise web.HTTPSeeOther(f"/video/appointments/{appointment}/after?saved=1")


# ---------------------------------------------------------------- patient entry and room


@routes.get("/video/join/{token}")
async def join_page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    guest = await _guest(request)
    claims_appt = token.split(".", 1)[0]
    if guest is not None and guest.appointment_id == claims_appt:
        raise web.HTTPSeeOther(f"/video/room/{guest.appointment_id}")
    appt = await _svc(request).check_link(token, client_ip(request))
    request.app[CHECKS].warm_up()  # the check follows the entry
    return render(request, "video/join.html", {"token": token, "a": appt, "form": {}})


@routes.post("/video/join/{token}")
async def join_submit(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    form = await read_form(request)
    svc = _svc(request)
    # The page's script sends the pre-call check's offer with the form: answered in this reply.
    check_sdp = form.get("check_sdp", "") if _wants_json(request) else ""
    try:
        guest, secret = await svc.do_enter(
            token, form, client_ip(request), check_start=bool(check_sdp)
        )
    except ValidationError as exc:
        if _wants_json(request):
            return json_response(
                {
                    "error": gettext(request, exc.message),
                    "fields": {k: gettext(request, v) for k, v in exc.fields.items()},
                },
                status=400,
            )
        appt = await svc.check_link(token, client_ip(request))
        return render(
            request,
            "video/join.html",
            {"token": token, "a": appt, "form": form, "error": exc},
            status=400,
        )
    room = f"/video/room/{guest.appointment_id}"
    # In the waiting room from now on: the doctor's dashboard lists the patient (and prepares
    # the call's connection) while the check runs.
    appt = await svc.get(guest.appointment_id)
    await _push_lobby(request, appt.practitioner_account_id)
    resp: web.Response
    if _wants_json(request):
        body: dict[str, Any] = {"room": room}
        if check_sdp:
            try:
                sdp, kind = await request.app[CHECKS].answer(
                    guest.appointment_id, check_sdp, "offer"
                )
                body["check"] = {"sdp": sdp, "type": kind}
            except KonsilError as exc:  # busy or unusable offer: the page asks again
                body["check_error"] = gettext(request, exc.message)
        resp = json_response(body)
    else:
        resp = web.HTTPSeeOther(room)
    cfg = request.app[K.CONFIG]
    resp.set_cookie(
        GUEST_COOKIE,
        secret,
        httponly=True,
        samesite="Lax",
        secure=cfg.auth.cookie_secure,
        path="/video",
        max_age=cfg.video.link_valid_hours * 3600 + 86_400,
    )
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


@routes.get("/video/room/{appointment}")
async def room_page(request: web.Request) -> web.Response:
    if await _guest(request) is None:
        raise Forbidden("open the invitation link you received to join your teleconsultation")
    party, appt = await _party(request, "video.room")
    if party.role != "patient":
        raise web.HTTPSeeOther(f"/video/call/{appt.id}")
    svc = _svc(request)
    return render(
        request,
        "video/room.html",
        {
            "a": appt,
            "role": "patient",
            "docs": await svc.documents(appt.id) if appt.status == "ended" else [],
            "files": await svc.files(appt.id),
        },
    )


# ---------------------------------------------------------------- JSON endpoints


@routes.get("/video/api/ice")
async def ice(request: web.Request) -> web.Response:
    p = principal_of(request)
    g = await _guest(request)
    if p is None and g is None:
        raise Forbidden("sign in or open your invitation link")
    cfg = request.app[K.CONFIG]
    servers: list[dict[str, Any]] = []
    if cfg.turn.urls:
        entry: dict[str, Any] = {"urls": list(cfg.turn.urls)}
        if cfg.turn.secret:
            user = p.account_id if p else f"guest-{g.appointment_id if g else ''}"
            name, cred = turn_credentials(
                cfg.turn.secret, user, request.app[K.CLOCK].now(), cfg.turn.ttl_seconds
            )
            entry.update(username=name, credential=cred)
        servers.append(entry)
    return json_response(
        {
            "iceServers": servers,
            "iceTransportPolicy": "relay" if cfg.video.force_relay else "all",
            "ttl": cfg.turn.ttl_seconds,
        }
    )


@routes.post("/video/api/{appointment}/check")
async def check_offer(request: web.Request) -> web.Response:
    party, appt = await _party(request, "video.check.start")
    if party.role != "patient":
        raise Forbidden("the connection test is the patient's")
    body = await read_json(request, max_bytes=200_000)
    sdp, kind = await request.app[CHECKS].answer(
        appt.id, str(body.get("sdp", "")), str(body.get("type", ""))
    )
    return json_response({"sdp": sdp, "type": kind})


@routes.post("/video/api/{appointment}/check/done")
async def check_done(request: web.Request) -> web.Response:
    body = await read_json(request)
    p = principal_of(request)
    svc = _svc(request)
    appointment = request.match_info["appointment"]
    result, practitioner = await svc.do_record_check(
        appointment,
        body,
        account_id=p.account_id if p else None,
        guest=await _guest(request),
        ip=client_ip(request),
    )
    if result["connection"] != "measuring":
        request.app[CHECKS].close_soon(appointment)  # closing aiortc takes a while: not here
    await _push_lobby(request, practitioner)
    return json_response(result)


@routes.post("/video/api/{appointment}/files")
async def upload(request: web.Request) -> web.Response:
    """A file sent during the call. A refusal is a problem document in English like every JSON
    answer, with ``shown``: the same reason in the page's language, for the call page to show."""
    try:
        return await _upload(request)
    except KonsilError as exc:
        exc.extra["shown"] = gettext(request, exc.message)
        raise


async def _upload(request: web.Request) -> web.Response:
    party, appt = await _party(request, "video.file.send")
    svc = _svc(request)
    limit = request.app[K.CONFIG].video.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise BadRequest("file too large", errcode="M_TOO_LARGE")
    reader = await request.multipart()
    part = await reader.next()
    while isinstance(part, BodyPartReader) and part.name != "file":
        part = await reader.next()
    if not isinstance(part, BodyPartReader) or not part.filename:
        raise ValidationError("choose a file", fields={"file": "required"})
    data = bytearray()
    while chunk := await part.read_chunk(65536):
        data.extend(chunk)
        if len(data) > limit:
            raise BadRequest(files_limited(limit))
    info = await svc.do_upload(
        party,
        appt.id,
        part.filename,
        part.headers.get("Content-Type", "application/octet-stream"),
        bytes(data),
    )
    await request.app[HUB].broadcast(appt.id, {"type": "file", "file": info})
    return json_response(info, status=201)


@routes.get("/video/documents/{appointment}/{document}")
async def document_pdf(request: web.Request) -> web.Response:
    party, appt = await _party(request, "video.document.open")
    name, data = await _svc(request).do_document_pdf(party, appt.id, request.match_info["document"])
    return file_response(data, "application/pdf", name)


@routes.get("/video/files/{appointment}/{file}")
async def download(request: web.Request) -> web.Response:
    party, appt = await _party(request, "video.file.open")
    name, ctype, data = await _svc(request).do_download(party, appt.id, request.match_info["file"])
    return file_response(data, ctype, name)


# ---------------------------------------------------------------- WebSockets


@routes.get("/video/ws/{appointment}")
async def signalling(request: web.Request) -> web.WebSocketResponse:
    _same_origin(request)
    party, appt = await _party(request, "video.connect")
    svc = _svc(request)
    hub = request.app[HUB]
    if appt.status in ("ended", "cancelled"):
        raise Forbidden("this teleconsultation is over")
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=256 * 1024)
    await ws.prepare(request)
    role, other = party.role, ("patient" if party.role == "doctor" else "doctor")
    if role == "patient":
        appt = await svc.do_set_waiting(party, appt.id)
        await _push_lobby(request, appt.practitioner_account_id)
    hello = {
        "type": "hello",
        "role": role,
        "messages": await svc.messages(appt.id),
        "files": await svc.files(appt.id),
    }
    async with hub.lock(appt.id):
        appt = await svc.get(appt.id)
        previous = hub.rooms.get(appt.id, {}).get(role)
        hub.join(appt.id, role, ws)
        await ws.send_json(dict(hello, status=appt.status))
        await _announce(hub, appt)
    if previous is not None:  # a reload or second tab replaces the old connection
        await previous.close(code=4000, message=b"replaced")
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
                if not isinstance(data, dict):
                    raise ValueError
            except ValueError:
                await ws.send_json({"type": "error", "error": "not JSON"})
                continue
            await _on_message(request, party, appt.id, other, data, ws)
    finally:
        if hub.leave(appt.id, role, ws):
            await hub.send(appt.id, other, {"type": "peer", "present": False})
    return ws


async def _announce(hub: Hub, appt: VideoAppointment) -> None:
    """Both parties present: admitted, the doctor starts (or restarts) the call; not yet
    admitted, the doctor's page prepares the connection without media (``admitted: false``).
    Called under the appointment's lock, with its current status."""
    if not (hub.present(appt.id, "doctor") and hub.present(appt.id, "patient")):
        return
    if appt.status == "admitted":
        await hub.broadcast(appt.id, {"type": "peer", "present": True})
    elif appt.status in ACTIVE:
        await hub.broadcast(appt.id, {"type": "peer", "present": True, "admitted": False})


async def _on_message(
    request: web.Request,
    party: Party,
    appointment_id: str,
    other: str,
    data: dict[str, Any],
    ws: web.WebSocketResponse,
) -> None:
    hub = request.app[HUB]
    svc = _svc(request)
    kind = data.get("type")
    if kind in ("signal", "restart"):
        # Before admission too: the pages negotiate while the patient waits, their senders
        # carrying no track until the admission (call.js attaches camera and microphone then).
        appt = await svc.get(appointment_id)
        if appt.status in ACTIVE:
            await hub.send(
                appointment_id, other, {"type": kind, "data": data.get("data"), "from": party.role}
            )
    elif kind == "chat":
        try:
            m = await svc.do_chat(party, appointment_id, str(data.get("text", "")))
        except ValidationError as exc:
            await ws.send_json({"type": "error", "error": exc.message})
            return
        await hub.broadcast(appointment_id, {"type": "chat", "message": m})
    elif kind == "hangup":
        await svc.do_end(party, appointment_id)
        await hub.broadcast(appointment_id, {"type": "status", "status": "ended"})
        appt = await svc.get(appointment_id)
        await _push_lobby(request, appt.practitioner_account_id)
    elif kind == "ping":
        await ws.send_json({"type": "pong"})


@routes.get("/video/lobby/ws")
async def lobby(request: web.Request) -> web.WebSocketResponse:
    _same_origin(request)
    p = _doctor(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    feeds = request.app[HUB].lobbies.setdefault(p.account_id, set())
    feeds.add(ws)
    try:
        await ws.send_json({"type": "waiting", "items": await _svc(request).waiting(p.account_id)})
        async for _msg in ws:
            pass
    finally:
        feeds.discard(ws)
    return ws


# ---------------------------------------------------------------- wiring


def setup(app: web.Application) -> None:
    app.router.add_routes(routes)
    app[K.TRANSLATOR].add(FRENCH)
    app[HUB] = Hub()
    cfg = app[K.CONFIG]

    async def check_expired(appointment_id: str) -> None:
        appt = await app[SERVICE].do_check_timed_out(appointment_id)
        if appt is not None:
            await app[HUB].send(appointment_id, "patient", {"type": "check", "status": "timed_out"})
            await _push_lobby_of(app, appt.practitioner_account_id)

    app[CHECKS] = CheckPeers(
        cfg.video.max_check_peers, cfg.video.check_timeout_seconds, on_expire=check_expired
    )

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[SERVICE] = VideoService(
            app[K.DB], app[K.CLOCK], app[K.AUDIT], cfg.video, cfg.secret_key, None
        )
        yield
        await app[HUB].close_all()
        await app[CHECKS].close_all()

    app.cleanup_ctx.append(ctx)

    async def install_issuer(app: web.Application) -> None:
        # on_startup runs after every cleanup context: the workflow services exist by now.
        if DOCUMENTS in app:

            def wake() -> None:
                if WORKER in app:
                    app[WORKER].wake()

            app[SERVICE].issuer = WorkflowIssuer(app[DOCUMENTS], app[OUTBOX], wake)

    app.on_startup.append(install_issuer)

    async def on_shutdown(app: web.Application) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await app[HUB].close_all()

    app.on_shutdown.append(on_shutdown)

    async def panel(p: Principal) -> list[tuple[str, str]]:
        from konsil.audit.service import Actor

        rows = await app[SERVICE].todays(Actor(p.account_id), audit=True)
        return [
            (
                f"{local(a.starts_at).strftime('%H:%M')} {pt.full_name} ({a.status})",
                f"/video/appointments/{a.id}",
            )
            for a, pt in rows
        ]

    app[K.PANELS].append(
        DashboardPanel("Teleconsultations today", "/video", panel, roles=DOCTOR_ROLES)
    )
