"""The referring physician is notified of a published report: a Matrix notice from the Konsil
service account in the board's room (only a link), read by a real matrix-nio client, and the
dashboard. The notice is written with the publication and retried until posted."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nio import JoinResponse, RoomMessageNotice
from sqlalchemy import delete, select, update

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import SYSTEM
from konsil.clock import FakeClock
from konsil.errors import Conflict, Forbidden, ValidationError
from konsil.identity.models import SERVICE, Account
from konsil.identity.service import NewAccount, PractitionerUpdate
from messaging.web import HS
from rcp.matrix import SERVICE_LOCALPART, MatrixBoardRooms
from rcp.models import BoardRoom, Notice
from rcp.notices import MAX_ATTEMPTS, MAX_DELAY_S
from rcp.web import NOTICE_LOOP_STOP
from rcp.web.keys import NOTICES, RCP
from tests.conftest import Person, web_login
from tests.messaging.mx import login
from tests.messaging.nio_helpers import Peer, until
from tests.rcp.conftest import DECISION, GOOD_FICHE, World


class NoticePeer(Peer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.notices: list[RoomMessageNotice] = []
        self.client.add_event_callback(self._on_notice, RoomMessageNotice)

    async def _on_notice(self, room: Any, event: RoomMessageNotice) -> None:
        self.notices.append(event)


def server(w: World) -> str:
    return w.client.app[K.CONFIG].server_name


async def referrer_peer(w: World, tmp_path: Path) -> NoticePeer:
    base = str(w.client.make_url("")).rstrip("/")
    peer = NoticePeer(
        base, w.referrer.person, tmp_path / "gp", f"@{w.referrer.person.username}:{server(w)}"
    )
    await peer.login()
    await peer.step()
    return peer


async def to_validated_and_publish(w: World, cid: str) -> dict[str, Any]:
    await w.call(
        w.coordinator,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "schedule", "session_id": w.session_id},
    )
    await w.check_in(w.chair, w.medonc, w.radonc)
    await w.call(w.chair, "POST", f"/cases/{cid}/decision", DECISION)
    await w.call(w.chair, "POST", f"/cases/{cid}/report", None, 201)
    signed: dict[str, Any] = await w.call(
        w.chair, "POST", f"/cases/{cid}/sign", {"password": w.chair.person.password}
    )
    assert signed["state"] == "PUBLISHED"
    return signed


async def board_room(w: World) -> str:
    async with w.client.app[K.DB].session() as s:
        row = await s.get(BoardRoom, w.board_id)
    assert row is not None
    return row.room_id


def assert_no_clinical_detail(body: str, w: World) -> None:
    for secret in (
        "Muller",
        "Marie",
        w.matricule,
        GOOD_FICHE["icd10"],
        GOOD_FICHE["icdo_morphology"],
        GOOD_FICHE["diagnosis_label"],
        "Carcinome",
        "sein",
        GOOD_FICHE["question"],
    ):
        assert secret.lower() not in body.lower(), secret


async def test_the_referring_physician_gets_a_notice_with_only_a_link(
    world: World, tmp_path: Path
) -> None:
    w = world
    gp = await referrer_peer(w, tmp_path)
    try:
        # the board's room exists (members were added) and the referrer is not in it yet
        room_id = await board_room(w)
        assert room_id not in gp.client.invited_rooms
        case = await w.new_case()  # submitted: the referrer is invited
        cid = case["id"]
        await until([gp], lambda: room_id in gp.client.invited_rooms)
        assert isinstance(await gp.client.join(room_id), JoinResponse)
        await gp.step()
        room = gp.client.rooms[room_id]
        assert room.name == "RCP Sein" and room.encrypted
        assert f"@{w.chair.person.username}:{server(w)}" in room.invited_users

        await to_validated_and_publish(w, cid)
        await until([gp], lambda: bool(gp.notices))
        (notice,) = gp.notices
        assert notice.sender == f"@{SERVICE_LOCALPART}:{server(w)}"
        me = gp.client.user_id
        assert notice.source["content"]["m.mentions"] == {"user_ids": [me]}
        link = f"{w.client.app[K.CONFIG].base_url}/rcp/cases/{cid}"
        assert notice.body.endswith(link)
        assert_no_clinical_detail(notice.body, w)
        assert_no_clinical_detail(notice.source["content"]["formatted_body"], w)
    finally:
        await gp.close()

    async with w.client.app[K.DB].session() as s:
        (row,) = (await s.execute(select(Notice))).scalars().all()
    assert row.sent_at is not None and row.event_id == notice.event_id and row.attempts == 1
    # the dashboard says the report is published, with a link to the case
    await web_login(w.client, w.referrer.person)
    page = await (await w.client.get("/")).text()
    assert "RCP : comptes rendus publiés" in page and f'href="/rcp/cases/{cid}"' in page


async def test_a_notice_survives_a_crash_after_the_publication(
    world: World, tmp_path: Path
) -> None:
    """As if the process died right after the publishing commit: the notice row is there, the
    retry loop posts it; a repeat after a crash between the post and its bookkeeping posts
    nothing new."""
    w = world
    w.client.app[NOTICE_LOOP_STOP].set()  # this test plays the retry loop itself
    service = w.client.app[RCP]
    hooks = list(service.after_publish)
    service.after_publish.clear()  # nothing runs after the commit
    case = await w.new_case()
    await to_validated_and_publish(w, case["id"])
    async with w.client.app[K.DB].session() as s:
        (row,) = (await s.execute(select(Notice))).scalars().all()
    assert row.sent_at is None and row.kind == "report-published"
    assert row.recipient_account_id == w.referrer.id
    service.after_publish.extend(hooks)

    notices = w.client.app[NOTICES]
    assert await notices.deliver_due() == 1
    async with w.client.app[K.DB].transaction() as s:
        first = await s.get(Notice, row.id)
        assert first is not None and first.event_id
        event_id = first.event_id
        await s.execute(update(Notice).where(Notice.id == row.id).values(sent_at=None))
    assert await notices.deliver_due() == 1  # posted "again": the homeserver answers the first
    async with w.client.app[K.DB].session() as s:
        again = await s.get(Notice, row.id)
    assert again is not None and again.event_id == event_id

    gp = await referrer_peer(w, tmp_path)
    try:
        room_id = await board_room(w)
        await until([gp], lambda: room_id in gp.client.invited_rooms)
        assert isinstance(await gp.client.join(room_id), JoinResponse)
        await until([gp], lambda: bool(gp.notices))
        await gp.step()
        assert [n.event_id for n in gp.notices] == [event_id]
    finally:
        await gp.close()


async def invitations(w: World, peer: NoticePeer, default: str) -> None:
    """The peer's own invite permissions (Konsil's ``lu.konsil.invite_permissions``)."""
    uid = peer.client.user_id
    path = f"/_matrix/client/v3/user/{uid}/account_data/lu.konsil.invite_permissions"
    headers = {"Authorization": f"Bearer {peer.client.access_token}"}
    resp = await w.client.put(path, json={"default": default}, headers=headers)
    assert resp.status == 200, await resp.text()


async def test_a_refused_notice_is_retried_later(world: World, tmp_path: Path) -> None:
    """The referrer accepts no invitations (Konsil's invite permissions): the notice is not
    posted, the error is kept and it is retried after a delay; once they accept, it goes."""
    w = world
    w.client.app[NOTICE_LOOP_STOP].set()  # this test plays the retry loop itself
    gp = await referrer_peer(w, tmp_path)
    try:
        await invitations(w, gp, "block")
        case = await w.new_case()
        await to_validated_and_publish(w, case["id"])
        async with w.client.app[K.DB].session() as s:
            (row,) = (await s.execute(select(Notice))).scalars().all()
        assert row.sent_at is None and row.attempts == 1
        assert row.last_error and "invitations" in row.last_error
        notices = w.client.app[NOTICES]
        assert await notices.deliver_due() == 0  # not due yet
        await invitations(w, gp, "allow")
        clock = w.client.app[K.CLOCK]
        assert isinstance(clock, FakeClock)
        clock.advance(timedelta(minutes=1).total_seconds())
        assert await notices.deliver_due() == 1
        room_id = await board_room(w)
        await until([gp], lambda: room_id in gp.client.invited_rooms)
        assert isinstance(await gp.client.join(room_id), JoinResponse)
        await until([gp], lambda: bool(gp.notices))
        assert_no_clinical_detail(gp.notices[0].body, w)
    finally:
        await gp.close()


async def test_the_service_account_can_be_nobody(world: World) -> None:
    """The account that runs the boards' rooms has the role ``service``: no password, not in the
    practitioner directory, and neither an admin nor a registration can take it over."""
    w = world
    await w.new_case()  # submitted: the board's room is created by the service account
    async with w.client.app[K.DB].session() as s:
        (acc,) = (
            await s.execute(select(Account).where(Account.username == SERVICE_LOCALPART))
        ).scalars()
    assert acc.role == SERVICE and acc.password_hash is None and not acc.is_guest

    ident = w.client.app[K.IDENTITY]
    with pytest.raises(Forbidden):
        await ident.do_set_password(SYSTEM, SERVICE_LOCALPART, "a-long-enough-passphrase")
    with pytest.raises(Forbidden):
        await ident.do_set_active(SYSTEM, acc.id, False)
    with pytest.raises(Forbidden):
        await ident.do_update_practitioner(
            SYSTEM, acc.id, PractitionerUpdate(display_name="Me now", role="admin")
        )
    with pytest.raises(ValidationError) as refused:
        await ident.do_create_account(
            SYSTEM,
            NewAccount(username="konsil", password="a-long-enough-passphrase", role="admin"),
        )
    assert "reserved" in refused.value.fields["username"]
    async with w.client.app[K.DB].session() as s:
        again = await s.get(Account, acc.id)
    assert again is not None and again.password_hash is None and again.is_active
    assert again.role == SERVICE

    mx = await login(w.client, w.referrer.person)
    found = await mx.post("/user_directory/search", {"search_term": "konsil"})
    assert found["results"] == []
    found = await mx.post("/user_directory/search", {"search_term": w.chair.person.username})
    assert [r["user_id"] for r in found["results"]] == [f"@{w.chair.person.username}:{server(w)}"]


async def test_rcp_never_acts_as_a_person_holding_the_service_name(world: World) -> None:
    """A database where a person was given the name before it was reserved: RCP refuses to use
    that account as its own rather than act in their name."""
    w = world
    async with w.client.app[K.DB].transaction() as s:
        await s.execute(delete(Account).where(Account.username == SERVICE_LOCALPART))
        await s.execute(
            update(Account)
            .where(Account.username == w.referrer.person.username)
            .values(username=SERVICE_LOCALPART)
        )
    app = w.client.app
    rooms = MatrixBoardRooms(app[K.DB], app[K.CLOCK], lambda: app[HS].rooms)
    with pytest.raises(Conflict, match="not Konsil's service account"):
        await rooms.service_account()


async def test_an_operator_sees_and_retries_a_notice_given_up(
    world: World, admin: Person, tmp_path: Path
) -> None:
    """After MAX_ATTEMPTS failures a notice is given up: the admin's dashboard and the notices
    page show it with its last error, a practitioner cannot see that page, and the admin's retry
    posts it (audited)."""
    w = world
    w.client.app[NOTICE_LOOP_STOP].set()  # this test plays the retry loop itself
    gp = await referrer_peer(w, tmp_path)
    try:
        await invitations(w, gp, "block")
        case = await w.new_case()
        await to_validated_and_publish(w, case["id"])
        notices = w.client.app[NOTICES]
        clock = w.client.app[K.CLOCK]
        assert isinstance(clock, FakeClock)
        for _ in range(MAX_ATTEMPTS):  # every retry refused, until given up
            clock.advance(MAX_DELAY_S)
            await notices.deliver_due()
        async with w.client.app[K.DB].session() as s:
            (row,) = (await s.execute(select(Notice))).scalars().all()
        assert row.sent_at is None and row.attempts == MAX_ATTEMPTS
        clock.advance(MAX_DELAY_S)
        assert await notices.deliver_due() == 0  # given up: no more attempts on its own

        # the practitioner cannot see the operators' page
        await web_login(w.client, w.referrer.person)
        assert (await w.client.get("/admin/rcp/notices")).status == 403
        # the admin sees the notice on the dashboard and on the page, with its last error
        token = await web_login(w.client, admin)
        dash = await (await w.client.get("/")).text()
        assert "RCP : notifications non publiées" in dash
        assert f'href="/admin/rcp/notices#n-{row.id}"' in dash
        page = await (await w.client.get("/admin/rcp/notices")).text()
        assert f'id="n-{row.id}"' in page and "abandonnée" in page and "invitations" in page
        assert "Muller" not in page and "Marie" not in page  # no patient data on the page

        # the referrer accepts invitations again; the admin retries; the notice is posted
        await invitations(w, gp, "allow")
        resp = await w.client.post(
            f"/admin/rcp/notices/{row.id}/retry", data={"csrf_token": token}, allow_redirects=False
        )
        assert resp.status == 303, await resp.text()
        async with w.client.app[K.DB].session() as s:
            posted = await s.get(Notice, row.id)
            retries = (
                (await s.execute(select(AuditEvent).where(AuditEvent.action == "rcp.notice.retry")))
                .scalars()
                .all()
            )
        assert posted is not None and posted.sent_at is not None and posted.event_id
        assert [e.resource for e in retries] == [f"rcp-notice/{row.id}"]
        assert [e.actor for e in retries] == [admin.account_id]
        page = await (await w.client.get("/admin/rcp/notices")).text()
        assert f'id="n-{row.id}"' not in page
        # a posted notice is not retried again
        resp = await w.client.post(
            f"/admin/rcp/notices/{row.id}/retry", data={"csrf_token": token}, allow_redirects=False
        )
        assert resp.status == 409

        room_id = await board_room(w)
        await until([gp], lambda: room_id in gp.client.invited_rooms)
        assert isinstance(await gp.client.join(room_id), JoinResponse)
        await until([gp], lambda: bool(gp.notices))
        assert [n.event_id for n in gp.notices] == [posted.event_id]
    finally:
        await gp.close()
