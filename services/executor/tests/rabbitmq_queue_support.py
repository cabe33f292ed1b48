"""The RabbitMQ backend of the `RunQueue` contract suite, and its fixture.

Replicas are `RabbitRunQueue`s, each with a connection of its own, on the session's
RabbitMQ node (it takes ~5 s to start, too slow for a node per test), under a name
prefix of the test's own. The broker tests stop and start that node (a clean stop:
RabbitMQ 3.10 may not bring back a quorum queue declared just before a SIGKILL),
and every test's queues are deleted after it. No management API: depth, age and
redeliveries are None, as the contract expects of RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from executor_support import eventually

from agent_executor.adapters.rabbitmq_queue import RabbitRunQueue
from agent_executor.application.ports import QueueUnavailable, RunQueue
from agentrt_testkit.rabbitmq_server import RabbitServer

# The contract suite's defaults (it imports this module, so it cannot be imported here).
ACK_WAIT = 1.0
MAX_ATTEMPTS = 3


class RabbitBackend:
    """`RabbitRunQueue` replicas on a RabbitMQ node shared with other tests."""

    def __init__(self, server: RabbitServer, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.replicas: list[RabbitRunQueue] = []
        self.vanished: list[RabbitRunQueue] = []

    async def queue(
        self, *, ack_wait: float = ACK_WAIT, max_attempts: int = MAX_ATTEMPTS, **options: Any
    ) -> RabbitRunQueue:
        queue = RabbitRunQueue(
            self.server.url,
            prefix=self.prefix,
            ack_wait=ack_wait,
            max_attempts=max_attempts,
            **options,
        )
        await queue.start()
        self.replicas.append(queue)
        return queue

    def _live(self) -> list[RabbitRunQueue]:
        return [queue for queue in self.replicas if queue not in self.vanished]

    async def vanish(self, queue: RunQueue) -> None:
        assert isinstance(queue, RabbitRunQueue)
        self.vanished.append(queue)
        await queue.close()

    async def stop_broker(self) -> None:
        await asyncio.to_thread(self.server.stop)
        for queue in self._live():
            await eventually(lambda q=queue: _answers(q, False), timeout=10)

    async def start_broker(self) -> None:
        await asyncio.to_thread(self.server.start)
        for queue in self._live():
            await eventually(lambda q=queue: _answers(q, True), timeout=30, interval=0.1)

    async def dead_letters(self, name: str = "run") -> list[dict[str, Any]]:
        """The dead-letter queue's records, read without taking them.

        Ours are JSON; one the broker gave up on is the run id with `x-death` headers.
        """
        connection = await aio_pika.connect(self.server.url)
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(f"{self.prefix}.{name}s.dead_letters")
            records: list[dict[str, Any]] = []
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                if message.content_type == "application/json":
                    records.append(json.loads(message.body))
                else:
                    reason = (message.headers or {}).get("x-first-death-reason")
                    records.append({"run_id": message.body.decode(), "x-death": reason})
            return records
        finally:
            await connection.close()  # everything got is put back

    async def close(self) -> None:
        for queue in self.replicas:
            await queue.close()
        if not self.server.running:  # a test that failed with the broker stopped
            await asyncio.to_thread(self.server.start)
        connection = await aio_pika.connect(self.server.url)
        try:
            channel = await connection.channel()
            for name in ("run", "webhook"):
                await channel.queue_delete(f"{self.prefix}.{name}s.queue")
                await channel.queue_delete(f"{self.prefix}.{name}s.dead_letters")
                await channel.exchange_delete(f"{self.prefix}.{name}s.dead")
        finally:
            await connection.close()


async def _answers(queue: RabbitRunQueue, expected: bool) -> bool:
    """Whether the replica's answer to `stats()` is as `expected` (an answer or not)."""
    try:
        await queue.stats()
    except QueueUnavailable:
        return not expected
    return expected


# Named explicitly: a test module that takes `rabbitmq_backend` as an argument imports
# the fixture under another name (pytest registers it under this one).
@pytest.fixture(name="rabbitmq_backend")
async def rabbitmq_backend(
    rabbitmq_server: RabbitServer, nats_prefix: str
) -> AsyncIterator[RabbitBackend]:
    backend = RabbitBackend(rabbitmq_server, nats_prefix)
    try:
        yield backend
    finally:
        await backend.close()
