"""Document signatures: a ``Signer`` interface and the Ed25519 implementation (PyNaCl).

Each organisation has one signing key. Its private half is stored sealed (NaCl SecretBox) with a
key derived (``konsil.crypto.Sealer``) from ``workflow.signing_key_secret`` or ``secret_key``,
so a copy of the database alone cannot sign. A qualified e-signature provider can replace
``Ed25519Signer`` behind the same interface: signing is detached, over the exact document bytes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Protocol

import nacl.exceptions
import nacl.signing
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.clock import Clock
from konsil.crypto import Sealer
from konsil.errors import ConfigError
from workflow.models import SigningKey

ALGORITHM = "ed25519"
SEALING_PURPOSE = "workflow-signkey"  # the derived key seals signing keys only


class Signer(Protocol):
    """Signs exact bytes with a detached signature; ``key_id`` names the key for verification."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, data: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class Ed25519Signer:
    key_id: str
    _key: nacl.signing.SigningKey

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._key.sign(data).signature
        return signature


@dataclass(frozen=True)
class Ed25519Verifier:
    public_key: bytes

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            nacl.signing.VerifyKey(self.public_key).verify(data, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            return False
        return True


def sealer(secret: str) -> Sealer:
    if len(secret) < 16:
        raise ConfigError(
            "workflow.signing_key_secret (or secret_key) must be set, at least 16 characters, "
            "to protect the organisations' signing keys"
        )
    return Sealer(secret, SEALING_PURPOSE)


class KeyRing:
    """Organisation signing keys: created on first use, unsealed once and kept in memory (by key id)."""

    def __init__(self, secret: str, clock: Clock) -> None:
        self._sealer = sealer(secret)
        self._clock = clock
        self._cache: dict[str, Ed25519Signer] = {}
        self._by_org: dict[str, Ed25519Signer] = {}
        self._created: set[str] = set()

    async def signer_for(self, session: AsyncSession, organisation_id: str) -> Signer:
        # A key this ring created may belong to a transaction that then rolled back: such a row
        # is read again every time. A key found that this ring did not create was committed by
        # someone, and keys are never deleted, so it is remembered per organisation. (This holds
        # with one ring per process, the app's ``workflow.web.keys.KEYS``: keys are only created
        # through a ring.)
        known = self._by_org.get(organisation_id)
        if known is not None:
            return known
        row = await self._row(session, organisation_id)
        if row is None:
            row = await self._create(session, organisation_id)
        cached = self._cache.get(row.id)
        if cached is not None:
            if row.id not in self._created:
                self._by_org[organisation_id] = cached
            return cached
        try:
            seed = self._sealer.open(row.sealed_private_key)
        except ValueError:
            raise ConfigError(
                "cannot unseal the organisation's signing key: signing_key_secret changed?"
            ) from None
        signer = Ed25519Signer(row.id, nacl.signing.SigningKey(seed))
        self._cache[row.id] = signer
        if row.id not in self._created:
            self._by_org[organisation_id] = signer
        return signer

    async def _row(self, session: AsyncSession, organisation_id: str) -> SigningKey | None:
        return (
            await session.execute(
                select(SigningKey).where(SigningKey.organisation_id == organisation_id)
            )
        ).scalar_one_or_none()

    async def _create(self, session: AsyncSession, organisation_id: str) -> SigningKey:
        key = nacl.signing.SigningKey.generate()
        row = SigningKey(
            organisation_id=organisation_id,
            algorithm=ALGORITHM,
            public_key=bytes(key.verify_key),
            sealed_private_key=self._sealer.seal(bytes(key)),
            created_at=self._clock.now(),
        )
        try:
            async with session.begin_nested():
                session.add(row)
                await session.flush()
        except IntegrityError:  # another process created it first: use theirs
            existing = await self._row(session, organisation_id)
            assert existing is not None
            return existing
        self._created.add(row.id)
        return row


async def verifier_for(session: AsyncSession, key_id: str) -> Verifier | None:
    row = await session.get(SigningKey, key_id)
    if row is None:
        return None
    if row.algorithm != ALGORITHM:  # pragma: no cover - only one algorithm so far
        return None
    return Ed25519Verifier(row.public_key)


# An Ed25519 SubjectPublicKeyInfo (RFC 8410) is this fixed DER prefix and the 32-byte key.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def public_key_pem(public_key: bytes) -> str:
    """The raw Ed25519 public key as a PEM ``PUBLIC KEY`` (what ``openssl pkey -pubin`` reads)."""
    b64 = base64.b64encode(_SPKI_PREFIX + public_key).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"


def public_key_from_pem(pem: str) -> bytes:
    """The raw key from ``public_key_pem``'s output; ValueError for anything else."""
    lines = [ln.strip() for ln in pem.strip().splitlines()]
    if (
        len(lines) < 3
        or lines[0] != "-----BEGIN PUBLIC KEY-----"
        or lines[-1] != "-----END PUBLIC KEY-----"
    ):
        raise ValueError("not a PEM public key")
    der = base64.b64decode("".join(lines[1:-1]), validate=True)
    if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
        raise ValueError("not an Ed25519 public key")
    return der[len(_SPKI_PREFIX) :]


async def public_keys(session: AsyncSession) -> list[tuple[str, str, bytes]]:
    """Every organisation's signing key: (key id, organisation id, raw public key)."""
    rows = await session.execute(
        select(SigningKey.id, SigningKey.organisation_id, SigningKey.public_key).order_by(
            SigningKey.id
        )
    )
    return [(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]
