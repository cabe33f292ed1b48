"""Resilience helpers: jittered backoff, retries for idempotent operations, circuit breakers.

gRPC calls get deadlines and retries from the channel (`agentrt_kit.grpc.client`);
these helpers cover everything else (NATS, databases, HTTP), built on tenacity.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


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
    says no for `cooldown` seconds. Then it is half-open: the first caller to ask gets
    the one trial call, and every other caller is refused while the trial runs. The
    trial's success closes the circuit; its failure opens it again for another
    cool-down. A trial that never reports (its caller was cancelled, or stopped for a
    reason that says nothing about the dependency) holds the slot for one cool-down at
    most, then the next caller gets a trial.

    Opening is logged at WARNING with the dependency's `name` and the failure count,
    closing again at INFO. One breaker per dependency (a host, a model provider); not
    thread-safe, use it from one event loop.
    """

    threshold: int
    cooldown: float
    name: str = ""
    clock: Callable[[], float] = field(default=time.monotonic)
    failures: int = field(default=0, init=False)
    _opened_at: float | None = field(default=None, init=False, repr=False)
    _trial_at: float | None = field(default=None, init=False, repr=False)

    def _refusing(self, now: float) -> bool:
        if self._opened_at is None:
            return False
        if now - self._opened_at < self.cooldown:
            return True
        return self._trial_at is not None and now - self._trial_at < self.cooldown

    @property
    def is_open(self) -> bool:
        """True while calls are refused: during the cool-down, and while a trial runs."""
        return self._refusing(self.clock())

    def allow(self) -> bool:
        """Whether a call may go now; the caller must report it with `succeeded`/`failed`.

        Past the cool-down, the caller that gets True holds the one trial call.
        """
        if self._opened_at is None:
            return True
        now = self.clock()
        if self._refusing(now):
            return False
        self._trial_at = now
        return True

    def succeeded(self) -> None:
        """Close the circuit."""
        if self._opened_at is not None:
            log.info("circuit closed", extra={"dependency": self.name})
        self.failures, self._opened_at, self._trial_at = 0, None, None

    def failed(self) -> None:
        """Count a failure; open the circuit at the threshold, or again after a trial."""
        self.failures += 1
        if self._trial_at is not None:
            # Any failure while half-open re-opens: the trial's, or that of a call
            # admitted before the circuit opened — either says the dependency is down.
            self._open("circuit re-opened after a failed trial")
        elif self._opened_at is None and self.failures >= self.threshold:
            self._open("circuit opened")
        # Failures reported while open (calls admitted before it opened) only count:
        # the cool-down runs from the opening.

    def _open(self, message: str) -> None:
        self._opened_at, self._trial_at = self.clock(), None
        log.warning(
            message,
            extra={
                "dependency": self.name,
                "failures": self.failures,
                "cooldown_seconds": self.cooldown,
            },
        )
