"""Server-side key backups over HTTP, as logged-in clients: versions, keys of two rooms, the
spec's replacement rule, etag and count, the wrong version, other users, bad requests."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import nacl.public
import pytest
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from messaging.web import HS
from tests.conftest import Client, Person
from tests.messaging.mx import Mx, login

Users = Callable[..., Awaitable[Person]]
JsonDict = dict[str, Any]
ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM1, ROOM2 = "!one:localhost", "!two:localhost"
# a Megolm session id is unpadded standard base64: it may hold "/" and "+"
ODD_SESSION = "ab/cd+ef"


def auth_data(user_id: str) -> JsonDict:
    public = bytes(nacl.public.PrivateKey.generate().public_key)
    key = base64.b64encode(public).decode().rstrip("=")
    return {"public_key": key, "signatures": {user_id: {"ed25519:DEVICE": "c2lnbmF0dXJl"}}}


def key(first: int, forwarded: int, verified: bool, tag: str) -> JsonDict:
    return {
        "first_message_index": first,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ephemeral": f"eph-{tag}", "ciphertext": f"secret-{tag}", "mac": "m"},
    }


async def create(mx: Mx, data: JsonDict | None = None) -> str:
    body = {"algorithm": ALG, "auth_data": data or auth_data(mx.user_id)}
    return str((await mx.post("/room_keys/version", body))["version"])


async def refused(call: Awaitable[Any], errcode: str) -> JsonDict:
    answer: JsonDict = await call
    assert answer["errcode"] == errcode, answer
    return answer


async def test_backup_versions_and_keys(
    client: Client, create_user: Users, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await login(client, await create_user("alice"))
    await refused(a.get("/room_keys/version", status=404), "M_NOT_FOUND")

    first_auth = auth_data(a.user_id)
    v1 = await create(a, first_auth)
    info = await a.get("/room_keys/version")
    assert info == {
        "algorithm": ALG,
        "auth_data": first_auth,
        "count": 0,
        "etag": info["etag"],
        "version": v1,
    }
    assert await a.get(f"/room_keys/version/{v1}") == info
    keys = f"/room_keys/keys?version={v1}"

    # keys of two rooms
    up = await a.put(
        keys,
        {
            "rooms": {
                ROOM1: {"sessions": {"s1": key(5, 0, False, "a"), "s2": key(0, 0, False, "b")}},
                ROOM2: {"sessions": {"s3": key(0, 1, True, "c")}},
            }
        },
    )
    assert up["count"] == 3 and up["etag"] != info["etag"]
    etag = up["etag"]
    assert (await a.get(f"/room_keys/version/{v1}"))["count"] == 3
    everything = await a.get(keys)
    assert everything == {
        "rooms": {
            ROOM1: {"sessions": {"s1": key(5, 0, False, "a"), "s2": key(0, 0, False, "b")}},
            ROOM2: {"sessions": {"s3": key(0, 1, True, "c")}},
        }
    }
    room1 = f"/room_keys/keys/{quote(ROOM1)}"
    assert await a.get(f"{room1}?version={v1}") == everything["rooms"][ROOM1]
    assert await a.get(f"{room1}/s2?version={v1}") == key(0, 0, False, "b")
    # one session through its own path, with "/" and "+" in its id
    odd = f"{room1}/{quote(ODD_SESSION, safe='')}?version={v1}"
    up = await a.put(odd, key(2, 0, False, "odd"))
    assert up["count"] == 4 and up["etag"] != etag
    etag = up["etag"]
    assert await a.get(odd) == key(2, 0, False, "odd")
    assert ODD_SESSION in (await a.get(f"{room1}?version={v1}"))["sessions"]
    # one room's sessions through the room's path
    up = await a.put(f"/room_keys/keys/{quote(ROOM2)}?version={v1}", {"sessions": {}})
    assert up == {"count": 4, "etag": etag}

    # the spec's rule: is_verified, then the lower first_message_index, then the lower
    # forwarded_count; a key that is not better leaves the stored one and the etag alone
    s1 = f"{room1}/s1?version={v1}"
    s3 = f"/room_keys/keys/{quote(ROOM2)}/s3?version={v1}"
    steps: list[tuple[str, JsonDict, JsonDict]] = [
        (s1, key(6, 0, False, "worse index"), key(5, 0, False, "a")),
        (s1, key(5, 0, False, "equal"), key(5, 0, False, "a")),
        (s1, key(3, 4, False, "better index"), key(3, 4, False, "better index")),
        (s1, key(10, 9, True, "verified"), key(10, 9, True, "verified")),
        (s1, key(0, 0, False, "unverified"), key(10, 9, True, "verified")),
        (s3, key(0, 2, True, "more forwarded"), key(0, 1, True, "c")),
        (s3, key(0, 0, True, "less forwarded"), key(0, 0, True, "less forwarded")),
    ]
    for path, upload, kept in steps:
        before = await a.get(path)
        up = await a.put(path, upload)
        assert await a.get(path) == kept, upload
        assert up["count"] == 4
        assert (up["etag"] != etag) == (kept != before), upload
        etag = up["etag"]
    # the same in a batch: only the better key of the two is taken
    up = await a.put(
        keys,
        {
            "rooms": {
                ROOM1: {"sessions": {"s1": key(0, 0, True, "best"), "s2": key(1, 0, False, "x")}}
            }
        },
    )
    assert up["count"] == 4 and up["etag"] != etag
    assert await a.get(s1) == key(0, 0, True, "best")
    assert await a.get(f"{room1}/s2?version={v1}") == key(0, 0, False, "b")

    # missing: a session is 404, a room is an empty object, as the spec says
    await refused(a.get(f"{room1}/nope?version={v1}", status=404), "M_NOT_FOUND")
    assert await a.get(f"/room_keys/keys/{quote('!none:localhost')}?version={v1}") == {
        "sessions": {}
    }

    # a new version becomes the current one: uploads to the old one are refused
    second_auth = auth_data(a.user_id)
    v2 = await create(a, second_auth)
    assert v2 != v1
    assert (await a.get("/room_keys/version"))["version"] == v2
    wrong = await refused(
        a.put(keys, {"rooms": {ROOM1: {"sessions": {"s9": key(0, 0, False, "z")}}}}, status=403),
        "M_WRONG_ROOM_KEYS_VERSION",
    )
    assert wrong["current_version"] == v2
    assert (await a.get(f"/room_keys/version/{v1}"))["count"] == 4  # still readable
    assert await a.get(f"/room_keys/keys?version={v2}") == {"rooms": {}}

    # auth_data can change, nothing else
    new_auth = auth_data(a.user_id)
    body = {"algorithm": ALG, "auth_data": new_auth, "version": v2}
    assert await a.put(f"/room_keys/version/{v2}", body) == {}
    assert (await a.get(f"/room_keys/version/{v2}"))["auth_data"] == new_auth
    await refused(
        a.put(f"/room_keys/version/{v2}", {**body, "version": v1}, status=400), "M_INVALID_PARAM"
    )
    await refused(
        a.put(f"/room_keys/version/{v2}", {**body, "algorithm": "m.other"}, status=400),
        "M_INVALID_PARAM",
    )
    await refused(
        a.put("/room_keys/version/99", {"algorithm": ALG, "auth_data": new_auth}, status=404),
        "M_NOT_FOUND",
    )

    # deleting keys: one session, one room, all; deleting nothing changes nothing
    etag = (await a.get(f"/room_keys/version/{v1}"))["etag"]
    gone = await a.call("DELETE", s1)
    assert gone["count"] == 3 and gone["etag"] != etag
    again = await a.call("DELETE", s1)
    assert again == gone
    await refused(a.get(s1, status=404), "M_NOT_FOUND")
    gone = await a.call("DELETE", f"{room1}?version={v1}")
    assert gone["count"] == 1
    assert list((await a.get(keys))["rooms"]) == [ROOM2]
    gone = await a.call("DELETE", keys)
    assert gone["count"] == 0
    assert await a.get(keys) == {"rooms": {}}

    # deleting a version deletes its keys; twice is fine; its number is not reused
    await a.put(
        f"/room_keys/keys?version={v2}",
        {"rooms": {ROOM1: {"sessions": {"s1": key(0, 0, False, "v2")}}}},
    )
    assert await a.call("DELETE", f"/room_keys/version/{v2}") == {}
    assert await a.call("DELETE", f"/room_keys/version/{v2}") == {}
    await refused(a.get(f"/room_keys/version/{v2}", status=404), "M_NOT_FOUND")
    await refused(a.get(f"/room_keys/keys?version={v2}", status=404), "M_NOT_FOUND")
    await refused(a.call("DELETE", "/room_keys/version/99", status=404), "M_NOT_FOUND")
    assert (await a.get("/room_keys/version"))["version"] == v1  # the newest left
    v3 = await create(a)
    assert int(v3) > int(v2)
    assert await a.call("DELETE", f"/room_keys/version/{v1}") == {}
    assert await a.call("DELETE", f"/room_keys/version/{v3}") == {}
    await refused(a.get("/room_keys/version", status=404), "M_NOT_FOUND")

    # the encrypted key data was neither logged nor audited; the versions' changes were
    assert "secret-" not in caplog.text
    app = client.app
    assert app is not None
    async with app[K.DB].session() as s:
        actions = (
            (await s.execute(select(AuditEvent.action).where(AuditEvent.action.like("%backup%"))))
            .scalars()
            .all()
        )
        details = (await s.execute(select(AuditEvent.details))).scalars().all()
    assert actions.count("matrix.key_backup.create") == 3
    assert actions.count("matrix.key_backup.delete") == 3
    assert "matrix.key_backup.update" in actions
    assert not any("secret-" in str(d) for d in details)


async def test_backups_are_per_user(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    v = await create(a)
    keys = f"/room_keys/keys?version={v}"
    await a.put(keys, {"rooms": {ROOM1: {"sessions": {"s1": key(0, 0, True, "a")}}}})
    # bob has no backup: he sees none of alice's, cannot write, change or delete them
    await refused(b.get("/room_keys/version", status=404), "M_NOT_FOUND")
    await refused(b.get(f"/room_keys/version/{v}", status=404), "M_NOT_FOUND")
    await refused(b.get(keys, status=404), "M_NOT_FOUND")
    await refused(
        b.get(f"/room_keys/keys/{quote(ROOM1)}/s1?version={v}", status=404), "M_NOT_FOUND"
    )
    await refused(
        b.put(keys, {"rooms": {ROOM1: {"sessions": {"s1": key(0, 0, True, "b")}}}}, status=404),
        "M_NOT_FOUND",
    )
    await refused(b.call("DELETE", keys, status=404), "M_NOT_FOUND")
    body = {"algorithm": ALG, "auth_data": auth_data(b.user_id)}
    await refused(b.put(f"/room_keys/version/{v}", body, status=404), "M_NOT_FOUND")
    await refused(b.call("DELETE", f"/room_keys/version/{v}", status=404), "M_NOT_FOUND")
    # bob's own backup has the same number and nothing in it
    vb = await create(b)
    assert vb == v
    assert await b.get(f"/room_keys/keys?version={vb}") == {"rooms": {}}
    await b.put(f"/room_keys/keys?version={vb}", {"rooms": {ROOM2: {"sessions": {}}}})
    assert await a.get(keys) == {"rooms": {ROOM1: {"sessions": {"s1": key(0, 0, True, "a")}}}}
    # per user, not per device: another device of alice's reads it; deleting a device keeps it
    a2 = await login(client, a.person)
    assert await a2.get(keys) == await a.get(keys)
    await a2.post("/logout")
    assert (await a.get("/room_keys/version"))["count"] == 1
    # no token, no backup
    resp = await client.get(f"/_matrix/client/v3/room_keys/keys?version={v}")
    assert resp.status == 401


async def test_concurrent_uploads_keep_count_and_etag(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    v = await create(a)
    keys = f"/room_keys/keys?version={v}"
    answers = await asyncio.gather(
        *(
            a.put(keys, {"rooms": {ROOM1: {"sessions": {f"s{i}": key(0, 0, False, str(i))}}}})
            for i in range(6)
        )
    )
    assert sorted(x["count"] for x in answers) == [1, 2, 3, 4, 5, 6]
    assert len({x["etag"] for x in answers}) == 6
    info = await a.get("/room_keys/version")
    assert info["count"] == 6 == len((await a.get(keys))["rooms"][ROOM1]["sessions"])


async def test_bad_backup_requests(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    good = auth_data(a.user_id)

    async def bad_version(body: JsonDict, errcode: str) -> None:
        await refused(a.post("/room_keys/version", body, status=400), errcode)

    await bad_version({"algorithm": "m.megolm_backup.v2", "auth_data": good}, "M_INVALID_PARAM")
    await bad_version({"auth_data": good}, "M_BAD_JSON")
    await bad_version({"algorithm": ALG}, "M_BAD_JSON")
    await bad_version({"algorithm": ALG, "auth_data": []}, "M_BAD_JSON")
    await bad_version({"algorithm": ALG, "auth_data": {}}, "M_BAD_JSON")
    await bad_version(
        {"algorithm": ALG, "auth_data": {"public_key": "not base64!"}}, "M_INVALID_PARAM"
    )
    await bad_version({"algorithm": ALG, "auth_data": {"public_key": "AAAA"}}, "M_INVALID_PARAM")
    await bad_version({"algorithm": ALG, "auth_data": {**good, "signatures": "x"}}, "M_BAD_JSON")
    huge = {**good, "extra": "x" * 20_000}
    await refused(
        a.post("/room_keys/version", {"algorithm": ALG, "auth_data": huge}, status=413),
        "M_TOO_LARGE",
    )
    resp = await client.post("/_matrix/client/v3/room_keys/version", data=b"{nope", headers=a.h)
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"
    await refused(a.get("/room_keys/version/abc", status=404), "M_NOT_FOUND")

    v = await create(a)
    keys = f"/room_keys/keys?version={v}"
    await a.put(keys, {"rooms": {ROOM1: {"sessions": {"s1": key(0, 0, False, "a")}}}})

    async def bad_keys(body: Any, errcode: str, status: int = 400, path: str = keys) -> None:
        await refused(a.put(path, body, status=status), errcode)

    def one(k: Any, room: str = ROOM1, session: str = "s2") -> JsonDict:
        return {"rooms": {room: {"sessions": {session: k}}}}

    await refused(
        a.put("/room_keys/keys", one(key(0, 0, False, "b")), status=400), "M_MISSING_PARAM"
    )
    await refused(a.get("/room_keys/keys", status=400), "M_MISSING_PARAM")
    await bad_keys({"rooms": []}, "M_BAD_JSON")
    await bad_keys({}, "M_BAD_JSON")
    await bad_keys({"rooms": {ROOM1: {}}}, "M_BAD_JSON")
    await bad_keys(one("key"), "M_BAD_JSON")
    await bad_keys(
        one({k: v for k, v in key(0, 0, False, "b").items() if k != "session_data"}), "M_BAD_JSON"
    )
    await bad_keys(one({**key(0, 0, False, "b"), "first_message_index": "1"}), "M_BAD_JSON")
    await bad_keys(one({**key(0, 0, False, "b"), "forwarded_count": True}), "M_BAD_JSON")
    await bad_keys(one({**key(0, 0, False, "b"), "is_verified": 1}), "M_BAD_JSON")
    await bad_keys(one({**key(0, 0, False, "b"), "first_message_index": -1}), "M_INVALID_PARAM")
    await bad_keys(one(key(0, 0, False, "b"), room="not-a-room"), "M_INVALID_PARAM")
    await bad_keys(one(key(0, 0, False, "b"), session="s" * 300), "M_INVALID_PARAM")
    big = {**key(0, 0, False, "b"), "session_data": {"ciphertext": "x" * 20_000}}
    await bad_keys(one(big), "M_TOO_LARGE", status=413)
    # a refused batch stores nothing of it, not even its good keys
    mixed = {
        "rooms": {
            ROOM1: {"sessions": {"s3": key(0, 0, False, "ok")}},
            ROOM2: {"sessions": {"s4": {"first_message_index": 0}}},
        }
    }
    await bad_keys(mixed, "M_BAD_JSON")
    await bad_keys(one(key(0, 0, False, "b")), "M_NOT_FOUND", 404, "/room_keys/keys?version=99")
    assert (await a.get("/room_keys/version"))["count"] == 1


async def test_key_quota(client: Client, create_user: Users) -> None:
    """One user cannot fill the disk: keys beyond the quota, all versions together, are
    refused whole; so are versions beyond the number allowed."""
    app = client.app
    assert app is not None
    backups = app[HS].key_backup
    backups.max_keys_per_user, backups.max_live_versions = 3, 2
    a = await login(client, await create_user("alice"))
    v1 = await create(a)
    sessions = {f"s{i}": key(0, 0, False, str(i)) for i in range(2)}
    await a.put(f"/room_keys/keys?version={v1}", {"rooms": {ROOM1: {"sessions": sessions}}})
    v2 = await create(a)
    await refused(
        a.post(
            "/room_keys/version", {"algorithm": ALG, "auth_data": auth_data(a.user_id)}, status=403
        ),
        "M_FORBIDDEN",
    )
    full = await refused(
        a.put(
            f"/room_keys/keys?version={v2}", {"rooms": {ROOM1: {"sessions": sessions}}}, status=413
        ),
        "M_TOO_LARGE",
    )
    assert "full" in full["error"]
    assert (await a.get(f"/room_keys/version/{v2}"))["count"] == 0
    # up to the quota passes, and so does replacing a key at the quota (it adds nothing)
    await a.put(
        f"/room_keys/keys?version={v2}", {"rooms": {ROOM1: {"sessions": {"s0": sessions["s0"]}}}}
    )
    await a.put(
        f"/room_keys/keys?version={v2}",
        {"rooms": {ROOM1: {"sessions": {"s0": key(0, 0, True, "v")}}}},
    )
    assert await a.call("DELETE", f"/room_keys/version/{v1}") == {}
    await a.put(f"/room_keys/keys?version={v2}", {"rooms": {ROOM1: {"sessions": sessions}}})
    assert (await a.get(f"/room_keys/version/{v2}"))["count"] == 2
