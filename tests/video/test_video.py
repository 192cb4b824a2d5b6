"""Teleconsultation without a browser: invitations, guest entry, the signalling socket's
access rules, the pre-call echo peer (two aiortc peers), files, TURN credentials, the
after-call form and the DocumentIssuer seam."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import io
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import av
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from konsil import appkeys as K
from konsil.app import create_app
from konsil.audit.models import AuditEvent
from konsil.audit.service import SYSTEM, Actor, AuditLog
from konsil.clock import FakeClock, local
from konsil.config import Config
from konsil.db import Database
from konsil.errors import RateLimited, ValidationError
from konsil.identity.matricule import make_matricule
from konsil.identity.models import Account
from konsil.turn import turn_credentials
from tests.conftest import CSRF_RE, TEST_SECRET, AiohttpClient, Client, Person, web_login
from tests.error_summary import read
from tests.messages import ROOT, messages_in, without_french
from video.domain.checkpeer import CheckPeers
from video.domain.crypto import read_invitation_token
from video.domain.documents import ConsultationReport, IssueContext, Prepared, check_after_call
from video.domain.issuer import WorkflowIssuer
from video.domain.service import VideoService, check_schedule
from video.models import VideoAppointment, VideoDocument, VideoFile, VideoInvitation
from video.web import CHECKS, GUEST_COOKIE, SERVICE
from workflow.cda.prescription import build_prescription
from workflow.cda.reading import read_header, read_prescription, read_teleconsultation
from workflow.cda.teleconsultation import build_teleconsultation
from workflow.cda.validation import validate_cda
from workflow.corrections import teleconsultation_fields
from workflow.documents import verify_document
from workflow.models import ClinicalDocument, OutboxMessage

PDF = b"%PDF-1.4\n%%EOF\n"
# The after-call form's prescription part: one line of paracetamol.
PRESCRIPTION_FORM = {
    "prescription": "on",
    "rx_1_name": "Paracétamol 1 g",
    "rx_1_atc": "N02BE01",
    "rx_1_dose": "1",
    "rx_1_dose_unit": "{tbl}",
    "rx_1_route": "20053000",
    "rx_1_times": "3",
    "rx_1_per": "1",
    "rx_1_period_unit": "d",
    "rx_1_days": "5",
    "rx_1_quantity": "1",
    "rx_1_quantity_unit": "1",
    "rx_1_instructions": "si douleur",
}


async def _appointment(client: Client, doctor: Person, seq: int, clock: FakeClock) -> str:
    svc: VideoService = client.app[SERVICE]
    start = (clock.now() + timedelta(hours=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M+00:00")
    req = check_schedule(
        {
            "starts_at": start,
            "matricule": make_matricule("19750310", seq),
            "birth_date": "1975-03-10",
            "given_name": "Marie",
            "family_name": "Schmit",
            "email": "marie@example.lu",
        },
        clock.now(),
    )
    appt = await svc.do_schedule(Actor(doctor.account_id), req)
    return appt.id


async def _link(client: Client, doctor: Person, appointment: str) -> str:
    inv = await client.app[SERVICE].do_invite(Actor(doctor.account_id), appointment)
    return f"/video/join/{inv.token}"


async def _enter_with_token(
    guest: Client, link: str, birth: str = "1975-03-10"
) -> tuple[aiohttp.ClientResponse, str]:
    """Identity + consent through the entry form: its answer, and the page's CSRF token."""
    page = await guest.get(link)
    assert page.status == 200, await page.text()
    m = CSRF_RE.search(await page.text())
    assert m
    resp = await guest.post(
        link,
        data={"csrf_token": m.group(1), "birth_date": birth, "consent": "yes"},
        allow_redirects=False,
    )
    return resp, m.group(1)


async def _enter(guest: Client, link: str, birth: str = "1975-03-10") -> aiohttp.ClientResponse:
    return (await _enter_with_token(guest, link, birth))[0]


async def _consulted(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock, seq: int
) -> tuple[str, Client, str]:
    """An appointment whose patient entered and was seen for ten minutes: its id, the patient's
    client and the doctor's CSRF token."""
    a = await _appointment(client, doctor, seq, clock)
    patient = await aiohttp_client(client.server)
    assert (await _enter(patient, await _link(client, doctor, a))).status == 303
    csrf = await web_login(client, doctor)
    await client.post(f"/video/appointments/{a}/admit", data={"csrf_token": csrf})
    clock.advance(10 * 60)
    return a, patient, csrf


async def test_link_is_single_use_bound_to_one_browser_and_expires(
    client: Client,
    aiohttp_client: AiohttpClient,
    doctor: Person,
    clock: FakeClock,
    create_user: Callable[..., Awaitable[Person]],
) -> None:
    appointment = await _appointment(client, doctor, 1, clock)
    link = await _link(client, doctor, appointment)
    token = link.rsplit("/", 1)[1]
    # Only the hash of the link is stored; the signature binds it to the appointment.
    async with client.app[K.DB].session() as s:
        inv = (await s.execute(select(VideoInvitation))).scalar_one()
    assert inv.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps([inv.token_hash, inv.id])
    claims = read_invitation_token("test-secret-key-not-for-production-0123456789", token)
    assert claims is not None and claims.appointment_id == appointment
    assert read_invitation_token("another-key", token) is None
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (await client.get(f"/video/join/{forged}")).status == 404

    patient = await aiohttp_client(client.server)
    wrong = await _enter(patient, link, birth="1975-03-11")
    assert wrong.status == 400
    assert "ne correspond pas à nos informations" in await wrong.text()  # French first
    ok = await _enter(patient, link)
    assert ok.status == 303 and ok.headers["Location"] == f"/video/room/{appointment}"
    assert (await patient.get(f"/video/room/{appointment}")).status == 200
    # Back on the link with the guest cookie: straight to the room.
    again = await patient.get(link, allow_redirects=False)
    assert again.status == 303

    other = await aiohttp_client(client.server)
    refused = await other.get(link)
    assert refused.status == 403
    assert "déjà été utilisé" in await refused.text()
    assert (await other.get(f"/video/room/{appointment}")).status == 403

    # A second appointment's link, opened after it expired.
    appointment2 = await _appointment(client, doctor, 2, clock)
    link2 = await _link(client, doctor, appointment2)
    clock.advance(73 * 3600 + 3600)
    late = await other.get(link2)
    assert late.status == 403
    assert "a expiré" in await late.text()
    # The guest session of the first link ended with its link too.
    assert (await patient.get(f"/video/room/{appointment}")).status == 403
    # Each refused link is in the audit trail (refused inside the transaction that read it).
    async with client.app[K.DB].session() as s:
        refusals = (
            (
                await s.execute(
                    select(AuditEvent.details).where(
                        AuditEvent.action == "video.link", AuditEvent.outcome == "denied"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert any("already been used" in (d or "") for d in refusals)
    assert any("expired" in (d or "") for d in refusals)
    # Another practitioner cannot open the appointment, and the attempt is audited.
    other_doc = await aiohttp_client(client.server)
    intruder = await create_user("drintruder", "practitioner")
    await web_login(other_doc, intruder)
    assert (await other_doc.get(f"/video/appointments/{appointment}")).status == 403
    async with client.app[K.DB].session() as s:
        denied = (
            await s.execute(
                select(AuditEvent).where(
                    AuditEvent.actor == intruder.account_id, AuditEvent.outcome == "denied"
                )
            )
        ).scalar_one()
    assert (denied.action, denied.resource) == ("video.access", f"video/{appointment}")


async def test_cancel_withdraws_the_link_and_reschedule_moves(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    appointment = await _appointment(client, doctor, 3, clock)
    link = await _link(client, doctor, appointment)
    csrf = await web_login(client, doctor)
    resp = await client.post(
        f"/video/appointments/{appointment}/reschedule",
        data={"csrf_token": csrf, "starts_at": "2026-01-16T10:30"},
        allow_redirects=False,
    )
    assert resp.status == 303
    appt = await client.app[SERVICE].get(appointment)
    assert appt.starts_at == datetime(2026, 1, 16, 9, 30, tzinfo=UTC)  # 10:30 in Luxembourg
    bad = await client.post(
        f"/video/appointments/{appointment}/reschedule",
        data={"csrf_token": csrf, "starts_at": "2020-01-01T10:00"},
    )
    assert bad.status == 400 and "est dans le passé" in await bad.text()  # French first
    resp = await client.post(
        f"/video/appointments/{appointment}/cancel",
        data={"csrf_token": csrf},
        allow_redirects=False,
    )
    assert resp.status == 303
    patient = await aiohttp_client(client.server)
    refused = await patient.get(link)
    assert refused.status == 403 and "a été retirée" in await refused.text()


async def test_schedule_form_validates_the_new_patient(client: Client, doctor: Person) -> None:
    csrf = await web_login(client, doctor)
    resp = await client.post(
        "/video/appointments",
        data={
            "csrf_token": csrf,
            "starts_at": "2026-01-15T14:00",
            "matricule": "1975031000100",
            "birth_date": "1975-03-10",
            "given_name": "Marie",
            "family_name": "",
            "email": "not-an-email",
        },
    )
    assert resp.status == 400
    text = await resp.text()
    assert "chiffre de contrôle Luhn erroné" in text
    assert "adresse électronique" in text
    home = await client.get("/video")
    assert home.status == 200


async def test_signalling_socket_admits_only_the_two_parties(
    client: Client,
    aiohttp_client: AiohttpClient,
    doctor: Person,
    create_user: Callable[..., Awaitable[Person]],
    clock: FakeClock,
) -> None:
    a = await _appointment(client, doctor, 4, clock)
    b = await _appointment(client, doctor, 5, clock)
    patient = await aiohttp_client(client.server)
    assert (await _enter(patient, await _link(client, doctor, a))).status == 303
    assert patient.session.cookie_jar.filter_cookies(patient.make_url("/video/"))[GUEST_COOKIE]

    # The guest token of appointment A does not open appointment B's socket.
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await patient.ws_connect(f"/video/ws/{b}")
    assert exc.value.status == 403
    # Nor does no token at all, nor another practitioner's session.
    stranger = await aiohttp_client(client.server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await stranger.ws_connect(f"/video/ws/{a}")
    assert exc.value.status == 403
    other_doc = await create_user("drother", "practitioner")
    await web_login(stranger, other_doc)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await stranger.ws_connect(f"/video/ws/{a}")
    assert exc.value.status == 403

    # The two parties: the patient waits, the doctor admits, signals are relayed between them.
    ws_p = await patient.ws_connect(f"/video/ws/{a}")
    hello = await ws_p.receive_json()
    assert hello["type"] == "hello" and hello["status"] == "waiting"
    csrf = await web_login(client, doctor)
    resp = await client.post(
        f"/video/appointments/{a}/admit", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert resp.status == 303
    assert (await ws_p.receive_json()) == {"type": "status", "status": "admitted"}
    ws_d = await client.ws_connect(f"/video/ws/{a}")
    assert (await ws_d.receive_json())["status"] == "admitted"
    assert (await ws_d.receive_json()) == {"type": "peer", "present": True}
    assert (await ws_p.receive_json()) == {"type": "peer", "present": True}
    await ws_d.send_json({"type": "signal", "data": {"description": {"type": "offer"}}})
    got = await ws_p.receive_json()
    assert got["type"] == "signal" and got["from"] == "doctor"
    await ws_p.send_json({"type": "chat", "text": "bonjour"})
    for ws in (ws_p, ws_d):
        m = await ws.receive_json()
        assert m["type"] == "chat" and m["message"]["text"] == "bonjour"
        assert m["message"]["sender"] == "patient"
    # A cross-site page cannot open the socket with the doctor's cookie.
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await client.ws_connect(f"/video/ws/{a}", headers={"Origin": "http://evil.example"})
    assert exc.value.status == 403
    await ws_p.send_json({"type": "hangup"})
    assert (await ws_d.receive_json()) == {"type": "status", "status": "ended"}
    await ws_p.close()
    await ws_d.close()


async def test_the_two_parties_negotiate_before_admission_and_hear_of_it_together(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    """While the patient waits, the doctor's page and the patient's page may set up their peer
    connection (no media: see the browser test): both are told the other is there but not
    admitted, and signals go between them. Admitting tells both pages at once."""
    a = await _appointment(client, doctor, 6, clock)
    patient = await aiohttp_client(client.server)
    assert (await _enter(patient, await _link(client, doctor, a))).status == 303
    async with client.app[K.DB].session() as s:
        appt = await s.get(VideoAppointment, a)
        assert appt is not None and appt.status == "waiting"  # in the waiting room from entry
    csrf = await web_login(client, doctor)
    ws_d = await client.ws_connect(f"/video/ws/{a}")
    assert (await ws_d.receive_json())["status"] == "waiting"
    ws_p = await patient.ws_connect(f"/video/ws/{a}")
    assert (await ws_p.receive_json())["type"] == "hello"
    early = {"type": "peer", "present": True, "admitted": False}
    assert (await ws_d.receive_json()) == early
    assert (await ws_p.receive_json()) == early
    await ws_d.send_json({"type": "signal", "data": {"description": {"type": "offer"}}})
    got = await ws_p.receive_json()
    assert got["type"] == "signal" and got["from"] == "doctor"
    await ws_p.send_json({"type": "signal", "data": {"candidate": {"candidate": "x"}}})
    got = await ws_d.receive_json()
    assert got["type"] == "signal" and got["from"] == "patient"

    resp = await client.post(
        f"/video/appointments/{a}/admit",
        data={"csrf_token": csrf},
        headers={"Accept": "application/json"},
    )
    assert resp.status == 200 and (await resp.json())["call"] == f"/video/call/{a}"
    for ws in (ws_p, ws_d):
        assert (await ws.receive_json()) == {"type": "status", "status": "admitted"}
    # A patient who leaves is announced; once ended, nothing is relayed any more.
    await ws_p.send_json({"type": "hangup"})
    for ws in (ws_p, ws_d):
        assert (await ws.receive_json()) == {"type": "status", "status": "ended"}
    await ws_p.send_json({"type": "signal", "data": {"candidate": {"candidate": "y"}}})
    await ws_p.send_json({"type": "ping"})
    assert (await ws_p.receive_json()) == {"type": "pong"}
    await ws_p.close()
    assert (await ws_d.receive_json()) == {"type": "peer", "present": False}
    await ws_d.close()


async def test_files_are_sealed_at_rest_and_limited(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    a = await _appointment(client, doctor, 6, clock)
    csrf = await web_login(client, doctor)

    async def upload(name: str, ctype: str, data: bytes) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(data), filename=name, content_type=ctype)
        return await client.post(f"/video/api/{a}/files", data=form, headers={"X-CSRF-Token": csrf})

    secret_text = PDF + b"diagnostic: grippe"
    ok = await upload("résultat.pdf", "application/pdf", secret_text)
    assert ok.status == 201, await ok.text()
    info = await ok.json()
    async with client.app[K.DB].session() as s:
        row = await s.get(VideoFile, info["id"])
    assert row is not None and b"grippe" not in row.sealed and len(row.sealed) > len(secret_text)
    got = await client.get(f"/video/files/{a}/{info['id']}")
    assert got.status == 200 and await got.read() == secret_text
    refused = await upload("x.exe", "application/x-msdownload", b"MZ...")
    problem = await refused.json()
    assert refused.status == 400 and refused.content_type == "application/problem+json"
    english = "only PDF, PNG, JPEG and plain-text files can be sent"
    assert (problem["detail"], problem["errors"]) == (english, {"file": "type not allowed"})
    # the call page shows the reason in its reader's language (the problem keeps its English)
    assert problem["shown"] == "seuls les fichiers PDF, PNG, JPEG et texte peuvent être envoyés"
    client.session.cookie_jar.update_cookies({"konsil_lang": "en"})
    refused = await upload("x.exe", "application/x-msdownload", b"MZ...")
    assert (await refused.json())["shown"] == english
    assert (await upload("fake.pdf", "application/pdf", b"<html>")).status == 400
    big = PDF + b"0" * (10 * 1024 * 1024)
    too_big = await upload("big.pdf", "application/pdf", big)
    assert too_big.status in (400, 413)
    assert (await too_big.json())["shown"] in ("file too large", "files are limited to 10 MiB")
    patient = await aiohttp_client(client.server)
    assert (await patient.get(f"/video/files/{a}/{info['id']}")).status == 403


def test_turn_rest_credentials() -> None:
    now = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    user, password = turn_credentials("s3cret", "guest-abc", now, 600)
    assert user == f"{int(now.timestamp()) + 600}:guest-abc"
    expected = base64.b64encode(hmac.new(b"s3cret", user.encode(), hashlib.sha1).digest())
    assert password == expected.decode()


async def test_ice_endpoint_needs_a_party(client: Client, doctor: Person) -> None:
    assert (await client.get("/video/api/ice")).status == 403
    await web_login(client, doctor)
    body = await (await client.get("/video/api/ice")).json()
    assert body == {"iceServers": [], "iceTransportPolicy": "all", "ttl": 3600}


async def test_precheck_echo_with_two_aiortc_peers() -> None:
    """The server's check peer sends the browser's own camera and microphone back."""
    peers = CheckPeers(max_peers=1, timeout_seconds=30)
    browser = RTCPeerConnection()
    received: dict[str, MediaStreamTrack] = {}
    got_both = asyncio.Event()

    @browser.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        received[track.kind] = track
        if len(received) == 2:
            got_both.set()

    try:
        browser.addTrack(VideoStreamTrack())
        browser.addTrack(AudioStreamTrack())
        await browser.setLocalDescription(await browser.createOffer())
        sdp, kind = await peers.answer("appt-1", browser.localDescription.sdp, "offer")
        assert kind == "answer" and "a=candidate" in sdp
        assert peers.count == 1
        with pytest.raises(RateLimited):
            await peers.answer("appt-2", browser.localDescription.sdp, "offer")
        await browser.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        async with asyncio.timeout(20):
            await got_both.wait()
            frame = await received["video"].recv()
            sound = await received["audio"].recv()
        assert isinstance(frame, av.VideoFrame) and (frame.width, frame.height) == (640, 480)
        assert isinstance(sound, av.AudioFrame) and sound.sample_rate > 0
    finally:
        await browser.close()
        await peers.close_all()
    assert peers.count == 0


async def test_a_check_that_never_finishes_is_closed_and_reported(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    """The browser offers, gets the echo peer's answer and then never finishes (no result):
    the server closes the peer after ``check_timeout_seconds`` (1 s here), records and audits
    a failed check, tells the patient's page in plain words and the doctor's waiting room."""
    peers = client.app[CHECKS]
    peers.timeout_seconds = 1
    a = await _appointment(client, doctor, 9, clock)
    patient = await aiohttp_client(client.server)
    link = await _link(client, doctor, a)
    entered, csrf = await _enter_with_token(patient, link)
    assert entered.status == 303
    ws = await patient.ws_connect(f"/video/ws/{a}")
    assert (await ws.receive_json())["type"] == "hello"
    browser = RTCPeerConnection()
    try:
        browser.addTrack(VideoStreamTrack())
        await browser.setLocalDescription(await browser.createOffer())
        offer = {"sdp": browser.localDescription.sdp, "type": "offer"}
        r = await patient.post(f"/video/api/{a}/check", json=offer, headers={"X-CSRF-Token": csrf})
        assert r.status == 200 and (await r.json())["type"] == "answer"
        assert peers.count == 1
        async with asyncio.timeout(20):
            while (msg := await ws.receive_json())["type"] != "check":
                pass
        assert msg == {"type": "check", "status": "timed_out"}
    finally:
        await browser.close()
        await ws.close()
    assert peers.count == 0
    # The page's words for it.
    patient.session.cookie_jar.update_cookies({"konsil_lang": "en"})
    room = await (await patient.get(f"/video/room/{a}")).text()
    assert "The connection test did not finish in time and was stopped." in room
    waiting = await client.app[SERVICE].waiting(doctor.account_id)
    assert [w["check"]["timed_out"] for w in waiting if w["id"] == a] == [True]
    async with client.app[K.DB].session() as s:
        failed = (
            (
                await s.execute(
                    select(AuditEvent).where(
                        AuditEvent.action == "video.check", AuditEvent.outcome == "failure"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(failed) == 1 and failed[0].resource == f"video/{a}"


async def test_the_check_reports_camera_and_microphone_first_then_the_frame_rate(
    client: Client,
    aiohttp_client: AiohttpClient,
    doctor: Person,
    create_user: Callable[..., Awaitable[Person]],
    clock: FakeClock,
) -> None:
    """The page reports camera, microphone and round trip at the first echo (the connection's
    verdict is then "measuring" and the echo peer keeps running), then the frame rate: each
    result is authorised, recorded and audited in one transaction; only the patient may."""
    peers = client.app[CHECKS]
    a = await _appointment(client, doctor, 10, clock)
    patient = await aiohttp_client(client.server)
    link = await _link(client, doctor, a)
    entered, csrf = await _enter_with_token(patient, link)
    assert entered.status == 303
    browser = RTCPeerConnection()
    try:
        browser.addTrack(VideoStreamTrack())
        await browser.setLocalDescription(await browser.createOffer())
        offer = {"sdp": browser.localDescription.sdp, "type": "offer"}
        r = await patient.post(f"/video/api/{a}/check", json=offer, headers={"X-CSRF-Token": csrf})
        assert r.status == 200
        done = f"/video/api/{a}/check/done"
        first = {"camera": True, "microphone": True, "rtt_ms": 12, "fps": None, "final": False}
        r = await patient.post(done, json=first, headers={"X-CSRF-Token": csrf})
        assert r.status == 200 and (await r.json())["connection"] == "measuring"
        assert peers.count == 1  # still echoing: the frame rate is being measured
        waiting = await client.app[SERVICE].waiting(doctor.account_id)
        assert [w["check"]["connection"] for w in waiting if w["id"] == a] == ["measuring"]
        # The doctor does not report the patient's check; a stranger cannot either.
        doc_csrf = await web_login(client, doctor)
        r = await client.post(done, json=first, headers={"X-CSRF-Token": doc_csrf})
        assert r.status == 403
        stranger = await aiohttp_client(client.server)
        other_csrf = await web_login(stranger, await create_user("drcheck", "practitioner"))
        r = await stranger.post(done, json=first, headers={"X-CSRF-Token": other_csrf})
        assert r.status == 403
        final = dict(first, fps=24.5, final=True)
        r = await patient.post(done, json=final, headers={"X-CSRF-Token": csrf})
        assert r.status == 200
        assert (await r.json()) == {
            "camera": True,
            "microphone": True,
            "rtt_ms": 12.0,
            "fps": 24.5,
            "connection": "good",
        }
        async with asyncio.timeout(10):
            await peers.closed()  # closed in the background
        assert peers.count == 0
    finally:
        await browser.close()
    async with client.app[K.DB].session() as s:
        appt = await s.get(VideoAppointment, a)
        assert appt is not None and json.loads(appt.check_result or "{}")["fps"] == 24.5
        events = (
            (
                await s.execute(
                    select(AuditEvent)
                    .where(AuditEvent.action.like("video.check%"))
                    .order_by(AuditEvent.seq)
                )
            )
            .scalars()
            .all()
        )
    assert [(e.action, e.outcome) for e in events if e.resource == f"video/{a}"] == [
        ("video.check.start", "success"),
        ("video.check", "success"),
        ("video.check", "denied"),
        ("video.check", "denied"),
        ("video.check", "success"),
    ]


def test_after_call_form_validation() -> None:
    day = date(2026, 1, 15)
    with pytest.raises(ValidationError) as exc:
        check_after_call(
            {
                "reason": "",
                "findings": "x",
                "plan": "y",
                "dx_code": "J02.9",
                "sick_leave": "on",
                "sl_kind": "accident",
                "sl_start": "2026-01-15",
                "sl_end": "2026-01-10",
                "sl_dx_code": "flu",
                "sl_outings": "yes",
                "prescription": "on",
            },
            day,
        )
    f = exc.value.fields
    assert f["reason"] == "required"
    assert f["dx_label"] == "required"
    assert f["sl_end"] == "is before the start"
    assert f["sl_accident_kind"] == "choose one of the options"
    assert f["sl_accident_date"] == "required (YYYY-MM-DD)"
    assert "ICD-10" in f["sl_dx_code"]
    assert "at least one medication" in f["rx_1_name"]
    docs = check_after_call(
        {
            "reason": "Mal de gorge depuis 3 jours.",
            "findings": "Amygdales rouges, pas de fièvre rapportée.",
            "plan": "Antibiotique, repos.",
            "dx_code": "j02.9",
            "dx_label": "Pharyngite aiguë",
            "sick_leave": "on",
            "sl_kind": "accident",
            "sl_accident_kind": "sport",
            "sl_accident_date": "2026-01-14",
            "sl_start": "2026-01-15",
            "sl_end": "2026-01-17",
            "sl_dx_code": "S93.4",
            "sl_dx_label": "Entorse de la cheville",
            "sl_outings": "yes",
            "sl_outing_hours": "10-12, 14-18",
            "prescription": "on",
            "rx_1_name": "Amoxicilline 1 g, comprimé",
            "rx_1_atc": "j01ca04",
            "rx_1_dose": "1",
            "rx_1_dose_unit": "{tbl}",
            "rx_1_route": "20053000",
            "rx_1_times": "3",
            "rx_1_per": "1",
            "rx_1_period_unit": "d",
            "rx_1_days": "7",
            "rx_1_quantity": "2",
            "rx_1_quantity_unit": "1",
            "rx_1_reimbursable": "on",
        },
        day,
    )
    assert docs.report.diagnoses[0].code == "J02.9"
    cert = docs.sick_leave
    assert cert is not None and cert.outings_allowed and cert.accident_kind == "sport"
    rx = docs.prescription
    assert rx is not None and rx.start == day
    line = rx.lines[0]
    assert (line.atc, line.dose, line.times, line.period_unit) == ("J01CA04", Decimal(1), 3, "d")
    assert line.reimbursable and line.duration_days == 7


class _WritesWhilePreparing(WorkflowIssuer):
    """The real issuer; while it builds and renders, another writer commits an audit row
    (under SQLite's single writer this would wait forever if the form's transaction were open)."""

    def __init__(self, inner: WorkflowIssuer, db: Database, audit: AuditLog) -> None:
        super().__init__(inner.documents, inner.outbox)
        self.db, self.audit = db, audit
        self.committed: list[str] = []

    async def prepare_report(
        self, s: AsyncSession, ctx: IssueContext, report: ConsultationReport
    ) -> Prepared:
        async with asyncio.timeout(10), self.db.transaction() as other:
            await self.audit.record(other, SYSTEM, "test.meanwhile", patient_id=ctx.patient_id)
        self.committed.append(ctx.appointment_id)
        return await super().prepare_report(s, ctx, report)


async def test_after_call_documents_are_rendered_before_the_transaction(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    svc: VideoService = client.app[SERVICE]
    assert isinstance(svc.issuer, WorkflowIssuer)
    watching = _WritesWhilePreparing(svc.issuer, client.app[K.DB], client.app[K.AUDIT])
    svc.issuer = watching
    a, _patient, csrf = await _consulted(client, aiohttp_client, doctor, clock, 8)
    form = {"csrf_token": csrf, "reason": "Toux.", "findings": "RAS.", "plan": "Repos."}
    ok = await client.post(f"/video/appointments/{a}/after", data=form, allow_redirects=False)
    assert ok.status == 303, await ok.text()
    assert watching.committed == [a]
    async with client.app[K.DB].session() as s:
        doc = (await s.execute(select(VideoDocument))).scalar_one()
        assert doc.kind == "report"
    pdf = await client.get(f"/video/documents/{a}/{doc.id}")
    assert pdf.status == 200 and (await pdf.read()).startswith(b"%PDF-")


async def test_after_call_texts_keep_the_browsers_line_breaks(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    """Browsers submit a textarea's line breaks as CR LF: the report keeps them as line breaks
    (a bare CR would be refused as a control character by the builder)."""
    a, _patient, csrf = await _consulted(client, aiohttp_client, doctor, clock, 9)
    form = {
        "csrf_token": csrf,
        "reason": "Toux depuis 3 jours.\r\nFièvre le soir.",
        "findings": "Auscultation : RAS.\r\n\r\nGorge rouge.",
        "plan": "Repos.\r\nRevoir si fièvre > 3 jours.",
    }
    ok = await client.post(f"/video/appointments/{a}/after", data=form, allow_redirects=False)
    assert ok.status == 303, await ok.text()
    async with client.app[K.DB].session() as s:
        (vd,) = (await s.execute(select(VideoDocument))).scalars()
        doc = await s.get(ClinicalDocument, vd.document_id)
        assert doc is not None
    report = read_teleconsultation(doc.content)
    assert report.reason == "Toux depuis 3 jours.\nFièvre le soir."
    assert report.findings == "Auscultation : RAS.\n\nGorge rouge."
    assert report.plan == "Repos.\nRevoir si fièvre > 3 jours."
    assert b"\r" not in doc.content


async def test_after_call_documents_are_signed_stored_and_queued(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    a = await _appointment(client, doctor, 7, clock)
    patient = await aiohttp_client(client.server)
    assert (await _enter(patient, await _link(client, doctor, a))).status == 303
    csrf = await web_login(client, doctor)
    # Before the patient was seen, no documents.
    early = await client.post(
        f"/video/appointments/{a}/after", data={"csrf_token": csrf, "reason": "x"}
    )
    assert early.status == 409
    await client.post(f"/video/appointments/{a}/admit", data={"csrf_token": csrf})
    clock.advance(12 * 60)
    day = local(clock.now()).date()
    form = {
        "csrf_token": csrf,
        "reason": "Mal de gorge.",
        "findings": "Angine.",
        "plan": "Antalgique.",
        "dx_code": "J02.9",
        "dx_label": "Pharyngite aiguë",
        "sick_leave": "on",
        "sl_kind": "illness",
        "sl_dx_code": "J02.9",
        "sl_dx_label": "Pharyngite aiguë",
        "sl_outings": "no",
        "sl_start": day.isoformat(),
        "sl_end": (day + timedelta(days=2)).isoformat(),
        **PRESCRIPTION_FORM,
    }
    bad = await client.post(f"/video/appointments/{a}/after", data={**form, "rx_1_days": "0"})
    assert bad.status == 400 and "entre 1 et 365" in await bad.text()  # French first
    # The builder refuses what the form let through: shown on the form, nothing written.
    past = (day - timedelta(days=1)).isoformat()
    refused = await client.post(f"/video/appointments/{a}/after", data={**form, "rx_start": past})
    text = await refused.text()
    assert refused.status == 400 and 'id="e-rx_start"' in text
    assert "une ordonnance ne peut pas commencer dans le passé" in text
    async with client.app[K.DB].session() as s:
        assert (await s.execute(select(ClinicalDocument))).first() is None
        assert (await s.execute(select(OutboxMessage))).first() is None
        assert (await s.execute(select(VideoDocument))).first() is None
        appt = await s.get(VideoAppointment, a)
        assert appt is not None and appt.status == "admitted"

    ok = await client.post(f"/video/appointments/{a}/after", data=form, allow_redirects=False)
    assert ok.status == 303
    async with client.app[K.DB].session() as s:
        docs = {d.kind: d for d in (await s.execute(select(ClinicalDocument))).scalars()}
        msgs = (await s.execute(select(OutboxMessage))).scalars().all()
        account = await s.get(Account, doctor.account_id)
        assert account is not None and account.organisation_id is not None
        for d in docs.values():
            assert validate_cda(d.content) == []
            assert (await verify_document(s, d.id)).ok
            assert d.status == "final" and d.organisation_id == account.organisation_id
            assert d.author_account_id == doctor.account_id
            assert d.legal_authenticator_id == d.author_practitioner_id is not None
    assert sorted(docs) == ["prescription", "sick-leave", "teleconsultation-report"]
    assert docs["sick-leave"].type_code == "DT-20002"
    assert b"J02.9" in docs["teleconsultation-report"].content
    assert b"N02BE01" in docs["prescription"].content
    kind_of = {d.id: kind for kind, d in docs.items()}
    routed = sorted((kind_of[m.document_id or ""], m.target) for m in msgs)
    assert routed == [
        ("prescription", "dsp"),
        ("sick-leave", "cns"),
        ("sick-leave", "dsp"),
        ("teleconsultation-report", "dsp"),
    ]
    assert {m.idempotency_key for m in msgs} == {f"{m.target}-{m.document_id}" for m in msgs}

    # What the issuer signed reads back as values that build the same bytes again (what a
    # correction starts from); the author's correction form opens, a correction waits for the
    # DSP to have the first version.
    report, rx = docs["teleconsultation-report"], docs["prescription"]
    read = read_header(report.content)
    assert (
        build_teleconsultation(
            read_teleconsultation(report.content), read.header, now=read.effective_time
        )
        == report.content
    )
    read = read_header(rx.content)
    value = read_prescription(rx.content)
    assert value.lines[0].times == 3 and value.lines[0].instructions == "si douleur"
    assert build_prescription(value, read.header, now=read.effective_time) == rx.content
    page = await (await client.get(f"/documents/{rx.id}/correct")).text()
    assert 'value="Paracétamol 1 g"' in page and 'value="N02BE01"' in page
    fields = teleconsultation_fields(read_teleconsultation(report.content))
    busy = await client.post(f"/documents/{report.id}/correct", data={"csrf_token": csrf, **fields})
    assert busy.status == 409 and "still being delivered" in await busy.text()

    # Issued once: a second submission is refused.
    again = await client.post(f"/video/appointments/{a}/after", data=form)
    assert again.status == 409
    detail = await (await client.get(f"/video/appointments/{a}")).text()
    assert detail.count('data-status="pending"') == 4

    room = await (await patient.get(f"/video/room/{a}")).text()
    links = re.findall(rf'href="(/video/documents/{a}/[0-9a-f]+)"', room)
    assert len(links) == 3
    for link in links:
        resp = await patient.get(link)
        assert resp.status == 200 and resp.content_type == "application/pdf"
        assert (await resp.read()).startswith(b"%PDF-")
    async with client.app[K.DB].session() as s:
        audited = (
            (
                await s.execute(
                    select(AuditEvent).where(AuditEvent.action == "video.document.download")
                )
            )
            .scalars()
            .all()
        )
    assert len(audited) == 3
    # Once the link has expired, the copies are gone with it.
    clock.advance(80 * 3600)
    assert (await patient.get(links[0])).status == 403


def test_every_after_call_refusal_has_french(tmp_path: Path) -> None:
    """The after-call form's own refusals (the builders' are checked with the workflow's)."""
    found = messages_in(
        ROOT / "video" / "domain" / "documents.py", ROOT / "video" / "domain" / "issuer.py"
    )
    assert found.fstrings == [], "a refusal is a literal template with its values as params"
    assert len(found.texts) > 15
    app = create_app(
        Config(database_url="sqlite+aiosqlite://", data_dir=str(tmp_path), secret_key=TEST_SECRET)
    )
    assert without_french(found.texts, app[K.TRANSLATOR]) == []


def _refusal(page: str) -> tuple[str, dict[str, str]]:
    """A refused form's alert and each field's reason, as the doctor reads them: beside the
    field, and again in the alert's summary as a link to it (never under its raw key)."""
    refused = read(page)
    assert refused.linked == refused.beside
    refused.assert_no_keys(refused.beside)
    keys = [k for k in refused.beside if ("_" in k or "." in k) and k in refused.message]
    assert keys == [], refused.message
    return refused.message, refused.beside


async def test_after_call_refusals_in_the_doctors_language(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    a, _patient, csrf = await _consulted(client, aiohttp_client, doctor, clock, 10)
    day = local(clock.now()).date()
    path = f"/video/appointments/{a}/after"
    typed = {
        "csrf_token": csrf,
        "reason": "",
        "findings": "Angine.",
        "plan": "Antalgique.",
        "dx_code": "angine",
        "sick_leave": "on",
        "sl_kind": "flu",
        "sl_start": day.isoformat(),
        "sl_end": (day - timedelta(days=2)).isoformat(),
        "sl_dx_code": "",
        "sl_outings": "no",
        **PRESCRIPTION_FORM,
        "rx_1_atc": "N02BE",
        "rx_1_dose": "beaucoup",
        "rx_1_days": "0",
    }
    french = {
        "reason": "obligatoire",
        "dx_code": "n'est pas un code CIM-10 (p. ex. J06.9)",
        "dx_label": "obligatoire",
        "sl_kind": "choisissez l'une des options",
        "sl_end": "se situe avant le début",
        "sl_dx_code": "obligatoire",
        "rx_1_atc": "un code ATC de 7 caractères (p. ex. N02BE01)",
        "rx_1_dose": "un nombre est requis",
        "rx_1_days": "entre 1 et 365",
    }
    english = {
        "reason": "required",
        "dx_code": "not an ICD-10 code (e.g. J06.9)",
        "dx_label": "required",
        "sl_kind": "choose one of the options",
        "sl_end": "is before the start",
        "sl_dx_code": "required",
        "rx_1_atc": "an ATC code of 7 characters (e.g. N02BE01)",
        "rx_1_dose": "a number is required",
        "rx_1_days": "between 1 and 365",
    }
    # What the builders refuse once the form is complete: a prescription starting in the past.
    complete = {
        **typed,
        "reason": "Mal de gorge.",
        "dx_code": "J02.9",
        "dx_label": "Pharyngite aiguë",
        "sick_leave": "",
        **PRESCRIPTION_FORM,
        "rx_start": (day - timedelta(days=1)).isoformat(),
    }
    shown = {
        "fr": (
            ("les documents de fin de consultation sont incomplets", french),
            (
                "l'ordonnance n'est pas valide",
                {"rx_start": "une ordonnance ne peut pas commencer dans le passé"},
            ),
        ),
        "en": (
            ("the after-call documents are not complete", english),
            (
                "the prescription is not valid",  # the page leaves the JSON's key list out
                {"rx_start": "a prescription cannot start in the past"},
            ),
        ),
    }
    french_or = {"fr": french["rx_1_dose"], "en": english["rx_1_dose"]}
    start_link = {
        "fr": "Début du traitement : une ordonnance ne peut pas commencer dans le passé",
        "en": "Start of treatment: a prescription cannot start in the past",
    }
    for lang, (incomplete, past) in shown.items():
        client.session.cookie_jar.update_cookies({"konsil_lang": lang})
        refused = await client.post(path, data=typed)
        assert refused.status == 400
        page = await refused.text()
        assert _refusal(page) == incomplete
        assert "rx_1_dose" not in read(page).summary_text  # a link to #f-rx_1_dose instead
        assert read(page).linked["rx_1_dose"] == incomplete[1]["rx_1_dose"]
        links = read(page).link_texts  # each link names its field by the form's label
        assert links["rx_1_dose"] == f"Dose{' :' if lang == 'fr' else ':'} {french_or[lang]}"
        refused = await client.post(path, data=complete)
        assert refused.status == 400
        page = await refused.text()
        assert _refusal(page) == past
        assert read(page).link_texts["rx_start"] == start_link[lang]
    async with client.app[K.DB].session() as s:
        assert (await s.execute(select(ClinicalDocument))).first() is None


def test_every_video_refusal_has_french(tmp_path: Path) -> None:
    """What the schedule form, the patient's entry, the room, the files and the doctor's pages
    can refuse (the domain and the handlers): every message and field reason has French."""
    found = messages_in(*sorted((ROOT / "video").rglob("*.py")))
    assert found.fstrings == [], "a refusal is a literal template with its values as params"
    assert len(found.texts) > 60
    assert {"does not match our records", "files are limited to {mib} MiB"} <= found.texts
    app = create_app(
        Config(database_url="sqlite+aiosqlite://", data_dir=str(tmp_path), secret_key=TEST_SECRET)
    )
    assert without_french(found.texts, app[K.TRANSLATOR]) == []


async def test_a_patients_refused_entry_reads_in_their_language(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    link = await _link(client, doctor, await _appointment(client, doctor, 11, clock))
    patient = await aiohttp_client(client.server)
    page = await patient.get(link)
    m = CSRF_RE.search(await page.text())
    assert m
    wrong = {"csrf_token": m.group(1), "birth_date": "1975-03-11"}  # a day off, no consent
    shown = {
        "fr": (
            "nous n'avons pas pu confirmer votre identité",
            {
                "birth_date": "ne correspond pas à nos informations",
                "consent": "votre consentement est nécessaire pour une téléconsultation",
            },
        ),
        "en": (
            "we could not confirm your identity",
            {
                "birth_date": "does not match our records",
                "consent": "consent is needed for a teleconsultation",
            },
        ),
    }
    for lang, (alert, fields) in shown.items():
        patient.session.cookie_jar.update_cookies({"konsil_lang": lang})
        refused = await patient.post(link, data=wrong)
        assert refused.status == 400
        assert _refusal(await refused.text()) == (alert, fields)
        # the page's script submits the same form and shows the answer's texts
        fetched = await patient.post(link, data=wrong, headers={"Accept": "application/json"})
        assert fetched.status == 400
        assert await fetched.json() == {"error": alert, "fields": fields}
    patient.session.cookie_jar.update_cookies({"konsil_lang": "fr"})
    nothing = await patient.post(link, data={"csrf_token": m.group(1), "consent": "yes"})
    assert _refusal(await nothing.text())[1] == {
        "birth_date": "saisissez votre date de naissance ou votre matricule"
    }
    assert (await _enter(patient, link)).status == 303  # the refusals used nothing up


async def test_the_schedule_form_refuses_in_the_doctors_language(
    client: Client, doctor: Person, clock: FakeClock
) -> None:
    csrf = await web_login(client, doctor)
    past = local(clock.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    typed = {
        "csrf_token": csrf,
        "starts_at": past,
        "duration_minutes": "300",
        "matricule": make_matricule("19750000", 12),  # birth month and day unknown
        "birth_date": "1975-03-10",
        "given_name": "Marie",
        "family_name": "Schmit",
        "phone": "appelez-moi",
    }
    shown = {
        "fr": (
            "le rendez-vous n'est pas valide",
            {
                "starts_at": "est dans le passé",
                "duration_minutes": "entre 5 et 120 minutes",
                "phone": "n'est pas un numéro de téléphone",
            },
        ),
        "en": (
            "the appointment is not valid",
            {
                "starts_at": "is in the past",
                "duration_minutes": "between 5 and 120 minutes",
                "phone": "is not a phone number",
            },
        ),
    }
    for lang, refusal in shown.items():
        client.session.cookie_jar.update_cookies({"konsil_lang": lang})
        refused = await client.post("/video/appointments", data=typed)
        assert refused.status == 400
        assert _refusal(await refused.text()) == refusal
    # A patient registered with this matricule and another birth date: the service refuses.
    future = local(clock.now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    fixed = {**typed, "starts_at": future, "duration_minutes": "20", "phone": ""}
    scheduled = await client.post("/video/appointments", data=fixed, allow_redirects=False)
    assert scheduled.status == 303
    other_birth = {**fixed, "birth_date": "1975-03-11"}
    conflict = {
        "fr": (
            "un patient avec ce matricule existe déjà avec une autre date de naissance",
            {"matricule": "déjà enregistré"},
        ),
        "en": (
            "a patient with this matricule exists with another birth date",
            {"matricule": "already registered"},
        ),
    }
    for lang, refusal in conflict.items():
        client.session.cookie_jar.update_cookies({"konsil_lang": lang})
        refused = await client.post("/video/appointments", data=other_birth)
        assert refused.status == 400
        assert _refusal(await refused.text()) == refusal


async def test_the_doctors_refused_actions_read_in_french(
    client: Client, doctor: Person, clock: FakeClock
) -> None:
    """What a page shows as a whole-page refusal: a conflict, a missing appointment."""
    a = await _appointment(client, doctor, 13, clock)
    csrf = await web_login(client, doctor)
    cancel = await client.post(
        f"/video/appointments/{a}/cancel", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert cancel.status == 303
    moved = await client.post(
        f"/video/appointments/{a}/reschedule",
        data={"csrf_token": csrf, "starts_at": "2026-01-16T10:30"},
    )
    assert moved.status == 409
    assert "seul un rendez-vous planifié peut être déplacé" in html.unescape(await moved.text())
    missing = await client.get("/video/appointments/nope")
    assert missing.status == 404 and "rendez-vous introuvable" in await missing.text()
    client.session.cookie_jar.update_cookies({"konsil_lang": "en"})
    moved = await client.post(
        f"/video/appointments/{a}/reschedule",
        data={"csrf_token": csrf, "starts_at": "2026-01-16T10:30"},
    )
    assert "only a scheduled appointment can be moved" in await moved.text()


async def test_pages_in_french(client: Client, doctor: Person) -> None:
    await web_login(client, doctor)
    client.session.cookie_jar.update_cookies({"konsil_lang": "fr"})
    text = await (await client.get("/video")).text()
    assert "Planifier une téléconsultation" in text and "Salle d&#39;attente" in text
    assert re.search(r'<label for="f-matricule">Matricule', text)


async def test_a_doctor_without_organisation_cannot_issue(
    client: Client, create_user: Callable[..., Awaitable[Person]], clock: FakeClock
) -> None:
    lone = await create_user("drlone", "practitioner", specialty="general-practice")
    svc: VideoService = client.app[SERVICE]
    a = await _appointment(client, lone, 8, clock)
    inv = await svc.do_invite(Actor(lone.account_id), a)
    await svc.do_enter(inv.token, {"birth_date": "1975-03-10", "consent": "yes"}, None)
    await svc.do_admit(Actor(lone.account_id), a, True)
    clock.advance(600)
    form = {"reason": "Toux.", "findings": "Bronchite.", "plan": "Repos."}
    with pytest.raises(ValidationError) as refused:
        await svc.do_after_call(Actor(lone.account_id), a, form)
    assert refused.value.fields == {"organisation": "your account belongs to no organisation"}
    async with client.app[K.DB].session() as s:
        assert (await s.execute(select(ClinicalDocument))).first() is None
        assert (await s.execute(select(VideoDocument))).first() is None
        appt = await s.get(VideoAppointment, a)
        assert appt is not None and appt.status == "admitted"
