"""Fixtures of the teleconsultation tests: a real SMTP server (aiosmtpd), a real TURN server
(coturn), a running Konsil server and a practitioner."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from konsil import appkeys as K
from konsil.audit.service import SYSTEM
from konsil.config import SmtpConfig, TurnConfig, VideoConfig, WorkflowConfig
from konsil.identity.service import NewAccount
from tests.conftest import Client, Person
from tests.coturn import TURN_SECRET, Turn, free_port


class Mailbox:
    """aiosmtpd handler keeping every delivered message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.arrived = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.loop.call_soon_threadsafe(self.arrived.set)
        return "250 Message accepted for delivery"

    async def next_message(self) -> EmailMessage:
        async with asyncio.timeout(10):
            await self.arrived.wait()
        self.arrived.clear()
        return self.messages[-1]


@dataclasses.dataclass
class Smtp:
    port: int
    box: Mailbox


@pytest.fixture
async def smtp() -> AsyncIterator[Smtp]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(port, box)
    finally:
        controller.stop()


@pytest.fixture
async def doctor(client: Client) -> Person:
    """A general practitioner of a practice: what documents need for their author."""
    identity = client.app[K.IDENTITY]
    org = await identity.do_create_organisation(SYSTEM, "Cabinet Weber", "practice")
    password = "pw-drvideo-0123456789"
    account = await identity.do_create_account(
        SYSTEM,
        NewAccount(
            username="drvideo",
            password=password,
            role="practitioner",
            display_name="Anna Weber",
            specialty="general-practice",
            organisation_id=org.id,
            cns_provider_code="90812100",
        ),
    )
    return Person("drvideo", password, account.id, "practitioner")


ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def video_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    make_app: Callable[..., web.Application],
) -> ServerFactory:
    async def start(
        *,
        smtp_port: int = 0,
        turn: Turn | None = None,
        force_relay: bool = False,
        workflow: WorkflowConfig | None = None,
    ) -> TestServer:
        changes: dict[str, Any] = {
            "video": VideoConfig(force_relay=force_relay),
            "smtp": SmtpConfig(host="127.0.0.1" if smtp_port else "", port=smtp_port or 25),
            "workflow": workflow or WorkflowConfig(),
        }
        if turn is not None:
            changes["turn"] = TurnConfig(secret=TURN_SECRET, urls=(turn.url,), ttl_seconds=600)
        return await aiohttp_server(make_app(**changes), host="127.0.0.1")

    return start
