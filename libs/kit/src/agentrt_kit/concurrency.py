"""Run blocking code (the eventsourcing library, database drivers) off the event loop.

`BlockingRunner` owns a bounded thread pool and, unlike `loop.run_in_executor`,
copies contextvars into the thread, so request id, actor and trace context
reach logs written by synchronous code.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BlockingRunner:
    """A dedicated thread pool for blocking calls."""

    def __init__(self, max_workers: int, name: str = "blocking") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in the pool with the caller's contextvars."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        """Wait for running calls and stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)


async def wait_for_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until one of `events` is set or `timeout` passes; True when one was set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
