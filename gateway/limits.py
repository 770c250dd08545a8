"""How much the gateway takes from one caller: body sizes, a request rate and requests in flight.

The body limits are sized from what the routes accept: one call or one action is a few KB even
with the longest free text the message models allow, and a batch is at most `MAX_BATCH` calls.
A larger body is refused from its `Content-Length`, or while it streams in, before anything
parses it. The rate (a token bucket) and the requests in flight are counted per token, or per
client address for a request without one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

KIB: Final = 1024
# The message models allow 10,000 characters of notes on a call (2,000 on a cancellation), which
# UTF-8 writes in at most 40,000 bytes; the rest of a call, its policy and metadata included, is
# well under 10 KB.
BODY_LIMIT: Final = 64 * KIB
MAX_BATCH: Final = 1_000
# A CRM's row is a few hundred bytes (its own columns included); 4 KiB a row on average leaves
# room for notes without letting a batch grow into a memory problem.
BATCH_ITEM_SIZE: Final = 4 * KIB
BATCH_BODY_LIMIT: Final = MAX_BATCH * BATCH_ITEM_SIZE

DEFAULT_RATE: Final = 50.0
DEFAULT_MAX_CONCURRENT: Final = 32
# Buckets are dropped once full again, so that many addresses seen once do not pile up.
_SWEEP_ABOVE: Final = 1_000


def default_burst(rate: float) -> int:
    """Two seconds' worth of requests, at least one."""
    return max(1, math.ceil(2 * rate))


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `rate` requests a second on average, `burst` at once.

    Args:
        rate: Requests per second; 0 switches the limit off.
        burst: The bucket's size (default: `default_burst(rate)`).
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else default_burst(rate)
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._swept = -math.inf

    def acquire(self, key: Hashable) -> int:
        """Take one request from `key`'s bucket.

        Returns:
            0 when the request may go on; otherwise the whole seconds (at least 1) until the
            bucket holds a request again, for `Retry-After`.
        """
        if self.rate <= 0:
            return 0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _SWEEP_ABOVE and now - self._swept >= 1:
                self._sweep(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def _sweep(self, now: float) -> None:
        # A bucket that has filled up again is the same as no bucket. At most once a second, so
        # that many callers at once do not make every new one pay for a sweep.
        self._swept = now
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]


class ConcurrencyLimiter:
    """At most `limit` requests in flight per key; 0 switches the limit off."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[Hashable, int] = {}

    def enter(self, key: Hashable) -> bool:
        """Count a request in, unless `key` has `limit` in flight already."""
        count = self._in_flight.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._in_flight[key] = count + 1
        return True

    def leave(self, key: Hashable) -> None:
        """Count a request out (after `enter` said yes)."""
        count = self._in_flight[key] - 1
        if count:
            self._in_flight[key] = count
        else:
            del self._in_flight[key]
