"""Adapter: server-sent event responses — one that frees what it holds, and pacing.

`RelayResponse` runs its `on_close` however the response ends (finished, client gone,
or never begun). `paced` reads a source in a task of its own, so waiting for its next
item can time out (a keepalive is due) or be cut short (the gateway is stopping)
without cancelling the read; cut short, it still gives every item it had read, so a
client told where to resume misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import StreamingResponse

from agent_gateway.adapters.asgi import Receive, Scope, Send
from agentrt_kit.concurrency import cancel_and_wait

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Stopping(Exception):
    """The gateway is shutting down: a stream should end now."""


class RelayResponse(StreamingResponse):
    """A stream whose `on_close` runs however the response ends, even before it began."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; then release what it held."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def paced(
    source: AsyncIterator[T], *, keepalive: float, stopping: asyncio.Event
) -> AsyncIterator[T | None]:
    """The items of `source`; None each time `keepalive` seconds pass without one.

    Once `stopping` is set the read of `source` is cancelled, and the items read until
    then are given before Stopping is raised (or the end, or the error, that came first).

    Raises:
        Stopping: `stopping` was set before `source` ended.
        Exception: what reading `source` raised.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(("item", item))
        except Exception as e:
            queue.put_nowait(("error", e))
        else:
            queue.put_nowait(("end", None))

    async def watch() -> None:
        await stopping.wait()
        queue.put_nowait(("stop", None))

    reader = asyncio.create_task(pump(), name="sse-reader")
    tasks = [reader, asyncio.create_task(watch(), name="sse-stop-watch")]
    stopped = False
    try:
        while True:
            if stopped and queue.empty():
                raise Stopping
            try:
                async with asyncio.timeout(keepalive):
                    kind, value = await queue.get()
            except TimeoutError:
                yield None
                continue
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            elif kind == "stop":
                # Every item read is queued by now (putting one never waits): give them.
                await cancel_and_wait(reader)
                stopped = True
            else:
                return
    finally:
        for task in tasks:
            await cancel_and_wait(task)
