"""Healthcare policy: directory, invite permissions, guests, retention, rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from sqlalchemy import func, select, update

from konsil import appkeys as K
from konsil.clock import FakeClock
from konsil.config import MatrixConfig
from konsil.identity.models import Account, Organisation
from messaging.models import Event, Media
from messaging.web import HS
from tests.conftest import AiohttpClient, Client, Person
from tests.messaging.mx import V3, login

Users = Callable[..., Awaitable[Person]]


async def _make_guest(client: Client, username: str) -> None:
    async with client.app[K.DB].transaction() as s:
        await s.execute(update(Account).where(Account.username == username).values(is_guest=True))


async def test_directory_and_guests(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice", display_name="Alice Martin"))
    await create_user("amartin2", display_name="Albert Martin")
    await create_user("visitor", display_name="Visiting Martin")
    await _make_guest(client, "visitor")
    g = await login(client, Person("visitor", "pw-visitor-0123456789", "", "practitioner"))
    res = await a.post("/user_directory/search", {"search_term": "martin", "limit": 10})
    ids = {r["user_id"] for r in res["results"]}
    assert ids == {"@alice:localhost", "@amartin2:localhost"}  # guests are not listed
    assert res["limited"] is False
    assert (await g.post("/user_directory/search", {"search_term": "a"}, status=403))[
        "errcode"
    ] == "M_FORBIDDEN"
    await g.post("/createRoom", {}, status=403)
    # a guest can still be invited and talk
    room = await a.create_room(invite=[g.user_id])
    await g.post(f"/join/{room}")
    await g.send(room, "hello", "t1")


async def test_invite_permissions(client: Client, create_user: Users) -> None:
    async with client.app[K.DB].transaction() as s:
        org = Organisation(name="CHL", kind="hospital", created_at=datetime(2026, 1, 1, tzinfo=UTC))
        s.add(org)
        await s.flush()
        org_id = org.id
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    c = await login(client, await create_user("carol"))
    async with client.app[K.DB].transaction() as s:
        await s.execute(
            update(Account).where(Account.username == "carol").values(organisation_id=org_id)
        )
    room_a = await a.create_room()
    room_c = await c.create_room()
    # bob blocks everybody except alice's user id and carol's organisation
    await b.put(
        f"/user/{b.user_id}/account_data/lu.konsil.invite_permissions",
        {"default": "block", "user_exceptions": [], "organisation_exceptions": [org_id]},
    )
    err = await a.post(f"/rooms/{room_a}/invite", {"user_id": b.user_id}, status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    await a.post("/createRoom", {"invite": [b.user_id]}, status=403)
    await c.post(f"/rooms/{room_c}/invite", {"user_id": b.user_id})
    # allow all but carol
    await b.put(
        f"/user/{b.user_id}/account_data/lu.konsil.invite_permissions",
        {"default": "allow", "user_exceptions": [c.user_id]},
    )
    await a.post(f"/rooms/{room_a}/invite", {"user_id": b.user_id})
    room_c2 = await c.create_room()
    await c.post(f"/rooms/{room_c2}/invite", {"user_id": b.user_id}, status=403)


async def test_retention_purges_old_events_and_media(
    client: Client, create_user: Users, clock: FakeClock, tmp_path: Path
) -> None:
    a = await login(client, await create_user("alice"))
    kept_room = await a.create_room()
    room = await a.create_room()
    await a.put(f"/rooms/{room}/state/lu.konsil.retention", {"max_lifetime_days": 30})
    r = await client.post(
        "/_matrix/media/v3/upload", data=b"old scan", headers={**a.h, "Content-Type": "image/png"}
    )
    mxc = (await r.json())["content_uri"]
    await a.put(
        f"/rooms/{room}/send/m.room.message/f1", {"msgtype": "m.image", "body": "x", "url": mxc}
    )
    await a.send(room, "old message", "t1")
    await a.send(kept_room, "old but kept", "t2")
    clock.advance(31 * 86400)
    await a.send(room, "fresh message", "t3")
    events, media = await client.app[HS].do_purge_expired()
    assert events == 2 and media == 1
    page = await a.get(f"/rooms/{room}/messages", params={"limit": "50"})
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["fresh message"]
    assert (await a.get(f"/rooms/{room}/state/m.room.create"))["creator"] == a.user_id
    kept = await a.get(f"/rooms/{kept_room}/messages", params={"limit": "50"})
    assert "old but kept" in [e["content"].get("body") for e in kept["chunk"]]
    async with client.app[K.DB].session() as s:
        assert (await s.execute(select(func.count()).select_from(Media))).scalar() == 0
        assert (
            await s.execute(select(func.count()).where(Event.content.contains("old message")))
        ).scalar() == 0
    files = [f for f in (Path(client.app[K.CONFIG].data_dir) / "media").rglob("*") if f.is_file()]
    assert files == []


async def test_rate_limits(
    aiohttp_client: AiohttpClient,
    make_app: Callable[..., web.Application],
    client: Client,
    create_user: Users,
) -> None:
    limited = await aiohttp_client(
        make_app(matrix=MatrixConfig(login_burst=3, send_burst=3, upload_burst=2))
    )
    alice = await create_user("alice")
    a = await login(limited, alice)
    await login(limited, alice)
    await login(limited, alice)
    r = await limited.post(
        V3 + "/login",
        json={"type": "m.login.password", "user": "alice", "password": alice.password},
    )
    body = await r.json()
    assert r.status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
    room = await a.create_room()
    for i in range(3):
        await a.send(room, f"m{i}", f"t{i}")
    r = await limited.put(
        V3 + f"/rooms/{room}/send/m.room.message/t9", json={"body": "x"}, headers=a.h
    )
    assert r.status == 429 and (await r.json())["retry_after_ms"] > 0
    for _ in range(2):
        ok = await limited.post("/_matrix/media/v3/upload", data=b"x", headers=a.h)
        assert ok.status == 200
    r = await limited.post("/_matrix/media/v3/upload", data=b"x", headers=a.h)
    assert r.status == 429 and (await r.json())["errcode"] == "M_LIMIT_EXCEEDED"
