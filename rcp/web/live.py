"""Server-sent events for the live session page: the quorum, pushed when attendance or the
agenda changes (``RcpService.after_session_change``), instead of polling.

``LiveHub`` is in-process: a page connected to another worker than the one that recorded a
check-in still gets the new quorum within ``REFRESH_S`` (the stream sends the current quorum at
least that often, which also keeps proxies from closing it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from konsil import appkeys as K
from konsil.identity.specialties import BY_CODE
from konsil.web.request import lang_of
from rcp.domain.quorum import QuorumStatus
from rcp.web.common import caller, svc

REFRESH_S = 15.0


class LiveHub:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        self.closed = False

    def version(self, session_id: str) -> int:
        return self._versions.get(session_id, 0)

    async def changed(self, session_id: str) -> None:
        self._versions[session_id] = self.version(session_id) + 1
        ev = self._events.pop(session_id, None)
        if ev is not None:
            ev.set()

    async def wait(self, session_id: str, seen: int, timeout_s: float) -> None:
        """Return when the session changed after version ``seen``, or after ``timeout_s``."""
        if self.closed or self.version(session_id) != seen:
            return
        ev = self._events.setdefault(session_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except TimeoutError:
            pass

    def close(self) -> None:
        self.closed = True
        for ev in self._events.values():
            ev.set()


LIVE = web.AppKey("rcp_live", LiveHub)
routes = web.RouteTableDef()


def quorum_json(request: web.Request, q: QuorumStatus) -> dict[str, Any]:
    """The quorum JSON, with the missing specialties also named in the reader's language."""
    lang = lang_of(request)
    tr = request.app[K.TRANSLATOR]
    data = q.to_json()
    data["missing_labels"] = [
        tr.gettext(lang, "any surgical specialty")
        if code == "surgical"
        else (getattr(BY_CODE[code], lang, code) if code in BY_CODE else code)
        for code in q.missing_required
    ]
    return data


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@routes.get("/rcp/sessions/{id}/events")
async def session_events(request: web.Request) -> web.StreamResponse:
    """``quorum`` events (the session's quorum JSON) and ``agenda`` events (something on the
    agenda or the attendance changed: the page reloads those parts through its own audited
    read). Members of the board only; no patient data goes through this stream."""
    p, _ = caller(request)
    session_id = request.match_info["id"]
    hub = request.app[LIVE]
    quorum = await svc(request).quorum(p, session_id)  # refuses non-members
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    seen = hub.version(session_id)
    try:
        await resp.write(b"retry: 3000\n\n" + _event("quorum", quorum_json(request, quorum)))
        while not hub.closed:
            await hub.wait(session_id, seen, REFRESH_S)
            if hub.closed:
                break
            now = hub.version(session_id)
            quorum = await svc(request).quorum(p, session_id)
            out = _event("quorum", quorum_json(request, quorum))
            if now != seen:
                out += _event("agenda", {"version": now})
                seen = now
            await resp.write(out)
    except ConnectionResetError:  # the page was closed
        pass
    return resp


def setup_live(app: web.Application) -> None:
    app[LIVE] = LiveHub()
    app.router.add_routes(routes)

    async def close(app: web.Application) -> None:
        app[LIVE].close()

    app.on_shutdown.append(close)
