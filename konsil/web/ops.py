"""Operational endpoints: health, metrics, OpenAPI, static files."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import text

from konsil import __version__
from konsil import appkeys as K
from konsil.web.request import json_response

routes = web.RouteTableDef()

OPENAPI = web.AppKey("openapi", dict[str, Any])


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    db = request.app[K.DB]
    try:
        async with db.session() as s:
            await s.execute(text("SELECT 1"))
    except Exception:
        return json_response({"status": "unavailable", "database": "down"}, status=503)
    return json_response({"status": "ok", "version": __version__})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[K.METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])
