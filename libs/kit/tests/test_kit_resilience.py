"""Jittered backoff and retries of idempotent operations."""

from __future__ import annotations

import asyncio
import itertools
import logging

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
    assert breaker.is_open  # everyone else waits for its outcome
    assert not breaker.allow()
    breaker.failed()  # the trial failed: open again at once
    assert not breaker.allow()
    now[0] += 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.failures == 0
    assert not breaker.is_open
    breaker.failed()
    assert breaker.allow()  # one failure after closing does not open it


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Dependency:
    """A dependency whose calls wait at a gate, then succeed or fail as told."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.healthy = True

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.wait_for(self.gate.wait(), 2)  # a call the test never lets go fails it
        if not self.healthy:
            raise ConnectionError("down")
        return "answered"


async def guarded(breaker: CircuitBreaker, dependency: Dependency) -> str:
    """One call the way the breaker's users make it."""
    if not breaker.allow():
        return "refused"
    try:
        result = await dependency()
    except ConnectionError:
        breaker.failed()
        return "failed"
    breaker.succeeded()
    return result


def opened(clock: Clock) -> CircuitBreaker:
    """A breaker that has just opened, past its cool-down."""
    breaker = CircuitBreaker(threshold=2, cooldown=10.0, name="db", clock=clock)
    breaker.failed()
    breaker.failed()
    clock.now += 10.0
    return breaker


async def test_half_open_lets_exactly_one_of_many_concurrent_callers_through() -> None:
    clock, dependency = Clock(), Dependency()
    breaker = opened(clock)

    callers = [asyncio.create_task(guarded(breaker, dependency)) for _ in range(10)]
    await asyncio.sleep(0)  # every caller has asked; the trial waits at the gate
    late = await guarded(breaker, dependency)  # one arriving while the trial runs
    dependency.gate.set()
    outcomes = await asyncio.gather(*callers)

    assert sorted(outcomes) == ["answered"] + ["refused"] * 9
    assert late == "refused"
    assert dependency.calls == 1


async def test_a_successful_trial_closes_the_circuit_for_everyone() -> None:
    clock, dependency = Clock(), Dependency()
    breaker = opened(clock)
    dependency.gate.set()

    assert await guarded(breaker, dependency) == "answered"
    outcomes = await asyncio.gather(*(guarded(breaker, dependency) for _ in range(5)))

    assert outcomes == ["answered"] * 5
    assert breaker.failures == 0
    assert not breaker.is_open


async def test_a_failed_trial_reopens_the_circuit_for_another_cooldown() -> None:
    clock, dependency = Clock(), Dependency()
    breaker = opened(clock)
    dependency.healthy = False
    dependency.gate.set()

    assert await guarded(breaker, dependency) == "failed"
    clock.now += 9.9
    assert await guarded(breaker, dependency) == "refused"
    clock.now += 0.1
    dependency.healthy = True
    assert await guarded(breaker, dependency) == "answered"  # the next trial
    assert dependency.calls == 2


async def test_a_cancelled_trial_frees_the_slot_after_a_cooldown() -> None:
    clock, dependency = Clock(), Dependency()
    breaker = opened(clock)
    trial = asyncio.create_task(guarded(breaker, dependency))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial

    assert await guarded(breaker, dependency) == "refused"  # no outcome yet: still held
    clock.now += 10.0
    dependency.gate.set()
    assert await guarded(breaker, dependency) == "answered"  # a new trial, not a wedge
    assert not breaker.is_open
    assert dependency.calls == 2


def test_opening_and_reopening_are_logged_with_the_dependency_and_failure_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="agentrt_kit.resilience")
    breaker = CircuitBreaker(threshold=3, cooldown=5.0, name="provider-a", clock=clock)
    for _ in range(4):  # the fourth, while open, must not log a second opening
        breaker.failed()
    clock.now += 5.0
    assert breaker.allow()
    breaker.failed()
    clock.now += 5.0
    assert breaker.allow()
    breaker.succeeded()

    logged = [
        (r.levelname, r.getMessage(), getattr(r, "dependency", None), getattr(r, "failures", None))
        for r in caplog.records
    ]
    assert logged == [
        ("WARNING", "circuit opened", "provider-a", 3),
        ("WARNING", "circuit re-opened after a failed trial", "provider-a", 5),
        ("INFO", "circuit closed", "provider-a", None),
    ]
