"""Media: an encrypted attachment through real matrix-nio clients; access control; limits."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from nio import DownloadError, JoinResponse, RoomCreateResponse, RoomSendResponse, UploadResponse
from nio.crypto.attachments import decrypt_attachment
from nio.event_builders import EnableEncryptionBuilder

from konsil import appkeys as K
from konsil.config import MatrixConfig
from tests.conftest import AiohttpClient, Client, Person
from tests.messaging.mx import login
from tests.messaging.nio_helpers import Peer, until

Users = Callable[..., Awaitable[Person]]


async def test_encrypted_attachment_round_trip(
    client: Client, create_user: Users, tmp_path: Path
) -> None:
    base = str(client.make_url("")).rstrip("/")
    server = client.app[K.CONFIG].server_name
    people = {n: await create_user(n) for n in ("alice", "bob", "dave")}
    alice, bob, dave = (
        Peer(base, people[n], tmp_path / n, f"@{n}:{server}") for n in ("alice", "bob", "dave")
    )
    peers = [alice, bob, dave]
    try:
        for p in peers:
            await p.login()
            await p.step()
        created = await alice.client.room_create(
            invite=[bob.client.user_id], initial_state=[EnableEncryptionBuilder().as_dict()]
        )
        assert isinstance(created, RoomCreateResponse)
        room_id = created.room_id
        await until(peers, lambda: room_id in bob.client.invited_rooms)
        assert isinstance(await bob.client.join(room_id), JoinResponse)
        await until(peers, lambda: len(alice.client.rooms[room_id].users) == 2)
        for p in peers:
            await p.step()
            p.trust_all()

        plaintext = b"Scan report for patient X: lesion 14 mm, segment VII. " * 50
        up, keys = await alice.client.upload(
            io.BytesIO(plaintext),
            content_type="application/pdf",
            filename="report.pdf",
            encrypt=True,
            filesize=len(plaintext),
        )
        assert isinstance(up, UploadResponse), up
        assert keys is not None
        file_info = {**keys, "url": up.content_uri}
        sent = await alice.client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.file", "body": "report.pdf", "file": file_info},
        )
        assert isinstance(sent, RoomSendResponse), sent

        got = await bob.client.download(mxc=up.content_uri)
        assert not isinstance(got, DownloadError), got
        clear = decrypt_attachment(got.body, keys["key"]["k"], keys["hashes"]["sha256"], keys["iv"])
        assert clear == plaintext

        denied = await dave.client.download(mxc=up.content_uri)
        assert isinstance(denied, DownloadError)
        assert denied.status_code == "M_FORBIDDEN"

        # nothing readable on disk
        for f in (Path(client.app[K.CONFIG].data_dir) / "media").rglob("*"):
            if f.is_file():
                assert b"lesion" not in f.read_bytes()
    finally:
        for p in peers:
            await p.close()


async def test_media_access_and_limits(
    aiohttp_client: AiohttpClient,
    make_app: Callable[..., web.Application],
    client: Client,
    create_user: Users,
) -> None:
    small = await aiohttp_client(make_app(matrix=MatrixConfig(max_upload_bytes=1000)))
    a = await login(small, await create_user("alice"))
    b = await login(small, await create_user("bob"))
    cfg = await a.get("/_matrix/client/v1/media/config")
    assert cfg["m.upload.size"] == 1000
    big = await small.post(
        "/_matrix/media/v3/upload", data=b"x" * 2000, headers={**a.h, "Content-Type": "text/plain"}
    )
    assert big.status == 413 and (await big.json())["errcode"] == "M_TOO_LARGE"

    r = await small.post(
        "/_matrix/media/v3/upload?filename=a.txt",
        data=b"hello",
        headers={**a.h, "Content-Type": "text/plain"},
    )
    mxc = (await r.json())["content_uri"]
    server, media_id = mxc.removeprefix("mxc://").split("/")
    url = f"/_matrix/client/v1/media/download/{server}/{media_id}"
    ok = await small.get(url, headers=a.h)
    assert ok.status == 200 and await ok.read() == b"hello"
    denied = await small.get(url, headers=b.h)
    assert denied.status == 403 and (await denied.json())["errcode"] == "M_FORBIDDEN"
    anon = await small.get(url)
    assert anon.status == 401
    # shared in a clear-text event in a room bob is in: now bob may download
    room = await a.create_room(invite=[b.user_id])
    await b.post(f"/join/{room}")
    await a.put(
        f"/rooms/{room}/send/m.room.message/f1",
        {"msgtype": "m.file", "body": "a.txt", "url": mxc},
    )
    assert (await small.get(url + "/a.txt", headers=b.h)).status == 200
    thumb = await small.get(
        f"/_matrix/client/v1/media/thumbnail/{server}/{media_id}?width=32&height=32", headers=b.h
    )
    assert thumb.status == 200
    missing = await small.get(f"/_matrix/client/v1/media/download/{server}/nope", headers=a.h)
    assert missing.status == 404
