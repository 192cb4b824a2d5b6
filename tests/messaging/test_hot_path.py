"""The send/sync hot path: woken syncs answered from the recent-events cache stay exact
(redactions, kicks, limited timelines), retried and racing sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import Client, Person
from tests.messaging.mx import V3, login

Users = Callable[..., Awaitable[Person]]


def timeline(sync: Any, room: str) -> list[dict[str, Any]]:
    entry = sync["rooms"]["join"].get(room)
    return list(entry["timeline"]["events"]) if entry else []


async def test_sync_from_memory_follows_redactions_and_kicks(
    client: Client, create_user: Users
) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    room = await a.create_room(invite=[b.user_id])
    await b.post(f"/join/{room}")
    s0 = await b.sync()
    m1 = await a.send(room, "first", "t1")
    m2 = await a.send(room, "second", "t2")
    got = await b.sync(s0["next_batch"])
    assert [e["event_id"] for e in timeline(got, room)] == [m1, m2]
    assert [e["content"]["body"] for e in timeline(got, room)] == ["first", "second"]
    # the sender's own device sees its transaction ids, others do not
    own = await a.sync(s0["next_batch"])
    assert [e["unsigned"].get("transaction_id") for e in timeline(own, room)] == ["t1", "t2"]
    assert all("transaction_id" not in e["unsigned"] for e in timeline(got, room))

    # a limited timeline from memory: the newest event and a gap token
    one = await b.sync(s0["next_batch"], filter=json.dumps({"room": {"timeline": {"limit": 1}}}))
    entry = one["rooms"]["join"][room]["timeline"]
    assert [e["event_id"] for e in entry["events"]] == [m2]
    assert entry["limited"] is True
    back = await b.get(
        f"/rooms/{room}/messages", params={"from": entry["prev_batch"], "limit": "1"}
    )
    assert [e["event_id"] for e in back["chunk"]] == [m1]

    # a redaction: a sync from before it shows the redacted content, never the old text
    red = (await a.put(f"/rooms/{room}/redact/{m1}/r1", {}))["event_id"]
    again = await b.sync(s0["next_batch"])
    by_id = {e["event_id"]: e for e in timeline(again, room)}
    assert by_id[m1]["content"] == {}
    assert by_id[red]["redacts"] == m1
    after = await b.sync(got["next_batch"])
    assert [e["event_id"] for e in timeline(after, room)] == [red]

    # a kick: bob's next sync has the room under "leave", and nothing sent after it
    s1 = after["next_batch"]
    await a.post(f"/rooms/{room}/kick", {"user_id": b.user_id})
    m3 = await a.send(room, "after the kick", "t3")
    left = await b.sync(s1)
    assert room not in left["rooms"]["join"]
    ids = [e["event_id"] for e in left["rooms"]["leave"][room]["timeline"]["events"]]
    assert m3 not in ids
    assert left["rooms"]["leave"][room]["timeline"]["events"][-1]["type"] == "m.room.member"
    await b.put(f"/rooms/{room}/send/m.room.message/t9", {"body": "x"}, status=403)


async def test_concurrent_retries_of_one_transaction_store_once(
    client: Client, create_user: Users
) -> None:
    a = await login(client, await create_user("alice"))
    room = await a.create_room()
    ids = await asyncio.gather(*(a.send(room, "once", "same-txn") for _ in range(5)))
    assert len(set(ids)) == 1
    page = await a.get(f"/rooms/{room}/messages", params={"limit": "50"})
    bodies = [e["content"].get("body") for e in page["chunk"]]
    assert bodies.count("once") == 1


async def test_send_racing_a_kick_never_lands_after_it(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    room = await a.create_room(invite=[b.user_id])
    await b.post(f"/join/{room}")
    await b.send(room, "warm the room's send cache", "t0")

    async def send() -> int:
        resp = await client.put(
            f"{V3}/rooms/{room}/send/m.room.message/t1",
            json={"msgtype": "m.text", "body": "racing"},
            headers=b.h,
        )
        return resp.status

    status, _ = await asyncio.gather(send(), a.post(f"/rooms/{room}/kick", {"user_id": b.user_id}))
    page = await a.get(f"/rooms/{room}/messages", params={"dir": "f", "limit": "50"})
    kinds = [
        "kick"
        if e["type"] == "m.room.member"
        and e.get("state_key") == b.user_id
        and e["content"]["membership"] == "leave"
        else e["content"].get("body")
        for e in page["chunk"]
    ]
    if status == 200:
        assert kinds.index("racing") < kinds.index("kick")
    else:
        assert status == 403
        assert "racing" not in kinds
