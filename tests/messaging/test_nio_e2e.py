"""Real matrix-nio clients with end-to-end encryption against Konsil's homeserver."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from nio import (
    EncryptionError,
    JoinResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomLeaveResponse,
    RoomSendResponse,
)
from nio.event_builders import EnableEncryptionBuilder
from sqlalchemy import select, text

from konsil import appkeys as K
from konsil.models import metadata
from tests.conftest import Client, Person
from tests.messaging.nio_helpers import Peer, until


async def dump_database(client: Client) -> str:
    """Every column of every row of every table, as one text."""
    db = client.app[K.DB]
    parts: list[str] = []
    async with db.session() as s:
        for table in metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                parts.append(repr(tuple(row)))
        parts.append(repr((await s.execute(text("SELECT 1"))).all()))
    return "\n".join(parts)


async def test_encrypted_room_with_real_clients(
    client: Client, create_user: Callable[..., Awaitable[Person]], tmp_path: Path
) -> None:
    base = str(client.make_url("")).rstrip("/")
    server = client.app[K.CONFIG].server_name
    people = {n: await create_user(n) for n in ("alice", "bob", "carol")}
    alice, bob, carol = (
        Peer(base, people[n], tmp_path / n, f"@{n}:{server}") for n in ("alice", "bob", "carol")
    )
    peers = [alice, bob, carol]
    bob2: Peer | None = None
    try:
        for p in peers:
            await p.login()
            await p.step()

        created = await alice.client.room_create(
            name="Tumour board",
            invite=[bob.client.user_id, carol.client.user_id],
            initial_state=[EnableEncryptionBuilder().as_dict()],
        )
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        await until(peers, lambda: all(room_id in p.client.invited_rooms for p in (bob, carol)))
        for p in (bob, carol):
            assert isinstance(await p.client.join(room_id), JoinResponse)
        await until(
            peers,
            lambda: all(
                room_id in p.client.rooms
                and len(p.client.rooms[room_id].users) == 3
                and p.client.rooms[room_id].encrypted
                for p in peers
            ),
        )
        for p in peers:
            await p.step()
            p.trust_all()

        secrets = {
            "alice": "Patient X: biopsy shows adenocarcinoma",
            "bob": "Propose neoadjuvant chemo, bob speaking",
            "carol": "Radiotherapy slot available, says carol",
        }
        for name, p in zip(("alice", "bob", "carol"), peers, strict=True):
            sent = await p.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": secrets[name]}
            )
            assert isinstance(sent, RoomSendResponse), sent
            others = [q for q in peers if q is not p]
            expected = secrets[name]

            def delivered(expected: str = expected, others: list[Peer] = others) -> bool:
                return all(expected in q.texts for q in others)

            await until(peers, delivered)
        assert all(not p.undecrypted for p in peers)

        # bob logs in on a second device: alice learns it through device_lists and shares keys
        bob2 = Peer(base, people["bob"], tmp_path / "bob2", bob.client.user_id)
        await bob2.login("bob's phone")
        peers.append(bob2)
        await until(
            peers,
            lambda: (
                bob2.client.device_id
                in {
                    d.device_id
                    for d in alice.client.device_store.active_user_devices(bob.client.user_id)
                }
            ),
        )
        for p in peers:
            p.trust_all()
        later = "Second device sees this: follow-up MRI on Tuesday"
        assert isinstance(
            await alice.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": later}
            ),
            RoomSendResponse,
        )
        await until(peers, lambda: all(later in p.texts for p in (bob, bob2, carol)))

        # carol leaves: what is sent afterwards is not decryptable by her
        assert isinstance(await carol.client.room_leave(room_id), RoomLeaveResponse)
        await until(
            peers,
            lambda: carol.client.user_id not in alice.client.rooms[room_id].users,
        )
        after = "Carol has left: this is for bob only"
        assert isinstance(
            await alice.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": after}
            ),
            RoomSendResponse,
        )
        await until(peers, lambda: after in bob.texts and after in bob2.texts)
        assert after not in carol.texts
        # take the ciphertext as stored and give it to carol's own Olm machine
        db = client.app[K.DB]
        async with db.session() as s:
            raw = (
                await s.execute(
                    text(
                        "SELECT event_id, sender, content, origin_server_ts FROM matrix_events "
                        "WHERE room_id = :r AND type = 'm.room.encrypted' ORDER BY stream DESC"
                    ),
                    {"r": room_id},
                )
            ).first()
        assert raw is not None
        ev = MegolmEvent.from_dict(
            {
                "event_id": raw[0],
                "sender": raw[1],
                "content": json.loads(raw[2]),
                "origin_server_ts": raw[3],
                "type": "m.room.encrypted",
                "room_id": room_id,
            }
        )
        try:
            decrypted = carol.client.decrypt_event(ev)
        except EncryptionError:
            decrypted = None
        assert decrypted is None or getattr(decrypted, "body", None) != after

        # the server never saw a plaintext
        dump = await dump_database(client)
        for plain in [*secrets.values(), later, after]:
            assert plain not in dump
        assert "m.megolm.v1.aes-sha2" in dump  # sanity: the dump does hold the ciphertexts
    finally:
        for p in peers:
            await p.close()
