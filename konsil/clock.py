"""The one source of time. Domain code takes a Clock; it never calls time.time() itself."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

LUXEMBOURG = ZoneInfo("Europe/Luxembourg")


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC datetime."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock, for durations and timeouts."""

    async def sleep(self, seconds: float) -> None:
        """Wait; a fake clock may return at once."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock tests move by hand. sleep() advances it instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


def to_utc(value: datetime) -> datetime:
    """Stored times are aware UTC; SQLite hands back naive values, which are UTC by contract."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def local(value: datetime) -> datetime:
    """For display: Europe/Luxembourg."""
    return to_utc(value).astimezone(LUXEMBOURG)


def ms(value: datetime) -> int:
    """Milliseconds since the epoch (Matrix origin_server_ts and friends)."""
    return int(to_utc(value).timestamp() * 1000)
