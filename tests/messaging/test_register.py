"""`POST /register`: off by default; when enabled it creates external (guest) accounts only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from nio import AsyncClient, RegisterResponse, RoomCreateError
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import SYSTEM
from konsil.config import MatrixConfig
from konsil.identity.models import Account
from konsil.identity.service import NewAccount, PractitionerUpdate
from tests.conftest import AiohttpClient, Client, Person, web_login
from tests.messaging.mx import V3, Mx, login

PASSWORD = "a-long-enough-passphrase"


@pytest.fixture
async def open_client(
    aiohttp_client: AiohttpClient, make_app: Callable[..., web.Application]
) -> Client:
    return await aiohttp_client(make_app(matrix=MatrixConfig(registration_enabled=True)))


async def _register(client: Client, body: dict[str, Any], status: int, **query: str) -> Any:
    resp = await client.post(V3 + "/register", json=body, params=query)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _account(client: Client, username: str) -> Account:
    async with client.app[K.DB].session() as s:
        found = await s.execute(select(Account).where(Account.username == username))
        return found.scalar_one()


async def test_registration_is_off_by_default(client: Client) -> None:
    err = await _register(client, {"username": "mallory", "password": PASSWORD}, 403)
    assert err["errcode"] == "M_FORBIDDEN"
    resp = await client.get(V3 + "/register/available", params={"username": "alice"})
    assert resp.status == 403  # closed: nobody learns which names exist
    async with client.app[K.DB].session() as s:
        assert (await s.execute(select(Account))).first() is None


async def test_bad_registrations_are_refused_before_anything_is_written(
    open_client: Client,
) -> None:
    c = open_client
    await c.app[K.IDENTITY].do_create_account(
        SYSTEM, NewAccount(username="alice", password=PASSWORD, role="practitioner")
    )
    dummy = {"type": "m.login.dummy"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"username": "Alice!", "password": PASSWORD, "auth": dummy}, "M_INVALID_USERNAME"),
        ({"username": "@bob:elsewhere", "password": PASSWORD, "auth": dummy}, "M_INVALID_USERNAME"),
        ({"username": "bob", "password": "short", "auth": dummy}, "M_WEAK_PASSWORD"),
        ({"username": "bob", "auth": dummy}, "M_BAD_JSON"),
        ({"username": "alice", "password": PASSWORD, "auth": dummy}, "M_USER_IN_USE"),
        # Konsil's service account name, even before RCP has created it
        ({"username": "konsil", "password": PASSWORD, "auth": dummy}, "M_EXCLUSIVE"),
        ({"username": "bob", "password": PASSWORD, "inhibit_login": "yes"}, "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        assert (await _register(c, body, 400))["errcode"] == errcode, body
    guest = await _register(c, {"password": PASSWORD}, 403, kind="guest")
    assert guest["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    resp = await c.post(V3 + "/register", data=b"{not json")
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"
    # the user-interactive auth stage is asked for, and an unknown stage is refused
    challenge = await _register(c, {"username": "bob", "password": PASSWORD}, 401)
    assert challenge["flows"] == [{"stages": ["m.login.dummy"]}]
    assert challenge["session"]
    wrong = await _register(
        c, {"username": "bob", "password": PASSWORD, "auth": {"type": "m.login.foo"}}, 401
    )
    assert wrong["errcode"] == "M_UNRECOGNIZED"
    # the session is tied to the user name asked for; a forged one is refused alike
    dummy_in = {"type": "m.login.dummy", "session": challenge["session"]}
    other = await _register(c, {"username": "carol", "password": PASSWORD, "auth": dummy_in}, 401)
    assert other["errcode"] == "M_UNKNOWN" and other["session"] != challenge["session"]
    forged = {"type": "m.login.dummy", "session": "made-up"}
    refused = await _register(c, {"username": "bob", "password": PASSWORD, "auth": forged}, 401)
    assert refused["errcode"] == "M_UNKNOWN" and refused["flows"] == [{"stages": ["m.login.dummy"]}]
    async with c.app[K.DB].session() as s:
        names = set((await s.execute(select(Account.username))).scalars())
    assert names == {"alice"}
    # availability
    taken = await c.get(V3 + "/register/available", params={"username": "alice"})
    assert (await taken.json())["errcode"] == "M_USER_IN_USE"
    reserved = await c.get(V3 + "/register/available", params={"username": "konsil"})
    assert (await reserved.json())["errcode"] == "M_EXCLUSIVE"
    bad = await c.get(V3 + "/register/available", params={"username": "A B"})
    assert (await bad.json())["errcode"] == "M_INVALID_USERNAME"
    free = await c.get(V3 + "/register/available", params={"username": "bob"})
    assert await free.json() == {"available": True}


async def test_a_real_client_registers_an_external_account(
    open_client: Client, tmp_path: Path
) -> None:
    c = open_client
    base = str(c.make_url("")).rstrip("/")
    alice_person = Person("alice", PASSWORD, "", "practitioner")
    await c.app[K.IDENTITY].do_create_account(
        SYSTEM, NewAccount(username="alice", password=PASSWORD, role="practitioner")
    )
    nio = AsyncClient(base, "", store_path=str(tmp_path))
    try:
        resp = await nio.register("ext.pharma", PASSWORD, device_name="phone")
        assert isinstance(resp, RegisterResponse), resp
        assert resp.user_id == "@ext.pharma:localhost"
        assert resp.access_token and resp.device_id
        who = await nio.whoami()
        assert who.user_id == resp.user_id
        # an external account is a guest: no rooms of its own, no directory
        assert isinstance(await nio.room_create(name="mine"), RoomCreateError)
        ext = Mx(
            c,
            resp.user_id,
            resp.device_id,
            resp.access_token,
            Person("ext.pharma", PASSWORD, "", "external"),
        )
        assert (await ext.get("/account/whoami"))["is_guest"] is True
        search = await ext.post("/user_directory/search", {"search_term": "a"}, status=403)
        assert search["errcode"] == "M_FORBIDDEN"
        # ... but a practitioner can invite it and talk with it
        alice = await login(c, alice_person)
        room = await alice.create_room(invite=[resp.user_id])
        await ext.post(f"/join/{room}")
        await ext.send(room, "bonjour", "t1")
        found = await alice.post("/user_directory/search", {"search_term": "ext"})
        assert found["results"] == []  # not listed among practitioners
    finally:
        await nio.close()

    account = await _account(c, "ext.pharma")
    assert (account.role, account.is_guest, account.practitioner_id) == ("external", True, None)
    assert account.password_hash is not None
    assert account.password_hash.startswith("$argon2id$")
    async with c.app[K.DB].session() as s:
        actions = set(
            (
                await s.execute(
                    select(AuditEvent.action).where(AuditEvent.resource == f"account/{account.id}")
                )
            ).scalars()
        )
    assert {"account.create", "matrix.register"} <= actions
    # the same name again, now taken
    again = await _register(
        c, {"username": "ext.pharma", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}, 400
    )
    assert again["errcode"] == "M_USER_IN_USE"
    # inhibit_login registers without a session; the password then logs in
    quiet = await _register(
        c,
        {
            "username": "ext.lab",
            "password": PASSWORD,
            "inhibit_login": True,
            "auth": {"type": "m.login.dummy"},
        },
        200,
    )
    assert quiet == {"user_id": "@ext.lab:localhost", "home_server": "localhost"}
    await login(c, Person("ext.lab", PASSWORD, "", "external"))
    # without a username the server picks one
    picked = await _register(c, {"password": PASSWORD, "auth": {"type": "m.login.dummy"}}, 200)
    assert picked["user_id"].startswith("@ext-")


async def test_external_accounts_have_no_clinical_access(
    client: Client, make_app: Callable[..., web.Application]
) -> None:
    ident = client.app[K.IDENTITY]
    admin = await ident.do_create_account(
        SYSTEM, NewAccount(username="admin", password=PASSWORD, role="admin")
    )
    ext = await ident.do_create_account(
        SYSTEM, NewAccount(username="visitor", password=PASSWORD, role="external")
    )
    assert ext.is_guest and ext.practitioner_id is None
    await web_login(client, Person("visitor", PASSWORD, ext.id, "external"))
    for path in ("/patients", "/documents", "/video", "/rcp", "/admin/accounts"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 403, path
    for path in ("/api/v1/patients/0123", "/api/v1/documents"):
        api = await client.get(path)
        assert api.status == 403, path
    # an administrator turning the account into a practitioner lifts the guest flag
    from konsil.audit.service import Actor

    await ident.do_update_practitioner(
        Actor(admin.id),
        ext.id,
        PractitionerUpdate(display_name="Vera Visitor", role="practitioner"),
    )
    assert (await _account(client, "visitor")).is_guest is False
    await ident.do_update_practitioner(
        Actor(admin.id), ext.id, PractitionerUpdate(display_name="Vera Visitor", role="external")
    )
    assert (await _account(client, "visitor")).is_guest is True
