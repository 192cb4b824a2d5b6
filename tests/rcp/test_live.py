"""The live session page's event stream: the quorum is pushed as attendance changes, and an
agenda event says when the page should reload its agenda; only board members may follow it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import ClientResponse

from konsil.identity.specialties import BY_CODE
from tests.conftest import web_login
from tests.rcp.conftest import World


async def next_event(resp: ClientResponse) -> tuple[str, Any]:
    name, data = "", None
    while True:
        line = (await resp.content.readline()).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])
        elif line == "" and name:
            return name, data


async def test_the_quorum_is_pushed_to_the_live_page(world: World) -> None:
    w = world
    path = f"/rcp/sessions/{w.session_id}/events"
    case = await w.scheduled_case()
    await web_login(w.client, w.outsider.person)
    denied = await w.client.get(path)
    assert denied.status == 403
    w.client.session.cookie_jar.clear()
    await web_login(w.client, w.chair.person)
    resp = await w.client.get(path)
    try:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        name, q = await next_event(resp)
        assert name == "quorum" and not q["met"] and q["physicians_present"] == 0
        await w.check_in(w.chair, w.medonc)
        events: list[tuple[str, Any]] = []
        while not any(n == "quorum" and d["physicians_present"] == 2 for n, d in events):
            events.append(await next_event(resp))
        assert "agenda" in {n for n, _ in events}
        q = next(d for n, d in reversed(events) if n == "quorum")
        assert q["missing_required"] == ["radiation-oncology"]
        assert q["missing_labels"] == [BY_CODE["radiation-oncology"].fr]  # the page's language
        await w.check_in(w.radonc)
        name, q = await next_event(resp)
        while not (name == "quorum" and q["met"]):
            name, q = await next_event(resp)
        assert {p["specialty"] for p in q["present"]} == {
            "breast-surgery",
            "medical-oncology",
            "radiation-oncology",
        }
        # postponing a case changes the session's agenda: an agenda event follows
        await w.call(
            w.coordinator,
            "POST",
            f"/cases/{case['id']}/transitions",
            {"action": "postpone", "note": "more exams"},
        )
        name, _ = await next_event(resp)
        while name != "agenda":
            name, _ = await next_event(resp)
    finally:
        resp.close()
