"""What the Redis Streams run queue does beyond the `RunQueue` contract.

A Redis that lost its data or its group, the durability warning, the length
limit, parked retries, the max-deliver backstop, queues of different names and
lost signals; each test on a redis-server of its own (`redis_backend`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis_queue_support import RedisBackend
from redis_queue_support import redis_backend as redis_backend_fixture  # noqa: F401
from test_executor_run_queue import pull_one, summary

from agent_executor.adapters.redis_queue import RedisRunQueue
from agent_executor.application.ports import QueueStats, QueueUnavailable
from agentrt_testkit.redis_server import RedisServer

LOGGER = "agent_executor.adapters.redis_queue"


# ------------------------------------------------------------------ Redis loses things


async def test_the_group_is_created_again_on_a_redis_that_lost_its_data(
    make_redis_server: Callable[[], RedisServer], nats_prefix: str, tmp_path: Path
) -> None:
    first = make_redis_server()
    replacement = RedisServer(data_dir=str(tmp_path), port=first.port)
    backend = RedisBackend(first, nats_prefix)
    try:
        queue = await backend.queue()
        await queue.submit("run-1")
        await (await pull_one(queue)).ack()

        first.stop()
        replacement.start()  # same address, nothing stored
        await queue.submit("run-2")  # makes the stream again, without the group

        assert summary([await pull_one(queue)]) == [("run-2", 1)]
        assert (await queue.stats()).depth == 1
    finally:
        await backend.close()
        replacement.stop()


async def test_the_group_is_created_again_when_it_is_destroyed(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue()
    await queue.submit("run-1")
    async with redis_backend.client() as redis:
        await redis.xgroup_destroy(queue.key, "executors")

    assert (await queue.stats()).pending == 1
    assert summary([await pull_one(queue)]) == [("run-1", 1)]


async def test_a_pull_blocked_on_a_stream_that_is_deleted_takes_the_next_run(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue()
    waiting = asyncio.create_task(queue.pull(1, timeout=30))
    await asyncio.sleep(0.3)
    async with redis_backend.client() as redis:
        await redis.flushall()
    await queue.submit("run-1")

    assert summary(await asyncio.wait_for(waiting, 40)) == [("run-1", 1)]


# ------------------------------------------------------------------ durability


@pytest.mark.parametrize(("appendonly", "warnings"), [("no", 1), ("yes", 0)])
async def test_start_warns_once_when_redis_does_not_keep_what_it_acknowledged(
    redis_backend: RedisBackend,
    caplog: pytest.LogCaptureFixture,
    appendonly: str,
    warnings: int,
) -> None:
    async with redis_backend.client() as redis:
        await redis.config_set("appendonly", appendonly)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    await redis_backend.queue()

    warned = [r for r in caplog.records if "appendonly no" in r.getMessage()]
    assert len(warned) == warnings


async def test_a_redis_that_refuses_config_is_used_without_a_warning(
    redis_backend: RedisBackend, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with redis_backend.client() as redis:
        await redis.config_set("appendonly", "no")
        await redis.acl_setuser(
            "executor",
            enabled=True,
            passwords=["+secret"],
            keys=["*"],
            commands=["+@all", "-config"],
        )
    server = redis_backend.server
    url = f"redis://executor:secret@{server.host}:{server.port}/0"
    queue = RedisRunQueue(url, prefix=nats_prefix, ack_wait=1.0)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    try:
        await queue.start()
        await queue.submit("run-1")
        assert summary([await pull_one(queue)]) == [("run-1", 1)]
    finally:
        await queue.close()
    assert [r for r in caplog.records if r.name == LOGGER] == []


# ------------------------------------------------------------------ limits


async def test_a_full_queue_refuses_new_runs_and_keeps_the_queued_ones(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue(max_len=2)
    await queue.submit("run-1")
    await queue.submit("run-2")

    with pytest.raises(QueueUnavailable):
        await queue.submit("run-3")
    await queue.submit("run-1")  # a repeat is no new run: not refused

    first = await pull_one(queue)
    assert first.run_id == "run-1"
    await first.ack()
    await queue.submit("run-3")  # room again
    assert (await queue.stats()).depth == 2


async def test_a_run_past_max_deliver_is_dead_lettered_by_the_queue_and_stays_counted(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue(max_attempts=1)
    await queue.submit("run-1")
    await pull_one(queue)
    assert (await pull_one(queue)).attempt == 2

    assert await queue.pull(1, timeout=2.0) == []

    assert await redis_backend.dead_letters() == [
        {"run_id": "run-1", "reason": "delivered 2 times, never acknowledged", "attempt": 2}
    ]
    stats = await queue.stats()
    assert (stats.depth, stats.pending, stats.redelivered, stats.dead_letters) == (1, 0, 0, 1)


async def test_an_unlimited_max_deliver_delivers_past_max_attempts(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue(max_attempts=1, max_deliver=-1)
    await queue.submit("run-1")

    attempts = [(await pull_one(queue)).attempt for _ in range(4)]

    assert attempts == [1, 2, 3, 4]
    assert await redis_backend.dead_letters() == []


# ------------------------------------------------------------------ retries


async def test_a_run_retried_for_less_than_ack_wait_comes_back_after_the_delay(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue(ack_wait=3.0)
    await queue.submit("run-1")
    delivery = await pull_one(queue)

    await delivery.retry(0.8)
    retried_at = time.monotonic()
    assert await queue.pull(1, timeout=0.3) == []
    again = await pull_one(queue)

    assert (again.run_id, again.attempt) == ("run-1", 2)
    assert time.monotonic() - retried_at >= 0.7


async def test_a_run_retried_for_longer_than_ack_wait_waits_for_its_delay(
    redis_backend: RedisBackend,
) -> None:
    mine = await redis_backend.queue(ack_wait=1.0)
    other = await redis_backend.queue(ack_wait=1.0)
    await mine.submit("run-1")
    delivery = await pull_one(mine)

    await delivery.retry(3.5)
    retried_at = time.monotonic()
    assert await other.pull(1, timeout=2.5) == []  # past ack_wait, more than once
    stats = await other.stats()
    assert (stats.depth, stats.pending, stats.redelivered) == (1, 0, 0)
    again = await pull_one(other)

    assert (again.run_id, again.attempt) == ("run-1", 2)
    assert time.monotonic() - retried_at >= 3.0


# ------------------------------------------------------------------ stats


async def test_stats_count_waiting_runs_after_an_acknowledgement_out_of_order(
    redis_backend: RedisBackend,
) -> None:
    queue = await redis_backend.queue()
    for run_id in ("run-a", "run-b", "run-c"):
        await queue.submit(run_id)
    first, second = await queue.pull(2, timeout=5)

    await second.ack()  # Redis can no longer tell the group's lag

    stats = await queue.stats()
    assert (stats.depth, stats.pending, stats.redelivered) == (2, 1, 0)
    assert stats.oldest_age_seconds is not None
    assert stats.oldest_age_seconds >= 0
    await first.ack()
    await (await pull_one(queue)).ack()
    assert await queue.stats() == QueueStats()


# ------------------------------------------------------------------ names and replicas


async def test_queues_of_different_names_are_separate(
    redis_backend: RedisBackend, nats_prefix: str
) -> None:
    runs = await redis_backend.queue()
    webhooks = await redis_backend.queue(name="webhook")
    assert (runs.key, webhooks.key) == (
        f"{nats_prefix}:runs:queue",
        f"{nats_prefix}:webhooks:queue",
    )

    await runs.submit("run-1")
    await webhooks.submit("run-1")  # the same id, another queue: queued there too
    await runs.dead_letter(await pull_one(runs), "given up")

    assert summary([await pull_one(webhooks)]) == [("run-1", 1)]
    assert await redis_backend.dead_letters("webhook") == []
    assert (await webhooks.stats()).dead_letters == 0


async def test_a_closed_replica_leaves_the_group_unless_it_holds_a_run(
    redis_backend: RedisBackend,
) -> None:
    holder = await redis_backend.queue()
    idle = await redis_backend.queue()
    await holder.submit("run-1")
    await pull_one(holder)
    assert await idle.pull(1, timeout=0.1) == []

    await holder.close()
    await idle.close()

    async with redis_backend.client() as redis:
        consumers = await redis.xinfo_consumers(holder.key, "executors")
    assert [c["name"] for c in consumers] == [holder.consumer]


async def test_lost_extensions_are_logged_once_as_a_warning(
    redis_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await redis_backend.queue()
    await queue.submit("run-1")
    await queue.submit("run-2")
    held = await queue.pull(2, timeout=5)
    assert len(held) == 2
    redis_backend.server.stop()
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    for delivery in [*held, *held]:
        await delivery.extend()

    lost = [r for r in caplog.records if r.getMessage() == "run queue signal lost"]
    assert [r.levelno for r in lost] == [logging.WARNING] + [logging.DEBUG] * 3
