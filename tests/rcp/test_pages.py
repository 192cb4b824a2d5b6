"""RCP web pages: French catalogue complete, forms with per-field errors, authorisation on
pages, agenda ordering, submission deadline, attachments through the form."""

from __future__ import annotations

import re
from urllib.parse import unquote

from konsil import appkeys as K
from konsil.clock import FakeClock
from templates import __path__ as templates_path
from tests.conftest import Client, web_login
from tests.rcp.conftest import DECISION, World

TEXT = re.compile(r"""_\(\s*(["'])(.+?)\1\s*\)""")


def test_every_rcp_page_string_has_a_french_translation(client: Client) -> None:
    from pathlib import Path

    root = Path(next(iter(templates_path))) / "pages" / "rcp"
    texts = sorted({m.group(2) for f in root.glob("*.html") for m in TEXT.finditer(f.read_text())})
    assert len(texts) > 80
    assert client.app[K.TRANSLATOR].missing_fr(texts) == []


async def test_case_page_authorisation_and_english(world: World) -> None:
    w = world
    case = await w.new_case()
    await web_login(w.client, w.outsider.person)
    r = await w.client.get(f"/rcp/cases/{case['id']}")
    assert r.status == 403
    w.client.session.cookie_jar.clear()
    await web_login(w.client, w.referrer.person)
    r = await w.client.get(f"/rcp/cases/{case['id']}")
    text = await r.text()
    assert r.status == 200 and "Muller" in text and "Question posée à la RCP" in text
    await w.client.get("/lang/en?next=/", allow_redirects=False)
    r = await w.client.get(f"/rcp/cases/{case['id']}")
    assert "Question to the board" in await r.text()
    r = await w.client.get("/rcp/my")
    assert "Muller" in await r.text()


async def test_case_form_shows_field_errors(world: World) -> None:
    w = world
    csrf = await web_login(w.client, w.referrer.person)
    r = await w.client.post(
        "/rcp/cases",
        data={
            "csrf_token": csrf,
            "board_id": w.board_id,
            "patient": w.matricule,
            "question": "Q?",
            "icd10": "C50.4",
            "origin": "primary",
            "ecog": "9",
            "tnm_kind": "c",
            "tnm_t": "T9",
            "tnm_n": "N0",
            "tnm_m": "M0",
            "tnm_edition": "8",
            "action": "submit",
        },
    )
    text = await r.text()
    assert r.status == 400
    assert 'id="e-ecog"' in text and 'id="e-tnm_t"' in text
    assert 'value="Q?"' not in text  # textarea keeps the question as content
    assert "Q?</textarea>" in text


async def test_decision_form_requires_justification_of_a_deviation(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    await w.check_in(w.chair, w.medonc, w.radonc)
    csrf = await web_login(w.client, w.chair.person)
    r = await w.client.post(
        f"/rcp/cases/{case['id']}/decision",
        data={
            "csrf_token": csrf,
            "proposal": "surgery",
            "guideline_conform": "0",
            "conclusion": "Surgery",
        },
    )
    assert r.status == 400
    assert "deviation_justification" in await r.text()
    r = await w.client.post(
        f"/rcp/cases/{case['id']}/decision",
        data={
            "csrf_token": csrf,
            "proposal": "surgery",
            "guideline_conform": "0",
            # a browser sends a textarea's line breaks as CR LF
            "deviation_justification": "Patient preference.\r\nDiscussed with her family.",
            "conclusion": "Surgery\r\nthen adjuvant treatment.",
        },
        allow_redirects=False,
    )
    assert r.status == 303 and r.headers["Location"].endswith("/report")
    got = await w.call(w.chair, "GET", f"/cases/{case['id']}")
    assert got["state"] == "REPORT_DRAFT"
    assert got["report"]["deviation_justification"] == (
        "Patient preference.\nDiscussed with her family."
    )
    assert got["report"]["conclusion"] == "Surgery\nthen adjuvant treatment."
    # the report with line breaks is published as a valid CDA
    signed = await w.call(
        w.chair, "POST", f"/cases/{case['id']}/sign", {"password": w.chair.person.password}
    )
    assert signed["state"] == "PUBLISHED"


async def test_agenda_priority_then_manual_reorder(world: World) -> None:
    w = world
    ids = []
    for prio in (0, 2, 1):
        c = await w.new_case(priority=prio)
        await w.call(
            w.coordinator,
            "POST",
            f"/cases/{c['id']}/transitions",
            {"action": "schedule", "session_id": w.session_id},
        )
        ids.append(c["id"])
    agenda = await w.call(w.coordinator, "GET", f"/sessions/{w.session_id}")
    assert [i["case_id"] for i in agenda["agenda"]] == [ids[1], ids[2], ids[0]]
    await w.call(w.coordinator, "POST", f"/cases/{ids[0]}/move", {"delta": -2})
    agenda = await w.call(w.coordinator, "GET", f"/sessions/{w.session_id}")
    assert [i["case_id"] for i in agenda["agenda"]] == [ids[0], ids[1], ids[2]]
    await w.call(w.radiologist, "POST", f"/cases/{ids[0]}/move", {"delta": 1}, 403)


async def test_submission_deadline(world: World, clock: FakeClock) -> None:
    w = world
    routine = await w.new_case()
    urgent = await w.new_case(priority=2)
    clock.advance(4 * 86400)  # 19 January: past the 48-hour deadline of the 20 January session
    p = await w.call(
        w.coordinator,
        "POST",
        f"/cases/{routine['id']}/transitions",
        {"action": "schedule", "session_id": w.session_id},
        400,
    )
    assert "deadline" in p["errors"]["session_id"]
    ok = await w.call(
        w.coordinator,
        "POST",
        f"/cases/{urgent['id']}/transitions",
        {"action": "schedule", "session_id": w.session_id},
    )
    assert ok["state"] == "SCHEDULED"


async def test_attachment_through_the_form_and_download(world: World) -> None:
    w = world
    case = await w.new_case()
    csrf = await web_login(w.client, w.referrer.person)
    from aiohttp import FormData

    form = FormData()
    form.add_field("csrf_token", csrf)
    name = "scan-thorax.png"
    form.add_field("file", b"\x89PNG\r\n\x1a\nimage", filename=name, content_type="image/png")
    r = await w.client.post(f"/rcp/cases/{case['id']}/attachments", data=form)
    assert r.status == 200
    got = await w.call(w.medonc, "GET", f"/cases/{case['id']}")
    att = got["attachments"][0]
    assert att["filename"] == name and att["content_type"] == "image/png"
    r = await w.client.get(f"/rcp/cases/{case['id']}/attachments/{att['id']}")
    assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")
    disposition = r.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename*=UTF-8''")
    assert unquote(disposition.split("''", 1)[1]) == name  # RFC 5987: any stored name is safe
    assert r.headers["Cache-Control"] == "no-store"


async def test_pages_render_for_the_board(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    await w.check_in(w.chair, w.medonc, w.radonc)
    await w.call(w.chair, "POST", f"/cases/{case['id']}/decision", DECISION)
    await w.call(w.chair, "POST", f"/cases/{case['id']}/report", None, 201)
    await web_login(w.client, w.chair.person)
    for path in (
        "/rcp",
        f"/rcp/boards/{w.board_id}",
        f"/rcp/sessions/{w.session_id}",
        f"/rcp/sessions/{w.session_id}/live",
        f"/rcp/cases/{case['id']}",
        f"/rcp/cases/{case['id']}/report",
        "/rcp/cases/new",
    ):
        r = await w.client.get(path)
        assert r.status == 200, path
    r = await w.client.get(f"/rcp/cases/{case['id']}/report")
    text = await r.text()
    assert 'id="sign-form"' in text and "Chimiothérapie" in text
    r = await w.client.get(f"/rcp/cases/{case['id']}/pps")
    assert r.status == 400  # no PPS before the report is signed


async def test_dashboard_panels(world: World) -> None:
    w = world
    await w.new_case()
    await web_login(w.client, w.coordinator.person)
    text = await (await w.client.get("/")).text()
    assert "RCP : mes prochaines séances" in text and "RCP Sein" in text
    w.client.session.cookie_jar.clear()
    await web_login(w.client, w.referrer.person)
    text = await (await w.client.get("/")).text()
    assert "RCP : mes dossiers" in text and "Muller · RCP Sein · SUBMITTED" in text


async def test_sign_page_reauthenticates_the_chair(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    await w.check_in(w.chair, w.medonc, w.radonc)
    await w.call(w.chair, "POST", f"/cases/{case['id']}/decision", DECISION)
    await w.call(w.chair, "POST", f"/cases/{case['id']}/report", None, 201)
    csrf = await web_login(w.client, w.chair.person)
    r = await w.client.post(
        f"/rcp/cases/{case['id']}/sign", data={"csrf_token": csrf, "password": "not-it"}
    )
    assert r.status == 403 and 'id="sign-form"' in await r.text()
    r = await w.client.post(
        f"/rcp/cases/{case['id']}/sign",
        data={"csrf_token": csrf, "password": w.chair.person.password},
        allow_redirects=False,
    )
    assert r.status == 303
    got = await w.call(w.referrer, "GET", f"/cases/{case['id']}/outcome")
    assert got["state"] == "PUBLISHED" and got["report"]["legal_authenticator"]["name"]
    r = await w.client.get(f"/rcp/cases/{case['id']}/pps")
    assert r.status == 200 and "Chimiothérapie" in await r.text()
