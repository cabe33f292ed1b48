"""Domain: request rate limits (token buckets) and concurrent-stream slots.

Each bucket holds up to `burst` tokens and gains `rate` tokens a second; a request
takes one. Buckets live in the replica that serves the request: with N gateway
replicas behind a load balancer a client gets up to N * rate (docs/DECISIONS.md).
Idle buckets (full again) are forgotten once there are many, so memory stays
bounded however many addresses call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go on, and what the rate-limit headers say."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # whole seconds until a token is available (0 when allowed)

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-*` headers, and `Retry-After` when refused."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """Token buckets by key; `rate` ≤ 0 turns limiting off."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, as of)

    @property
    def enabled(self) -> bool:
        """Whether this limiter limits anything."""
        return self.rate > 0

    def take(self, key: str) -> Decision:
        """Take a token for `key` if one is there."""
        now = self._clock()
        tokens, since = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) * self.rate)
        if tokens >= 1:
            tokens -= 1
            self._store(key, tokens, now)
            return Decision(True, self.burst, int(tokens), 0)
        self._store(key, tokens, now)
        wait = math.ceil((1 - tokens) / self.rate)
        return Decision(False, self.burst, 0, max(1, wait))

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        full = [
            k
            for k, (t, since) in self._buckets.items()
            if t + (now - since) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self._max_keys:  # all busy: drop the oldest entries
            del self._buckets[next(iter(self._buckets))]


class StreamSlots:
    """At most `limit` concurrent streams (or run joins) per key; `limit` ≤ 0: no bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Take a slot for `key`; False when all are in use."""
        count = self._open.get(key, 0)
        if 0 < self.limit <= count:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Give back a slot taken by `acquire`."""
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
