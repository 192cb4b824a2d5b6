"""Shared helpers of the messaging domain: identifiers, tokens, JSON, stream allocation."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.db import Database
from konsil.errors import BadRequest, Conflict, ValidationError
from messaging.models import StreamCounter

JsonDict = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Requester:
    """The caller of a Matrix endpoint, resolved from its access token."""

    user_id: str
    device_id: str
    account_id: str
    is_guest: bool


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def loads(raw: str) -> Any:
    return json.loads(raw)


def random_id(n: int = 18) -> str:
    return secrets.token_urlsafe(n).replace("-", "a").replace("_", "b")


def new_event_id() -> str:
    return "$" + random_id(24)


def new_device_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))


def make_token(pos: int) -> str:
    return f"s{pos}"


def parse_token(token: str | None, name: str = "since") -> int | None:
    if token is None or token == "":
        return None
    if not token.startswith("s") or not token[1:].isdigit():
        raise ValidationError(f"{name} is not a valid stream token", fields={name: "invalid"})
    return int(token[1:])


def localpart_of(user_id: str, server_name: str) -> str | None:
    """``@alice:server`` -> ``alice`` (only for our own server); a bare localpart passes through."""
    if not user_id.startswith("@"):
        return user_id or None
    local, sep, server = user_id[1:].partition(":")
    if not sep or server != server_name:
        return None
    return local


def require_str(body: JsonDict, key: str, *, optional: bool = False) -> str:
    v = body.get(key)
    if v is None and optional:
        return ""
    if not isinstance(v, str) or (not v and not optional):
        raise BadRequest(f"'{key}' must be a non-empty string", errcode="M_BAD_JSON")
    return v


def require_obj(body: JsonDict, key: str, *, optional: bool = True) -> JsonDict:
    v = body.get(key)
    if v is None and optional:
        return {}
    if not isinstance(v, dict):
        raise BadRequest(f"'{key}' must be a JSON object", errcode="M_BAD_JSON")
    return v


class LazySession:
    """A read session opened at its first use (``await ls.get()``), closed with the block."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cm: contextlib.AbstractAsyncContextManager[AsyncSession] | None = None
        self._s: AsyncSession | None = None

    async def get(self) -> AsyncSession:
        if self._s is None:
            cm = self._db.session()
            self._s = await cm.__aenter__()
            self._cm = cm  # only once entered: a failed start leaves nothing to exit
        return self._s

    async def __aenter__(self) -> LazySession:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._cm is not None:
            cm, self._cm, self._s = self._cm, None, None
            await cm.__aexit__(*exc)


async def current_position(s: AsyncSession) -> int:
    """The newest committed stream position."""
    pos = (await s.execute(select(StreamCounter.pos).where(StreamCounter.id == 1))).scalar()
    return int(pos or 0)


async def allocate(s: AsyncSession, n: int = 1) -> int:
    """Reserve ``n`` consecutive stream positions; returns the first.

    The counter row stays locked until the transaction commits, so positions become visible in
    order on PostgreSQL; SQLite writers are serialised already.
    """
    res = await s.execute(
        update(StreamCounter)
        .where(StreamCounter.id == 1)
        .values(pos=StreamCounter.pos + n)
        .returning(StreamCounter.pos)
    )
    end = res.scalar_one_or_none()
    if end is None:
        s.add(StreamCounter(id=1, pos=n))
        await s.flush()
        end = n
    return int(end) - n + 1


async def retry_on_conflict(
    write: Callable[[], Awaitable[T]], what: str = "the keys changed concurrently"
) -> T:
    """Run a write transaction again when a concurrent one inserted the same row first (two
    first uploads at once on PostgreSQL): the next run reads what the winner stored."""
    for _ in range(3):
        try:
            return await write()
        except IntegrityError:
            continue
    raise Conflict(f"{what}: try again")
