"""Driving real matrix-nio clients against a test server, without sleeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, LoginResponse, MegolmEvent, RoomMessageText

from tests.conftest import Person


class Peer:
    """One nio client (one device) with what it decrypted and what it could not."""

    def __init__(self, base_url: str, person: Person, store: Path, user_id: str) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.person = person
        self.client = AsyncClient(
            base_url,
            user_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
        )
        self.texts: list[str] = []
        self.undecrypted: list[MegolmEvent] = []
        self.client.add_event_callback(self._on_text, RoomMessageText)
        self.client.add_event_callback(self._on_megolm, MegolmEvent)

    async def _on_text(self, room: Any, event: RoomMessageText) -> None:
        self.texts.append(event.body)

    async def _on_megolm(self, room: Any, event: MegolmEvent) -> None:
        self.undecrypted.append(event)

    async def login(self, device_name: str = "test") -> None:
        resp = await self.client.login(self.person.password, device_name=device_name)
        assert isinstance(resp, LoginResponse), resp

    async def step(self) -> None:
        """One round of what nio's sync_forever does: sync, then the key bookkeeping."""
        c = self.client
        resp = await c.sync(timeout=0)
        assert not hasattr(resp, "status_code") or resp.status_code is None, resp
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        await c.send_to_device_messages()

    def trust_all(self) -> None:
        """Verify every known device of the others (as if checked face to face)."""
        for user_id in list(self.client.device_store.users):
            for dev in self.client.device_store.active_user_devices(user_id):
                if dev.device_id != self.client.device_id and not dev.verified:
                    self.client.verify_device(dev)

    async def close(self) -> None:
        await self.client.close()


async def until(peers: list[Peer], cond: Callable[[], bool], rounds: int = 30) -> None:
    for _ in range(rounds):
        if cond():
            return
        for p in peers:
            await p.step()
    assert cond(), "condition not reached"
