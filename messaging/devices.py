"""Logins, access tokens and devices; E2E keys (device, one-time, fallback) and to-device inboxes;
profiles, account data and filters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, literal, or_, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import SYSTEM, Actor, AuditLog
from konsil.auth.passwords import check_password_strength
from konsil.auth.service import AuthService, token_hash
from konsil.clock import Clock, ms
from konsil.db import Database
from konsil.errors import BadRequest, NotFound, Unauthorized, ValidationError
from konsil.identity.models import EXTERNAL, RESERVED_USERNAMES, Account
from konsil.identity.service import USERNAME_RE, NewAccount, add_account
from messaging.common import (
    JsonDict,
    Requester,
    allocate,
    dumps,
    loads,
    localpart_of,
    new_device_id,
)
from messaging.models import (
    AccessToken,
    AccountData,
    CrossSigningSignature,
    Device,
    DeviceKeys,
    DeviceListChange,
    FallbackKey,
    Filter,
    Membership,
    OneTimeKey,
    Profile,
    ToDevice,
    ToDeviceTxn,
)
from messaging.notifier import Notifier
from messaging.uia import UiaResult, UiaSessions, challenge, operation_key

log = logging.getLogger("konsil.messaging")

LOGIN_PW_STAGE = "m.login.password"
DUMMY_STAGE = "m.login.dummy"
PASSWORD_FLOWS: list[JsonDict] = [{"stages": [LOGIN_PW_STAGE]}]
DUMMY_FLOWS: list[JsonDict] = [{"stages": [DUMMY_STAGE]}]


async def room_peers(s: AsyncSession, user_id: str) -> set[str]:
    """Users who share a room (joined or invited) with ``user_id``, and the user."""
    mine = select(Membership.room_id).where(
        Membership.user_id == user_id, Membership.membership == "join"
    )
    rows = await s.execute(
        select(Membership.user_id)
        .where(Membership.room_id.in_(mine), Membership.membership.in_(("join", "invite")))
        .distinct()
    )
    return {user_id, *rows.scalars()}


TOKEN_CACHE_S = 10.0
TOKEN_REFRESH_S = 5.0
# an entry used within this is kept fresh in the background (longer than a /sync long-poll)
TOKEN_KEEP_S = 60.0
# the re-check runs every so often (wall clock), up to TOKEN_REFRESH_MAX tokens per query
TOKEN_REFRESH_GATHER_S = 0.5
TOKEN_REFRESH_MAX = 500
# built once (building a statement costs more than running it from the compiled cache)
_TOKENS = (
    select(AccessToken, Account.is_guest, Account.is_active)
    .join(Account, Account.id == AccessToken.account_id)
    .where(AccessToken.token_hash.in_(bindparam("keys", expanding=True)))
)


class DeviceService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        auth: AuthService,
        audit: AuditLog,
        notifier: Notifier,
        server_name: str,
    ) -> None:
        self.db = db
        self.clock = clock
        self.auth = auth
        self.audit = audit
        self.notifier = notifier
        self.server_name = server_name
        # user-interactive auth sessions: in this process (see messaging.uia)
        self.uia = UiaSessions(clock)
        # token hash -> (requester, checked at): saves a query per request. Logout and device
        # deletion in this process evict at once; elsewhere (another worker, deactivation) an
        # entry lives at most TOKEN_CACHE_S.
        self._tokens: dict[str, tuple[Requester, float]] = {}
        # Past TOKEN_REFRESH_S an entry used in the last TOKEN_KEEP_S is re-checked in the
        # background while it still answers, so that a client (a long-polling /sync, a send
        # after a quiet minute) does not wait for the query. One task checks the entries
        # falling due, every TOKEN_REFRESH_GATHER_S, in one query (not a session each: with
        # a small SQLite pool those bursts held every connection). ``_token_gen`` moves at
        # every eviction, and a check that began before one does not store its (stale) answer.
        self._token_gen = 0
        self._used: dict[str, float] = {}  # token hash -> last use
        self._checked: deque[tuple[float, str]] = deque()  # (checked at, token hash), in order
        self._refresher: asyncio.Task[None] | None = None
        self._unacked: set[tuple[str, str]] = set()  # inboxes holding delivered messages
        # one-time/fallback key counts per device, with a generation bumped after each change
        self._otk_gen: dict[tuple[str, str], int] = {}
        self._otk_cache: dict[tuple[str, str], tuple[int, dict[str, int], list[str]]] = {}

    def user_id(self, username: str) -> str:
        return f"@{username}:{self.server_name}"

    # ------------------------------------------------------------------ login and tokens

    def _username_from_login(self, body: JsonDict) -> str:
        ident = body.get("identifier")
        user: Any = None
        if isinstance(ident, dict):
            if ident.get("type", "m.id.user") != "m.id.user":
                raise BadRequest("only m.id.user identifiers are supported", errcode="M_UNKNOWN")
            user = ident.get("user")
        elif ident is not None:
            raise BadRequest("identifier must be an object", errcode="M_BAD_JSON")
        else:
            user = body.get("user")
        if not isinstance(user, str) or not user:
            raise BadRequest("identifier.user is required", errcode="M_BAD_JSON")
        local = localpart_of(user, self.server_name)
        if local is None:
            raise Unauthorized("wrong username or password", errcode="M_FORBIDDEN")
        return local

    async def check_password_auth(self, body: JsonDict, *, ip: str | None) -> tuple[str, Any]:
        if body.get("type") != "m.login.password":
            raise BadRequest("unsupported login type", errcode="M_UNKNOWN")
        password = body.get("password")
        if not isinstance(password, str):
            raise BadRequest("password is required", errcode="M_BAD_JSON")
        username = self._username_from_login(body)
        principal = await self.auth.check_password(username, password, ip=ip)
        return username, principal

    @staticmethod
    def _device_options(body: JsonDict) -> tuple[str | None, str | None]:
        device_id = body.get("device_id")
        if device_id is not None and (not isinstance(device_id, str) or not device_id):
            raise BadRequest("device_id must be a string", errcode="M_BAD_JSON")
        name = body.get("initial_device_display_name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("initial_device_display_name must be a string", errcode="M_BAD_JSON")
        return device_id, name

    async def _open_session(
        self,
        s: AsyncSession,
        account_id: str,
        user_id: str,
        device_id: str | None,
        name: str | None,
        ip: str | None,
    ) -> JsonDict:
        """A device (new, or the given one refreshed) and a new access token for it, inside the
        caller's transaction; the login answer."""
        device_id = device_id or new_device_id()
        token = "mat_" + secrets.token_urlsafe(32)
        now = self.clock.now()
        dev = await s.get(Device, (user_id, device_id))
        if dev is None:
            s.add(
                Device(
                    user_id=user_id,
                    device_id=device_id,
                    account_id=account_id,
                    display_name=name,
                    last_seen_ip=ip,
                    last_seen_ts=ms(now),
                    created_at=now,
                )
            )
        else:
            dev.last_seen_ip = ip
            dev.last_seen_ts = ms(now)
        s.add(
            AccessToken(
                token_hash=token_hash(token),
                user_id=user_id,
                device_id=device_id,
                account_id=account_id,
                created_at=now,
            )
        )
        return {
            "user_id": user_id,
            "access_token": token,
            "device_id": device_id,
            "home_server": self.server_name,
        }

    async def do_login(self, body: JsonDict, *, ip: str | None) -> JsonDict:
        username, principal = await self.check_password_auth(body, ip=ip)
        device_id, name = self._device_options(body)
        async with self.db.transaction() as s:
            answer = await self._open_session(
                s, principal.account_id, self.user_id(username), device_id, name, ip
            )
            await self.audit.record(
                s,
                Actor(principal.account_id, ip),
                "matrix.login",
                details={"device": answer["device_id"]},
            )
        return answer

    # ------------------------------------------------------------------ registration

    def _registration_username(self, body: JsonDict) -> str:
        username = body.get("username")
        if username is None:
            return "ext-" + secrets.token_hex(6)
        if not isinstance(username, str):
            raise BadRequest("username must be a string", errcode="M_BAD_JSON")
        local = localpart_of(username, self.server_name) if username.startswith("@") else username
        if local is None or not USERNAME_RE.match(local):
            raise BadRequest(
                "user names use lower-case letters, digits and . _ = - / only (at most 64)",
                errcode="M_INVALID_USERNAME",
            )
        if local in RESERVED_USERNAMES:
            raise BadRequest("this user name is reserved for Konsil", errcode="M_EXCLUSIVE")
        return local

    async def _taken(self, username: str) -> bool:
        async with self.db.session() as s:
            found = await s.execute(select(Account.id).where(Account.username == username))
            return found.first() is not None

    async def check_available(self, username: str) -> None:
        """``GET /register/available``: raises M_INVALID_USERNAME or M_USER_IN_USE."""
        local = self._registration_username({"username": username})
        if await self._taken(local):
            raise BadRequest("this user name is taken", errcode="M_USER_IN_USE")

    async def do_register(self, body: JsonDict, *, ip: str | None) -> tuple[int, JsonDict]:
        """Self-registration (only when enabled): an **external** account, i.e. a Matrix guest
        that cannot create rooms nor search the directory and has no clinical role. Checks come
        first, then the one-stage user-interactive auth (``m.login.dummy``); account, device and
        token are written in one transaction. Returns (HTTP status, body)."""
        username = self._registration_username(body)
        password = body.get("password")
        if not isinstance(password, str):
            raise BadRequest("password is required", errcode="M_BAD_JSON")
        reason = check_password_strength(password)
        if reason:
            raise BadRequest(f"the password is too weak: {reason}", errcode="M_WEAK_PASSWORD")
        device_id, name = self._device_options(body)
        inhibit = body.get("inhibit_login", False)
        if not isinstance(inhibit, bool):
            raise BadRequest("inhibit_login must be a boolean", errcode="M_BAD_JSON")
        if await self._taken(username):
            raise BadRequest("this user name is taken", errcode="M_USER_IN_USE")
        uia = self._check_dummy_uia(body)
        if uia.challenge is not None:
            return 401, uia.challenge
        pw_hash = await self.auth.hasher.hash(password)
        new = NewAccount(username=username, password=password, role=EXTERNAL)
        try:
            async with self.db.transaction() as s:
                account = await add_account(
                    s, self.audit, Actor(SYSTEM.id, ip), new, pw_hash, self.clock.now()
                )
                user_id = self.user_id(username)
                answer: JsonDict = {"user_id": user_id, "home_server": self.server_name}
                if not inhibit:
                    answer = await self._open_session(s, account.id, user_id, device_id, name, ip)
                await self.audit.record(
                    s,
                    Actor(account.id, ip),
                    "matrix.register",
                    resource=f"account/{account.id}",
                    details={"device": answer.get("device_id")},
                )
        except IntegrityError:  # registered concurrently under the same name
            raise BadRequest("this user name is taken", errcode="M_USER_IN_USE") from None
        self.uia.finish(uia.session)
        return 200, answer

    def _check_dummy_uia(self, body: JsonDict) -> UiaResult:
        """Registration's one stage, ``m.login.dummy``, in a session tied to the user name asked
        for (the body carries the password: it is not kept, even as a digest)."""
        operation = operation_key("register", {"username": body.get("username")})
        auth = body.get("auth")
        if auth is None:
            return UiaResult(challenge(DUMMY_FLOWS, self.uia.open(None, operation), []), "")
        if not isinstance(auth, dict):
            raise BadRequest("auth must be an object", errcode="M_BAD_JSON")
        sid = auth.get("session")
        if sid is None:  # no first round trip: a session of its own
            sid = self.uia.open(None, operation)
        completed = self.uia.get(sid, None, operation)
        if completed is None:
            return UiaResult(self._stale_session(DUMMY_FLOWS, None, operation), "")
        if DUMMY_STAGE not in completed:
            if auth.get("type") != DUMMY_STAGE:
                return UiaResult(self._unrecognized(DUMMY_FLOWS, sid, completed, auth), sid)
            self.uia.complete(sid, DUMMY_STAGE)
        return UiaResult(None, sid)

    def _stale_session(
        self, flows: list[JsonDict], user_id: str | None, operation: str
    ) -> JsonDict:
        return challenge(
            flows,
            self.uia.open(user_id, operation),
            [],
            errcode="M_UNKNOWN",
            error="unknown or expired session, or one issued for another request: "
            "authenticate again in the new session",
        )

    @staticmethod
    def _unrecognized(
        flows: list[JsonDict], sid: str, completed: list[str], auth: JsonDict
    ) -> JsonDict:
        if "type" not in auth:  # only the session: where it stands
            return challenge(flows, sid, completed)
        return challenge(
            flows, sid, completed, errcode="M_UNRECOGNIZED", error="unsupported auth stage"
        )

    async def requester(self, token: str) -> Requester:
        key = token_hash(token)
        now = self.clock.monotonic()
        hit = self._tokens.get(key)
        if hit is not None and now - hit[1] < TOKEN_CACHE_S:
            req = hit[0]
        else:
            found = (await self._check_tokens([key])).get(key)
            if found is None:
                raise Unauthorized("unknown or expired access token", errcode="M_UNKNOWN_TOKEN")
            req = found
        self._used[key] = now
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._keep_fresh())
        return req

    async def _check_tokens(self, keys: list[str]) -> dict[str, Requester]:
        """The valid tokens among ``keys`` (by hash), cached; the others leave the cache."""
        gen = self._token_gen
        now = self.clock.monotonic()
        async with self.db.session() as s:
            rows = (await s.execute(_TOKENS, {"keys": keys})).all()
        found: dict[str, Requester] = {}
        for tok, is_guest, is_active in rows:
            if is_active:
                found[tok.token_hash] = Requester(
                    tok.user_id, tok.device_id, tok.account_id, bool(is_guest)
                )
        for key in keys:
            if key not in found:
                self._tokens.pop(key, None)
        if gen == self._token_gen:
            if len(self._tokens) + len(found) > 100_000:
                self._tokens.clear()
                self._used.clear()
                self._checked.clear()
            for key, req in found.items():
                self._tokens[key] = (req, now)
                self._checked.append((now, key))
        return found

    async def stop(self) -> None:
        """Cancel the background token re-check (at shutdown)."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh_due(self) -> None:
        """Re-check, in one query, the cache entries checked TOKEN_REFRESH_S ago or more that
        were used within TOKEN_KEEP_S; entries idle longer are left to expire."""
        now = self.clock.monotonic()
        due: list[str] = []
        checked = self._checked
        while checked and now - checked[0][0] >= TOKEN_REFRESH_S and len(due) < TOKEN_REFRESH_MAX:
            at, key = checked.popleft()
            hit = self._tokens.get(key)
            if hit is None or hit[1] != at:
                continue  # evicted, or checked again since (a later record follows)
            if now - self._used.get(key, -TOKEN_KEEP_S) < TOKEN_KEEP_S:
                due.append(key)
            else:
                self._used.pop(key, None)
        if due:
            await self._check_tokens(due)

    async def _keep_fresh(self) -> None:
        while self._checked:
            # wall-clock pacing on purpose: a fake clock in tests must not spin this loop
            await asyncio.sleep(TOKEN_REFRESH_GATHER_S)
            try:
                await self.refresh_due()
            except Exception:
                log.warning("background access token check failed", exc_info=True)

    async def do_logout(self, req: Requester) -> None:
        await self._delete_devices(req.user_id, [req.device_id])

    async def do_logout_all(self, req: Requester) -> None:
        async with self.db.session() as s:
            ids = list(
                (
                    await s.execute(select(Device.device_id).where(Device.user_id == req.user_id))
                ).scalars()
            )
        await self._delete_devices(req.user_id, ids)

    async def _delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        if not device_ids:
            return
        async with self.db.transaction() as s:
            pos = await allocate(s)
            for model in (AccessToken, Device, DeviceKeys, OneTimeKey, FallbackKey, ToDevice):
                await s.execute(
                    delete(model).where(
                        model.user_id == user_id,
                        model.device_id.in_(device_ids),
                    )
                )
            # cross-signing signatures of these devices, and theirs of the master key
            await s.execute(
                delete(CrossSigningSignature).where(
                    CrossSigningSignature.target_user_id == user_id,
                    CrossSigningSignature.target_key_id.in_(device_ids),
                )
            )
            await s.execute(
                delete(CrossSigningSignature).where(
                    CrossSigningSignature.origin_user_id == user_id,
                    CrossSigningSignature.origin_key_id.in_([f"ed25519:{d}" for d in device_ids]),
                )
            )
            s.add(DeviceListChange(stream=pos, user_id=user_id))
            peers = await room_peers(s, user_id)
            self.notifier.mark(peers, pos, "device_list")
        gone = set(device_ids)
        for device_id in gone:
            self._otk_changed(user_id, device_id)
        self._token_gen += 1
        for key, (req, _) in list(self._tokens.items()):
            if req.user_id == user_id and req.device_id in gone:
                del self._tokens[key]
                self._used.pop(key, None)
        self.notifier.notify(peers, pos)

    # ------------------------------------------------------------------ devices

    @staticmethod
    def _device_json(d: Device) -> JsonDict:
        return {
            "device_id": d.device_id,
            "display_name": d.display_name,
            "last_seen_ip": d.last_seen_ip,
            "last_seen_ts": d.last_seen_ts,
        }

    async def devices(self, req: Requester) -> list[JsonDict]:
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(Device).where(Device.user_id == req.user_id).order_by(Device.created_at)
                )
            ).scalars()
            return [self._device_json(d) for d in rows]

    async def device(self, req: Requester, device_id: str) -> JsonDict:
        async with self.db.session() as s:
            d = await s.get(Device, (req.user_id, device_id))
            if d is None:
                raise NotFound("no such device")
            return self._device_json(d)

    async def do_rename_device(self, req: Requester, device_id: str, body: JsonDict) -> None:
        name = body.get("display_name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("display_name must be a string", errcode="M_BAD_JSON")
        async with self.db.transaction() as s:
            d = await s.get(Device, (req.user_id, device_id))
            if d is None:
                raise NotFound("no such device")
            d.display_name = name

    async def check_uia(
        self, req: Requester, body: JsonDict, *, operation: str, ip: str | None
    ) -> UiaResult:
        """User-interactive auth with the password, in a session tied to ``req``'s user and to
        ``operation`` with this body. The caller runs the operation when ``challenge`` is None,
        then ends the session with ``self.uia.finish(result.session)``. Password attempts go
        through the login's checks (lockout with back-off, audit)."""
        op = operation_key(operation, body)
        auth = body.get("auth")
        if auth is None:
            return UiaResult(challenge(PASSWORD_FLOWS, self.uia.open(req.user_id, op), []), "")
        if not isinstance(auth, dict):
            raise BadRequest("auth must be an object", errcode="M_BAD_JSON")
        sid = auth.get("session")
        if sid is None:  # no first round trip: a session of its own
            sid = self.uia.open(req.user_id, op)
        completed = self.uia.get(sid, req.user_id, op)
        if completed is None:
            return UiaResult(self._stale_session(PASSWORD_FLOWS, req.user_id, op), "")
        if LOGIN_PW_STAGE in completed:
            return UiaResult(None, sid)
        if auth.get("type") != LOGIN_PW_STAGE:
            return UiaResult(self._unrecognized(PASSWORD_FLOWS, sid, completed, auth), sid)
        not_yourself = UiaResult(
            challenge(
                PASSWORD_FLOWS,
                sid,
                completed,
                errcode="M_FORBIDDEN",
                error="you can only authenticate as yourself",
            ),
            sid,
        )
        if (
            self._username_from_login(auth).lower()
            != (localpart_of(req.user_id, self.server_name) or "").lower()
        ):
            # Refused before any password check: another user's password is never verified
            # here (no login audited for them, their failed-login count untouched).
            return not_yourself
        try:
            _, principal = await self.check_password_auth(auth, ip=ip)
        except Unauthorized as e:  # a wrong password: the client may try again in the session
            return UiaResult(
                challenge(PASSWORD_FLOWS, sid, completed, errcode=e.matrix_errcode, error=str(e)),
                sid,
            )
        if principal.account_id != req.account_id:
            return not_yourself
        self.uia.complete(sid, LOGIN_PW_STAGE)
        return UiaResult(None, sid)

    async def do_delete_devices(
        self, req: Requester, device_ids: list[str], body: JsonDict, *, ip: str | None
    ) -> JsonDict | None:
        """Delete devices after user-interactive auth: None when done, else the 401 body."""
        operation = "delete_devices " + dumps(sorted(set(device_ids)))
        uia = await self.check_uia(req, body, operation=operation, ip=ip)
        if uia.challenge is not None:
            return uia.challenge
        await self._delete_devices(req.user_id, device_ids)
        self.uia.finish(uia.session)
        return None

    # ------------------------------------------------------------------ keys

    async def otk_counts(self, s: AsyncSession, user_id: str, device_id: str) -> dict[str, int]:
        rows = await s.execute(
            select(OneTimeKey.algorithm, func.count())
            .where(OneTimeKey.user_id == user_id, OneTimeKey.device_id == device_id)
            .group_by(OneTimeKey.algorithm)
        )
        counts = {"signed_curve25519": 0}
        counts.update({alg: int(n) for alg, n in rows.all()})
        return counts

    async def key_counts(
        self, s: AsyncSession, user_id: str, device_id: str
    ) -> tuple[dict[str, int], list[str]]:
        """One-time key counts per algorithm and unused fallback key types, in one query."""
        otk = (
            select(OneTimeKey.algorithm, func.count().label("n"), literal(0).label("fb"))
            .where(OneTimeKey.user_id == user_id, OneTimeKey.device_id == device_id)
            .group_by(OneTimeKey.algorithm)
        )
        fb = select(FallbackKey.algorithm, literal(0).label("n"), literal(1).label("fb")).where(
            FallbackKey.user_id == user_id,
            FallbackKey.device_id == device_id,
            FallbackKey.used.is_(False),
        )
        counts = {"signed_curve25519": 0}
        fallback: list[str] = []
        for alg, n, is_fb in (await s.execute(union_all(otk, fb))).all():
            if is_fb:
                fallback.append(alg)
            else:
                counts[alg] = int(n)
        return counts, sorted(fallback)

    def otk_generation(self, user_id: str, device_id: str) -> int:
        return self._otk_gen.get((user_id, device_id), 0)

    def _otk_changed(self, user_id: str, device_id: str) -> None:
        """Called after a transaction that changed the device's one-time or fallback keys has
        committed (or failed)."""
        key = (user_id, device_id)
        self._otk_gen[key] = self._otk_gen.get(key, 0) + 1
        self._otk_cache.pop(key, None)

    async def cached_key_counts(
        self,
        session: Callable[[], Awaitable[AsyncSession]],
        user_id: str,
        device_id: str,
        gen: int,
    ) -> tuple[dict[str, int], list[str]]:
        """``key_counts``, cached per device. ``gen`` is ``otk_generation`` read before ``s``
        began: a count read in a snapshot older than a change is never kept."""
        key = (user_id, device_id)
        hit = self._otk_cache.get(key)
        if hit is not None and hit[0] == self._otk_gen.get(key, 0):
            return dict(hit[1]), list(hit[2])
        counts, fallback = await self.key_counts(await session(), user_id, device_id)
        if gen == self._otk_gen.get(key, 0):
            if len(self._otk_cache) > 100_000:
                self._otk_cache.clear()
            self._otk_cache[key] = (gen, dict(counts), list(fallback))
        return counts, fallback

    async def unused_fallback_types(
        self, s: AsyncSession, user_id: str, device_id: str
    ) -> list[str]:
        rows = await s.execute(
            select(FallbackKey.algorithm).where(
                FallbackKey.user_id == user_id,
                FallbackKey.device_id == device_id,
                FallbackKey.used.is_(False),
            )
        )
        return sorted(rows.scalars())

    async def do_upload_keys(self, req: Requester, body: JsonDict) -> JsonDict:
        device_keys = body.get("device_keys")
        otks = body.get("one_time_keys") or {}
        fallbacks = body.get("fallback_keys") or body.get("org.matrix.msc2732.fallback_keys") or {}
        if device_keys is not None and not isinstance(device_keys, dict):
            raise BadRequest("device_keys must be an object", errcode="M_BAD_JSON")
        if not isinstance(otks, dict) or not isinstance(fallbacks, dict):
            raise BadRequest(
                "one_time_keys and fallback_keys must be objects", errcode="M_BAD_JSON"
            )
        if device_keys is not None and (
            device_keys.get("user_id") != req.user_id
            or device_keys.get("device_id") != req.device_id
        ):
            raise BadRequest("device_keys are not for this device", errcode="M_INVALID_PARAM")
        for table in (otks, fallbacks):
            for key_name, key in table.items():
                if ":" not in key_name or not isinstance(key, dict | str):
                    raise BadRequest("keys are named algorithm:key_id", errcode="M_BAD_JSON")
        try:
            return await self._store_keys(req, device_keys, otks, fallbacks)
        finally:
            self._otk_changed(req.user_id, req.device_id)

    async def _store_keys(
        self,
        req: Requester,
        device_keys: JsonDict | None,
        otks: JsonDict,
        fallbacks: JsonDict,
    ) -> JsonDict:
        changed_pos: int | None = None
        async with self.db.transaction() as s:
            if device_keys is not None:
                raw = dumps(device_keys)
                old = await s.get(DeviceKeys, (req.user_id, req.device_id))
                if old is None or old.keys != raw:
                    changed_pos = await allocate(s)
                    if old is None:
                        s.add(DeviceKeys(user_id=req.user_id, device_id=req.device_id, keys=raw))
                    else:
                        old.keys = raw
                    s.add(DeviceListChange(stream=changed_pos, user_id=req.user_id))
            if otks:
                existing = set(
                    (
                        await s.execute(
                            select(OneTimeKey.algorithm + ":" + OneTimeKey.key_id).where(
                                OneTimeKey.user_id == req.user_id,
                                OneTimeKey.device_id == req.device_id,
                            )
                        )
                    ).scalars()
                )
                for key_name, key in otks.items():
                    if key_name in existing:
                        continue
                    alg, _, key_id = key_name.partition(":")
                    s.add(
                        OneTimeKey(
                            user_id=req.user_id,
                            device_id=req.device_id,
                            algorithm=alg,
                            key_id=key_id,
                            key_json=dumps(key),
                        )
                    )
            for key_name, key in fallbacks.items():
                alg, _, key_id = key_name.partition(":")
                fb = await s.get(FallbackKey, (req.user_id, req.device_id, alg))
                if fb is None:
                    s.add(
                        FallbackKey(
                            user_id=req.user_id,
                            device_id=req.device_id,
                            algorithm=alg,
                            key_id=key_id,
                            key_json=dumps(key),
                            used=False,
                        )
                    )
                elif fb.key_id != key_id:
                    fb.key_id, fb.key_json, fb.used = key_id, dumps(key), False
            await s.flush()
            counts = await self.otk_counts(s, req.user_id, req.device_id)
            peers = await room_peers(s, req.user_id) if changed_pos is not None else set()
            if changed_pos is not None:
                self.notifier.mark(peers, changed_pos, "device_list")
        if changed_pos is not None:
            self.notifier.notify(peers, changed_pos)
        return {"one_time_key_counts": counts}

    @staticmethod
    async def device_keys_for(s: AsyncSession, wanted: JsonDict) -> dict[str, dict[str, Any]]:
        """``keys/query``'s ``device_keys``: user id -> device id -> keys, for the users of
        ``wanted`` (all their devices, or the listed ones). Cross-signing adds to it
        (``messaging.cross_signing``)."""
        users = [u for u in wanted if isinstance(u, str)]
        rows = (
            await s.execute(
                select(DeviceKeys, Device.display_name)
                .join(
                    Device,
                    and_(
                        Device.user_id == DeviceKeys.user_id,
                        Device.device_id == DeviceKeys.device_id,
                    ),
                )
                .where(DeviceKeys.user_id.in_(users))
            )
        ).all()
        result: dict[str, dict[str, Any]] = {u: {} for u in users}
        for dk, display_name in rows:
            devs = wanted.get(dk.user_id)
            if isinstance(devs, list) and devs and dk.device_id not in devs:
                continue
            keys = loads(dk.keys)
            unsigned = dict(keys.get("unsigned") or {})
            if display_name:
                unsigned["device_display_name"] = display_name
            keys["unsigned"] = unsigned
            result[dk.user_id][dk.device_id] = keys
        return result

    async def do_claim_keys(self, req: Requester, body: JsonDict) -> JsonDict:
        wanted = body.get("one_time_keys")
        if not isinstance(wanted, dict):
            raise BadRequest("one_time_keys must be an object", errcode="M_BAD_JSON")
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for user_id, devs in wanted.items():
            if not isinstance(devs, dict):
                raise BadRequest("one_time_keys must map users to devices", errcode="M_BAD_JSON")
            for device_id, alg in devs.items():
                if not isinstance(alg, str):
                    raise BadRequest("algorithm must be a string", errcode="M_BAD_JSON")
                try:
                    got = await self._claim_one(user_id, device_id, alg)
                finally:
                    self._otk_changed(user_id, device_id)
                if got is not None:
                    result.setdefault(user_id, {})[device_id] = {got[0]: got[1]}
        return {"one_time_keys": result, "failures": {}}

    async def _claim_one(self, user_id: str, device_id: str, alg: str) -> tuple[str, Any] | None:
        """Hand out one one-time key exactly once (conditional delete), else the fallback key."""
        for _ in range(20):
            async with self.db.transaction() as s:
                row = (
                    await s.execute(
                        select(OneTimeKey.id, OneTimeKey.key_id, OneTimeKey.key_json)
                        .where(
                            OneTimeKey.user_id == user_id,
                            OneTimeKey.device_id == device_id,
                            OneTimeKey.algorithm == alg,
                        )
                        .order_by(OneTimeKey.id)
                        .limit(1)
                    )
                ).one_or_none()
                if row is not None:
                    res = await s.execute(delete(OneTimeKey).where(OneTimeKey.id == row[0]))
                    if res.rowcount == 1:  # type: ignore[attr-defined]
                        return f"{alg}:{row[1]}", loads(row[2])
                    continue  # somebody else claimed it first: try the next key
                fb = await s.get(FallbackKey, (user_id, device_id, alg))
                if fb is None:
                    return None
                fb.used = True
                return f"{alg}:{fb.key_id}", loads(fb.key_json)
        return None

    async def key_changes(self, req: Requester, from_pos: int, to_pos: int) -> JsonDict:
        async with self.db.session() as s:
            peers = await room_peers(s, req.user_id)
            rows = await s.execute(
                select(DeviceListChange.user_id)
                .where(
                    DeviceListChange.stream > from_pos,
                    DeviceListChange.stream <= to_pos,
                    or_(
                        and_(
                            DeviceListChange.audience.is_(None),
                            DeviceListChange.user_id.in_(peers),
                        ),
                        DeviceListChange.audience == req.user_id,
                    ),
                )
                .distinct()
            )
            return {"changed": sorted(rows.scalars()), "left": []}

    # ------------------------------------------------------------------ to-device

    async def do_send_to_device(
        self, req: Requester, event_type: str, txn_id: str, body: JsonDict
    ) -> None:
        messages = body.get("messages")
        if not isinstance(messages, dict):
            raise BadRequest("messages must be an object", errcode="M_BAD_JSON")
        for devs in messages.values():
            if not isinstance(devs, dict) or not all(isinstance(c, dict) for c in devs.values()):
                raise BadRequest("messages map users to devices to contents", errcode="M_BAD_JSON")
        targets: set[str] = set()
        async with self.db.transaction() as s:
            if await s.get(ToDeviceTxn, (req.user_id, req.device_id, txn_id)) is not None:
                return
            s.add(ToDeviceTxn(user_id=req.user_id, device_id=req.device_id, txn_id=txn_id))
            rows: list[tuple[str, str, str]] = []
            for user_id, devs in messages.items():
                if not isinstance(user_id, str):
                    continue
                for device_id, content in devs.items():
                    if device_id == "*":
                        all_devs = (
                            await s.execute(
                                select(Device.device_id).where(Device.user_id == user_id)
                            )
                        ).scalars()
                        rows.extend((user_id, d, dumps(content)) for d in all_devs)
                    else:
                        rows.append((user_id, device_id, dumps(content)))
            if not rows:
                return
            first = await allocate(s, len(rows))
            for i, (user_id, device_id, content_json) in enumerate(rows):
                s.add(
                    ToDevice(
                        stream=first + i,
                        user_id=user_id,
                        device_id=device_id,
                        sender=req.user_id,
                        type=event_type,
                        content=content_json,
                    )
                )
                targets.add(user_id)
            last = first + len(rows) - 1
            self.notifier.mark(targets, last, "to_device")
        self.notifier.notify(targets, last)

    async def to_device_for_sync(
        self, req: Requester, since: int | None, upto: int, *, check: bool = True
    ) -> list[JsonDict]:
        """Delete what the client acknowledged (``since``), return what is newer, in order.

        ``check`` False (nothing was sent to the user since ``since``) skips the query unless
        this device still has to acknowledge what it was given last time.
        """
        inbox = (req.user_id, req.device_id)
        if not check and inbox not in self._unacked:
            return []
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(ToDevice.stream, ToDevice.sender, ToDevice.type, ToDevice.content)
                    .where(
                        ToDevice.user_id == req.user_id,
                        ToDevice.device_id == req.device_id,
                        ToDevice.stream <= upto,
                    )
                    .order_by(ToDevice.stream)
                )
            ).all()
        if since and rows and rows[0][0] <= since:
            async with self.db.transaction() as s:
                await s.execute(
                    delete(ToDevice).where(
                        ToDevice.user_id == req.user_id,
                        ToDevice.device_id == req.device_id,
                        ToDevice.stream <= since,
                    )
                )
        out = [
            {"sender": sender, "type": etype, "content": loads(content)}
            for stream, sender, etype, content in rows
            if stream > (since or 0)
        ]
        if out:
            self._unacked.add(inbox)
        else:
            self._unacked.discard(inbox)
        return out

    # ------------------------------------------------------------------ profile

    async def profile(self, user_id: str) -> JsonDict:
        local = localpart_of(user_id, self.server_name)
        async with self.db.session() as s:
            account = (
                (
                    await s.execute(select(Account).where(Account.username == local))
                ).scalar_one_or_none()
                if local
                else None
            )
            if account is None:
                raise NotFound("no such user")
            p = await s.get(Profile, user_id)
        out: JsonDict = {"displayname": (p.displayname if p else None) or account.display_name}
        if p is not None and p.avatar_url:
            out["avatar_url"] = p.avatar_url
        return out

    async def do_set_profile(self, req: Requester, field: str, value: Any) -> None:
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{field} must be a string", errcode="M_BAD_JSON")
        if isinstance(value, str) and len(value) > 255:
            raise ValidationError(f"{field} is too long", fields={field: "too long"})
        async with self.db.transaction() as s:
            p = await s.get(Profile, req.user_id)
            if p is None:
                p = Profile(user_id=req.user_id)
                s.add(p)
            setattr(p, field, value)

    # ------------------------------------------------------------------ account data

    async def do_set_account_data(
        self, req: Requester, room_id: str, data_type: str, content: JsonDict
    ) -> None:
        await self.do_update_account_data(req, room_id, data_type, lambda _old: content)

    async def do_update_account_data(
        self,
        req: Requester,
        room_id: str,
        data_type: str,
        change: Callable[[JsonDict | None], JsonDict],
    ) -> None:
        """Replace an entry with ``change(current content or None)``; an exception from
        ``change`` rolls back and propagates. Read-modify-writes of one entry do not lose
        updates: the stream position is allocated first, which holds the counter row's lock
        until commit on PostgreSQL (SQLite writers are serialised already)."""
        async with self.db.transaction() as s:
            pos = await allocate(s)
            row = await s.get(AccountData, (req.user_id, room_id, data_type))
            content = dumps(change(None if row is None else loads(row.content)))
            if row is None:
                s.add(
                    AccountData(
                        user_id=req.user_id,
                        room_id=room_id,
                        type=data_type,
                        content=content,
                        stream=pos,
                    )
                )
            else:
                row.content, row.stream = content, pos
            self.notifier.mark([req.user_id], pos, "account_data")
        self.notifier.notify([req.user_id], pos)

    async def account_data_or_none(
        self, user_id: str, room_id: str, data_type: str
    ) -> JsonDict | None:
        async with self.db.session() as s:
            row = await s.get(AccountData, (user_id, room_id, data_type))
        if row is None:
            return None
        content: JsonDict = loads(row.content)
        return content

    async def account_data(self, user_id: str, room_id: str, data_type: str) -> JsonDict:
        content = await self.account_data_or_none(user_id, room_id, data_type)
        if content is None:
            raise NotFound("no account data of that type")
        return content

    async def account_data_since(
        self, s: AsyncSession, user_id: str, since: int, upto: int
    ) -> list[AccountData]:
        rows = await s.execute(
            select(AccountData).where(
                AccountData.user_id == user_id,
                AccountData.stream > since,
                AccountData.stream <= upto,
            )
        )
        return list(rows.scalars())

    # ------------------------------------------------------------------ filters

    async def do_create_filter(self, req: Requester, definition: JsonDict) -> str:
        async with self.db.transaction() as s:
            f = Filter(user_id=req.user_id, definition=dumps(definition))
            s.add(f)
            await s.flush()
            return str(f.id)

    async def filter(self, user_id: str, filter_id: str) -> JsonDict:
        if not filter_id.isdigit():
            raise NotFound("no such filter")
        async with self.db.session() as s:
            f = await s.get(Filter, int(filter_id))
        if f is None or f.user_id != user_id:
            raise NotFound("no such filter")
        d: JsonDict = loads(f.definition)
        return d
