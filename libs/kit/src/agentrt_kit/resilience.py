"""Resilience helpers: jittered backoff, retries for idempotent operations, circuit breakers.

gRPC calls get deadlines and retries from the channel (`agentrt_kit.grpc.client`);
these helpers cover everything else (NATS, databases, HTTP), built on tenacity.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

T = TypeVar("T")


def jittered_backoff(initial: float, maximum: float) -> Iterator[float]:
    """Endless delays with "equal jitter".

    Each delay is uniform(cap / 2, cap) with cap = min(maximum, initial * 2**n).
    """
    attempt = 0
    while True:
        cap = min(maximum, initial * (2**attempt))
        yield random.uniform(cap / 2, cap)
        attempt = min(attempt + 1, 32)


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int = 4,
    initial: float = 0.05,
    maximum: float = 2.0,
) -> T:
    """Run an idempotent `operation`, retrying `retry_on` errors with jittered backoff.

    The last error is re-raised when every attempt fails.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        reraise=True,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity re-raises the last error")


@dataclass
class CircuitBreaker:
    """Fails fast for a dependency after consecutive failures, until a cool-down passes.

    Closed: calls go through. After `threshold` failures in a row it opens: `allow()`
    says no for `cooldown` seconds. Then one trial call goes through (half-open): a
    success closes the circuit, a failure opens it again for another cool-down.
    One breaker per dependency (a host, a model provider); not thread-safe, use it
    from one event loop.
    """

    threshold: int
    cooldown: float
    failures: int = 0
    opened_at: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic)

    @property
    def is_open(self) -> bool:
        """True while calls are refused (the cool-down has not passed)."""
        return self.opened_at is not None and self.clock() - self.opened_at < self.cooldown

    def allow(self) -> bool:
        """Whether a call may go now; after the cool-down this call is the trial."""
        if self.opened_at is None:
            return True
        if self.is_open:
            return False
        self.opened_at = None  # half-open: failures stay at the threshold
        return True

    def succeeded(self) -> None:
        """Close the circuit."""
        self.failures, self.opened_at = 0, None

    def failed(self) -> None:
        """Count a failure; open the circuit at the threshold."""
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()
