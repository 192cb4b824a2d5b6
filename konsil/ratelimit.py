"""Token-bucket rate limiter keyed by a string (user, IP, …), on the injected clock."""

from __future__ import annotations

from dataclasses import dataclass

from konsil.clock import Clock
from konsil.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` actions per second on average, bursts of up to ``burst``."""

    def __init__(self, clock: Clock, *, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str, what: str = "requests") -> None:
        now = self.clock.monotonic()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens < 1.0:
            wait_ms = int((1.0 - b.tokens) / self.rate * 1000) + 1
            raise RateLimited(f"too many {what}: slow down", retry_after_ms=wait_ms)
        b.tokens -= 1.0

    def _prune(self, now: float) -> None:
        full = [
            k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
