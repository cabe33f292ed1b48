"""Fixtures for the gateway's tests: the gateway in front of a real registry."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from executor_support import System
from gateway_support import Stack, World, running_gateway
from registry_support import sqlite_registry

from agentrt_kit.catalog import open_bucket, publish_descriptor
from agentrt_kit.nats import Names, NatsClient
from agentrt_kit.settings import ServiceSettings


@pytest.fixture
async def world(nats_server: Any, nats_prefix: str) -> AsyncIterator[World]:
    client = NatsClient(nats_server.url, name="test-executor")
    await client.start()
    await client.wait_connected(5)
    kv = await open_bucket(client.js, Names(nats_prefix), ServiceSettings().catalog_limits())
    for template_id in ("simple-test", "other"):
        await publish_descriptor(
            kv, {"id": template_id, "version": "1.0.0", "config_schema": {"type": "object"}}
        )
    await client.close()
    with tempfile.TemporaryDirectory() as tmp:
        registry = await sqlite_registry(
            Path(tmp) / "registry.sqlite3", nats_server.url, nats_prefix
        ).start()
        try:
            async with running_gateway(
                nats_url=nats_server.url,
                nats_prefix=nats_prefix,
                registry_target=f"127.0.0.1:{registry.port}",
                executor_target=f"127.0.0.1:{registry.port}",
            ) as http:
                yield World(http, registry)
        finally:
            await registry.stop()


@pytest.fixture
async def make_stack(
    nats_server: Any, nats_prefix: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Start the whole system with executor and gateway settings as given."""
    exits = contextlib.AsyncExitStack()

    async def start(executor: dict[str, Any] | None = None, **gateway: Any) -> Stack:
        system = System.on_sqlite(tmp_path, nats_server.url, nats_prefix)
        exits.push_async_callback(system.stop)
        await system.start(**(executor or {}))
        assert system.registry is not None
        http = await exits.enter_async_context(
            running_gateway(
                nats_url=nats_server.url,
                nats_prefix=nats_prefix,
                registry_target=f"127.0.0.1:{system.registry.port}",
                executor_target=f"127.0.0.1:{system.executors[0].port}",
                **gateway,
            )
        )
        return Stack(http, system)

    async with exits:
        yield start


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[Stack]]) -> Stack:
    """The whole system on defaults (offline provider, echoing)."""
    return await make_stack()
