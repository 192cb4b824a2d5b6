"""Taking a member off a board: who may, what it changes (quorum, access, the board's Matrix
room), and what it refuses."""

from __future__ import annotations

from pathlib import Path

from nio import JoinedRoomsResponse
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from messaging.models import Membership
from tests.conftest import csrf_from, web_login
from tests.messaging.nio_helpers import Peer, until
from tests.rcp.conftest import World
from tests.rcp.test_notices import board_room, server


async def room_membership(w: World, username: str) -> str | None:
    room_id = await board_room(w)
    async with w.client.app[K.DB].session() as s:
        row = await s.get(Membership, (room_id, f"@{username}:{server(w)}"))
    return None if row is None else row.membership


async def test_removing_a_member(world: World, tmp_path: Path) -> None:
    w = world
    members = f"/boards/{w.board_id}/members"
    radio = w.radiologist.person.username
    # only a coordinator (or an admin) manages members
    err = await w.call(w.medonc, "DELETE", f"{members}/{w.radiologist.id}", status=403)
    assert "coordinator" in err["detail"]
    await w.call(w.coordinator, "DELETE", f"{members}/{w.outsider.id}", status=404)
    # the last coordinator stays
    last = await w.call(w.coordinator, "DELETE", f"{members}/{w.coordinator.id}", status=409)
    assert "last coordinator" in last["detail"]

    # the radiologist joins the board's room with a real client, and is checked in
    base = str(w.client.make_url("")).rstrip("/")
    peer = Peer(base, w.radiologist.person, tmp_path / "radio", f"@{radio}:{server(w)}")
    await peer.login()
    try:
        room_id = await board_room(w)
        await until([peer], lambda: room_id in peer.client.invited_rooms)
        await peer.client.join(room_id)
        await peer.step()
        assert await room_membership(w, radio) == "join"
        await w.check_in(w.chair, w.medonc, w.radiologist)
        before = await w.call(w.chair, "GET", f"/sessions/{w.session_id}/quorum")
        assert w.radiologist.id in {a["account_id"] for a in before["present"]}

        board = await w.call(w.coordinator, "DELETE", f"{members}/{w.radiologist.id}")
        assert w.radiologist.id not in {m["account_id"] for m in board["members"]}
        # out of the room (kicked by the service account), and out of the quorum
        assert await room_membership(w, radio) == "leave"
        joined = await peer.client.joined_rooms()
        assert isinstance(joined, JoinedRoomsResponse) and room_id not in joined.rooms
        after = await w.call(w.chair, "GET", f"/sessions/{w.session_id}/quorum")
        assert w.radiologist.id not in {a["account_id"] for a in after["present"]}
        # no longer sees the board's cases nor follows its sessions
        await w.call(w.radiologist, "GET", f"/boards/{w.board_id}/cases", status=403)
        await w.call(w.radiologist, "GET", f"/sessions/{w.session_id}/quorum", status=403)

        # added back: invited again
        await w.call(w.coordinator, "POST", members, {"username": radio})
        assert await room_membership(w, radio) == "invite"
        await until([peer], lambda: room_id in peer.client.invited_rooms)
    finally:
        await peer.close()

    async with w.client.app[K.DB].session() as s:
        removed = (
            await s.execute(
                select(AuditEvent).where(AuditEvent.action == "rcp.board.member.remove")
            )
        ).scalar_one()
    assert removed.actor == w.coordinator.id
    assert removed.resource == f"rcp/board/{w.board_id}"


async def test_a_removed_referrer_stays_in_the_room(world: World) -> None:
    """Someone who referred a case to the board is in its room for the notices, member or not."""
    w = world
    members = f"/boards/{w.board_id}/members"
    await w.call(w.coordinator, "POST", members, {"username": w.referrer.person.username})
    await w.new_case()  # submitted by the referrer
    await w.call(w.coordinator, "DELETE", f"{members}/{w.referrer.id}")
    assert await room_membership(w, w.referrer.person.username) == "invite"


async def test_the_board_page_removes_a_member(world: World) -> None:
    w = world
    await web_login(w.client, w.coordinator.person)
    page_url = f"/rcp/boards/{w.board_id}"
    page = await (await w.client.get(page_url)).text()
    action = f"/rcp/boards/{w.board_id}/members/{w.medonc.id}/remove"
    assert f'action="{action}"' in page
    token = await csrf_from(w.client, page_url)
    resp = await w.client.post(action, data={}, allow_redirects=False)
    assert resp.status == 403  # no CSRF token
    resp = await w.client.post(action, data={"csrf_token": token}, allow_redirects=False)
    assert resp.status == 303
    page = await (await w.client.get(page_url)).text()
    assert f"/members/{w.medonc.id}/remove" not in page
    # a member who does not manage the board sees no removal buttons
    w.client.session.cookie_jar.clear()
    await web_login(w.client, w.chair.person)
    page = await (await w.client.get(page_url)).text()
    assert "/remove" not in page
