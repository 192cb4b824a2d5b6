"""The middleware chain: errors (one place renders them all), security headers, metrics and
access log, session/token resolution and CSRF."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from konsil import appkeys as K
from konsil.errors import (
    Forbidden,
    InternalError,
    KonsilError,
    MethodNotAllowed,
    NotFound,
    TooLarge,
    Unauthorized,
)
from konsil.i18n import LANGUAGES
from konsil.logs import redact
from konsil.web.request import (
    ANON_CSRF,
    CSP_NONCE,
    LANG,
    PRINCIPAL,
    WEB_SESSION,
    json_response,
    render,
)

log = logging.getLogger("konsil.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "konsil_session"
CSRF_COOKIE = "konsil_csrf"
LANG_COOKIE = "konsil_lang"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def is_matrix(request: web.Request) -> bool:
    return request.path.startswith("/_matrix") or request.path.startswith("/.well-known/matrix")


def is_api(request: web.Request) -> bool:
    # /api/v1/… and the JSON endpoints feature pages call (e.g. /video/api/ice)
    return request.path.startswith("/api/") or "/api/" in request.path


def render_error(request: web.Request, exc: KonsilError) -> web.StreamResponse:
    if is_matrix(request):
        body: dict[str, object] = {"errcode": exc.matrix_errcode, "error": exc.message}
        body.update(exc.extra)
        resp = json_response(body, status=exc.status)
    elif is_api(request):
        problem: dict[str, object] = {
            "type": "about:blank",
            "title": exc.title,
            "status": exc.status,
            "detail": exc.message,
        }
        if exc.fields:
            problem["errors"] = exc.fields
        problem.update(exc.extra)
        resp = json_response(problem, status=exc.status)
        resp.content_type = "application/problem+json"
    elif isinstance(exc, Unauthorized) and request.method == "GET":
        raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
    else:
        resp = render(request, "error.html", {"error": exc}, status=exc.status)
    if exc.status == 429 and "retry_after_ms" in exc.extra:
        resp.headers["Retry-After"] = str(max(1, int(exc.extra["retry_after_ms"]) // 1000))
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except KonsilError as exc:
        return render_error(request, exc)
    except web.HTTPException as exc:
        # aiohttp's own routing and body-size errors, rendered like ours.
        if exc.status == 404:
            return render_error(request, NotFound("unrecognised request", errcode="M_UNRECOGNIZED"))
        if exc.status == 405:
            return render_error(request, MethodNotAllowed("method not allowed"))
        if exc.status == 413:
            return render_error(request, TooLarge("request body too large"))
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": redact(request.path)})
        return render_error(request, InternalError("internal error: the incident was logged"))


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    clock = request.app[K.CLOCK]
    metrics = request.app[K.METRICS]
    start = clock.monotonic()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        elapsed = clock.monotonic() - start
        metrics.requests.labels(request.method, name, str(status)).inc()
        metrics.latency.labels(name).observe(elapsed)
        if not request.path.startswith(("/healthz", "/metrics", "/static")):
            # Matrix clients long-poll and send at a high rate: their lines only at DEBUG
            log.log(
                logging.DEBUG if request.path.startswith("/_matrix/") else logging.INFO,
                "request",
                extra={
                    "method": request.method,
                    "route": name,
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                },
            )


CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    matrix = is_matrix(request)
    nonce = ""
    if not matrix:  # /_matrix answers JSON only: no page, no script, no nonce
        request[CSP_NONCE] = nonce = secrets.token_urlsafe(16)
    resp = await handler(request)
    h = resp.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    if not matrix:
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Content-Security-Policy", CSP.format(nonce=nonce))
        h.setdefault(
            "Permissions-Policy",
            "camera=(self), microphone=(self), display-capture=(self), geolocation=()",
        )
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if not request.path.startswith("/static"):
        h.setdefault("Cache-Control", "no-store")
    if request.app[K.CONFIG].auth.cookie_secure:
        h.setdefault("Strict-Transport-Security", "max-age=31536000")
    return resp


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the caller (web session cookie, or bearer API token under /api) and check CSRF.

    Matrix endpoints authenticate with their own access tokens (messaging package) and are not
    cookie-based, so CSRF does not apply to them.
    """
    cfg = request.app[K.CONFIG]
    if is_matrix(request):
        # Matrix clients send no cookies and get JSON: the default language (for error
        # messages) without parsing a Cookie header
        request[LANG] = cfg.default_language
        return await handler(request)
    lang = request.cookies.get(LANG_COOKIE)
    request[LANG] = lang if lang in LANGUAGES else cfg.default_language
    auth = request.app[K.AUTH]
    bearer = _bearer(request) if is_api(request) else None
    if bearer is not None:
        principal = await auth.api_principal(bearer)
        if principal is None:
            raise Unauthorized("invalid or expired API token")
        request[PRINCIPAL] = principal
        return await handler(request)

    token = request.cookies.get(SESSION_COOKIE)
    found = await auth.session_for(token) if token else None
    expected_csrf: str | None = None
    if found is not None:
        principal, ws = found
        request[WEB_SESSION] = ws
        expected_csrf = ws.csrf_token
        if not ws.needs_totp:
            request[PRINCIPAL] = principal
    anon = request.cookies.get(CSRF_COOKIE)
    new_anon = None
    if expected_csrf is None:
        if not anon:
            anon = new_anon = secrets.token_urlsafe(24)
        request[ANON_CSRF] = anon
        expected_csrf = anon if not new_anon else None

    if request.method in UNSAFE and request.path not in request.app[K.CSRF_EXEMPT]:
        sent = request.headers.get("X-CSRF-Token")
        if sent is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            v = form.get("csrf_token")
            sent = v if isinstance(v, str) else None
        if not sent or expected_csrf is None or not hmac.compare_digest(sent, expected_csrf):
            raise Forbidden("the form has expired or did not come from this site: reload the page")

    resp = await handler(request)
    if new_anon:
        resp.set_cookie(
            CSRF_COOKIE,
            new_anon,
            httponly=True,
            samesite="Strict",
            secure=cfg.auth.cookie_secure,
            path="/",
        )
    return resp
