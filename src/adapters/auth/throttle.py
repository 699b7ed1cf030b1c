from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping

from domain.ports import LoginThrottle

_LIMIT = 100_000


class MemoryLoginThrottle(LoginThrottle):
    """A token bucket per key: as many failures at once as the key's burst, then one more every
    `refill` seconds. Only failures take tokens. Per process: with several workers each keeps its own
    count."""

    def __init__(self, refill: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.refill, self.clock = refill, clock
        self._buckets: dict[str | bytes, tuple[float, float]] = {}  # key -> (tokens, at)

    @staticmethod
    def _digest(key: str) -> str | bytes:
        # The key holds a name the client chose (up to a header's size): kept whole, 100,000 of them
        # would take a gigabyte. A long one is kept as its digest (32 bytes).
        if len(key) <= 160:
            return key
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()

    def _tokens(self, key: str | bytes, burst: int, now: float) -> float:
        tokens, at = self._buckets.get(key, (burst, now))
        return min(burst, tokens + (now - at) / self.refill)

    def retry_after(self, keys: Mapping[str, int]) -> float:
        now = self.clock()
        wait = 0.0
        for key, burst in keys.items():
            tokens = self._tokens(self._digest(key), burst, now)
            if tokens < 1:
                wait = max(wait, (1 - tokens) * self.refill)
        return wait

    def refund(self, keys: Mapping[str, int]) -> None:
        now = self.clock()
        for key, burst in keys.items():
            digest = self._digest(key)
            if digest in self._buckets:
                tokens = self._tokens(digest, burst, now) + 1
                if tokens >= burst:
                    del self._buckets[digest]  # full again: nothing to remember
                else:
                    self._buckets[digest] = (tokens, now)

    def failed(self, keys: Mapping[str, int]) -> None:
        now = self.clock()
        if len(self._buckets) >= _LIMIT:  # forget the oldest half (all refilled long ago, most likely)
            for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:_LIMIT // 2]:
                del self._buckets[key]
        for key, burst in keys.items():
            digest = self._digest(key)
            self._buckets[digest] = (max(0.0, self._tokens(digest, burst, now) - 1), now)
