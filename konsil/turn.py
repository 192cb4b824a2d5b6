"""TURN credentials (coturn's REST-API scheme), shared by the video pages and the Matrix
``/voip/turnServer`` endpoint: ``[turn] secret`` is coturn's ``static-auth-secret``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime


def turn_credentials(secret: str, user: str, now: datetime, ttl_seconds: int) -> tuple[str, str]:
    """Username ``expiry:user``, password base64(HMAC-SHA1(secret, username)): coturn accepts
    them until ``expiry`` (Unix seconds) without knowing the user."""
    username = f"{int(now.timestamp()) + ttl_seconds}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")
