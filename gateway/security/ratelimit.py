"""Per-principal request rate limits: one token bucket per key (429 with Retry-After)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

_MAX_BUCKETS = 10_000


class RateLimiter:
    """``rate`` requests per second sustained, ``burst`` at once, per key.

    Buckets refill continuously; a full bucket carries no information, so when the table grows
    large, full ones are dropped (memory stays bounded whatever the number of keys).
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def acquire(self, key: str) -> float:
        """Take one token; 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self._rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > _MAX_BUCKETS:
            full = [k for k, (t, u) in self._buckets.items() if t + (now - u) * self._rate >= self._burst]
            for k in full:
                del self._buckets[k]


def retry_after_header(wait: float) -> str:
    """RFC 9110 10.2.3: delay-seconds, a whole number, at least 1."""
    return str(max(1, math.ceil(wait)))
