"""A second, independent client: matrix-js-sdk (Rust crypto, under Node.js) talks to matrix-nio.

The JS side is `tests/js/interop.mjs`, installed from `tests/js/package-lock.json` with `npm ci`
and driven as a subprocess: it prints JSON lines of what happened (and what it decrypted), and
takes commands as JSON lines on stdin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nio import RoomCreateResponse, RoomSendResponse
from nio.event_builders import EnableEncryptionBuilder
from sqlalchemy import text

from konsil import appkeys as K
from tests.conftest import Client, Person
from tests.messaging.mx import login
from tests.messaging.nio_helpers import Peer

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "interop.mjs"
DEADLINE_S = 60.0


@pytest.fixture(scope="session")
def node() -> Iterator[str]:
    """The `node` binary, with tests/js/node_modules installed from the lockfile (npm ci)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the matrix-js-sdk interop test")
    lock = JS_DIR / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes() + (JS_DIR / "package.json").read_bytes())
    stamp = JS_DIR / "node_modules" / ".konsil-installed"
    if not stamp.is_file() or stamp.read_text() != digest.hexdigest():
        subprocess.run(
            [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )
        stamp.write_text(digest.hexdigest())
    yield node


class JsClient:
    """The running interop.mjs: its output lines as they come, and a way to send it commands."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, node: str, base: str, user: Person, *args: str) -> JsClient:
        """interop.mjs logged in as ``user`` on the server at ``base``."""
        proc = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            "--url",
            base,
            "--user",
            user.username,
            "--password",
            user.password,
            *args,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))
            self.changed.set()
        self.changed.set()

    def seen(self, **match: Any) -> bool:
        return any(all(line.get(k) == v for k, v in match.items()) for line in self.lines)

    def errors(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] in ("error", "undecryptable")]

    async def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()

    async def close(self) -> str:
        """Stop the process; return what it wrote on stderr (for failure messages)."""
        with contextlib.suppress(ConnectionError):
            await self.command(cmd="stop")
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self.reader
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")


async def until(nio: Peer, js: JsClient, cond: Callable[[], bool], what: str) -> None:
    """Step the nio client and watch the JS client's output until `cond` holds (bounded)."""
    end = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < end, f"not reached: {what}; js said {js.lines}"
        assert js.proc.returncode is None, f"js client exited; it said {js.lines}"
        assert not js.seen(event="error"), js.lines
        js.changed.clear()
        await nio.step()
        # wake on the next line from the JS client, or after a short while to sync nio again
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(js.changed.wait(), 0.1)


async def test_js_sdk_and_nio_exchange_encrypted_messages(
    client: Client,
    create_user: Callable[..., Awaitable[Person]],
    tmp_path: Path,
    node: str,
) -> None:
    base = str(client.make_url("")).rstrip("/")
    server = client.app[K.CONFIG].server_name
    alice_p = await create_user("alice")
    bob_p = await create_user("bob")
    alice = Peer(base, alice_p, tmp_path / "alice", f"@alice:{server}")
    bob_id = f"@bob:{server}"
    await alice.login()
    await alice.step()

    created = await alice.client.room_create(
        name="Interop", invite=[bob_id], initial_state=[EnableEncryptionBuilder().as_dict()]
    )
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id

    js = await JsClient.start(node, base, bob_p, "--room", room_id, "--peer", alice.client.user_id)
    stderr = ""
    try:
        await until(alice, js, lambda: js.seen(event="ready"), "js client ready")
        ready = next(line for line in js.lines if line["event"] == "ready")
        js_device = ready["device_id"]
        # the SDK got the server-default push rules from its first sync
        assert ".m.rule.room_one_to_one" in ready["push_rules"], ready
        await until(alice, js, lambda: js.seen(event="joined", room_id=room_id), "js joined")
        # the JS side marked alice's device verified; nio verifies bob's JS device
        await until(
            alice,
            js,
            lambda: (
                js.seen(event="trusted", devices=[alice.client.device_id])
                and bob_id in alice.client.rooms[room_id].users
                and js_device
                in {d.device_id for d in alice.client.device_store.active_user_devices(bob_id)}
            ),
            "both sides know each other's device",
        )
        alice.trust_all()
        assert alice.client.device_store[bob_id][js_device].verified

        # nio → JS
        to_js = "nio to js: CT shows no progression"
        sent = await alice.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": to_js}
        )
        assert isinstance(sent, RoomSendResponse), sent
        await until(
            alice,
            js,
            lambda: js.seen(event="message", body=to_js, encrypted=True),
            "js decrypted nio's message",
        )
        got = next(line for line in js.lines if line.get("body") == to_js)
        assert got["sender"] == alice.client.user_id and got["room_id"] == room_id
        assert got["notify"] is True, got  # a message in a two-member room notifies

        # JS → nio
        to_nio = "js to nio: agree, follow-up in three months"
        await js.command(cmd="send", room_id=room_id, body=to_nio)
        await until(alice, js, lambda: js.seen(event="sent", room_id=room_id), "js sent")
        await until(alice, js, lambda: to_nio in alice.texts, "nio decrypted js's message")
        assert not alice.undecrypted
        assert not [e for e in js.errors() if e["event"] == "error"], js.lines
        # the room really is encrypted: the server holds ciphertext only
        db = client.app[K.DB]
        async with db.session() as s:
            rows = (
                await s.execute(
                    text("SELECT type, content FROM matrix_events WHERE room_id = :r"),
                    {"r": room_id},
                )
            ).all()
        stored = "\n".join(f"{t} {c}" for t, c in rows)
        assert to_js not in stored and to_nio not in stored
        assert sum(1 for t, _ in rows if t == "m.room.encrypted") >= 2

        # the SDK backs its room keys up on the server (its Megolm session and alice's) and
        # reads them back: what it uploaded is what it gets, decryptable by it alone
        await js.command(cmd="backup")
        await until(alice, js, lambda: js.seen(event="backup"), "js created a key backup")
        version = next(line for line in js.lines if line["event"] == "backup")["version"]
        assert version is not None, js.lines
        bob = await login(client, bob_p)
        info = await bob.get("/room_keys/version")
        assert info["version"] == version and info["algorithm"].endswith("curve25519-aes-sha2")
        assert f"ed25519:{js_device}" in info["auth_data"]["signatures"][bob_id]
        end = time.monotonic() + DEADLINE_S
        while (await bob.get("/room_keys/version"))["count"] < 2:
            assert time.monotonic() < end, "the SDK did not upload its room keys"
            await alice.step()
        backed_up = await bob.get(f"/room_keys/keys?version={version}")
        sessions = backed_up["rooms"][room_id]["sessions"]
        assert len(sessions) >= 2 and list(backed_up["rooms"]) == [room_id]
        assert all(
            set(k["session_data"]) == {"ephemeral", "ciphertext", "mac"} for k in sessions.values()
        )
        count = (await bob.get("/room_keys/version"))["count"]
        await js.command(cmd="restore")
        await until(alice, js, lambda: js.seen(event="restored"), "js restored its keys")
        restored = next(line for line in js.lines if line["event"] == "restored")
        assert restored["total"] == count, restored
    finally:
        stderr = await js.close()
        await alice.close()
    assert js.proc.returncode == 0, stderr[-4000:]
    # the SDK called no endpoint the server does not know
    assert "M_UNRECOGNIZED" not in stderr, stderr[-4000:]


async def test_no_key_backup_is_not_found(
    client: Client, create_user: Callable[..., Awaitable[Person]]
) -> None:
    """matrix-js-sdk asks for the key backup at start: "none" is 404 M_NOT_FOUND (spec)."""
    me = await login(client, await create_user("alice"))
    got = await me.get("/room_keys/version", status=404)
    assert got["errcode"] == "M_NOT_FOUND"
    resp = await client.get("/_matrix/client/v3/room_keys/version")
    assert resp.status == 401


async def wait_js(js: JsClient, cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < end, f"not reached: {what}; js said {js.lines}"
        assert js.proc.returncode is None, f"js client exited; it said {js.lines}"
        assert not js.seen(event="error"), js.lines
        js.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(js.changed.wait(), 0.5)


def signed_by(obj: dict[str, Any], user_id: str, public_key: str) -> bool:
    """``obj`` carries a valid signature of ``user_id``'s Ed25519 key ``public_key`` (checked
    here with PyNaCl over matrix-nio's canonical JSON, not with the server's code)."""
    import nacl.exceptions
    import nacl.signing

    from tests.messaging.test_cross_signing import signable

    sig = obj.get("signatures", {}).get(user_id, {}).get(f"ed25519:{public_key}")
    if sig is None:
        return False
    try:
        nacl.signing.VerifyKey(base64.b64decode(public_key + "==")).verify(
            signable(obj), base64.b64decode(sig + "==")
        )
    except nacl.exceptions.BadSignatureError:
        return False
    return True


async def test_js_sdk_bootstraps_cross_signing(
    client: Client, create_user: Callable[..., Awaitable[Person]], node: str
) -> None:
    """matrix-js-sdk sets up cross-signing (keys/device_signing/upload, then its device signed
    through keys/signatures/upload), then resets it, which takes the password."""
    base = str(client.make_url("")).rstrip("/")
    bob_p = await create_user("bob")
    alice = await login(client, await create_user("alice"))
    bob_id = alice.user_id.replace("@alice:", "@bob:")
    await alice.create_room(invite=[bob_id])
    js = await JsClient.start(node, base, bob_p)

    def outcomes() -> list[dict[str, Any]]:
        return [line for line in js.lines if line["event"] == "cross_signing"]

    stderr = ""
    try:
        await wait_js(js, lambda: js.seen(event="joined"), "js joined")
        js_device = next(line["device_id"] for line in js.lines if line["event"] == "ready")
        before = await alice.sync()

        await js.command(cmd="bootstrap")
        await wait_js(js, lambda: len(outcomes()) == 1, "cross-signing set up")
        first = outcomes()[0]
        assert first["ready"] and first["device_cross_signed"], first
        assert first["password_asked"] == 0  # a first upload needs no password
        seen = await alice.post("/keys/query", {"device_keys": {bob_id: []}})
        master = seen["master_keys"][bob_id]
        assert master["keys"] == {f"ed25519:{first['master']}": first["master"]}
        ssk = seen["self_signing_keys"][bob_id]
        assert signed_by(ssk, bob_id, first["master"])
        ((ssk_pub,),) = [ssk["keys"].values()]
        assert signed_by(seen["device_keys"][bob_id][js_device], bob_id, ssk_pub)
        assert seen["user_signing_keys"] == {}
        after = await alice.sync(before["next_batch"])
        assert bob_id in after["device_lists"]["changed"]

        await js.command(cmd="bootstrap", reset=True)
        await wait_js(js, lambda: len(outcomes()) == 2, "cross-signing reset")
        second = outcomes()[1]
        assert second["ready"] and second["password_asked"] == 1, second
        assert second["master"] != first["master"]
        seen = await alice.post("/keys/query", {"device_keys": {bob_id: []}})
        assert first["master"] not in json.dumps(seen)
        assert seen["master_keys"][bob_id]["keys"] == {
            f"ed25519:{second['master']}": second["master"]
        }
    finally:
        stderr = await js.close()
    assert js.proc.returncode == 0, stderr[-4000:]
    assert "M_UNRECOGNIZED" not in stderr, stderr[-4000:]
