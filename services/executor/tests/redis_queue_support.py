"""The Redis Streams backend of the `RunQueue` contract suite, and its fixture.

Each test gets a redis-server of its own (so it can stop and restart it) and a key
prefix of its own; every replica is a `RedisRunQueue` with its own connection pool.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_executor.adapters.redis_queue import RedisRunQueue
from agent_executor.application.ports import RunQueue
from agentrt_testkit.redis_server import RedisServer

# The contract suite's defaults (it imports this module, so it cannot be imported here).
ACK_WAIT = 1.0
MAX_ATTEMPTS = 3


class RedisBackend:
    """`RedisRunQueue` replicas on a redis-server of the test's own."""

    def __init__(self, server: RedisServer, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.replicas: list[RedisRunQueue] = []

    async def queue(
        self, *, ack_wait: float = ACK_WAIT, max_attempts: int = MAX_ATTEMPTS, **options: Any
    ) -> RedisRunQueue:
        queue = RedisRunQueue(
            self.server.url(),
            prefix=self.prefix,
            ack_wait=ack_wait,
            max_attempts=max_attempts,
            **options,
        )
        await queue.start()
        self.replicas.append(queue)
        return queue

    async def vanish(self, queue: RunQueue) -> None:
        assert isinstance(queue, RedisRunQueue)
        await queue.close()

    async def stop_broker(self) -> None:
        # Nothing to notice: a replica finds the server gone at its next command.
        self.server.stop()

    async def start_broker(self) -> None:
        # `start` returns once the server answers; pools connect again on their next command.
        self.server.start()

    def client(self) -> Redis:
        """A client of the test's own (close it after use)."""
        return Redis.from_url(self.server.url(), decode_responses=True)

    async def dead_letters(self, name: str = "run") -> list[dict[str, Any]]:
        async with self.client() as redis:
            entries = await redis.xrange(f"{self.prefix}:{name}s:dead")
        return [json.loads(fields["record"]) for _, fields in entries]

    async def close(self) -> None:
        for queue in self.replicas:
            await queue.close()


# Named explicitly: a test module that takes `redis_backend` as an argument imports the
# fixture under another name (pytest registers it under this one).
@pytest.fixture(name="redis_backend")
async def redis_backend(
    make_redis_server: Callable[[], RedisServer], nats_prefix: str
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(make_redis_server(), nats_prefix)
    try:
        yield backend
    finally:
        await backend.close()
