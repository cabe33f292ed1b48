"""Jittered backoff and retries of idempotent operations."""

from __future__ import annotations

import itertools

import pytest

from agentrt_kit.resilience import CircuitBreaker, jittered_backoff, retry_async


def test_jittered_backoff_stays_between_half_cap_and_cap() -> None:
    delays = list(itertools.islice(jittered_backoff(0.1, 5.0), 60))
    for n, delay in enumerate(delays):
        cap = min(5.0, 0.1 * 2**n)
        assert cap / 2 <= delay <= cap, (n, delay)
    assert all(2.5 <= d <= 5.0 for d in delays[6:])  # capped from 0.1 * 2**6 on


def test_jittered_backoff_is_jittered() -> None:
    first_delays = {next(jittered_backoff(1.0, 10.0)) for _ in range(50)}
    assert len(first_delays) > 40


def test_jittered_backoff_growth_stops_even_without_a_maximum() -> None:
    delays = list(itertools.islice(jittered_backoff(1.0, float("inf")), 100))
    assert max(delays) <= 2**32
    assert min(delays[40:]) >= 2**31


class Flaky:
    """Fails with the given errors in order, then returns "done"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


async def test_retry_async_retries_listed_errors_until_success() -> None:
    op = Flaky(ConnectionError("1"), TimeoutError("2"))
    result = await retry_async(op, retry_on=(ConnectionError, TimeoutError), initial=0.001)
    assert result == "done"
    assert op.calls == 3


async def test_retry_async_reraises_the_last_error_when_attempts_run_out() -> None:
    op = Flaky(*(ConnectionError(f"fail {i}") for i in range(1, 10)))
    with pytest.raises(ConnectionError, match=r"^fail 3$"):
        await retry_async(op, retry_on=(ConnectionError,), attempts=3, initial=0.001)
    assert op.calls == 3


async def test_retry_async_does_not_retry_other_errors() -> None:
    op = Flaky(ValueError("not transient"), ConnectionError("x"))
    with pytest.raises(ValueError, match="not transient"):
        await retry_async(op, retry_on=(ConnectionError,), initial=0.001)
    assert op.calls == 1


async def test_retry_async_first_success_needs_no_retry() -> None:
    op = Flaky()
    assert await retry_async(op, retry_on=(ConnectionError,)) == "done"
    assert op.calls == 1


def test_circuit_breaker_opens_at_threshold_and_allows_one_trial_after_cooldown() -> None:
    now = [100.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failed()
        assert breaker.allow()
    breaker.failed()
    assert breaker.is_open
    assert not breaker.allow()
    now[0] += 9.9
    assert not breaker.allow()
    now[0] += 0.2
    assert breaker.allow()  # the trial
    assert not breaker.is_open
    breaker.failed()  # the trial failed: open again at once
    assert not breaker.allow()
    now[0] += 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.failures == 0
    breaker.failed()
    assert breaker.allow()  # one failure after closing does not open it
