"""The outbox trace page (operators) and the author's list of refused documents."""

from __future__ import annotations

from aiohttp import web

from konsil.web.request import actor_of, read_form, render, require_login, require_role
from workflow.models import OUTBOX_STATUSES
from workflow.web.keys import OUTBOX, WORKER

routes = web.RouteTableDef()
STATUSES = OUTBOX_STATUSES


@routes.get("/admin/outbox", name="admin_outbox")
async def outbox_page(request: web.Request) -> web.Response:
    require_role(request, "admin")
    status = request.query.get("status") or None
    if status not in (None, *STATUSES):
        status = None
    outbox = request.app[OUTBOX]
    return render(
        request,
        "workflow/outbox.html",
        {
            "views": await outbox.messages(status=status),
            "counts": await outbox.counts(),
            "status": status,
            "statuses": STATUSES,
            "retried": request.query.get("retried"),
        },
    )


@routes.post("/admin/outbox/{message_id}/retry")
async def outbox_retry(request: web.Request) -> web.Response:
    require_role(request, "admin")
    await read_form(request)  # the CSRF token was checked by the middleware
    msg = await request.app[OUTBOX].do_retry(actor_of(request), request.match_info["message_id"])
    worker = request.app.get(WORKER)
    if worker is not None:
        worker.wake()
    raise web.HTTPSeeOther(f"/admin/outbox?retried={msg.id}")


@routes.get("/documents/rejected", name="documents_rejected")
async def rejected_page(request: web.Request) -> web.Response:
    principal = require_login(request)
    rows = await request.app[OUTBOX].rejections_for_author(principal.account_id)
    return render(request, "workflow/rejected.html", {"rows": rows})
