from __future__ import annotations

import time
from collections.abc import Callable

from domain.ports import LoginThrottle

_LIMIT = 100_000


class MemoryLoginThrottle(LoginThrottle):
    """A token bucket per key: `burst` failures at once, then one more every `refill` seconds. Only
    failures take tokens. Per process: with several workers each keeps its own count."""

    def __init__(self, burst: int, refill: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.refill, self.clock = burst, refill, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) / self.refill)

    def retry_after(self, keys: tuple[str, ...]) -> float:
        now = self.clock()
        wait = 0.0
        for key in keys:
            tokens = self._tokens(key, now)
            if tokens < 1:
                wait = max(wait, (1 - tokens) * self.refill)
        return wait

    def failed(self, keys: tuple[str, ...]) -> None:
        now = self.clock()
        if len(self._buckets) >= _LIMIT:  # forget the oldest half (all refilled long ago, most likely)
            for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:_LIMIT // 2]:
                del self._buckets[key]
        for key in keys:
            self._buckets[key] = (max(0.0, self._tokens(key, now) - 1), now)
