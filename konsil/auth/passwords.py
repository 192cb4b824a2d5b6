"""Argon2id password hashing (libsodium through PyNaCl), off the event loop."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id

from konsil.config import AuthConfig


@dataclass(frozen=True)
class HashProfile:
    opslimit: int  # Argon2id passes
    memlimit: int  # bytes

    @classmethod
    def of(cls, memory_kib: int, passes: int) -> HashProfile:
        return cls(passes, memory_kib * 1024)


_PARAMS = re.compile(r"^\$argon2id\$v=\d+\$m=(\d+),t=(\d+),p=\d+\$")


# libsodium's "interactive" profile: 2 passes over 64 MiB.
INTERACTIVE = HashProfile(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
# Still Argon2id, at libsodium's minimum cost: for test suites only.
FAST_FOR_TESTS = HashProfile(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)


class PasswordHasher:
    """Hashes with ``profile``; checks any Argon2id hash at the cost stored in it. At most
    ``concurrency`` hashes or checks run at once (each holds the profile's memory)."""

    def __init__(self, profile: HashProfile = INTERACTIVE, *, concurrency: int = 2) -> None:
        self.profile = profile
        self._slots = asyncio.Semaphore(concurrency)

    @classmethod
    def configured(cls, auth: AuthConfig) -> PasswordHasher:
        """The hasher of ``[auth] password_memory_kib``, ``password_passes`` and
        ``password_hash_concurrency``."""
        return cls(
            HashProfile.of(auth.password_memory_kib, auth.password_passes),
            concurrency=auth.password_hash_concurrency,
        )

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` was made with another cost than this hasher's profile."""
        m = _PARAMS.match(stored)
        if m is None:
            return True
        return (int(m[1]) * 1024, int(m[2])) != (self.profile.memlimit, self.profile.opslimit)

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
        async with self._slots:
            return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, stored: str, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self.verify_sync, stored, password)


def check_password_strength(password: str) -> str | None:
    """A reason the password is refused, or None."""
    if len(password) < 10:
        return "at least 10 characters"
    if len(password) > 512:
        return "at most 512 characters"
    return None
