"""Signed invitation tokens, guest cookies, TURN REST credentials and sealing files at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import nacl.secret
import nacl.utils


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _derive(secret_key: str, purpose: str) -> bytes:
    return hashlib.blake2b(
        secret_key.encode("utf-8"), digest_size=32, person=purpose.encode("ascii")[:16]
    ).digest()


@dataclass(frozen=True)
class TokenClaims:
    appointment_id: str
    expires_at: datetime


def make_invitation_token(secret_key: str, appointment_id: str, expires_at: datetime) -> str:
    """``<appointment>.<expiry>.<nonce>.<hmac>``: 256 random bits, signed with the server key."""
    exp = int(expires_at.timestamp())
    nonce = _b64(secrets.token_bytes(32))
    body = f"{appointment_id}.{exp}.{nonce}"
    return f"{body}.{_sign(secret_key, body)}"


def _sign(secret_key: str, body: str) -> str:
    key = _derive(secret_key, "konsil-invite")
    return _b64(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())


def read_invitation_token(secret_key: str, token: str) -> TokenClaims | None:
    """The token's claims if it is well formed and its signature is ours (expiry not checked)."""
    parts = token.split(".")
    if len(parts) != 4 or not all(parts) or len(token) > 200:
        return None
    appointment_id, exp, _nonce, sig = parts
    try:
        body = f"{appointment_id}.{exp}.{_nonce}"
        if not hmac.compare_digest(_sign(secret_key, body), sig):
            return None
        return TokenClaims(appointment_id, datetime.fromtimestamp(int(exp), UTC))
    except (ValueError, UnicodeEncodeError, OverflowError):
        return None


def new_guest_secret() -> str:
    return secrets.token_urlsafe(32)


class FileSealer:
    """XSalsa20-Poly1305 (PyNaCl SecretBox) keyed from the server's secret_key."""

    def __init__(self, secret_key: str) -> None:
        self._box = nacl.secret.SecretBox(_derive(secret_key, "konsil-vfile"))

    def seal(self, data: bytes) -> bytes:
        return bytes(self._box.encrypt(data, nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)))

    def open(self, sealed: bytes) -> bytes:
        return bytes(self._box.decrypt(sealed))
