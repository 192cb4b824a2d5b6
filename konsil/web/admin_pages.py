"""Dashboard and the administration pages (organisations, accounts, patients, audit)."""

from __future__ import annotations

from datetime import date
from typing import Any

from aiohttp import web
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import verify_chain
from konsil.errors import KonsilError, ValidationError
from konsil.identity.models import ROLES
from konsil.identity.service import ORG_KINDS, NewAccount, NewPatient, PractitionerUpdate
from konsil.identity.specialties import PROFESSIONS, SPECIALTIES
from konsil.web.request import actor_of, read_form, render, require_login, require_role

routes = web.RouteTableDef()


@routes.get("/", name="dashboard")
async def dashboard(request: web.Request) -> web.Response:
    principal = require_login(request)
    panels = []
    for panel in request.app[K.PANELS]:
        if principal.role in panel.roles:
            panels.append(
                {"title": panel.title, "link": panel.link, "rows": await panel.load(principal)}
            )
    return render(request, "dashboard.html", {"panels": panels})


@routes.get("/admin/organisations", name="admin_orgs")
async def organisations(request: web.Request) -> web.Response:
    require_role(request, "admin")
    orgs = await request.app[K.IDENTITY].organisations()
    return render(request, "admin/organisations.html", {"orgs": orgs, "kinds": ORG_KINDS})


@routes.post("/admin/organisations")
async def organisation_create(request: web.Request) -> web.Response:
    require_role(request, "admin")
    form = await read_form(request)
    identity = request.app[K.IDENTITY]
    ctx: dict[str, Any] = {"kinds": ORG_KINDS, "form": form}
    try:
        await identity.do_create_organisation(
            actor_of(request), form.get("name", ""), form.get("kind", ""), form.get("identifier")
        )
        ctx["saved"] = True
        ctx["form"] = {}
        status = 201
    except KonsilError as exc:
        ctx["error"] = exc
        status = exc.status
    ctx["orgs"] = await identity.organisations()
    return render(request, "admin/organisations.html", ctx, status=status)


def _account_ctx() -> dict[str, Any]:
    return {"roles": ROLES, "specialties": SPECIALTIES, "professions": PROFESSIONS}


@routes.get("/admin/accounts", name="admin_accounts")
async def accounts(request: web.Request) -> web.Response:
    require_role(request, "admin")
    identity = request.app[K.IDENTITY]
    return render(
        request,
        "admin/accounts.html",
        {
            **_account_ctx(),
            "accounts": await identity.accounts(),
            "orgs": await identity.organisations(),
        },
    )


@routes.post("/admin/accounts")
async def account_create(request: web.Request) -> web.Response:
    require_role(request, "admin")
    form = await read_form(request)
    identity = request.app[K.IDENTITY]
    ctx: dict[str, Any] = {**_account_ctx(), "form": form}
    status = 201
    try:
        await identity.do_create_account(
            actor_of(request),
            NewAccount(
                username=form.get("username", "").strip(),
                password=form.get("password", ""),
                role=form.get("role", ""),
                display_name=form.get("display_name") or None,
                specialty=form.get("specialty") or None,
                profession=form.get("profession") or "physician",
                organisation_id=form.get("organisation_id") or None,
                email=form.get("email") or None,
                cns_provider_code=form.get("cns_provider_code") or None,
            ),
        )
        ctx["saved"] = True
        ctx["form"] = {}
    except KonsilError as exc:
        ctx["error"] = exc
        status = exc.status
    ctx["accounts"] = await identity.accounts()
    ctx["orgs"] = await identity.organisations()
    return render(request, "admin/accounts.html", ctx, status=status)


async def _edit_ctx(request: web.Request, account_id: str) -> dict[str, Any]:
    identity = request.app[K.IDENTITY]
    account, pr = await identity.account_detail(account_id)
    form = {
        "display_name": account.display_name,
        "role": account.role,
        "organisation_id": account.organisation_id or "",
        "profession": pr.profession if pr else "physician",
        "specialty": (pr.specialty if pr else None) or "",
        "email": (pr.email if pr else None) or "",
        "cns_provider_code": (pr.cns_provider_code if pr else None) or "",
    }
    return {
        **_account_ctx(),
        "account": account,
        "form": form,
        "orgs": await identity.organisations(),
    }


@routes.get("/admin/accounts/{id}", name="admin_account")
async def account_page(request: web.Request) -> web.Response:
    require_role(request, "admin")
    return render(request, "admin/account.html", await _edit_ctx(request, request.match_info["id"]))


@routes.post("/admin/accounts/{id}")
async def account_update(request: web.Request) -> web.Response:
    require_role(request, "admin")
    account_id = request.match_info["id"]
    form = await read_form(request)
    try:
        await request.app[K.IDENTITY].do_update_practitioner(
            actor_of(request),
            account_id,
            PractitionerUpdate(
                display_name=form.get("display_name", ""),
                role=form.get("role", ""),
                profession=form.get("profession") or "physician",
                specialty=form.get("specialty") or None,
                organisation_id=form.get("organisation_id") or None,
                email=form.get("email") or None,
                cns_provider_code=form.get("cns_provider_code") or None,
            ),
        )
    except KonsilError as exc:
        ctx = await _edit_ctx(request, account_id)
        ctx.update({"form": form, "error": exc})
        return render(request, "admin/account.html", ctx, status=exc.status)
    ctx = await _edit_ctx(request, account_id)
    ctx["saved"] = True
    return render(request, "admin/account.html", ctx)


@routes.post("/admin/accounts/{id}/active", name="admin_account_active")
async def account_active(request: web.Request) -> web.StreamResponse:
    require_role(request, "admin")
    form = await read_form(request)
    await request.app[K.IDENTITY].do_set_active(
        actor_of(request), request.match_info["id"], form.get("active") == "1"
    )
    raise web.HTTPSeeOther("/admin/accounts")


@routes.get("/patients", name="patients")
async def patients(request: web.Request) -> web.Response:
    require_role(request, "admin", "practitioner", "coordinator")
    q = request.query.get("q", "")
    found = await request.app[K.IDENTITY].search_patients(actor_of(request), q) if q else []
    return render(request, "patients.html", {"q": q, "patients": found, "searched": bool(q)})


def _parse_date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            "the patient record is not valid", fields={field: "expected a date (YYYY-MM-DD)"}
        ) from None


@routes.post("/patients")
async def patient_create(request: web.Request) -> web.Response:
    require_role(request, "admin", "practitioner", "coordinator")
    form = await read_form(request)
    ctx: dict[str, Any] = {"form": form, "q": "", "patients": [], "searched": False}
    status = 201
    try:
        patient = await request.app[K.IDENTITY].do_create_patient(
            actor_of(request),
            NewPatient(
                matricule=form.get("matricule", ""),
                given_name=form.get("given_name", ""),
                family_name=form.get("family_name", ""),
                birth_date=_parse_date(form.get("birth_date", ""), "birth_date"),
                sex=form.get("sex", "U"),
                email=form.get("email") or None,
                phone=form.get("phone") or None,
                address=form.get("address") or None,
            ),
        )
        ctx["saved"] = True
        ctx["form"] = {}
        ctx["patients"] = [patient]
    except KonsilError as exc:
        ctx["error"] = exc
        status = exc.status
    return render(request, "patients.html", ctx, status=status)


@routes.get("/admin/tokens", name="admin_tokens")
async def api_tokens(request: web.Request) -> web.Response:
    require_role(request, "admin")
    return render(request, "admin/tokens.html", {"tokens": await request.app[K.AUTH].api_tokens()})


@routes.post("/admin/tokens")
async def api_token_create(request: web.Request) -> web.Response:
    require_role(request, "admin")
    form = await read_form(request)
    auth = request.app[K.AUTH]
    ctx: dict[str, Any] = {"form": form}
    status = 201
    try:
        days = int(form["days"]) if form.get("days") else None
    except ValueError:
        days = -1
    try:
        ctx["new_token"] = await auth.do_issue_api_token(
            actor_of(request), form.get("username", "").strip(), form.get("name", ""), days
        )
        ctx["form"] = {}
    except KonsilError as exc:
        ctx["error"] = exc
        status = exc.status
    ctx["tokens"] = await auth.api_tokens()
    return render(request, "admin/tokens.html", ctx, status=status)


@routes.post("/admin/tokens/{hash}/revoke", name="admin_token_revoke")
async def api_token_revoke(request: web.Request) -> web.StreamResponse:
    require_role(request, "admin")
    await request.app[K.AUTH].do_revoke_api_token(actor_of(request), request.match_info["hash"])
    raise web.HTTPSeeOther("/admin/tokens")


@routes.get("/admin/audit", name="admin_audit")
async def audit(request: web.Request) -> web.Response:
    require_role(request, "admin")
    db = request.app[K.DB]
    async with db.session() as s:
        rows = (
            (await s.execute(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(200)))
            .scalars()
            .all()
        )
    result = await verify_chain(db)
    return render(request, "admin/audit.html", {"events": rows, "verify": result})
