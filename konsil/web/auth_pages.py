"""Sign in (password, then TOTP when enrolled or required), sign out, language, security page."""

from __future__ import annotations

from aiohttp import web

from konsil import appkeys as K
from konsil.auth import totp
from konsil.errors import KonsilError, RateLimited, Unauthorized
from konsil.web.middleware import LANG_COOKIE, SESSION_COOKIE
from konsil.web.request import (
    WEB_SESSION,
    client_ip,
    read_form,
    render,
    require_login,
)

routes = web.RouteTableDef()


def _safe_next(value: str | None) -> str:
    # Only local paths: never an open redirect.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


@routes.get("/login", name="login")
async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", {"next": _safe_next(request.query.get("next"))})


@routes.post("/login")
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    nxt = _safe_next(form.get("next"))
    metrics = request.app[K.METRICS]
    try:
        result = await request.app[K.AUTH].do_login(
            form.get("username", "").strip(), form.get("password", ""), ip=client_ip(request)
        )
    except (Unauthorized, RateLimited) as exc:
        metrics.logins.labels("failure").inc()
        return render(
            request,
            "login.html",
            {"next": nxt, "error": exc.message, "username": form.get("username", "")},
            status=exc.status,
        )
    metrics.logins.labels("success").inc()
    target = f"/login/totp?next={nxt}" if result.needs_totp else nxt
    resp = web.HTTPSeeOther(target)
    resp.set_cookie(
        SESSION_COOKIE,
        result.session_token,
        httponly=True,
        samesite="Strict",
        secure=request.app[K.CONFIG].auth.cookie_secure,
        path="/",
        max_age=request.app[K.CONFIG].auth.session_hours * 3600,
    )
    raise resp


@routes.get("/login/totp", name="login_totp")
async def totp_page(request: web.Request) -> web.Response:
    ws = request.get(WEB_SESSION)
    if ws is None:
        raise web.HTTPSeeOther("/login")
    enrol = None
    auth = request.app[K.AUTH]
    found = await auth.session_for(request.cookies.get(SESSION_COOKIE, ""))
    if found is not None:
        principal, _ = found
        account = await request.app[K.IDENTITY].account_by_username(principal.username)
        if account is not None and account.totp_secret is None:
            secret = totp.new_secret()
            enrol = {"secret": secret, "uri": totp.provisioning_uri(secret, principal.username)}
    return render(
        request, "totp.html", {"next": _safe_next(request.query.get("next")), "enrol": enrol}
    )


@routes.post("/login/totp")
async def totp_submit(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    nxt = _safe_next(form.get("next"))
    token = request.cookies.get(SESSION_COOKIE, "")
    auth = request.app[K.AUTH]
    try:
        if form.get("secret"):
            found = await auth.session_for(token)
            if found is None:
                raise Unauthorized("your session has expired: sign in again")
            await auth.do_enrol_totp(
                found[0].account_id, form["secret"], form.get("code", ""), ip=client_ip(request)
            )
        else:
            await auth.do_totp(token, form.get("code", ""), ip=client_ip(request))
    except KonsilError as exc:
        enrol = None
        if form.get("secret"):
            secret = form["secret"]
            enrol = {"secret": secret, "uri": totp.provisioning_uri(secret, "")}
        return render(
            request,
            "totp.html",
            {"next": nxt, "error": exc.message, "enrol": enrol},
            status=exc.status,
        )
    raise web.HTTPSeeOther(nxt)


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await request.app[K.AUTH].do_logout(token)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


@routes.get("/lang/{lang:(fr|en)}", name="lang")
async def set_language(request: web.Request) -> web.StreamResponse:
    resp = web.HTTPSeeOther(_safe_next(request.query.get("next")))
    resp.set_cookie(
        LANG_COOKIE, request.match_info["lang"], samesite="Lax", path="/", max_age=365 * 86400
    )
    raise resp


@routes.get("/account/security", name="security")
async def security_page(request: web.Request) -> web.Response:
    principal = require_login(request)
    account = await request.app[K.IDENTITY].account_by_username(principal.username)
    enrolled = account is not None and account.totp_secret is not None
    secret = None if enrolled else totp.new_secret()
    return render(
        request,
        "security.html",
        {
            "enrolled": enrolled,
            "secret": secret,
            "uri": totp.provisioning_uri(secret, principal.username) if secret else None,
        },
    )


@routes.post("/account/security")
async def security_submit(request: web.Request) -> web.StreamResponse:
    principal = require_login(request)
    form = await read_form(request)
    try:
        await request.app[K.AUTH].do_enrol_totp(
            principal.account_id,
            form.get("secret", ""),
            form.get("code", ""),
            ip=client_ip(request),
        )
    except KonsilError as exc:
        secret = form.get("secret", "")
        return render(
            request,
            "security.html",
            {
                "enrolled": False,
                "secret": secret,
                "error": exc.message,
                "uri": totp.provisioning_uri(secret, principal.username),
            },
            status=exc.status,
        )
    raise web.HTTPSeeOther("/account/security")
