"""Matrix Client-Server API behaviour, endpoint by endpoint, over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from konsil import appkeys as K
from konsil.clock import FakeClock
from tests.conftest import Client, Person
from tests.messaging.mx import V3, login

Users = Callable[..., Awaitable[Person]]


async def test_discovery_and_login(client: Client, create_user: Users) -> None:
    v = await (await client.get("/_matrix/client/versions")).json()
    assert "v1.11" in v["versions"]
    wk = await (await client.get("/.well-known/matrix/client")).json()
    assert wk["m.homeserver"]["base_url"].startswith("http")
    flows = await (await client.get(V3 + "/login")).json()
    assert {"type": "m.login.password"} in flows["flows"]

    alice = await create_user("alice")
    bad = await client.post(
        V3 + "/login", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert bad.status == 400 and (await bad.json())["errcode"] == "M_NOT_JSON"
    wrong = await client.post(
        V3 + "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "x",
        },
    )
    assert wrong.status in (401, 403) and (await wrong.json())["errcode"] == "M_FORBIDDEN"
    arr = await client.post(V3 + "/login", json=[1, 2])
    assert (await arr.json())["errcode"] == "M_BAD_JSON"

    a = await login(client, alice)
    assert a.user_id == "@alice:localhost"
    who = await a.get("/account/whoami")
    assert who == {"user_id": a.user_id, "device_id": a.device_id, "is_guest": False}
    # the deprecated query parameter works too
    q = await client.get(V3 + "/account/whoami", params={"access_token": a.token})
    assert (await q.json())["user_id"] == a.user_id
    missing = await client.get(V3 + "/account/whoami")
    assert missing.status == 401 and (await missing.json())["errcode"] == "M_MISSING_TOKEN"
    unknown = await client.get(V3 + "/account/whoami", headers={"Authorization": "Bearer nope"})
    assert unknown.status == 401 and (await unknown.json())["errcode"] == "M_UNKNOWN_TOKEN"
    caps = await a.get("/capabilities")
    assert caps["capabilities"]["m.room_versions"]["default"]

    # only the token's hash is stored
    from sqlalchemy import select

    from messaging.models import AccessToken

    async with client.app[K.DB].session() as s:
        hashes = list((await s.execute(select(AccessToken.token_hash))).scalars())
    assert a.token not in hashes and len(hashes) == 1

    assert await a.post("/logout") == {}
    gone = await client.get(V3 + "/account/whoami", headers=a.h)
    assert (await gone.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_devices_with_user_interactive_auth(client: Client, create_user: Users) -> None:
    alice = await create_user("alice")
    a1 = await login(client, alice)
    a2 = await login(client, alice)
    devs = (await a1.get("/devices"))["devices"]
    assert {d["device_id"] for d in devs} == {a1.device_id, a2.device_id}
    assert set(devs[0]) >= {"device_id", "display_name", "last_seen_ip", "last_seen_ts"}
    assert await a1.put(f"/devices/{a2.device_id}", {"display_name": "Phone"}) == {}
    assert (await a1.get(f"/devices/{a2.device_id}"))["display_name"] == "Phone"
    await a1.get("/devices/NOPE", status=404)

    challenge = await a1.call("DELETE", f"/devices/{a2.device_id}", {}, status=401)
    assert challenge["flows"] == [{"stages": ["m.login.password"]}] and challenge["session"]
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": alice.password,
        "session": challenge["session"],
    }
    bad = dict(auth, password="wrong")
    await a1.call("DELETE", f"/devices/{a2.device_id}", {"auth": bad}, status=401)
    assert await a1.call("DELETE", f"/devices/{a2.device_id}", {"auth": auth}) == {}
    assert [d["device_id"] for d in (await a1.get("/devices"))["devices"]] == [a1.device_id]
    await a2.get("/account/whoami", status=401)

    a3 = await login(client, alice)
    # the session was for that deletion, and is spent: another one asks again
    body = {"devices": [a3.device_id], "auth": auth}
    again = await a1.post("/delete_devices", body, status=401)
    assert again["session"] != challenge["session"]
    body["auth"] = dict(auth, session=again["session"])
    assert await a1.post("/delete_devices", body) == {}
    a4 = await login(client, alice)
    assert await a4.post("/logout/all") == {}
    await a1.get("/account/whoami", status=401)


async def test_profile(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice", display_name="Dr Alice"))
    assert (await a.get(f"/profile/{a.user_id}/displayname"))["displayname"] == "Dr Alice"
    await a.put(f"/profile/{a.user_id}/displayname", {"displayname": "Alice M."})
    assert (await a.get(f"/profile/{a.user_id}"))["displayname"] == "Alice M."
    await a.put("/profile/@bob:localhost/displayname", {"displayname": "x"}, status=403)
    await a.get("/profile/@nobody:localhost", status=404)


async def test_rooms_membership_and_power(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    c = await login(client, await create_user("carol"))
    room = await a.create_room(
        name="Board",
        topic="Thursday",
        invite=[b.user_id],
        is_direct=False,
        power_level_content_override={"events_default": 0, "kick": 60},
    )
    state = {(e["type"], e["state_key"]): e for e in await a.get(f"/rooms/{room}/state")}
    assert state[("m.room.name", "")]["content"]["name"] == "Board"
    assert state[("m.room.topic", "")]["content"]["topic"] == "Thursday"
    assert state[("m.room.join_rules", "")]["content"]["join_rule"] == "invite"
    assert state[("m.room.power_levels", "")]["content"]["kick"] == 60
    assert state[("m.room.member", b.user_id)]["content"]["membership"] == "invite"

    # carol was not invited: cannot join, read or send
    err = await c.post(f"/join/{room}", status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    await c.get(f"/rooms/{room}/messages", status=403)
    await c.put(f"/rooms/{room}/send/m.room.message/t1", {"body": "x"}, status=403)
    await c.get("/rooms/!nope:localhost/messages", status=404)

    assert (await b.post(f"/rooms/{room}/join"))["room_id"] == room
    assert set((await a.get(f"/rooms/{room}/joined_members"))["joined"]) == {a.user_id, b.user_id}
    assert len((await a.get(f"/rooms/{room}/members"))["chunk"]) == 2
    assert (await b.get("/joined_rooms"))["joined_rooms"] == [room]

    # power levels: bob (0) may talk but not rename, kick or ban
    await b.put(f"/rooms/{room}/state/m.room.name", {"name": "Mine"}, status=403)
    await a.post(f"/rooms/{room}/invite", {"user_id": c.user_id})
    await c.post(f"/join/{room}")
    await b.post(f"/rooms/{room}/kick", {"user_id": c.user_id}, status=403)
    await b.post(f"/rooms/{room}/ban", {"user_id": a.user_id}, status=403)
    assert await a.put(f"/rooms/{room}/state/m.room.name", {"name": "Board 2"})
    assert (await b.get(f"/rooms/{room}/state/m.room.name"))["name"] == "Board 2"
    await a.get(f"/rooms/{room}/state/m.room.avatar", status=404)
    # bob cannot give himself power
    pl = await a.get(f"/rooms/{room}/state/m.room.power_levels/")
    pl["users"][b.user_id] = 100
    await b.put(f"/rooms/{room}/state/m.room.power_levels", pl, status=403)

    # alice kicks and bans carol; a banned user cannot rejoin
    await a.post(f"/rooms/{room}/kick", {"user_id": c.user_id, "reason": "test"})
    await c.get(f"/rooms/{room}/state", status=403)
    await a.post(f"/rooms/{room}/ban", {"user_id": c.user_id})
    await c.post(f"/join/{room}", status=403)
    await a.post(f"/rooms/{room}/unban", {"user_id": c.user_id})
    await c.post(f"/join/{room}", status=403)  # unbanned, but still invite-only
    await b.post(f"/rooms/{room}/leave")
    assert (await b.get("/joined_rooms"))["joined_rooms"] == []
    await b.post(f"/rooms/{room}/forget")

    # a public room can be joined without invitation
    pub = await a.create_room(preset="public_chat")
    await c.post(f"/join/{pub}")
    # malformed requests
    bad = await a.post("/createRoom", {"invite": "bob"}, status=400)
    assert bad["errcode"] == "M_BAD_JSON"
    await a.post(f"/rooms/{room}/invite", {"user_id": "@ghost:localhost"}, status=404)
    await a.post(f"/rooms/{room}/invite", {}, status=400)


async def test_send_idempotency_and_pagination(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    room = await a.create_room()
    e1 = await a.send(room, "one", "txn1")
    assert await a.send(room, "one again", "txn1") == e1  # same device, same txn
    ids = [e1] + [await a.send(room, f"m{i}", f"t{i}") for i in range(2, 8)]
    a2 = await login(client, a.person)
    assert await a2.send(room, "other device", "txn1") != e1

    page = await a.get(f"/rooms/{room}/messages", params={"dir": "b", "limit": "3"})
    bodies = [e["content"].get("body") for e in page["chunk"]]
    assert bodies == ["other device", "m7", "m6"]
    assert page["chunk"][1]["unsigned"]["transaction_id"] == "t7"
    page2 = await a.get(
        f"/rooms/{room}/messages", params={"dir": "b", "limit": "3", "from": page["end"]}
    )
    assert [e["content"].get("body") for e in page2["chunk"]] == ["m5", "m4", "m3"]
    fwd = await a.get(
        f"/rooms/{room}/messages", params={"dir": "f", "limit": "2", "from": page2["end"]}
    )
    assert [e["content"].get("body") for e in fwd["chunk"]] == ["m3", "m4"]
    bounded = await a.get(
        f"/rooms/{room}/messages",
        params={"dir": "b", "limit": "50", "from": page["end"], "to": page2["end"]},
    )
    assert [e["content"].get("body") for e in bounded["chunk"]] == ["m5", "m4", "m3"]
    assert "end" not in bounded
    ctx = await a.get(f"/rooms/{room}/context/{ids[3]}", params={"limit": "2"})
    assert ctx["event"]["event_id"] == ids[3]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[2]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[4]]
    await a.get(f"/rooms/{room}/messages", params={"from": "garbage"}, status=400)
    await a.get(f"/rooms/{room}/messages", params={"dir": "x"}, status=400)


async def test_history_visibility(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    room = await a.create_room()
    await a.put(f"/rooms/{room}/state/m.room.history_visibility", {"history_visibility": "joined"})
    await a.send(room, "before bob was invited", "t1")
    await a.post(f"/rooms/{room}/invite", {"user_id": b.user_id})
    await a.send(room, "after the invite, before the join", "t2")
    await b.post(f"/join/{room}")
    await a.send(room, "after bob joined", "t3")
    page = await b.get(f"/rooms/{room}/messages", params={"limit": "50"})
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["after bob joined"]
    first = await b.sync()
    tl = first["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"].get("body") for e in tl if e["type"] == "m.room.message"] == [
        "after bob joined"
    ]
    # after leaving, bob sees nothing new
    await b.post(f"/rooms/{room}/leave")
    await a.send(room, "after bob left", "t4")
    page = await b.get(f"/rooms/{room}/messages", params={"limit": "50"})
    assert "after bob left" not in [e["content"].get("body") for e in page["chunk"]]


async def test_sync_timeline_invites_leaves_and_long_poll(
    client: Client, create_user: Users
) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    s0 = await b.sync()
    room = await a.create_room(invite=[b.user_id], is_direct=True)
    s1 = await b.sync(s0["next_batch"])
    inv = s1["rooms"]["invite"][room]["invite_state"]["events"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == b.user_id for e in inv)
    await b.post(f"/join/{room}")
    for i in range(12):
        await a.send(room, f"msg {i}", f"t{i}")
    s2 = await b.sync(s1["next_batch"], filter='{"room":{"timeline":{"limit":5}}}')
    joined = s2["rooms"]["join"][room]
    assert joined["timeline"]["limited"] is True
    assert [e["content"]["body"] for e in joined["timeline"]["events"]] == [
        f"msg {i}" for i in range(7, 12)
    ]
    assert any(e["type"] == "m.room.create" for e in joined["state"]["events"])
    prev = await b.get(
        f"/rooms/{room}/messages", params={"from": joined["timeline"]["prev_batch"], "limit": "2"}
    )
    assert [e["content"]["body"] for e in prev["chunk"]] == ["msg 6", "msg 5"]
    # a stored filter works the same
    fid = (await b.post(f"/user/{b.user_id}/filter", {"room": {"timeline": {"limit": 1}}}))[
        "filter_id"
    ]
    assert (await b.get(f"/user/{b.user_id}/filter/{fid}"))["room"]["timeline"]["limit"] == 1

    # nothing new: an empty answer with the same token
    empty = await b.sync(s2["next_batch"])
    assert empty["rooms"]["join"] == {} and empty["next_batch"] == s2["next_batch"]

    # long-poll: the sync waits, and the next message wakes it
    waiting = asyncio.create_task(b.sync(s2["next_batch"], timeout="20000"))
    await asyncio.sleep(0)
    await a.send(room, "wake up", "wake")
    woke = await asyncio.wait_for(waiting, 10)
    assert [e["content"]["body"] for e in woke["rooms"]["join"][room]["timeline"]["events"]] == [
        "wake up"
    ]
    assert woke["rooms"]["join"][room]["timeline"]["events"][0]["sender"] == a.user_id

    # a kick shows up in "leave"
    await a.post(f"/rooms/{room}/kick", {"user_id": b.user_id})
    s3 = await b.sync(woke["next_batch"])
    left = s3["rooms"]["leave"][room]["timeline"]["events"]
    assert left[-1]["content"]["membership"] == "leave"
    assert room not in s3["rooms"]["join"]


async def test_keys_claim_once_under_concurrency(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    others = [await login(client, await create_user(f"u{i}")) for i in range(3)]
    keys = {f"signed_curve25519:K{i}": {"key": f"key{i}", "signatures": {}} for i in range(6)}
    up = await a.post(
        "/keys/upload",
        {
            "device_keys": {
                "user_id": a.user_id,
                "device_id": a.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {f"curve25519:{a.device_id}": "ck", f"ed25519:{a.device_id}": "ek"},
                "signatures": {},
            },
            "one_time_keys": keys,
            "fallback_keys": {"signed_curve25519:FB": {"key": "fb", "fallback": True}},
        },
    )
    assert up["one_time_key_counts"]["signed_curve25519"] == 6
    s = await a.sync()
    assert s["device_one_time_keys_count"]["signed_curve25519"] == 6
    assert s["device_unused_fallback_key_types"] == ["signed_curve25519"]
    bad = await a.post("/keys/upload", {"device_keys": {"user_id": "@x:localhost"}}, status=400)
    assert bad["errcode"] == "M_INVALID_PARAM"

    req = {"one_time_keys": {a.user_id: {a.device_id: "signed_curve25519"}}}
    results = await asyncio.gather(*(others[i % 3].post("/keys/claim", req) for i in range(10)))
    got = [next(iter(r["one_time_keys"][a.user_id][a.device_id])) for r in results]
    otks = [k for k in got if k != "signed_curve25519:FB"]
    assert sorted(otks) == sorted(keys) and len(set(otks)) == 6
    assert got.count("signed_curve25519:FB") == 4
    s2 = await a.sync(s["next_batch"])
    assert s2["device_one_time_keys_count"]["signed_curve25519"] == 0
    assert s2["device_unused_fallback_key_types"] == []

    q = await others[0].post("/keys/query", {"device_keys": {a.user_id: []}})
    assert q["device_keys"][a.user_id][a.device_id]["keys"][f"ed25519:{a.device_id}"] == "ek"
    await others[0].post("/keys/query", {"device_keys": []}, status=400)


async def test_to_device_inbox_and_device_lists(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    bob = await create_user("bob")
    b1 = await login(client, bob)
    b2 = await login(client, bob)
    room = await a.create_room(invite=[b1.user_id])
    await b1.post(f"/join/{room}")
    sa = await a.sync()
    s1 = await b1.sync()
    s2 = await b2.sync()
    msgs = {
        "messages": {
            b1.user_id: {"*": {"n": 1}},
        }
    }
    assert await a.put("/sendToDevice/m.test/tx1", msgs) == {}
    assert await a.put("/sendToDevice/m.test/tx1", msgs) == {}  # idempotent
    assert (
        await a.put(
            "/sendToDevice/m.test/tx2", {"messages": {b1.user_id: {b1.device_id: {"n": 2}}}}
        )
        == {}
    )
    r1 = await b1.sync(s1["next_batch"])
    assert [e["content"]["n"] for e in r1["to_device"]["events"]] == [1, 2]
    assert r1["to_device"]["events"][0]["sender"] == a.user_id
    # not acknowledged yet: the same since returns the same messages
    again = await b1.sync(s1["next_batch"])
    assert [e["content"]["n"] for e in again["to_device"]["events"]] == [1, 2]
    # acknowledged by syncing from the later token: deleted
    r1b = await b1.sync(r1["next_batch"])
    assert r1b["to_device"]["events"] == []
    from sqlalchemy import func, select

    from messaging.models import ToDevice

    async with client.app[K.DB].session() as s:
        left = (
            await s.execute(
                select(func.count()).where(
                    ToDevice.user_id == b1.user_id, ToDevice.device_id == b1.device_id
                )
            )
        ).scalar()
    assert left == 0
    r2 = await b2.sync(s2["next_batch"])
    assert [e["content"]["n"] for e in r2["to_device"]["events"]] == [1]
    await a.put("/sendToDevice/m.test/tx3", {"messages": "x"}, status=400)

    # bob's new device shows up in alice's device_lists.changed (they share a room)
    await b2.post(
        "/keys/upload",
        {
            "device_keys": {
                "user_id": b2.user_id,
                "device_id": b2.device_id,
                "algorithms": [],
                "keys": {},
                "signatures": {},
            }
        },
    )
    ra = await a.sync(sa["next_batch"])
    assert b1.user_id in ra["device_lists"]["changed"]
    ch = await a.get("/keys/changes", params={"from": sa["next_batch"], "to": ra["next_batch"]})
    assert ch["changed"] == [b1.user_id]
    # bob leaves: alice shares no room with him any more
    await b1.post(f"/rooms/{room}/leave")
    rl = await a.sync(ra["next_batch"])
    assert b1.user_id in rl["device_lists"]["left"]


async def test_malformed_bodies_never_500(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    room = await a.create_room()
    paths = [
        ("POST", "/createRoom"),
        ("POST", f"/rooms/{room}/invite"),
        ("PUT", f"/rooms/{room}/send/m.room.message/x1"),
        ("PUT", f"/rooms/{room}/state/m.room.name"),
        ("POST", "/keys/upload"),
        ("POST", "/keys/query"),
        ("POST", "/keys/claim"),
        ("PUT", "/sendToDevice/m.x/t"),
        ("POST", "/user_directory/search"),
        ("PUT", f"/rooms/{room}/typing/{a.user_id}"),
        ("POST", f"/rooms/{room}/read_markers"),
        ("POST", "/delete_devices"),
    ]
    for method, path in paths:
        for raw in (b"{not json", b"[]", b'"s"', b'{"invite": 5, "messages": 1, "device_keys": 1}'):
            r = await client.request(method, V3 + path, data=raw, headers=a.h)
            assert r.status < 500, (method, path, raw, r.status)
            body = await r.json()
            assert body.get("errcode", "ok") in (
                "ok",
                "M_NOT_JSON",
                "M_BAD_JSON",
                "M_INVALID_PARAM",
                "M_FORBIDDEN",
                "M_NOT_FOUND",
            ), (method, path, raw, body)


async def test_cached_tokens_in_use_are_rechecked_together_in_the_background(
    client: Client, create_user: Users, clock: FakeClock
) -> None:
    """Cached tokens used lately are re-checked together (one query) once TOKEN_REFRESH_S old,
    so they keep answering without a query past TOKEN_CACHE_S; a token revoked elsewhere
    (another worker) is then refused; an idle token is left to expire."""
    from sqlalchemy import delete, event

    from messaging.devices import TOKEN_CACHE_S, TOKEN_KEEP_S, TOKEN_REFRESH_S
    from messaging.models import AccessToken
    from messaging.web import HS

    devices = client.app[HS].devices
    ann, bob, cyd = [await login(client, await create_user(n)) for n in ("ann", "bob", "cyd")]
    for s in (ann, bob, cyd):  # checked, and cached
        assert (await s.get("/account/whoami"))["user_id"] == s.user_id
    await devices.stop()  # the rounds are run by hand below
    db = client.app[K.DB]
    async with db.transaction() as tx:  # as another process would: this one's cache not told
        await tx.execute(delete(AccessToken).where(AccessToken.user_id == bob.user_id))

    token_queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if "FROM matrix_access_tokens" in statement:
            token_queries.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        for s in (ann, bob, cyd):  # from the cache: no query
            assert (await s.get("/account/whoami"))["user_id"] == s.user_id
        assert token_queries == []
        await devices.stop()
        clock.advance(TOKEN_REFRESH_S)
        await devices.refresh_due()
        assert len(token_queries) == 1
        await devices.stop()
        # past TOKEN_CACHE_S since login, the re-checked entries still answer from memory
        clock.advance(TOKEN_CACHE_S - TOKEN_REFRESH_S + 1)
        for s in (ann, cyd):
            assert (await s.get("/account/whoami"))["user_id"] == s.user_id
        assert len(token_queries) == 1
        gone = await client.get(V3 + "/account/whoami", headers=bob.h)
        assert (await gone.json())["errcode"] == "M_UNKNOWN_TOKEN"
        await devices.stop()
        # ann stays in use, cyd goes quiet: only ann is re-checked
        for _ in range(int(TOKEN_KEEP_S / TOKEN_REFRESH_S) + 1):
            clock.advance(TOKEN_REFRESH_S)
            assert (await ann.get("/account/whoami"))["user_id"] == ann.user_id
            await devices.stop()
            await devices.refresh_due()
        n = len(token_queries)
        assert (await cyd.get("/account/whoami"))["user_id"] == cyd.user_id
        assert len(token_queries) == n + 1  # expired: checked on use
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
