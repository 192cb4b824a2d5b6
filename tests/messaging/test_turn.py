"""``GET /voip/turnServer``: Matrix clients' calls get credentials for Konsil's TURN relay, and
the relay (a real coturn) accepts them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint

from konsil import appkeys as K
from konsil.audit.service import SYSTEM
from konsil.clock import FakeClock
from konsil.config import TurnConfig
from konsil.identity.service import NewAccount
from tests.conftest import AiohttpClient, Client, Person
from tests.coturn import TURN_SECRET, Turn
from tests.messaging.mx import V3, login

PATH = V3 + "/voip/turnServer"


async def _alice(client: Client) -> Person:
    password = "pw-alice-0123456789"
    account = await client.app[K.IDENTITY].do_create_account(
        SYSTEM, NewAccount(username="alice", password=password, role="practitioner")
    )
    return Person("alice", password, account.id, "practitioner")


async def _allocate(turn: Turn, username: str, password: str) -> tuple[str, int]:
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", turn.port), username, password, lifetime=60
    )
    try:
        host, port = transport.get_extra_info("sockname")
        return str(host), int(port)
    finally:
        transport.close()


async def test_no_turn_configured_answers_an_empty_object(client: Client) -> None:
    assert (await client.get(PATH)).status == 401
    a = await login(client, await _alice(client))
    assert await a.get("/voip/turnServer") == {}


async def test_credentials_open_the_configured_relay(
    aiohttp_client: AiohttpClient, make_app: Callable[..., web.Application], turn: Turn
) -> None:
    client = await aiohttp_client(
        make_app(turn=TurnConfig(secret=TURN_SECRET, urls=(turn.url,), ttl_seconds=600))
    )
    missing = await client.get(PATH)
    assert missing.status == 401 and (await missing.json())["errcode"] == "M_MISSING_TOKEN"
    a = await login(client, await _alice(client))
    clock = client.app[K.CLOCK]
    assert isinstance(clock, FakeClock)
    # the test clock starts in January 2026: credentials made then have long expired
    stale = await a.get("/voip/turnServer")
    with pytest.raises(TransactionFailed, match="401"):
        await _allocate(turn, stale["username"], stale["password"])
    clock.advance((datetime.now(UTC) - clock.now()).total_seconds())

    creds = await a.get("/voip/turnServer")
    assert creds["uris"] == [turn.url] and creds["ttl"] == 600
    expiry, _, user = creds["username"].partition(":")
    now = client.app[K.CLOCK].now().timestamp()
    assert user == a.user_id and int(expiry) == int(now) + 600

    host, port = await _allocate(turn, creds["username"], creds["password"])
    assert host == "127.0.0.1" and port > 0
    # coturn checks the HMAC: a password made with another secret is refused
    with pytest.raises(TransactionFailed, match="401"):
        await _allocate(turn, creds["username"], "bm90IHRoZSBwYXNzd29yZA==")
