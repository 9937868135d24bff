"""Token buckets: a rate with a burst of some seconds' worth, alone or one per key (device, client address)."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBucket:
    """At most ``rate`` events per second, with a burst of ``burst_seconds`` worth."""

    def __init__(self, rate: float, burst_seconds: float = 1.0) -> None:
        self.rate = max(rate, 0.001)
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class KeyedBuckets:
    """One ``TokenBucket`` per key, at most ``max_keys`` of them (the least recently used go first)."""

    def __init__(self, rate: float, max_keys: int, burst_seconds: float = 1.0) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self.burst_seconds = burst_seconds
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst_seconds)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()
