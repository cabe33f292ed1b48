"""BlockingRunner (thread pool with contextvars), run_inline, waiting and stopping tasks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agentrt_kit.concurrency import (
    BlockingRunner,
    cancel_and_wait,
    run_inline,
    wait_event,
    wait_for_any,
)
from agentrt_kit.context import actor_var, request_id_var


@pytest.fixture
def runner():
    r = BlockingRunner(max_workers=2, name="kit-blocking")
    yield r
    r.shutdown()


def seen_in_thread(suffix: str = "", *, extra: str = "") -> tuple[str | None, str | None, str, str]:
    return (
        request_id_var.get(),
        actor_var.get(),
        threading.current_thread().name,
        suffix + extra,
    )


async def test_blocking_runner_copies_contextvars_into_the_thread(runner: BlockingRunner) -> None:
    rid, actor = request_id_var.set("req-5"), actor_var.set("dora")
    try:
        got = await runner(seen_in_thread, "a", extra="b")
    finally:
        request_id_var.reset(rid)
        actor_var.reset(actor)
    assert got[:2] == ("req-5", "dora")
    assert got[2].startswith("kit-blocking")
    assert got[2] != threading.current_thread().name
    assert got[3] == "ab"


async def test_changes_in_the_thread_do_not_leak_back(runner: BlockingRunner) -> None:
    def change() -> str | None:
        request_id_var.set("changed-in-thread")
        return request_id_var.get()

    token = request_id_var.set("outer")
    try:
        assert await runner(change) == "changed-in-thread"
        assert request_id_var.get() == "outer"
    finally:
        request_id_var.reset(token)


async def test_blocking_runner_propagates_exceptions(runner: BlockingRunner) -> None:
    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        await runner(fail)


async def test_blocking_runner_is_bounded_and_keeps_the_loop_free(runner: BlockingRunner) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    started = time.monotonic()
    await asyncio.gather(*(runner(time.sleep, 0.1) for _ in range(4)))
    elapsed = time.monotonic() - started
    tick_task.cancel()
    assert elapsed >= 0.19  # two workers: four sleeps take two rounds
    assert ticks >= 5  # the event loop kept running meanwhile


async def test_blocking_runner_refuses_work_after_shutdown() -> None:
    r = BlockingRunner(max_workers=1)
    assert await r(lambda: 1) == 1
    r.shutdown()
    with pytest.raises(RuntimeError):
        await r(lambda: 2)


async def test_wait_for_any_returns_true_when_one_event_is_set() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, b.set)
    started = time.monotonic()
    assert await wait_for_any(a, b, timeout=5) is True
    assert time.monotonic() - started < 1


async def test_wait_for_any_returns_false_on_timeout() -> None:
    started = time.monotonic()
    assert await wait_for_any(asyncio.Event(), asyncio.Event(), timeout=0.05) is False
    assert time.monotonic() - started >= 0.04


async def test_wait_for_any_with_an_already_set_event() -> None:
    done = asyncio.Event()
    done.set()
    assert await wait_for_any(asyncio.Event(), done) is True


async def test_wait_for_any_leaves_no_waiters_behind() -> None:
    before = asyncio.all_tasks()
    await wait_for_any(asyncio.Event(), asyncio.Event(), timeout=0.01)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


async def test_a_cancelled_caller_leaves_the_runner_working() -> None:
    r = BlockingRunner(max_workers=1)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    task = asyncio.create_task(r(slow))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert await r(lambda: "next") == "next"  # the late result was dropped quietly
    r.shutdown()


async def test_shutdown_lets_queued_calls_finish() -> None:
    r = BlockingRunner(max_workers=1)
    done: list[int] = []
    calls = [asyncio.ensure_future(r(done.append, i)) for i in range(5)]
    await asyncio.sleep(0)
    await asyncio.to_thread(r.shutdown)
    await asyncio.gather(*calls)
    assert done == [0, 1, 2, 3, 4]


async def test_run_inline_calls_in_the_loop_thread() -> None:
    assert await run_inline(threading.current_thread) is threading.current_thread()


async def test_wait_event_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, None) is True


async def test_wait_event_never_swallows_a_cancellation_that_comes_with_the_event() -> None:
    # asyncio.wait_for(event.wait(), ...) on Python 3.11 returns normally here.
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 60))
    await asyncio.sleep(0)  # the waiter is parked on the event
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_cancel_and_wait_ends_a_task_that_swallows_the_first_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait(task, every=0.01)
    assert task.cancelled()
    assert swallowed == 3


async def test_cancel_and_wait_reraises_what_the_task_failed_with() -> None:
    async def failing() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(task)
    await cancel_and_wait(None)  # nothing started: nothing to do
