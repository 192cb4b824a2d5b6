"""Redaction, typing, receipts, read markers, account data."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.conftest import Client, Person
from tests.messaging.mx import login

Users = Callable[..., Awaitable[Person]]


async def test_redaction_and_power(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    room = await a.create_room(invite=[b.user_id])
    await b.post(f"/join/{room}")
    mine = await b.send(room, "bob's typo", "t1")
    theirs = await a.send(room, "alice's note", "t2")
    await b.put(f"/rooms/{room}/redact/{theirs}/r1", {}, status=403)  # bob: power 0 < 50
    red = await b.put(f"/rooms/{room}/redact/{mine}/r2", {"reason": "typo"})
    assert red["event_id"].startswith("$")
    await a.put(f"/rooms/{room}/redact/{theirs}/r3", {})
    await a.put(f"/rooms/{room}/redact/$nope/r4", {}, status=404)
    page = await a.get(f"/rooms/{room}/messages", params={"limit": "10"})
    by_id = {e["event_id"]: e for e in page["chunk"]}
    assert by_id[mine]["content"] == {}
    assert by_id[mine]["unsigned"]["redacted_because"]["sender"] == b.user_id
    assert by_id[theirs]["content"] == {}
    assert by_id[red["event_id"]]["redacts"] == mine


async def test_typing_receipts_markers_account_data(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    room = await a.create_room(invite=[b.user_id])
    await b.post(f"/join/{room}")
    ev = await a.send(room, "hello", "t1")
    s0 = await b.sync()

    await a.put(f"/rooms/{room}/typing/{a.user_id}", {"typing": True, "timeout": 30000})
    await a.put(f"/rooms/{room}/typing/{b.user_id}", {"typing": True}, status=403)
    s1 = await b.sync(s0["next_batch"])
    eph = s1["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [a.user_id]}} in eph

    await b.post(f"/rooms/{room}/receipt/m.read/{ev}", {})
    await b.post(f"/rooms/{room}/read_markers", {"m.fully_read": ev, "m.read": ev})
    await b.post(f"/rooms/{room}/receipt/m.bogus/{ev}", {}, status=400)
    sa = await a.sync()
    receipts = [
        e for e in sa["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.receipt"
    ]
    assert receipts[0]["content"][ev]["m.read"][b.user_id]["ts"] > 0

    # account data, global and per room, round trip and arrive by sync
    await b.put(f"/user/{b.user_id}/account_data/m.direct", {a.user_id: [room]})
    await b.put(f"/user/{b.user_id}/rooms/{room}/account_data/m.tag", {"tags": {"u.work": {}}})
    assert (await b.get(f"/user/{b.user_id}/account_data/m.direct")) == {a.user_id: [room]}
    got = await b.get(f"/user/{b.user_id}/rooms/{room}/account_data/m.tag")
    assert got == {"tags": {"u.work": {}}}
    await b.get(f"/user/{b.user_id}/account_data/m.none", status=404)
    await a.get(f"/user/{b.user_id}/account_data/m.direct", status=403)
    s2 = await b.sync(s1["next_batch"])
    assert {"type": "m.direct", "content": {a.user_id: [room]}} in s2["account_data"]["events"]
    room_data = s2["rooms"]["join"][room]["account_data"]["events"]
    assert {"type": "m.fully_read", "content": {"event_id": ev}} in room_data
    assert {"type": "m.tag", "content": {"tags": {"u.work": {}}}} in room_data
