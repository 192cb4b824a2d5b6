"""Argon2id password hashing (libsodium through PyNaCl), off the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id


@dataclass(frozen=True)
class HashProfile:
    opslimit: int
    memlimit: int


# libsodium's "interactive" profile: 2 passes over 64 MiB.
INTERACTIVE = HashProfile(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
# Still Argon2id, at libsodium's minimum cost: for test suites only.
FAST_FOR_TESTS = HashProfile(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)


class PasswordHasher:
    def __init__(self, profile: HashProfile = INTERACTIVE) -> None:
        self.profile = profile

    def hash_sync(self, password: str) -> str:
        raw: bytes = argon2id.str(
            password.encode("utf-8"), opslimit=self.profile.opslimit, memlimit=self.profile.memlimit
        )
        return raw.decode("ascii")

    def verify_sync(self, stored: str, password: str) -> bool:
        try:
            return bool(argon2id.verify(stored.encode("ascii"), password.encode("utf-8")))
        except (nacl.exceptions.InvalidkeyError, nacl.exceptions.RuntimeError):
            return False

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, stored: str, password: str) -> bool:
        return await asyncio.to_thread(self.verify_sync, stored, password)


def check_password_strength(password: str) -> str | None:
    """A reason the password is refused, or None."""
    if len(password) < 10:
        return "at least 10 characters"
    if len(password) > 512:
        return "at most 512 characters"
    return None
