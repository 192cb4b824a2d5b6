"""Per-request helpers for handlers of every package: caller, JSON bodies, forms, rendering."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from konsil import appkeys as K
from konsil.audit.service import Actor
from konsil.auth.models import WebSession
from konsil.auth.service import Principal
from konsil.errors import BadRequest, Forbidden, Unauthorized

PRINCIPAL = web.RequestKey("principal", Principal)
WEB_SESSION = web.RequestKey("web_session", WebSession)
LANG = web.RequestKey("lang", str)
ANON_CSRF = web.RequestKey("anon_csrf", str)
CSP_NONCE = web.RequestKey("csp_nonce", str)


def client_ip(request: web.Request) -> str | None:
    return request.remote


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def require_login(request: web.Request) -> Principal:
    p = principal_of(request)
    if p is None:
        raise Unauthorized("sign in to continue")
    return p


def require_role(request: web.Request, *roles: str) -> Principal:
    p = require_login(request)
    if not p.has_role(*roles):
        raise Forbidden("your role does not allow this")
    return p


def actor_of(request: web.Request) -> Actor:
    p = principal_of(request)
    return Actor(p.account_id if p else "anonymous", client_ip(request))


async def read_json(request: web.Request, *, max_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest with ``M_NOT_JSON``/``M_BAD_JSON``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequest("request body too large", errcode="M_TOO_LARGE")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BadRequest("request body too large", errcode="M_TOO_LARGE")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON", errcode="M_NOT_JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", errcode="M_BAD_JSON")
    return body


def form_text(value: str) -> str:
    """A submitted text with its line breaks as ``\\n``: browsers send a textarea's as CR LF
    (HTML form submission), and a CR is a control character to the document builders."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


async def read_form(request: web.Request) -> dict[str, str]:
    """Text fields of a submitted form (the last value of a repeated field wins), line breaks
    normalised (``form_text``)."""
    form = await request.post()
    return {k: form_text(v) for k, v in form.items() if isinstance(v, str)}


def lang_of(request: web.Request) -> str:
    return request.get(LANG) or request.app[K.CONFIG].default_language


def gettext(request: web.Request, text: str) -> str:
    return request.app[K.TRANSLATOR].gettext(lang_of(request), text)


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
) -> web.Response:
    env = request.app[K.JINJA]
    ws = request.get(WEB_SESSION)
    lang = lang_of(request)
    translator = request.app[K.TRANSLATOR]
    ctx: dict[str, Any] = {
        "principal": principal_of(request),
        "csrf_token": getattr(ws, "csrf_token", None) or request.get(ANON_CSRF, ""),
        "lang": lang,
        "_": lambda t: translator.gettext(lang, t),
        "request_path": request.path_qs,
        "csp_nonce": request.get(CSP_NONCE, ""),
    }
    ctx.update(context or {})
    html = env.get_template(template).render(ctx)
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def file_response(
    body: bytes,
    content_type: str,
    filename: str,
    *,
    inline: bool = False,
    charset: str | None = None,
) -> web.Response:
    """A file for the browser to save (or show, ``inline``): the name RFC 6266/5987-encoded, so
    any user-supplied name (quotes, non-ASCII) is safe; never cached; sandboxed if rendered."""
    disposition = "inline" if inline else "attachment"
    return web.Response(
        body=body,
        content_type=content_type,
        charset=charset,
        headers={
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "no-store",
        },
    )
