"""Resilience helpers: jittered backoff and retries for idempotent operations.

gRPC calls get deadlines and retries from the channel (`agentrt_kit.grpc.client`);
these helpers cover everything else (NATS, databases, HTTP), built on tenacity.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
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
