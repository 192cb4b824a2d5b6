"""User-interactive authentication: sessions handed out, tied to a user and a request, spent
once the request succeeded, expiring, bounded; wrong passwords answered within the session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
)
from sqlalchemy import func, select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.clock import FakeClock
from messaging.uia import UIA_SESSION_S, UiaSessions, operation_key
from tests.conftest import Client, Person
from tests.messaging.mx import Mx, login

Users = Callable[..., Awaitable[Person]]
JsonDict = dict[str, Any]
FLOWS = [{"stages": ["m.login.password"]}]


def password(mx: Mx, session: str | None, secret: str | None = None) -> JsonDict:
    auth: JsonDict = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": mx.person.username},
        "password": secret or mx.person.password,
    }
    if session is not None:
        auth["session"] = session
    return auth


async def device_ids(mx: Mx) -> set[str]:
    return {d["device_id"] for d in (await mx.get("/devices"))["devices"]}


async def test_full_flow_with_a_wrong_password_first(client: Client, create_user: Users) -> None:
    alice = await create_user("alice")
    a1, a2 = await login(client, alice), await login(client, alice)
    path = f"/devices/{a2.device_id}"

    first = await a1.call("DELETE", path, {}, status=401)
    assert first["flows"] == FLOWS and first["params"] == {} and first["completed"] == []
    assert "errcode" not in first
    sid = first["session"]
    assert isinstance(sid, str) and len(sid) >= 22  # random, unguessable

    wrong = await a1.call("DELETE", path, {"auth": password(a1, sid, "not-it-123")}, status=401)
    assert wrong["errcode"] == "M_FORBIDDEN" and wrong["error"]
    assert wrong["flows"] == FLOWS and wrong["params"] == {}
    assert wrong["session"] == sid and wrong["completed"] == []
    assert await device_ids(a1) == {a1.device_id, a2.device_id}

    # an answer with the session only says where it stands (no stage completed yet)
    status = await a1.call("DELETE", path, {"auth": {"session": sid}}, status=401)
    assert status["session"] == sid and status["completed"] == [] and "errcode" not in status
    other = await a1.call(
        "DELETE", path, {"auth": {"type": "m.login.foo", "session": sid}}, status=401
    )
    assert other["errcode"] == "M_UNRECOGNIZED" and other["session"] == sid

    assert await a1.call("DELETE", path, {"auth": password(a1, sid)}) == {}
    assert await device_ids(a1) == {a1.device_id}

    # the failed try is audited like a failed login, and so is the right one
    async with client.app[K.DB].session() as s:
        rows = (
            await s.execute(
                select(AuditEvent.outcome).where(
                    AuditEvent.action == "login", AuditEvent.actor == alice.account_id
                )
            )
        ).scalars()
        outcomes = list(rows)
    assert outcomes.count("failure") == 1 and outcomes.count("success") == 3


async def test_a_session_is_spent_once_the_operation_succeeded(
    client: Client, create_user: Users
) -> None:
    alice = await create_user("alice")
    a1, a2, a3 = [await login(client, alice) for _ in range(3)]
    sid = (await a1.post("/delete_devices", {"devices": [a2.device_id]}, status=401))["session"]
    body = {"devices": [a2.device_id], "auth": password(a1, sid)}
    assert await a1.post("/delete_devices", body) == {}
    # the same request again, or another one, with the spent session: asked again
    for again in (body, {"devices": [a3.device_id], "auth": password(a1, sid)}):
        refused = await a1.post("/delete_devices", again, status=401)
        assert refused["errcode"] == "M_UNKNOWN" and refused["flows"] == FLOWS
        assert refused["session"] != sid and refused["completed"] == []
    assert await device_ids(a1) == {a1.device_id, a3.device_id}


async def test_forged_and_foreign_sessions_are_refused(client: Client, create_user: Users) -> None:
    alice, bob = await create_user("alice"), await create_user("bob")
    a1, a2 = await login(client, alice), await login(client, alice)
    b1, b2 = await login(client, bob), await login(client, bob)
    path = f"/devices/{a2.device_id}"

    # a session the server never issued, even with the right password
    for forged in ("made-up", "", 42, None):
        auth = password(a1, None)
        auth["session"] = forged
        if forged is None:
            continue  # no session at all is another case (below)
        refused = await a1.call("DELETE", path, {"auth": auth}, status=401)
        assert refused["errcode"] == "M_UNKNOWN" and refused["flows"] == FLOWS
        assert refused["session"] not in ("made-up", "", 42)

    # bob's session, for bob's own device deletion, used by alice with her password
    bobs = (await b1.call("DELETE", f"/devices/{b2.device_id}", {}, status=401))["session"]
    refused = await a1.call("DELETE", path, {"auth": password(a1, bobs)}, status=401)
    assert refused["errcode"] == "M_UNKNOWN" and refused["session"] != bobs
    # ... and it still works for bob, who completes it
    assert await b1.call("DELETE", f"/devices/{b2.device_id}", {"auth": password(b1, bobs)}) == {}

    # alice's session for device 2 does not delete device 1, nor another request
    mine = (await a1.call("DELETE", path, {}, status=401))["session"]
    other_device = f"/devices/{a1.device_id}"
    await a2.call("DELETE", other_device, {"auth": password(a2, mine)}, status=401)
    body = {"devices": [a1.device_id], "auth": password(a1, mine)}
    await a1.post("/delete_devices", body, status=401)
    assert await device_ids(a1) == {a1.device_id, a2.device_id}
    # nor does someone else's password complete alice's session
    by_bob = password(a1, mine)
    by_bob["identifier"]["user"], by_bob["password"] = "bob", bob.password
    async with client.app[K.DB].session() as s:
        bob_logins = select(func.count()).where(
            AuditEvent.action == "login", AuditEvent.actor == bob.account_id
        )
        before = (await s.execute(bob_logins)).scalar_one()
    wrong_user = await a1.call("DELETE", path, {"auth": by_bob}, status=401)
    assert wrong_user["errcode"] == "M_FORBIDDEN" and wrong_user["session"] == mine
    assert await device_ids(a1) == {a1.device_id, a2.device_id}
    async with client.app[K.DB].session() as s:  # bob's password was never checked for alice
        assert (await s.execute(bob_logins)).scalar_one() == before

    # an answer without a session (no first round trip) gets a session of its own
    assert await a1.call("DELETE", path, {"auth": password(a1, None)}) == {}
    assert await device_ids(a1) == {a1.device_id}
    # a malformed auth is a plain 400
    bad = await a1.post("/delete_devices", {"devices": [], "auth": "x"}, status=400)
    assert bad["errcode"] == "M_BAD_JSON"


async def test_a_session_expires(client: Client, create_user: Users, clock: FakeClock) -> None:
    alice = await create_user("alice")
    a1, a2 = await login(client, alice), await login(client, alice)
    path = f"/devices/{a2.device_id}"
    sid = (await a1.call("DELETE", path, {}, status=401))["session"]
    clock.advance(UIA_SESSION_S - 1)
    wrong = await a1.call("DELETE", path, {"auth": password(a1, sid, "not-it-123")}, status=401)
    assert wrong["session"] == sid  # still alive
    clock.advance(2)
    expired = await a1.call("DELETE", path, {"auth": password(a1, sid)}, status=401)
    assert expired["errcode"] == "M_UNKNOWN" and expired["session"] != sid
    assert await device_ids(a1) == {a1.device_id, a2.device_id}
    fresh = expired["session"]
    assert await a1.call("DELETE", path, {"auth": password(a1, fresh)}) == {}


async def test_wrong_passwords_lock_the_account_like_logins(
    client: Client, create_user: Users
) -> None:
    alice = await create_user("alice")
    a1, a2 = await login(client, alice), await login(client, alice)
    path = f"/devices/{a2.device_id}"
    sid = (await a1.call("DELETE", path, {}, status=401))["session"]
    threshold = client.app[K.CONFIG].auth.lockout_threshold
    for _ in range(threshold):
        wrong = await a1.call("DELETE", path, {"auth": password(a1, sid, "guess-123")}, status=401)
        assert wrong["errcode"] == "M_FORBIDDEN"
    # locked: even the right password waits, as at login
    locked = await a1.call("DELETE", path, {"auth": password(a1, sid)}, status=429)
    assert locked["errcode"] == "M_LIMIT_EXCEEDED" and locked["retry_after_ms"] > 0
    assert await device_ids(a1) == {a1.device_id, a2.device_id}


def test_sessions_are_bounded_and_tied_to_their_operation() -> None:
    clock = FakeClock()
    uia = UiaSessions(clock, ttl_s=60, max_sessions=5, max_per_user=3)
    op = operation_key("delete_devices", {"devices": ["A"], "auth": {"password": "x"}})
    # ``auth`` is not part of the operation; the body is
    assert op == operation_key("delete_devices", {"devices": ["A"]})
    assert op != operation_key("delete_devices", {"devices": ["B"]})
    assert op != operation_key("keys/device_signing/upload", {"devices": ["A"]})

    alice = [uia.open("@alice:x", op) for _ in range(4)]
    assert len(uia) == 3  # per user: the oldest went
    assert uia.get(alice[0], "@alice:x", op) is None
    assert uia.get(alice[3], "@alice:x", op) == []
    assert uia.get(alice[3], "@bob:x", op) is None
    assert uia.get(alice[3], "@alice:x", "other") is None
    others = [uia.open(f"@u{i}:x", op) for i in range(10)]
    assert len(uia) == 5  # in all: the oldest went
    assert uia.get(others[-1], "@u9:x", op) == []
    uia.complete(others[-1], "m.login.password")
    assert uia.get(others[-1], "@u9:x", op) == ["m.login.password"]
    uia.finish(others[-1])
    assert uia.get(others[-1], "@u9:x", op) is None
    clock.advance(61)
    uia.open(None, op)
    assert len(uia) == 1  # the expired ones were dropped


async def test_nio_delete_devices_with_auth(client: Client, create_user: Users) -> None:
    alice = await create_user("alice")
    other = await login(client, alice)
    base = str(client.make_url("")).rstrip("/")
    c = AsyncClient(
        base,
        f"@alice:{client.app[K.CONFIG].server_name}",
        config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False),
    )
    try:
        await c.login(alice.password)
        first = await c.delete_devices([other.device_id])
        assert isinstance(first, DeleteDevicesAuthResponse), first
        assert first.flows == FLOWS and first.session
        # a wrong password: nio reads the answer as a challenge in the same session
        wrong = await c.delete_devices([other.device_id], password(other, first.session, "no-123"))
        assert isinstance(wrong, DeleteDevicesAuthResponse), wrong
        assert wrong.session == first.session
        auth = password(other, first.session)
        done = await c.delete_devices([other.device_id], auth=auth)
        assert isinstance(done, DeleteDevicesResponse), done
        await other.get("/account/whoami", status=401)
    finally:
        await c.close()
