"""Helpers shared by the gateway's tests (importable: the tests dir is on pythonpath)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from agent_gateway.config import Settings
from agent_gateway.main import serve

TOKEN = "runtime-token-for-tests"
ERROR_KEYS = {"error", "message", "details", "detail"}


@contextlib.asynccontextmanager
async def running_gateway(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway served on a free port, and an HTTP client to it."""
    values: dict[str, Any] = {"port": 0, "runtime_token": TOKEN, "probe_timeout_seconds": 0.5}
    values.update(overrides)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(Settings(**values), stop=stop, on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ready.result()}") as client:
            yield client
    finally:
        stop.set()
        await task


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"X-Runtime-Token": token}
