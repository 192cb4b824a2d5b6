"""Encryption at rest for small secrets (TOTP seeds, signing keys, files).

Keys are derived from the configured ``secret_key`` per purpose (BLAKE2b with a personalisation
string), so one leaked derived key opens one kind of data only. XSalsa20-Poly1305 (NaCl
SecretBox) authenticates what it decrypts.
"""

from __future__ import annotations

import base64

import nacl.exceptions
import nacl.hash
import nacl.secret
import nacl.utils
from nacl.encoding import RawEncoder

from konsil.errors import ConfigError


def derive_key(secret_key: str, purpose: str) -> bytes:
    if not secret_key:
        raise ConfigError(
            "secret_key is not set: set KONSIL_SECRET_KEY or let `konsil serve` create one"
        )
    person = purpose.encode("utf-8")
    if len(person) > 16:
        raise ValueError("purpose must be at most 16 bytes")
    key: bytes = nacl.hash.blake2b(
        secret_key.encode("utf-8"),
        digest_size=nacl.secret.SecretBox.KEY_SIZE,
        person=person,
        encoder=RawEncoder,
    )
    return key


class Sealer:
    """Seal and open bytes with a key derived for one purpose."""

    def __init__(self, secret_key: str, purpose: str) -> None:
        self._box = nacl.secret.SecretBox(derive_key(secret_key, purpose))

    def seal(self, plaintext: bytes) -> bytes:
        return bytes(self._box.encrypt(plaintext))

    def open(self, sealed: bytes) -> bytes:
        try:
            return bytes(self._box.decrypt(sealed))
        except nacl.exceptions.CryptoError:
            raise ValueError("sealed data is corrupt or was sealed with another key") from None

    def seal_text(self, text: str) -> str:
        return base64.b64encode(self.seal(text.encode("utf-8"))).decode("ascii")

    def open_text(self, sealed: str) -> str:
        return self.open(base64.b64decode(sealed)).decode("utf-8")
