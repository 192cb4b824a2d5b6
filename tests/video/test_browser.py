"""The teleconsultation in a real browser: Chromium (fake camera and microphone) driven by
Playwright, two contexts (doctor, patient) plus a third for the refused browser, against a
running Konsil server, a real SMTP server and, for the relay run, a real coturn."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import Actor
from konsil.clock import FakeClock
from konsil.config import WorkflowConfig
from konsil.identity.matricule import make_matricule
from tests.conftest import Person
from tests.coturn import Turn
from tests.video.conftest import ServerFactory, Smtp
from video.domain.service import check_schedule
from video.models import VideoAppointment
from video.web import HUB, SERVICE
from workflow.cda.validation import validate_cda
from workflow.models import ClinicalDocument
from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings
from workflow.web.keys import OUTBOX, WORKER

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
    # Camera and microphone are reported at the first echoed frame and sound; the frame rate
    # (the connection's verdict) follows while the patient waits.
    await patient.wait_for_selector("#c-net.ok, #c-net.bad", timeout=30_000)
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


@dataclass
class Call:
    """A doctor and a patient in a call, each in their own browser context."""

    ctx_doc: Any
    ctx_pat: Any
    doc: Any
    pat: Any
    appointment: str


@asynccontextmanager
async def connected_call(
    browser: Any, base: str, doctor: Person, serial: int
) -> AsyncIterator[Call]:
    """Schedule, invite, enter and admit: both pages decode frames; contexts closed after."""
    ctx_doc = await browser.new_context(locale="en-GB")
    ctx_pat = await browser.new_context(locale="en-GB")
    try:
        for ctx in (ctx_doc, ctx_pat):
            await ctx.add_cookies([{"name": "konsil_lang", "value": "en", "url": base}])
        doc, pat = await ctx_doc.new_page(), await ctx_pat.new_page()
        await login(doc, base, doctor)
        appointment = await schedule(doc, base, make_matricule("19800402", serial))
        await doc.click("#invite")
        await enter(pat, await doc.input_value("#invite-link"))
        await admit_and_connect(doc, pat, base, appointment)
        yield Call(ctx_doc, ctx_pat, doc, pat, appointment)
    finally:
        for ctx in (ctx_doc, ctx_pat):
            await ctx.close()


async def test_teleconsultation_from_invitation_to_documents(
    browser: Any,
    video_server: ServerFactory,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    smtp: Smtp,
    doctor: Person,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    # The DSP and the CNS: the simulators, in-process on free ports, validating what they get.
    dsp_sim = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    cns_sim = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    wf = WorkflowConfig(
        dsp_url=str(dsp_sim.make_url(dsp.ITI41_PATH)),
        cns_url=str(cns_sim.make_url(cns.PATH)),
        worker_enabled=True,
    )
    server = await video_server(smtp_port=smtp.port, workflow=wf)
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
    script_errors: list[str] = []
    for page in (doc, pat):
        page.on(
            "console",
            lambda msg: (
                csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
            ),
        )
        page.on("pageerror", lambda exc: script_errors.append(str(exc)))

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
    # The page's script entered (no page load): the check continued in the same page.
    assert await pat.evaluate("'entered' in window.konsilVideo.marks")
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

    # Hang up after a ten-minute consultation: the doctor lands on the after-call screen, the
    # patient's page says it ended.
    clock.advance(600)
    await doc.click("#btn-hangup")
    await doc.wait_for_url(f"{base}/video/appointments/{appointment}/after")
    await pat.wait_for_selector("text=The teleconsultation has ended.")
    # the room page reloads into its after-call view (without the call script): wait for it, or a
    # later navigation of this page races the reload (net::ERR_ABORTED)
    await pat.locator('script[src="/static/video/call.js"]').wait_for(state="detached")
    await pat.wait_for_selector("#file-list")

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

    # Signed, stored and queued with the form; the in-process worker delivers them.
    async with app[K.DB].session() as s:
        docs = (await s.execute(select(ClinicalDocument))).scalars().all()
        appt = await s.get(VideoAppointment, appointment)
        assert appt is not None and appt.status == "ended"
        assert json.loads(appt.check_result or "{}")["camera"] is True
    assert sorted(d.kind for d in docs) == ["sick-leave", "teleconsultation-report"]
    outbox = app[OUTBOX]
    for _ in range(50):
        views = await outbox.messages()
        if all(v.message.status == "delivered" for v in views):
            break
        await app[WORKER].run_once()
    assert sorted((v.message.target, v.message.status) for v in views) == [
        ("cns", "delivered"),
        ("dsp", "delivered"),
        ("dsp", "delivered"),
    ]
    # What the DSP and the CNS stored is the documents as issued, and valid.
    stored = {store: sorted((tmp_path / store).glob("*/document.xml")) for store in ("dsp", "cns")}
    assert len(stored["dsp"]) == 2 and len(stored["cns"]) == 1
    for path in stored["dsp"] + stored["cns"]:
        xml = path.read_bytes()
        assert validate_cda(xml) == []
        assert xml in {d.content for d in docs}
    assert b"DT-20002" in stored["cns"][0].read_bytes()
    async with app[K.DB].session() as s:
        events = (
            (await s.execute(select(AuditEvent).where(AuditEvent.action.like("video.%"))))
            .scalars()
            .all()
        )
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

    # The patient's link offers their documents as PDF (the certificate: the patient's copy).
    await pat.goto(link)
    cert = pat.locator("#doc-list li[data-kind=sick_leave] a")
    await cert.wait_for()
    pdf = await ctx_pat.request.get(f"{base}{await cert.get_attribute('href')}")
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert (await pdf.body()).startswith(b"%PDF-")
    assert await pat.locator("#doc-list li[data-kind=report] a").count() == 1
    assert await pat.locator("#file-list a", has_text="analyse.pdf").count() == 1
    # The doctor's appointment page shows where each document went.
    await doc.goto(f"{base}/video/appointments/{appointment}")
    assert await doc.locator("#doc-list [data-status=delivered]").count() == 3
    assert csp_violations == []
    assert script_errors == []
    for ctx in (ctx_doc, ctx_pat, ctx_third):
        await ctx.close()


# What a page receives from the other person, and whether it sends anything to them.
RECEIVED = """async () => {
  const k = window.konsilVideo, s = await k.stats();
  return { connection: s.connection, bytes: s.bytesReceived, frames: s.framesDecoded,
    audio: s.audioPackets, sending: k.sending(), firstFrame: k.firstFrameAt || null,
    admitted: k.state().admitted, generation: k.state().generation };
}"""
CONNECTED = "async () => (await window.konsilVideo.stats()).connection === 'connected'"


async def test_call_is_connected_while_the_patient_waits_and_carries_nothing_before_admission(
    browser: Any, video_server: ServerFactory, doctor: Person
) -> None:
    """The doctor's dashboard and the waiting patient hold the call's peer connection (ICE and
    DTLS done) before admission, with senders that carry no track: neither side receives a
    byte of audio or video. Admitting attaches camera and microphone to that same connection
    (no new negotiation) and the pictures flow both ways."""
    server = await video_server()
    base = f"http://127.0.0.1:{server.port}"
    ctx_doc = await browser.new_context(locale="en-GB")
    ctx_pat = await browser.new_context(locale="en-GB")
    try:
        for ctx in (ctx_doc, ctx_pat):
            await ctx.add_cookies([{"name": "konsil_lang", "value": "en", "url": base}])
        doc, pat = await ctx_doc.new_page(), await ctx_pat.new_page()
        await login(doc, base, doctor)
        appointment = await schedule(doc, base, make_matricule("19800402", 128))
        await doc.click("#invite")
        await enter(pat, await doc.input_value("#invite-link"))
        await pat.wait_for_selector("#waiting:not([hidden])", timeout=30_000)
        await doc.goto(f"{base}/video")
        item = doc.locator(f"li[data-appointment='{appointment}']")
        await item.wait_for(timeout=15_000)
        for page in (doc, pat):
            await page.wait_for_function(CONNECTED, polling=100, timeout=30_000)
        await asyncio.sleep(1.5)  # media would have flowed by now had a track been attached
        before = {}
        for page in (doc, pat):
            got = await page.evaluate(RECEIVED)
            assert got["connection"] == "connected", got
            assert (got["bytes"], got["frames"], got["audio"]) == (0, 0, 0), got
            assert got["sending"] is None and got["firstFrame"] is None, got
            assert got["admitted"] is False, got
            before[page] = got["generation"]
        assert await doc.is_hidden("#video-app")  # the dashboard still shows the waiting room

        await item.locator("form.admit button").click()
        await doc.wait_for_url(f"{base}/video/call/{appointment}")
        for page in (doc, pat):
            await page.wait_for_function(FRAMES, polling=100, timeout=30_000)
        for page in (doc, pat):
            got = await page.evaluate(RECEIVED)
            assert got["admitted"] is True and got["sending"], got
            assert got["bytes"] > 0 and got["audio"] > 0, got
            assert got["generation"] == before[page], (got, before[page])  # same connection
    finally:
        for ctx in (ctx_doc, ctx_pat):
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
    async with connected_call(browser, base, doctor, 124) as call:
        doc, pat, appointment = call.doc, call.pat, call.appointment
        for page in (doc, pat):
            stats = await page.evaluate("window.konsilVideo.stats()")
            stats["state"] = await page.evaluate("window.konsilVideo.state()")
            assert stats["localCandidateType"] == "relay", json.dumps(stats)
            assert stats["remoteCandidateType"] == "relay", stats
        ice = await call.ctx_pat.request.get(f"{base}/video/api/ice")
        body = await ice.json()
        assert body["iceTransportPolicy"] == "relay"
        assert body["iceServers"][0]["username"].endswith(f":guest-{appointment}")


NEW_PEER_FLOWING = """async (gen) => {
  const k = window.konsilVideo;
  return k.state().generation > gen && (await k.stats()).framesDecoded > 0;
}"""


async def test_call_recovers_when_the_signalling_sockets_drop(
    browser: Any, video_server: ServerFactory, doctor: Person
) -> None:
    """The server drops both signalling WebSockets (as a restart or a network cut does): both
    pages reconnect with backoff, the peer connection is re-created and pictures flow again."""
    server = await video_server()
    base = f"http://127.0.0.1:{server.port}"
    app = server.app
    assert app is not None
    async with connected_call(browser, base, doctor, 126) as call:
        doc, pat, appointment = call.doc, call.pat, call.appointment
        before = {p: await p.evaluate("window.konsilVideo.state().generation") for p in (doc, pat)}
        hellos = {p: await p.evaluate("window.konsilVideo.state().hellos") for p in (doc, pat)}
        for ws in list(app[HUB].rooms[appointment].values()):
            await ws.close(code=1012, message=b"restart")
        for page in (doc, pat):  # each page greeted again on a new socket
            await page.wait_for_function(
                "(n) => window.konsilVideo.state().hellos > n",
                arg=hellos[page],
                polling=250,
                timeout=30_000,
            )
        for page in (doc, pat):
            await page.wait_for_function(
                NEW_PEER_FLOWING, arg=before[page], polling=250, timeout=30_000
            )


async def test_relay_call_recovers_after_the_relay_drops(
    browser: Any, video_server: ServerFactory, turn: Turn, doctor: Person
) -> None:
    """A relay-only call loses its media path (coturn stops: what a network drop does to
    it); both pages see the connection go, the peer connection is re-created once the relay
    is back, and pictures flow again on both sides."""
    server = await video_server(turn=turn, force_relay=True)
    base = f"http://127.0.0.1:{server.port}"
    async with connected_call(browser, base, doctor, 127) as call:
        doc, pat = call.doc, call.pat
        before = {p: await p.evaluate("window.konsilVideo.state().generation") for p in (doc, pat)}
        turn.stop()
        lost = "() => window.konsilVideo.state().events.some((e) => /^pc-(disconnected|failed)$/.test(e))"
        for page in (doc, pat):
            await page.wait_for_function(lost, polling=250, timeout=60_000)
        turn.start()
        for page in (doc, pat):
            await page.wait_for_function(
                NEW_PEER_FLOWING, arg=before[page], polling=250, timeout=60_000
            )
            stats = await page.evaluate("window.konsilVideo.stats()")
            assert stats["localCandidateType"] == "relay", stats
