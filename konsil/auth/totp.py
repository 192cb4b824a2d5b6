"""RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30 s), as authenticator apps use."""

from __future__ import annotations

import base64
import hmac
import secrets
import struct
from datetime import datetime
from urllib.parse import quote

STEP = 30
DIGITS = 6


def new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def code_at(secret: str, at: datetime, *, offset_steps: int = 0) -> str:
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int(at.timestamp()) // STEP + offset_steps
    digest = hmac.new(key, struct.pack(">Q", counter), "sha1").digest()
    pos = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[pos : pos + 4])[0] & 0x7FFFFFFF
    return f"{value % 10**DIGITS:0{DIGITS}d}"


def verify(secret: str, code: str, at: datetime, *, window: int = 1) -> bool:
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return False
    return any(
        hmac.compare_digest(code_at(secret, at, offset_steps=o), code)
        for o in range(-window, window + 1)
    )


def provisioning_uri(secret: str, username: str, issuer: str = "Konsil") -> str:
    return (
        f"otpauth://totp/{quote(issuer)}:{quote(username)}?secret={secret}"
        f"&issuer={quote(issuer)}&algorithm=SHA1&digits={DIGITS}&period={STEP}"
    )
