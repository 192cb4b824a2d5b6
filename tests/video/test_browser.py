"""The teleconsultation in a real browser: Chromium (fake camera and microphone) driven by
Playwright, two contexts (doctor, patient) plus a third for the refused browser, against a
running Konsil server, a real SMTP server and, for the relay run, a real coturn."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import Actor
from konsil.clock import FakeClock
from konsil.identity.matricule import make_matricule
from tests.conftest import Person
from tests.video.conftest import ServerFactory, Smtp, Turn
from video.domain.service import check_schedule
from video.models import VideoAppointment, VideoPendingIssue
from video.web import SERVICE

pytestmark = pytest.mark.e2e

PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
FRAMES = "() => window.konsilVideo.framesDecoded > 0"


@pytest.fixture
def clock() -> FakeClock:
    # TURN credentials carry a real expiry time: coturn checks it against its own clock.
    return FakeClock(datetime.now(UTC))


async def login(page: Any, base: str, person: Person) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#username", person.username)
    await page.fill("#password", person.password)
    await page.click("main button[type=submit]")
    await page.wait_for_url(re.compile(r".*/$"))


async def schedule(page: Any, base: str, matricule: str) -> str:
    await page.goto(f"{base}/video")
    await page.fill("#f-matricule", matricule)
    await page.fill("#f-birth_date", "1980-04-02")
    await page.fill("#f-given_name", "Luc")
    await page.fill("#f-family_name", "Hoffmann")
    await page.fill("#f-email", "luc.hoffmann@example.lu")
    await page.click("#schedule button[type=submit]")
    await page.wait_for_url(re.compile(r".*/video/appointments/[0-9a-f]{32}$"))
    return str(page.url.rsplit("/", 1)[1])


async def enter(page: Any, link: str) -> None:
    await page.goto(link)
    await page.fill("#f-birth_date", "1980-04-02")
    await page.check("#f-consent")
    await page.click("main button[type=submit]")
    await page.wait_for_url(re.compile(r".*/video/room/[0-9a-f]{32}$"))


async def admit_and_connect(doctor: Any, patient: Any, base: str, appointment: str) -> None:
    # The pre-call check runs against the server's aiortc echo peer and reports in plain words.
    await patient.wait_for_selector("#c-camera.ok", timeout=30_000)
    assert await patient.text_content("#c-camera") == "Your camera works."
    assert await patient.text_content("#c-mic") == "Your microphone works."
    assert "Your connection is" in (await patient.text_content("#c-net") or "")
    await patient.wait_for_selector("#waiting:not([hidden])")
    # The doctor's waiting room is pushed live over the WebSocket, with the check result.
    await doctor.goto(f"{base}/video")
    item = doctor.locator(f"li[data-appointment='{appointment}']")
    await item.wait_for(timeout=15_000)
    assert "camera works" in (await item.text_content() or "")
    await item.locator("form.admit button").click()
    await doctor.wait_for_url(f"{base}/video/call/{appointment}")
    await doctor.wait_for_function(FRAMES, polling=250, timeout=30_000)
    await patient.wait_for_function(FRAMES, polling=250, timeout=30_000)


async def test_teleconsultation_from_invitation_to_documents(
    browser: Any, video_server: ServerFactory, smtp: Smtp, doctor: Person
) -> None:
    server = await video_server(smtp_port=smtp.port)
    base = f"http://127.0.0.1:{server.port}"
    app = server.app
    assert app is not None
    ctx_doc = await browser.new_context(locale="en-GB")
    ctx_pat = await browser.new_context(locale="en-GB")
    ctx_third = await browser.new_context(locale="en-GB")
    for ctx in (ctx_doc, ctx_pat, ctx_third):
        await ctx.add_cookies([{"name": "konsil_lang", "value": "en", "url": base}])
    doc, pat, third = await ctx_doc.new_page(), await ctx_pat.new_page(), await ctx_third.new_page()
    csp_violations: list[str] = []
    for page in (doc, pat):
        page.on(
            "console",
            lambda msg: (
                csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
            ),
        )

    await login(doc, base, doctor)
    appointment = await schedule(doc, base, make_matricule("19800402", 123))
    await doc.click("#invite")
    link_shown = await doc.input_value("#invite-link")
    assert await doc.locator(".qr svg").count() == 1
    mail = await smtp.box.next_message()
    assert mail["To"] == "luc.hoffmann@example.lu"
    body = mail.get_content()
    m = re.search(r"http://\S+/video/join/\S+", body)
    assert m, body
    link = m.group(0)
    assert link == link_shown

    await enter(pat, link)
    await admit_and_connect(doc, pat, base, appointment)

    # A third browser with the same link is refused, and cannot reach the room or the socket.
    resp = await third.goto(link)
    assert resp is not None and resp.status == 403
    assert "already been used" in (await third.content())
    resp = await third.goto(f"{base}/video/room/{appointment}")
    assert resp is not None and resp.status == 403

    # A page reload re-creates the peer connection and the picture comes back on both sides.
    await pat.reload()
    await pat.wait_for_function(FRAMES, polling=250, timeout=30_000)
    await doc.wait_for_function(
        "() => window.konsilVideo.state().generation >= 2", polling=250, timeout=30_000
    )
    await doc.wait_for_function(FRAMES, polling=250, timeout=30_000)

    # Mute, camera off and screen share switch what the doctor sends.
    await doc.click("#btn-mute")
    assert await doc.get_attribute("#btn-mute", "aria-pressed") == "true"
    await doc.click("#btn-camera")
    assert await doc.get_attribute("#btn-camera", "aria-pressed") == "true"
    await doc.click("#btn-camera")
    await doc.click("#btn-mute")
    await doc.click("#btn-share")
    await doc.wait_for_function(
        "() => document.getElementById('btn-share').getAttribute('aria-pressed') === 'true'"
    )
    label = await doc.evaluate("window.konsilVideo.sending()")
    assert label and "screen" in label.lower(), label
    await doc.click("#btn-share")
    await doc.wait_for_function("() => !/^screen/.test(window.konsilVideo.sending())")
    assert await doc.get_attribute("#btn-share", "aria-pressed") == "false"

    # Chat, both ways.
    await doc.fill("#chat-text", "Bonjour, comment allez-vous ?")
    await doc.click("#chat-form button")
    await pat.locator("#chat-log li", has_text="comment allez-vous").wait_for()
    await pat.fill("#chat-text", "J'ai de la fièvre.")
    await pat.press("#chat-text", "Enter")
    await doc.locator("#chat-log li", has_text="fièvre").wait_for()

    # The patient sends a PDF; the doctor sees it live and downloads the same bytes.
    await pat.set_input_files(
        "#file-input", files=[{"name": "analyse.pdf", "mimeType": "application/pdf", "buffer": PDF}]
    )
    await pat.click("#file-form button")
    link_el = doc.locator("#file-list a", has_text="analyse.pdf")
    await link_el.wait_for()
    href = await link_el.get_attribute("href")
    got = await ctx_doc.request.get(f"{base}{href}")
    assert got.status == 200 and await got.body() == PDF
    refused = await ctx_third.request.get(f"{base}{href}")
    assert refused.status == 403

    # Hang up: the doctor lands on the after-call screen, the patient's page says it ended.
    await doc.click("#btn-hangup")
    await doc.wait_for_url(f"{base}/video/appointments/{appointment}/after")
    await pat.wait_for_selector("text=The teleconsultation has ended.")
    await pat.wait_for_selector("#doc-list")  # the room page reloads into its after-call view

    await doc.fill("#f-reason", "Fièvre et courbatures depuis hier.")
    await doc.fill("#f-findings", "Syndrome grippal.")
    await doc.fill("#f-plan", "Repos, hydratation.")
    await doc.check("#f-sick_leave")
    today = app[K.CLOCK].now().date()
    await doc.fill("#f-sl_start", today.isoformat())
    await doc.fill("#f-sl_end", (today + timedelta(days=2)).isoformat())
    await doc.fill("#f-sl_dx_code", "J11.1")
    await doc.fill("#f-sl_dx_label", "Grippe")
    await doc.click("#after-submit")
    await doc.wait_for_selector("#saved")

    async with app[K.DB].session() as s:
        rows = (
            (
                await s.execute(
                    select(VideoPendingIssue).where(VideoPendingIssue.appointment_id == appointment)
                )
            )
            .scalars()
            .all()
        )
        appt = await s.get(VideoAppointment, appointment)
        assert appt is not None and appt.status == "ended"
        assert json.loads(appt.check_result or "{}")["camera"] is True
        events = (
            (await s.execute(select(AuditEvent).where(AuditEvent.action.like("video.%"))))
            .scalars()
            .all()
        )
    assert sorted(r.kind for r in rows) == ["report", "sick_leave"]
    assert all(r.status == "pending" for r in rows)
    cert = json.loads(next(r.payload for r in rows if r.kind == "sick_leave"))["document"]
    assert cert["diagnosis"] == {"code": "J11.1", "label": "Grippe"} and cert["kind"] == "illness"
    actions = {e.action for e in events}
    assert {
        "video.schedule",
        "video.invite",
        "video.consent",
        "video.check",
        "video.admit",
        "video.chat",
        "video.file.upload",
        "video.file.download",
        "video.hangup",
        "video.documents",
    } <= actions
    assert all(e.patient_id == appt.patient_id for e in events)

    # The patient's link still shows their documents.
    await pat.goto(link)
    await pat.wait_for_selector("text=Consultation report")
    assert "Syndrome grippal." in await pat.content()
    assert await pat.locator("#doc-list a", has_text="analyse.pdf").count() == 1
    assert csp_violations == []
    for ctx in (ctx_doc, ctx_pat, ctx_third):
        await ctx.close()


async def test_refused_camera_is_explained(
    browser: Any, video_server: ServerFactory, doctor: Person
) -> None:
    server = await video_server()
    base = f"http://127.0.0.1:{server.port}"
    app = server.app
    assert app is not None
    svc = app[SERVICE]
    now = app[K.CLOCK].now()
    when = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M+00:00")
    form = {
        "starts_at": when,
        "matricule": make_matricule("19800402", 125),
        "birth_date": "1980-04-02",
        "given_name": "Luc",
        "family_name": "Hoffmann",
    }
    appt = await svc.do_schedule(Actor(doctor.account_id), check_schedule(form, now))
    inv = await svc.do_invite(Actor(doctor.account_id), appt.id)
    ctx = await browser.new_context(locale="en-GB")
    await ctx.add_cookies([{"name": "konsil_lang", "value": "en", "url": base}])
    # The browser says no, as it does when the person blocks camera and microphone.
    await ctx.add_init_script(
        "navigator.mediaDevices.getUserMedia = () => "
        "Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"
    )
    page = await ctx.new_page()
    await enter(page, f"{base}/video/join/{inv.token}")
    err = page.locator("#check-error")
    await err.wait_for()
    assert "refused access to the camera or microphone" in (await err.text_content() or "")
    assert await page.is_visible("#check-retry")
    await ctx.close()


async def test_relay_only_call_through_coturn(
    browser: Any, video_server: ServerFactory, turn: Turn, doctor: Person
) -> None:
    server = await video_server(turn=turn, force_relay=True)
    base = f"http://127.0.0.1:{server.port}"
    ctx_doc = await browser.new_context(locale="en-GB")
    ctx_pat = await browser.new_context(locale="en-GB")
    for ctx in (ctx_doc, ctx_pat):
        await ctx.add_cookies([{"name": "konsil_lang", "value": "en", "url": base}])
    doc, pat = await ctx_doc.new_page(), await ctx_pat.new_page()
    await login(doc, base, doctor)
    appointment = await schedule(doc, base, make_matricule("19800402", 124))
    await doc.click("#invite")
    link = await doc.input_value("#invite-link")
    await enter(pat, link)
    await admit_and_connect(doc, pat, base, appointment)
    for page in (doc, pat):
        stats = await page.evaluate("window.konsilVideo.stats()")
        stats["state"] = await page.evaluate("window.konsilVideo.state()")
        assert stats["localCandidateType"] == "relay", json.dumps(stats)
        assert stats["remoteCandidateType"] == "relay", stats
    ice = await ctx_pat.request.get(f"{base}/video/api/ice")
    body = await ice.json()
    assert body["iceTransportPolicy"] == "relay"
    assert body["iceServers"][0]["username"].endswith(f":guest-{appointment}")
    for ctx in (ctx_doc, ctx_pat):
        await ctx.close()
