"""Cross-signing (Client-Server API, end-to-end encryption module): a user's master, self-signing
and user-signing keys, the signatures made with them or of them, and their place in
``keys/query``.

The server checks every signature it stores (Ed25519 over canonical JSON): a client trusts what
it verifies itself, but a homeserver that keeps only valid signatures cannot be used to spread
junk that every client of every peer would have to reject.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor, AuditLog
from konsil.db import Database
from konsil.errors import BadRequest, Forbidden
from messaging.common import JsonDict, Requester, allocate, dumps, loads, retry_on_conflict
from messaging.devices import DeviceService, room_peers
from messaging.models import (
    CrossSigningKey,
    CrossSigningSignature,
    Device,
    DeviceKeys,
    DeviceListChange,
)
from messaging.notifier import Notifier

MASTER, SELF_SIGNING, USER_SIGNING = "master", "self_signing", "user_signing"
USAGES = (MASTER, SELF_SIGNING, USER_SIGNING)
# request body field -> usage
UPLOAD_FIELDS = {
    "master_key": MASTER,
    "self_signing_key": SELF_SIGNING,
    "user_signing_key": USER_SIGNING,
}


# ---------------------------------------------------------------- signed JSON


def canonical_json(obj: Any) -> bytes:
    """The Matrix canonical form: sorted keys, no spaces, UTF-8 (not \\u escapes)."""
    return json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def unpadded_b64decode(value: str) -> bytes:
    """Matrix keys and signatures are unpadded standard base64 (raises ValueError)."""
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)


def _unsigned_part(obj: JsonDict) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def verify_signature(obj: JsonDict, signer: str, key_id: str, public_key: str) -> bool:
    """Whether ``obj`` carries a valid signature of ``signer``'s key ``key_id``
    (``ed25519:...``) made with ``public_key`` (unpadded base64)."""
    sigs = obj.get("signatures")
    sig = sigs.get(signer, {}).get(key_id) if isinstance(sigs, dict) else None
    if not isinstance(sig, str) or not isinstance(public_key, str):
        return False
    try:
        message = canonical_json(_unsigned_part(obj))
        nacl.signing.VerifyKey(unpadded_b64decode(public_key)).verify(
            message, unpadded_b64decode(sig)
        )
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError, binascii.Error):
        return False
    return True


def same_key(a: JsonDict, b: JsonDict) -> bool:
    """The same key object, signatures and unsigned data aside."""
    return _unsigned_part(a) == _unsigned_part(b)


@dataclass(frozen=True)
class SigningKey:
    usage: str
    public_key: str  # unpadded base64, also the key's id in keys/signatures/upload
    body: JsonDict  # the object as uploaded

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public_key}"


def check_key(obj: Any, usage: str, user_id: str) -> SigningKey:
    """A well-formed cross-signing key object of ``usage`` for ``user_id`` (M_INVALID_PARAM)."""
    what = f"the {usage.replace('_', '-')} key"
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be an object", errcode="M_BAD_JSON")
    if obj.get("user_id") != user_id:
        raise BadRequest(f"{what} is not for {user_id}", errcode="M_INVALID_PARAM")
    usages = obj.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        raise BadRequest(f"{what} must have usage {usage!r}", errcode="M_INVALID_PARAM")
    if any(u in USAGES and u != usage for u in usages):
        raise BadRequest(f"{what} has more than one usage", errcode="M_INVALID_PARAM")
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise BadRequest(f"{what} must hold exactly one key", errcode="M_INVALID_PARAM")
    ((name, public_key),) = keys.items()
    if name != f"ed25519:{public_key}" or not isinstance(public_key, str):
        raise BadRequest(
            f"{what} must be one ed25519 key named by itself", errcode="M_INVALID_PARAM"
        )
    try:
        raw = unpadded_b64decode(public_key)
    except ValueError:
        raise BadRequest(f"{what} is not valid base64", errcode="M_INVALID_PARAM") from None
    if len(raw) != 32:
        raise BadRequest(f"{what} is not an Ed25519 public key", errcode="M_INVALID_PARAM")
    sigs = obj.get("signatures", {})
    if not isinstance(sigs, dict) or not all(
        isinstance(by, dict) and all(isinstance(v, str) for v in by.values())
        for by in sigs.values()
    ):
        raise BadRequest(f"{what}'s signatures are malformed", errcode="M_BAD_JSON")
    return SigningKey(usage, public_key, obj)


def _failure(errcode: str, error: str) -> JsonDict:
    return {"errcode": errcode, "error": error}


class SignatureRefused(Exception):
    """One signature of keys/signatures/upload is refused: it goes into ``failures``."""

    def __init__(self, errcode: str, error: str) -> None:
        super().__init__(error)
        self.errcode = errcode
        self.error = error


@dataclass(frozen=True)
class NewSignature:
    origin_key_id: str
    target_user_id: str
    target_key_id: str
    signature: str


# ---------------------------------------------------------------- service


class CrossSigningService:
    def __init__(
        self, db: Database, audit: AuditLog, notifier: Notifier, devices: DeviceService
    ) -> None:
        self.db = db
        self.audit = audit
        self.notifier = notifier
        self.devices = devices

    @staticmethod
    async def _keys_of(s: AsyncSession, user_id: str) -> dict[str, SigningKey]:
        rows = (
            await s.execute(select(CrossSigningKey).where(CrossSigningKey.user_id == user_id))
        ).scalars()
        return {r.usage: SigningKey(r.usage, r.key_id, loads(r.key_json)) for r in rows}

    # ------------------------------------------------------------ keys/device_signing/upload

    async def do_upload_signing_keys(
        self, req: Requester, body: JsonDict, *, ip: str | None
    ) -> JsonDict | None:
        """Store the uploaded cross-signing keys; None when done, else the 401 body of
        user-interactive auth. As the spec (v1.11, MSC3967) says, auth is needed only to
        replace keys: a first upload, or one repeating the stored keys, passes without it."""
        new = {
            usage: check_key(body[field], usage, req.user_id)
            for field, usage in UPLOAD_FIELDS.items()
            if body.get(field) is not None
        }

        async def store(authenticated: bool) -> bool:
            return await self._store_signing_keys(req, new, authenticated=authenticated, ip=ip)

        if await retry_on_conflict(lambda: store(False)):
            return None
        uia = await self.devices.check_uia(req, body, operation="keys/device_signing/upload", ip=ip)
        if uia.challenge is not None:
            return uia.challenge
        await retry_on_conflict(lambda: store(True))
        self.devices.uia.finish(uia.session)
        return None

    async def _store_signing_keys(
        self, req: Requester, new: dict[str, SigningKey], *, authenticated: bool, ip: str | None
    ) -> bool:
        """False (nothing written) when this would replace keys without ``authenticated``."""
        me = req.user_id
        async with self.db.transaction() as s:
            old = await self._keys_of(s, me)
            changed = [
                u for u in USAGES if u in new and (u not in old or old[u].body != new[u].body)
            ]
            if not changed:
                return True
            if MASTER in old and not authenticated:
                return False
            master = new.get(MASTER) or old.get(MASTER)
            if master is None:
                raise BadRequest("no master key: upload one first", errcode="M_MISSING_PARAM")
            for usage in (SELF_SIGNING, USER_SIGNING):
                key = new.get(usage)
                if key is not None and not verify_signature(
                    key.body, me, master.key_id, master.public_key
                ):
                    raise BadRequest(
                        f"the {usage.replace('_', '-')} key is not signed by the master key",
                        errcode="M_INVALID_SIGNATURE",
                    )
            device_ids = set(
                (await s.execute(select(Device.device_id).where(Device.user_id == me))).scalars()
            )
            if any(new[u].public_key in device_ids for u in changed):
                raise Forbidden("a cross-signing key has the id of one of your devices")
            # keys replaced by other keys (not just re-uploaded with other signatures), and
            # subkeys that a new master key has not signed (dropped)
            replaced = [
                old[u] for u in changed if u in old and old[u].public_key != new[u].public_key
            ]
            dropped = [
                old[u]
                for u in (SELF_SIGNING, USER_SIGNING)
                if MASTER in changed
                and u in old
                and u not in new
                and not verify_signature(old[u].body, me, master.key_id, master.public_key)
            ]
            await self._forget_signatures(s, me, replaced + dropped)
            for key in dropped:
                row = await s.get(CrossSigningKey, (me, key.usage))
                if row is not None:
                    await s.delete(row)
            for usage in changed:
                key = new[usage]
                row = await s.get(CrossSigningKey, (me, usage))
                if row is None:
                    s.add(
                        CrossSigningKey(
                            user_id=me, usage=usage, key_id=key.public_key, key_json=dumps(key.body)
                        )
                    )
                else:
                    row.key_id, row.key_json = key.public_key, dumps(key.body)
            await self.audit.record(
                s,
                Actor(req.account_id, ip),
                "matrix.cross_signing.keys",
                resource=f"account/{req.account_id}",
                details={"device": req.device_id, "changed": changed},
            )
            pos, peers = await self._changed(s, me)
        self.notifier.notify(peers, pos)
        return True

    @staticmethod
    async def _forget_signatures(s: AsyncSession, user_id: str, keys: list[SigningKey]) -> None:
        """Drop the signatures made with keys that are gone, and those of a master key that
        is gone."""
        for key in keys:
            await s.execute(
                delete(CrossSigningSignature).where(
                    CrossSigningSignature.origin_user_id == user_id,
                    CrossSigningSignature.origin_key_id == key.key_id,
                )
            )
            if key.usage == MASTER:
                await s.execute(
                    delete(CrossSigningSignature).where(
                        CrossSigningSignature.target_user_id == user_id,
                        CrossSigningSignature.target_key_id == key.public_key,
                    )
                )

    async def _changed(self, s: AsyncSession, user_id: str) -> tuple[int, set[str]]:
        """Record, in the caller's transaction, that ``user_id``'s keys changed: everybody
        sharing a room with them (and their own devices) re-queries them."""
        pos = await allocate(s)
        s.add(DeviceListChange(stream=pos, user_id=user_id))
        peers = await room_peers(s, user_id)
        self.notifier.mark(peers, pos, "device_list")
        return pos, peers

    # ------------------------------------------------------------ keys/signatures/upload

    async def do_upload_signatures(self, req: Requester, body: JsonDict) -> JsonDict:
        """Check each signed object of the body and store the valid new signatures; the
        refused ones are answered in ``failures`` (user id -> key id -> error)."""
        for objs in body.values():
            if not isinstance(objs, dict) or not all(isinstance(o, dict) for o in objs.values()):
                raise BadRequest(
                    "the body maps user ids to key ids to signed objects", errcode="M_BAD_JSON"
                )
        return await retry_on_conflict(lambda: self._store_signatures(req, body))

    async def _store_signatures(self, req: Requester, body: JsonDict) -> JsonDict:
        me = req.user_id
        failures: dict[str, dict[str, JsonDict]] = {}
        new: list[NewSignature] = []
        async with self.db.transaction() as s:
            mine = await self._keys_of(s, me)
            for user_id, objs in body.items():
                theirs = mine if user_id == me else await self._keys_of(s, user_id)
                for key_id, obj in objs.items():
                    try:
                        if user_id == me:
                            new += await self._check_own(s, me, mine, key_id, obj)
                        else:
                            new.append(self._check_other(me, mine, user_id, theirs, key_id, obj))
                    except SignatureRefused as e:
                        failures.setdefault(user_id, {})[key_id] = _failure(e.errcode, e.error)
            targets: set[str] = set()  # users with a signature that was not stored yet
            for sig in new:
                row = await s.get(
                    CrossSigningSignature,
                    (me, sig.origin_key_id, sig.target_user_id, sig.target_key_id),
                )
                if row is None or row.signature != sig.signature:
                    targets.add(sig.target_user_id)
                if row is None:
                    s.add(
                        CrossSigningSignature(
                            origin_user_id=me,
                            origin_key_id=sig.origin_key_id,
                            target_user_id=sig.target_user_id,
                            target_key_id=sig.target_key_id,
                            signature=sig.signature,
                        )
                    )
                else:
                    row.signature = sig.signature
            wake: list[tuple[int, set[str]]] = []
            if me in targets:
                wake.append(await self._changed(s, me))
            # a user-signing signature is seen by its author only: only they re-query
            for other in sorted(targets - {me}):
                pos = await allocate(s)
                s.add(DeviceListChange(stream=pos, user_id=other, audience=me))
                self.notifier.mark([me], pos, "device_list")
                wake.append((pos, {me}))
        for pos, users in wake:
            self.notifier.notify(users, pos)
        return {"failures": failures}

    async def _check_own(
        self,
        s: AsyncSession,
        me: str,
        mine: dict[str, SigningKey],
        key_id: str,
        obj: JsonDict,
    ) -> list[NewSignature]:
        """My master key signed by my devices, or my device signed by my self-signing key."""
        master = mine.get(MASTER)
        if master is not None and key_id == master.public_key:
            if not same_key(obj, master.body):
                raise SignatureRefused("M_INVALID_SIGNATURE", "this is not your master key")
            return await self._check_master_by_devices(s, me, master, obj)
        ssk = mine.get(SELF_SIGNING)
        if ssk is None:
            raise SignatureRefused("M_NOT_FOUND", "you have no self-signing key")
        dk = await s.get(DeviceKeys, (me, key_id))
        if dk is None:
            raise SignatureRefused("M_NOT_FOUND", "no such key or device")
        if not same_key(obj, loads(dk.keys)):
            raise SignatureRefused("M_INVALID_SIGNATURE", "these are not the device's keys")
        if not verify_signature(obj, me, ssk.key_id, ssk.public_key):
            raise SignatureRefused(
                "M_INVALID_SIGNATURE", "no valid signature by your self-signing key"
            )
        return [NewSignature(ssk.key_id, me, key_id, obj["signatures"][me][ssk.key_id])]

    @staticmethod
    async def _check_master_by_devices(
        s: AsyncSession, me: str, master: SigningKey, obj: JsonDict
    ) -> list[NewSignature]:
        sigs = obj.get("signatures")
        by_me = sigs.get(me) if isinstance(sigs, dict) else None
        names = [
            name
            for name in (by_me if isinstance(by_me, dict) else {})
            if name.startswith("ed25519:") and name != master.key_id
        ]
        if not names:
            raise SignatureRefused("M_INVALID_SIGNATURE", "no signature by one of your devices")
        out: list[NewSignature] = []
        for name in names:
            device_id = name.removeprefix("ed25519:")
            dk = await s.get(DeviceKeys, (me, device_id))
            public_key = (loads(dk.keys).get("keys") or {}).get(name) if dk is not None else None
            if not isinstance(public_key, str):
                raise SignatureRefused("M_NOT_FOUND", f"no device {device_id} with keys")
            if not verify_signature(obj, me, name, public_key):
                raise SignatureRefused(
                    "M_INVALID_SIGNATURE", f"the signature of device {device_id} is not valid"
                )
            out.append(NewSignature(name, me, master.public_key, obj["signatures"][me][name]))
        return out

    @staticmethod
    def _check_other(
        me: str,
        mine: dict[str, SigningKey],
        user_id: str,
        theirs: dict[str, SigningKey],
        key_id: str,
        obj: JsonDict,
    ) -> NewSignature:
        """Another user's master key signed by my user-signing key."""
        usk = mine.get(USER_SIGNING)
        if usk is None:
            raise SignatureRefused("M_NOT_FOUND", "you have no user-signing key")
        master = theirs.get(MASTER)
        if master is None or key_id != master.public_key:
            raise SignatureRefused(
                "M_NOT_FOUND", "only the user's current master key can be signed"
            )
        if not same_key(obj, master.body):
            raise SignatureRefused("M_INVALID_SIGNATURE", "this is not the user's master key")
        if not verify_signature(obj, me, usk.key_id, usk.public_key):
            raise SignatureRefused(
                "M_INVALID_SIGNATURE", "no valid signature by your user-signing key"
            )
        return NewSignature(usk.key_id, user_id, key_id, obj["signatures"][me][usk.key_id])

    # ------------------------------------------------------------ keys/query

    async def query_keys(self, req: Requester, body: JsonDict) -> JsonDict:
        """Device keys (``DeviceService.device_keys_for``) with the cross-signing keys of the
        users asked about and the signatures the requester may see merged in: everybody's own
        signatures, and the requester's user-signing signatures of others (nobody else's)."""
        wanted = body.get("device_keys")
        if not isinstance(wanted, dict):
            raise BadRequest("device_keys must be an object", errcode="M_BAD_JSON")
        users = [u for u in wanted if isinstance(u, str)]
        async with self.db.session() as s:
            devices = await self.devices.device_keys_for(s, wanted)
            keys = (
                await s.execute(select(CrossSigningKey).where(CrossSigningKey.user_id.in_(users)))
            ).scalars()
            sigs = (
                await s.execute(
                    select(CrossSigningSignature).where(
                        CrossSigningSignature.target_user_id.in_(users),
                        or_(
                            CrossSigningSignature.origin_user_id
                            == CrossSigningSignature.target_user_id,
                            CrossSigningSignature.origin_user_id == req.user_id,
                        ),
                    )
                )
            ).scalars()
            by_target: dict[tuple[str, str], list[CrossSigningSignature]] = {}
            for sig in sigs:
                by_target.setdefault((sig.target_user_id, sig.target_key_id), []).append(sig)
            out: JsonDict = {
                "device_keys": devices,
                "failures": {},
                "master_keys": {},
                "self_signing_keys": {},
                "user_signing_keys": {},
            }
            for row in keys:
                if row.usage == USER_SIGNING and row.user_id != req.user_id:
                    continue
                obj = loads(row.key_json)
                if row.usage == MASTER:
                    _merge(obj, by_target.get((row.user_id, row.key_id), ()))
                out[f"{row.usage}_keys"][row.user_id] = obj
        for user_id, devs in devices.items():
            for device_id, obj in devs.items():
                _merge(obj, by_target.get((user_id, device_id), ()))
        return out


def _merge(obj: JsonDict, sigs: Iterable[CrossSigningSignature]) -> None:
    for sig in sigs:
        all_sigs = obj.setdefault("signatures", {})
        all_sigs.setdefault(sig.origin_user_id, {})[sig.origin_key_id] = sig.signature
