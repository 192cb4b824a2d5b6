"""A tiny Matrix client over the aiohttp test client, for API-level tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.conftest import Client, Person

V3 = "/_matrix/client/v3"


@dataclass
class Mx:
    client: Client
    user_id: str
    device_id: str
    token: str
    person: Person

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(
        self, method: str, path: str, body: Any = None, *, status: int = 200, **kw: Any
    ) -> Any:
        url = path if path.startswith("/_matrix") else V3 + path
        resp = await self.client.request(method, url, json=body, headers=self.h, **kw)
        data = await resp.json()
        assert resp.status == status, (resp.status, data)
        return data

    async def get(self, path: str, *, status: int = 200, **kw: Any) -> Any:
        return await self.call("GET", path, status=status, **kw)

    async def post(self, path: str, body: Any = None, *, status: int = 200) -> Any:
        return await self.call("POST", path, {} if body is None else body, status=status)

    async def put(self, path: str, body: Any = None, *, status: int = 200) -> Any:
        return await self.call("PUT", path, {} if body is None else body, status=status)

    async def sync(self, since: str | None = None, **params: str) -> Any:
        q = dict(params)
        if since:
            q["since"] = since
        return await self.get("/sync", params=q)

    async def create_room(self, **body: Any) -> str:
        return str((await self.post("/createRoom", body))["room_id"])

    async def send(self, room_id: str, body: str, txn: str) -> str:
        r = await self.put(
            f"/rooms/{room_id}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": body}
        )
        return str(r["event_id"])


async def login(client: Client, person: Person, device_id: str | None = None) -> Mx:
    body: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": person.username},
        "password": person.password,
    }
    if device_id:
        body["device_id"] = device_id
    resp = await client.post(V3 + "/login", json=body)
    data = await resp.json()
    assert resp.status == 200, data
    return Mx(client, data["user_id"], data["device_id"], data["access_token"], person)
