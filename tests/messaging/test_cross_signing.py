"""Cross-signing over HTTP with real keys: Ed25519 cross-signing keys (PyNaCl), devices that are
real Olm accounts (vodozemac, what matrix-nio uses), canonical JSON as matrix-nio writes it."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Awaitable, Callable
from typing import Any

import nacl.signing
import vodozemac
from nio import KeysQueryResponse
from nio.api import Api
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from tests.conftest import Client, Person
from tests.messaging.mx import V3, Mx, login

Users = Callable[..., Awaitable[Person]]
JsonDict = dict[str, Any]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def signable(obj: JsonDict) -> bytes:
    """The bytes a signature covers: canonical JSON (matrix-nio's) without signatures and
    unsigned data."""
    rest = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return str(Api.to_canonical_json(rest)).encode()


def add_signature(obj: JsonDict, user_id: str, key_id: str, signature: str) -> JsonDict:
    out = copy.deepcopy(obj)
    out.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = signature
    return out


class XKey:
    """A cross-signing key pair of one usage."""

    def __init__(self, user_id: str, usage: str) -> None:
        self.user_id = user_id
        self.usage = usage
        self.sk = nacl.signing.SigningKey.generate()
        self.pub = b64(bytes(self.sk.verify_key))
        self.key_id = f"ed25519:{self.pub}"

    def body(self) -> JsonDict:
        return {"user_id": self.user_id, "usage": [self.usage], "keys": {self.key_id: self.pub}}

    def sign(self, obj: JsonDict) -> JsonDict:
        sig = b64(self.sk.sign(signable(obj)).signature)
        return add_signature(obj, self.user_id, self.key_id, sig)


class Identity:
    """A user's master, self-signing and user-signing keys."""

    def __init__(self, user_id: str) -> None:
        self.master = XKey(user_id, "master")
        self.ssk = XKey(user_id, "self_signing")
        self.usk = XKey(user_id, "user_signing")

    def upload_body(self) -> JsonDict:
        return {
            "master_key": self.master.body(),
            "self_signing_key": self.master.sign(self.ssk.body()),
            "user_signing_key": self.master.sign(self.usk.body()),
        }


class OlmDevice:
    """A device with a real Olm account, its signed device keys uploaded."""

    def __init__(self, mx: Mx) -> None:
        self.mx = mx
        self.account = vodozemac.Account()
        d = mx.device_id
        keys = {
            "user_id": mx.user_id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"curve25519:{d}": self.account.curve25519_key.to_base64(),
                f"ed25519:{d}": self.account.ed25519_key.to_base64(),
            },
        }
        self.keys = self.sign(keys)

    def sign(self, obj: JsonDict) -> JsonDict:
        sig = self.account.sign(signable(obj)).to_base64()
        return add_signature(obj, self.mx.user_id, f"ed25519:{self.mx.device_id}", sig)

    async def upload(self) -> None:
        await self.mx.post("/keys/upload", {"device_keys": self.keys})


def auth(mx: Mx, session: str, password: str | None = None) -> JsonDict:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": mx.person.username},
        "password": password or mx.person.password,
        "session": session,
    }


async def query(mx: Mx, *users: str) -> JsonDict:
    answer: JsonDict = await mx.post("/keys/query", {"device_keys": {u: [] for u in users}})
    # matrix-nio still reads the answer
    assert isinstance(KeysQueryResponse.from_dict(answer), KeysQueryResponse)
    return answer


async def test_upload_and_query_cross_signing_keys(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    alice = Identity(a.user_id)
    # a first upload needs no user-interactive auth (spec v1.11, MSC3967)
    assert await a.post("/keys/device_signing/upload", alice.upload_body()) == {}
    # repeating the stored keys neither
    assert await a.post("/keys/device_signing/upload", alice.upload_body()) == {}

    seen_by_bob = await query(b, a.user_id)
    assert seen_by_bob["master_keys"] == {a.user_id: alice.master.body()}
    ssk = seen_by_bob["self_signing_keys"][a.user_id]
    assert ssk["keys"] == {alice.ssk.key_id: alice.ssk.pub}
    assert alice.master.key_id in ssk["signatures"][a.user_id]
    assert seen_by_bob["user_signing_keys"] == {}
    seen_by_alice = await query(a, a.user_id, b.user_id)
    assert seen_by_alice["user_signing_keys"][a.user_id]["keys"] == {
        alice.usk.key_id: alice.usk.pub
    }
    assert b.user_id not in seen_by_alice["master_keys"]


async def test_replacing_keys_needs_user_interactive_auth(
    client: Client, create_user: Users
) -> None:
    a = await login(client, await create_user("alice"))
    first = Identity(a.user_id)
    await a.post("/keys/device_signing/upload", first.upload_body())

    second = Identity(a.user_id)
    challenge = await a.post("/keys/device_signing/upload", second.upload_body(), status=401)
    assert challenge["flows"] == [{"stages": ["m.login.password"]}] and challenge["session"]
    body = second.upload_body()
    wrong = await a.post(
        "/keys/device_signing/upload",
        {**body, "auth": auth(a, challenge["session"], "wrong-password-123")},
        status=401,
    )
    assert wrong["errcode"] == "M_FORBIDDEN"
    assert (await query(a, a.user_id))["master_keys"][a.user_id] == first.master.body()

    ok = {**body, "auth": auth(a, challenge["session"])}
    assert await a.post("/keys/device_signing/upload", ok) == {}
    now = await query(a, a.user_id)
    assert now["master_keys"][a.user_id] == second.master.body()
    assert alice_key(now, "self_signing_keys", a) == second.ssk.pub

    # a new master key alone: the subkeys it has not signed are gone
    third = Identity(a.user_id)
    only_master: JsonDict = {"master_key": third.master.body()}
    # the first session is spent once the keys are stored
    replay = {**only_master, "auth": auth(a, challenge["session"])}
    spent = await a.post("/keys/device_signing/upload", replay, status=401)
    assert spent["errcode"] == "M_UNKNOWN" and spent["session"] != challenge["session"]
    session = (await a.post("/keys/device_signing/upload", only_master, status=401))["session"]
    only_master["auth"] = auth(a, session)
    assert await a.post("/keys/device_signing/upload", only_master) == {}
    now = await query(a, a.user_id)
    assert now["master_keys"][a.user_id] == third.master.body()
    assert now["self_signing_keys"] == {} and now["user_signing_keys"] == {}
    # a subkey signed by the current master key needs auth too, and then is accepted
    ssk_only = {"self_signing_key": third.master.sign(third.ssk.body())}
    session = (await a.post("/keys/device_signing/upload", ssk_only, status=401))["session"]
    ssk_only["auth"] = auth(a, session)
    assert await a.post("/keys/device_signing/upload", ssk_only) == {}
    assert alice_key(await query(a, a.user_id), "self_signing_keys", a) == third.ssk.pub
    # each change is in the audit log, with what changed (never the keys)
    async with client.app[K.DB].session() as s:
        rows = (
            await s.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "matrix.cross_signing.keys",
                    AuditEvent.resource == f"account/{a.person.account_id}",
                )
            )
        ).scalars()
        logged = [str(e.details) for e in rows]
    assert len(logged) == 4
    assert not any(third.master.pub in d or second.master.pub in d for d in logged)


def alice_key(answer: JsonDict, field: str, mx: Mx) -> str:
    ((pub,),) = [answer[field][mx.user_id]["keys"].values()]
    return str(pub)


async def test_bad_signing_keys_refused(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    alice = Identity(a.user_id)
    upload = "/keys/device_signing/upload"

    async def refused(body: JsonDict, errcode: str, status: int = 400) -> None:
        answer = await a.post(upload, body, status=status)
        assert answer["errcode"] == errcode, answer

    # the self-signing key signed by another key than the master key
    stranger = XKey(a.user_id, "master")
    await refused(
        {"master_key": alice.master.body(), "self_signing_key": stranger.sign(alice.ssk.body())},
        "M_INVALID_SIGNATURE",
    )
    # changed after it was signed
    tampered = alice.master.sign(alice.usk.body())
    tampered["usage"] = ["user_signing", "m.extra"]
    await refused(
        {"master_key": alice.master.body(), "user_signing_key": tampered}, "M_INVALID_SIGNATURE"
    )
    # not signed at all
    await refused(
        {"master_key": alice.master.body(), "self_signing_key": alice.ssk.body()},
        "M_INVALID_SIGNATURE",
    )
    # malformed keys
    two_keys = alice.master.body()
    two_keys["keys"][stranger.key_id] = stranger.pub
    await refused({"master_key": two_keys}, "M_INVALID_PARAM")
    await refused(
        {"master_key": {**alice.master.body(), "usage": ["self_signing"]}}, "M_INVALID_PARAM"
    )
    await refused(
        {"master_key": {**alice.master.body(), "user_id": "@bob:localhost"}}, "M_INVALID_PARAM"
    )
    curve = {**alice.master.body(), "keys": {f"curve25519:{alice.master.pub}": alice.master.pub}}
    await refused({"master_key": curve}, "M_INVALID_PARAM")
    short = {**alice.master.body(), "keys": {"ed25519:AAAA": "AAAA"}}
    await refused({"master_key": short}, "M_INVALID_PARAM")
    await refused({"master_key": "nope"}, "M_BAD_JSON")
    # subkeys need a master key
    await refused({"self_signing_key": alice.master.sign(alice.ssk.body())}, "M_MISSING_PARAM")
    # nothing was stored by any of these
    assert (await query(a, a.user_id))["master_keys"] == {}

    # a cross-signing key may not have the id of one of the user's devices
    clash = Identity(a.user_id)
    await login(client, a.person, device_id=clash.master.pub)
    await refused(clash.upload_body(), "M_FORBIDDEN", status=403)


async def test_signatures_upload(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    a2 = await login(client, a.person)
    b = await login(client, await create_user("bob"))
    c = await login(client, await create_user("carol"))
    alice, bob = Identity(a.user_id), Identity(b.user_id)
    phone, laptop = OlmDevice(a), OlmDevice(a2)
    await phone.upload()
    await laptop.upload()
    signatures = "/keys/signatures/upload"

    # without a self-signing key there is nothing to sign devices with
    early = await a.post(signatures, {a.user_id: {a.device_id: alice.ssk.sign(phone.keys)}})
    assert early["failures"][a.user_id][a.device_id]["errcode"] == "M_NOT_FOUND"

    await a.post("/keys/device_signing/upload", alice.upload_body())
    await b.post("/keys/device_signing/upload", bob.upload_body())

    # alice's self-signing key signs her phone, her phone signs her master key
    device_seen = (await query(b, a.user_id))["device_keys"][a.user_id][a.device_id]
    master_signed = phone.sign(alice.master.body())
    answer = await a.post(
        signatures,
        {a.user_id: {a.device_id: alice.ssk.sign(device_seen), alice.master.pub: master_signed}},
    )
    assert answer == {"failures": {}}
    for viewer in (a, b, c):
        seen = await query(viewer, a.user_id)
        phone_sigs = seen["device_keys"][a.user_id][a.device_id]["signatures"][a.user_id]
        assert set(phone_sigs) == {f"ed25519:{a.device_id}", alice.ssk.key_id}
        master_sigs = seen["master_keys"][a.user_id]["signatures"][a.user_id]
        assert set(master_sigs) == {f"ed25519:{a.device_id}"}
        # and they verify, with nacl and with vodozemac
        dev_obj = seen["device_keys"][a.user_id][a.device_id]
        nacl.signing.VerifyKey(base64.b64decode(alice.ssk.pub + "=")).verify(
            signable(dev_obj),
            base64.b64decode(phone_sigs[alice.ssk.key_id] + "=="),
        )
        vodozemac.Ed25519PublicKey.from_base64(
            phone.account.ed25519_key.to_base64()
        ).verify_signature(
            signable(seen["master_keys"][a.user_id]),
            vodozemac.Ed25519Signature.from_base64(master_sigs[f"ed25519:{a.device_id}"]),
        )

    # refused: the laptop signed by the user-signing key, the laptop's keys changed, a device
    # that does not exist, the master key signed by a device that has no keys, a bad signature
    changed = copy.deepcopy(laptop.keys)
    changed["keys"][f"curve25519:{a2.device_id}"] = b64(bytes(32))
    bogus = add_signature(alice.master.body(), a.user_id, f"ed25519:{a.device_id}", b64(bytes(64)))
    answer = await a.post(
        signatures,
        {
            a.user_id: {
                a2.device_id: alice.usk.sign(laptop.keys),
                "NOSUCHDEVICE": alice.ssk.sign({**laptop.keys, "device_id": "NOSUCHDEVICE"}),
                alice.master.pub: bogus,
            }
        },
    )
    failures = answer["failures"][a.user_id]
    assert failures[a2.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    assert failures["NOSUCHDEVICE"]["errcode"] == "M_NOT_FOUND"
    assert failures[alice.master.pub]["errcode"] == "M_INVALID_SIGNATURE"
    answer = await a.post(signatures, {a.user_id: {a2.device_id: alice.ssk.sign(changed)}})
    assert answer["failures"][a.user_id][a2.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    seen = await query(a, a.user_id)
    assert set(seen["device_keys"][a.user_id][a2.device_id]["signatures"][a.user_id]) == {
        f"ed25519:{a2.device_id}"
    }

    # alice's user-signing key signs bob's master key: only alice sees that signature
    bob_master = (await query(a, b.user_id))["master_keys"][b.user_id]
    answer = await a.post(signatures, {b.user_id: {bob.master.pub: alice.usk.sign(bob_master)}})
    assert answer == {"failures": {}}
    mine = (await query(a, b.user_id))["master_keys"][b.user_id]
    assert set(mine["signatures"]) == {a.user_id}
    assert alice.usk.key_id in mine["signatures"][a.user_id]
    for other in (b, c):
        assert "signatures" not in (await query(other, b.user_id))["master_keys"][b.user_id]
    # refused: a key of bob's that is not his master key, a signature by the wrong key,
    # and carol has no user-signing key at all
    answer = await a.post(
        signatures,
        {b.user_id: {bob.ssk.pub: alice.usk.sign(bob.master.sign(bob.ssk.body()))}},
    )
    assert answer["failures"][b.user_id][bob.ssk.pub]["errcode"] == "M_NOT_FOUND"
    answer = await a.post(signatures, {b.user_id: {bob.master.pub: alice.ssk.sign(bob_master)}})
    assert answer["failures"][b.user_id][bob.master.pub]["errcode"] == "M_INVALID_SIGNATURE"
    carol = XKey(c.user_id, "user_signing")
    answer = await c.post(signatures, {b.user_id: {bob.master.pub: carol.sign(bob_master)}})
    assert answer["failures"][b.user_id][bob.master.pub]["errcode"] == "M_NOT_FOUND"
    await a.post(signatures, {b.user_id: "nope"}, status=400)

    # deleting the phone drops its signatures
    session = (await a2.call("DELETE", f"/devices/{a.device_id}", {}, status=401))["session"]
    await a2.call("DELETE", f"/devices/{a.device_id}", {"auth": auth(a2, session)})
    seen = await query(b, a.user_id)
    assert a.device_id not in seen["device_keys"][a.user_id]
    assert "signatures" not in seen["master_keys"][a.user_id]


async def test_key_changes_reach_room_peers(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    c = await login(client, await create_user("carol"))
    room = await a.create_room(invite=[b.user_id, c.user_id])
    await b.post(f"/join/{room}")
    await c.post(f"/join/{room}")
    sa, sb, sc = await a.sync(), await b.sync(), await c.sync()

    alice, bob = Identity(a.user_id), Identity(b.user_id)
    await a.post("/keys/device_signing/upload", alice.upload_body())
    rb = await b.sync(sb["next_batch"])
    assert rb["device_lists"]["changed"] == [a.user_id]
    ch = await b.get("/keys/changes", params={"from": sb["next_batch"], "to": rb["next_batch"]})
    assert ch["changed"] == [a.user_id]
    ra = await a.sync(sa["next_batch"])
    assert a.user_id in ra["device_lists"]["changed"]  # alice's other devices re-query too

    await b.post("/keys/device_signing/upload", bob.upload_body())
    ra, rb = await a.sync(ra["next_batch"]), await b.sync(rb["next_batch"])
    sc = await c.sync(sc["next_batch"])
    bob_master = (await query(a, b.user_id))["master_keys"][b.user_id]
    answer = await a.post(
        "/keys/signatures/upload", {b.user_id: {bob.master.pub: alice.usk.sign(bob_master)}}
    )
    assert answer == {"failures": {}}
    # alice (who made the signature) is told bob's keys changed; carol and bob are not
    ra2 = await a.sync(ra["next_batch"])
    assert ra2["device_lists"]["changed"] == [b.user_id]
    rc2 = await c.sync(sc["next_batch"])
    assert rc2["device_lists"]["changed"] == []
    rb2 = await b.sync(rb["next_batch"])
    assert rb2["device_lists"]["changed"] == []
    ch = await c.get("/keys/changes", params={"from": sc["next_batch"], "to": rc2["next_batch"]})
    assert ch["changed"] == []
    ch = await a.get("/keys/changes", params={"from": ra["next_batch"], "to": ra2["next_batch"]})
    assert ch["changed"] == [b.user_id]

    # a device signed by the self-signing key: carol re-queries bob
    dev = OlmDevice(b)
    await dev.upload()
    rc3 = await c.sync(rc2["next_batch"])
    answer = await b.post(
        "/keys/signatures/upload", {b.user_id: {b.device_id: bob.ssk.sign(dev.keys)}}
    )
    assert answer == {"failures": {}}
    rc4 = await c.sync(rc3["next_batch"])
    assert rc4["device_lists"]["changed"] == [b.user_id]
    # the same signature again (Ed25519 is deterministic) changes nothing: nobody is told
    again = await b.post(
        "/keys/signatures/upload", {b.user_id: {b.device_id: bob.ssk.sign(dev.keys)}}
    )
    assert again == {"failures": {}}
    rc5 = await c.sync(rc4["next_batch"])
    assert rc5["device_lists"]["changed"] == []


async def test_concurrent_first_uploads(client: Client, create_user: Users) -> None:
    """Two devices set up cross-signing at once: one wins, the other must authenticate to
    replace it (never a 500)."""
    a1 = await login(client, await create_user("alice"))
    a2 = await login(client, a1.person)
    ids = [Identity(a1.user_id) for _ in range(4)]
    answers = await asyncio.gather(
        *(
            client.post(V3 + "/keys/device_signing/upload", json=i.upload_body(), headers=mx.h)
            for i, mx in zip(ids, (a1, a2, a1, a2), strict=True)
        )
    )
    assert sorted(r.status for r in answers) == [200, 401, 401, 401]
    winner = ids[[r.status for r in answers].index(200)]
    assert (await query(a2, a1.user_id))["master_keys"][a1.user_id] == winner.master.body()

    dev = OlmDevice(a1)
    await dev.upload()
    signed = {a1.user_id: {a1.device_id: winner.ssk.sign(dev.keys)}}
    both = await asyncio.gather(
        a1.post("/keys/signatures/upload", signed), a2.post("/keys/signatures/upload", signed)
    )
    assert list(both) == [{"failures": {}}, {"failures": {}}]


async def test_reuploading_the_same_keys_keeps_their_signatures(
    client: Client, create_user: Users
) -> None:
    a = await login(client, await create_user("alice"))
    alice, phone = Identity(a.user_id), OlmDevice(a)
    await phone.upload()
    await a.post("/keys/device_signing/upload", alice.upload_body())
    signed = {
        alice.master.pub: phone.sign(alice.master.body()),
        a.device_id: alice.ssk.sign(phone.keys),
    }
    assert await a.post("/keys/signatures/upload", {a.user_id: signed}) == {"failures": {}}

    # the same master key, now self-signed: another object (so UIA), the same key
    body = {"master_key": alice.master.sign(alice.master.body())}
    session = (await a.post("/keys/device_signing/upload", body, status=401))["session"]
    assert await a.post("/keys/device_signing/upload", {**body, "auth": auth(a, session)}) == {}
    seen = await query(a, a.user_id)
    master_sigs = seen["master_keys"][a.user_id]["signatures"][a.user_id]
    assert set(master_sigs) == {alice.master.key_id, f"ed25519:{a.device_id}"}
    device_sigs = seen["device_keys"][a.user_id][a.device_id]["signatures"][a.user_id]
    assert alice.ssk.key_id in device_sigs
    assert alice_key(seen, "self_signing_keys", a) == alice.ssk.pub


async def test_malformed_cross_signing_bodies_never_500(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    alice = Identity(a.user_id)
    good = alice.master.body()
    keys: list[Any] = [
        None,
        5,
        "s",
        [],
        {},
        {**good, "keys": []},
        {**good, "keys": {"ed25519:x": 5}},
        {**good, "keys": {alice.master.key_id: 5}},
        {**good, "usage": "master"},
        {**good, "usage": [5]},
        {**good, "user_id": 5},
        {**good, "signatures": []},
        {**good, "signatures": {a.user_id: []}},
        {**good, "signatures": {a.user_id: {alice.master.key_id: 5}}},
        {**good, "keys": {"ed25519:!!": "!!"}},
    ]
    for key in keys:
        for field in ("master_key", "self_signing_key", "user_signing_key"):
            r = await client.post(
                V3 + "/keys/device_signing/upload", json={field: key}, headers=a.h
            )
            assert r.status < 500, (field, key, r.status)
            answer = await r.json()
            assert answer == {} or answer["errcode"] in (
                "M_BAD_JSON",
                "M_INVALID_PARAM",
                "M_MISSING_PARAM",
                "M_INVALID_SIGNATURE",
            ), (field, key, answer)
    await a.post("/keys/device_signing/upload", alice.upload_body())
    bodies: list[JsonDict] = [
        {a.user_id: []},
        {a.user_id: {"X": 5}},
        {a.user_id: {"X": {}}, "@b:localhost": {"Y": {}}},
        {a.user_id: {alice.master.pub: {**good, "signatures": 5}}},
        {a.user_id: {alice.master.pub: {**good, "signatures": {a.user_id: {"ed25519:D": 5}}}}},
        {a.user_id: {alice.master.pub: {**good, "signatures": {a.user_id: []}}}},
        {a.user_id: {"D": {"signatures": {a.user_id: {alice.ssk.key_id: "!!"}}}}},
    ]
    for body in bodies:
        r = await client.post(V3 + "/keys/signatures/upload", json=body, headers=a.h)
        assert r.status < 500, (body, r.status)
        answer = await r.json()
        assert "failures" in answer or answer["errcode"] == "M_BAD_JSON", (body, answer)


async def test_completed_password_stage_survives_a_failed_replacement(
    client: Client, create_user: Users
) -> None:
    """The password was right but the keys were refused: the stage stays completed in the
    session (the spec: completed stages cannot be retried), and the session is not spent."""
    a = await login(client, await create_user("alice"))
    first, second = Identity(a.user_id), Identity(a.user_id)
    await a.post("/keys/device_signing/upload", first.upload_body())
    # the new self-signing key signed by the old master key, not the new one
    bad = {
        "master_key": second.master.body(),
        "self_signing_key": first.master.sign(second.ssk.body()),
    }
    sid = (await a.post("/keys/device_signing/upload", bad, status=401))["session"]
    refused = await a.post("/keys/device_signing/upload", {**bad, "auth": auth(a, sid)}, status=400)
    assert refused["errcode"] == "M_INVALID_SIGNATURE"
    # the same request with the session only: authenticated already, refused for its keys again
    again = await a.post(
        "/keys/device_signing/upload", {**bad, "auth": {"session": sid}}, status=400
    )
    assert again["errcode"] == "M_INVALID_SIGNATURE"
    # a corrected body is another request: it asks for the password in a new session
    good = second.upload_body()
    fresh = await a.post(
        "/keys/device_signing/upload", {**good, "auth": {"session": sid}}, status=401
    )
    assert fresh["errcode"] == "M_UNKNOWN" and fresh["session"] != sid
    assert fresh["completed"] == []
    ok = {**good, "auth": auth(a, fresh["session"])}
    assert await a.post("/keys/device_signing/upload", ok) == {}
    assert (await query(a, a.user_id))["master_keys"][a.user_id] == second.master.body()
