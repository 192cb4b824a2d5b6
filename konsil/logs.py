"""Structured JSON logging.

Log lines carry ids, codes and durations; never names, matricules, message bodies, passwords,
tokens or keys. Formatter-level redaction is a second line of defence for query strings.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET_QS = re.compile(r"(access_token|token|password|code|key)=[^&\s]+", re.IGNORECASE)
_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    return _SECRET_QS.sub(r"\1=[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = redact(v) if isinstance(v, str) else v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _DropAiohttpAccess(logging.Filter):
    """aiohttp's access log prints full URLs (search terms, tokens); Konsil writes its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


_DROP_ACCESS = _DropAiohttpAccess()


def silence_aiohttp_access_log() -> None:
    """Drop aiohttp's access log, and keep drivers that log SQL parameters (patient data) at
    DEBUG from ever doing so."""
    logger = logging.getLogger("aiohttp.access")
    if _DROP_ACCESS not in logger.filters:
        logger.addFilter(_DROP_ACCESS)
    for name in ("aiosqlite", "asyncpg", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    silence_aiohttp_access_log()
