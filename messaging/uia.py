"""User-interactive authentication sessions (Client-Server API, "User-Interactive Authentication
API"): the ``session`` a 401 hands out, the stages completed in it, and what it is tied to.

A session belongs to one user (None while registering) and one operation: the endpoint's action
and the request body without ``auth`` (a digest of both). Another user's session, one issued for
another request, an expired or an unknown one are all refused the same way (a 401 with a fresh
session), so that an answer never tells whether a session exists. A session authorises its
operation until that operation has succeeded once (``finish``); if the operation fails after the
stages were completed, the client may retry with the same session without re-entering them.

Sessions live in this process's memory: with several workers behind a load balancer a client
must reach the same worker for the whole exchange (sticky sessions), else it is asked to start
again. They expire after ``ttl_s`` and there are at most ``max_sessions`` (the oldest go first),
at most ``max_per_user`` of them per user.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from konsil.clock import Clock
from messaging.common import JsonDict

UIA_SESSION_S = 600.0
UIA_MAX_SESSIONS = 10_000
UIA_MAX_PER_USER = 20


def operation_key(operation: str, body: JsonDict) -> str:
    """What a session is tied to: the operation's name and the body it acts on (minus ``auth``)."""
    rest = {k: v for k, v in body.items() if k != "auth"}
    canonical = json.dumps([operation, rest], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _Session:
    user_id: str | None
    operation: str
    expires_at: float
    completed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UiaResult:
    """``challenge`` is the 401 body to send, or None once every stage of a flow is complete;
    then ``session`` is to be passed to ``UiaSessions.finish`` after the operation succeeded."""

    challenge: JsonDict | None
    session: str


def challenge(
    flows: list[JsonDict],
    session: str,
    completed: list[str],
    *,
    errcode: str | None = None,
    error: str | None = None,
) -> JsonDict:
    body: JsonDict = {
        "flows": flows,
        "params": {},
        "session": session,
        "completed": list(completed),
    }
    if errcode is not None:
        body["errcode"] = errcode
        body["error"] = error or "authentication failed"
    return body


class UiaSessions:
    def __init__(
        self,
        clock: Clock,
        *,
        ttl_s: float = UIA_SESSION_S,
        max_sessions: int = UIA_MAX_SESSIONS,
        max_per_user: int = UIA_MAX_PER_USER,
    ) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self._sessions: dict[str, _Session] = {}  # in creation order

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, user_id: str | None, operation: str) -> str:
        """A new session (random, unguessable) for ``user_id`` and ``operation``."""
        now = self.clock.monotonic()
        self._prune(now)
        if user_id is not None:
            mine = [sid for sid, s in self._sessions.items() if s.user_id == user_id]
            for sid in mine[: max(0, len(mine) - self.max_per_user + 1)]:
                del self._sessions[sid]
        while len(self._sessions) >= self.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(24)
        self._sessions[sid] = _Session(user_id, operation, now + self.ttl_s)
        return sid

    def get(self, sid: Any, user_id: str | None, operation: str) -> list[str] | None:
        """The stages completed in session ``sid``; None when it is unknown, expired, another
        user's or issued for another operation (all alike to the caller)."""
        if not isinstance(sid, str):
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        if s.expires_at <= self.clock.monotonic():
            del self._sessions[sid]
            return None
        if s.user_id != user_id or not secrets.compare_digest(s.operation, operation):
            return None
        return list(s.completed)

    def complete(self, sid: str, stage: str) -> None:
        s = self._sessions.get(sid)
        if s is not None and stage not in s.completed:
            s.completed.append(stage)

    def finish(self, sid: str) -> None:
        """The operation succeeded: the session cannot be used again."""
        self._sessions.pop(sid, None)

    def _prune(self, now: float) -> None:
        # sessions expire in creation order (one ttl for all): drop from the front
        while self._sessions:
            sid = next(iter(self._sessions))
            if self._sessions[sid].expires_at > now:
                break
            del self._sessions[sid]
