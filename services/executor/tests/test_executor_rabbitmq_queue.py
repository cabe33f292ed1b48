"""What the RabbitMQ run queue does beyond the `RunQueue` contract, or in its own way.

On the session's RabbitMQ node (`rabbitmq_queue_support`), each test under a name
prefix of its own. Long `ack_wait`s make sure a run came back for the reason the
test names, not because the adapter's timer returned it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from executor_support import eventually
from rabbitmq_queue_support import RabbitBackend
from rabbitmq_queue_support import rabbitmq_backend as rabbitmq_backend_fixture  # noqa: F401
from test_executor_run_queue import pull_one, pull_until, summary

from agent_executor.adapters.rabbitmq_queue import RabbitRunQueue
from agent_executor.application.ports import QueueStats, QueueUnavailable
from agentrt_testkit.rabbitmq_server import RabbitServer

LONG = 60.0  # an ack_wait no test waits for


def management(server: RabbitServer) -> httpx.AsyncClient:
    """A client of the node's management API (a proxy from the environment must not see it)."""
    return httpx.AsyncClient(base_url=server.management_url, trust_env=False, timeout=10)


async def drop_connection(server: RabbitServer, queue: RabbitRunQueue) -> None:
    """Have RabbitMQ close the replica's connection, as when its executor's host dies."""
    async with management(server) as api:

        async def named() -> str | None:
            for connection in (await api.get("/api/connections")).json():
                if connection["client_properties"].get("connection_name") == queue.connection_name:
                    return str(connection["name"])
            return None

        name = await eventually(named, timeout=10, interval=0.1)
        reply = await api.delete(f"/api/connections/{quote(name, safe='')}")
        assert reply.status_code == 204, reply.text


# ------------------------------------------------------------------ the queues


async def test_runs_wait_in_a_durable_quorum_queue_that_dead_letters_at_least_once(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(max_attempts=4)
    prefix = rabbitmq_backend.prefix

    async with management(rabbitmq_backend.server) as api:
        found = (await api.get(f"/api/queues/%2F/{prefix}.runs.queue")).json()
        bound = (await api.get(f"/api/exchanges/%2F/{prefix}.runs.dead/bindings/source")).json()

    assert (queue.queue_name, queue.dead_letter_exchange, queue.dead_letter_queue) == (
        f"{prefix}.runs.queue",
        f"{prefix}.runs.dead",
        f"{prefix}.runs.dead_letters",
    )
    assert (found["type"], found["durable"]) == ("quorum", True)
    assert found["arguments"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{prefix}.runs.dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 4,  # max_deliver (5) deliveries: 4 returns
    }
    assert [b["destination"] for b in bound] == [f"{prefix}.runs.dead_letters"]


async def test_queues_of_different_names_are_separate(rabbitmq_backend: RabbitBackend) -> None:
    runs = await rabbitmq_backend.queue()
    webhooks = await rabbitmq_backend.queue(name="webhook")
    await runs.submit("run-1")
    await webhooks.submit("run-1")  # the same id, another queue: queued there too

    assert webhooks.queue_name == f"{rabbitmq_backend.prefix}.webhooks.queue"
    assert summary([await pull_one(webhooks)]) == [("run-1", 1)]
    assert summary([await pull_one(runs)]) == [("run-1", 1)]


async def test_a_deleted_queue_is_declared_again(rabbitmq_backend: RabbitBackend) -> None:
    queue = await rabbitmq_backend.queue()
    await queue.submit("run-1")
    connection = await aio_pika.connect(rabbitmq_backend.server.url)
    async with connection:
        await (await connection.channel()).queue_delete(queue.queue_name)

    await queue.submit("run-2")

    assert summary([await pull_one(queue)]) == [("run-2", 1)]


async def test_a_queue_declared_with_other_arguments_is_used_as_it_is(
    rabbitmq_backend: RabbitBackend, caplog: pytest.LogCaptureFixture
) -> None:
    first = await rabbitmq_backend.queue(max_attempts=2)
    await first.submit("run-1")

    second = await rabbitmq_backend.queue(max_attempts=7)  # another x-delivery-limit

    assert "run queue exists with other arguments: used as it is" in caplog.messages
    assert summary([await pull_one(second)]) == [("run-1", 1)]
    await second.submit("run-2")
    assert (await second.stats()).pending == 1


async def test_a_full_queue_refuses_new_runs(rabbitmq_backend: RabbitBackend) -> None:
    queue = await rabbitmq_backend.queue(max_length=2)
    # A quorum queue refuses once it is over its limit: it takes one run more.
    for n in range(3):
        await queue.submit(f"run-{n}")

    with pytest.raises(QueueUnavailable, match="refused"):
        await queue.submit("run-3")
    assert [d.run_id for d in await pull_until(queue, 3)] == ["run-0", "run-1", "run-2"]


# ------------------------------------------------------------------ prefetch


async def test_a_pull_prefetches_only_the_free_slots(rabbitmq_backend: RabbitBackend) -> None:
    busy = await rabbitmq_backend.queue(ack_wait=LONG)
    idle = await rabbitmq_backend.queue(ack_wait=LONG)
    for n in range(6):
        await busy.submit(f"run-{n}")

    first = await busy.pull(3, timeout=5)  # what was there when the first one came
    await asyncio.sleep(0.3)  # the rest of its prefetch arrives meanwhile
    rest = await busy.pull(3 - len(first), timeout=0.5) if len(first) < 3 else []
    others = await pull_until(idle, 3)

    # busy held its 3 free slots' worth, in order; the other 3 were left to idle.
    assert [d.run_id for d in [*first, *rest]] == ["run-0", "run-1", "run-2"]
    assert [d.run_id for d in others] == ["run-3", "run-4", "run-5"]
    assert await idle.pull(10, timeout=0.5) == []


async def test_a_replica_that_is_not_pulling_is_sent_nothing(
    rabbitmq_backend: RabbitBackend,
) -> None:
    pulled_once = await rabbitmq_backend.queue(ack_wait=LONG)
    pulling = await rabbitmq_backend.queue(ack_wait=LONG)
    assert await pulled_once.pull(5, timeout=0.2) == []

    waiting = asyncio.create_task(pulling.pull(5, timeout=30))
    await asyncio.sleep(0.2)
    await pulled_once.submit("run-1")

    assert summary(await asyncio.wait_for(waiting, 35)) == [("run-1", 1)]


# ------------------------------------------------------------------ returns


async def test_a_delivery_held_past_ack_wait_is_returned_by_the_adapter(
    rabbitmq_backend: RabbitBackend, caplog: pytest.LogCaptureFixture
) -> None:
    holder = await rabbitmq_backend.queue(ack_wait=1.0)
    other = await rabbitmq_backend.queue(ack_wait=LONG)
    await holder.submit("run-1")
    held = await pull_one(holder)
    held_at = time.monotonic()

    again = await pull_one(other)

    assert summary([again]) == [("run-1", 2)]
    assert time.monotonic() - held_at >= 0.9
    caplog.set_level(logging.DEBUG, logger="agent_executor.adapters.rabbitmq_queue")
    await held.extend()  # too late: never raises, logged as lost
    with pytest.raises(QueueUnavailable, match="went back"):
        await held.ack()  # nothing is sent for a delivery that went back
    assert "run queue signal lost" in caplog.messages
    await again.ack()
    assert await other.pull(1, timeout=1.5) == []


async def test_a_retry_shorter_than_ack_wait_comes_back_after_its_delay(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(ack_wait=LONG)
    await queue.submit("run-1")
    delivery = await pull_one(queue)

    await delivery.retry(0.5)
    retried_at = time.monotonic()
    again = await pull_one(queue)

    assert summary([again]) == [("run-1", 2)]
    assert 0.4 <= time.monotonic() - retried_at < 10


async def test_a_dropped_connection_returns_its_runs_at_once(
    rabbitmq_backend: RabbitBackend,
) -> None:
    dropped = await rabbitmq_backend.queue(ack_wait=LONG)
    other = await rabbitmq_backend.queue(ack_wait=LONG)
    await dropped.submit("run-1")
    held = await pull_one(dropped)

    await drop_connection(rabbitmq_backend.server, dropped)
    again = await pull_one(other, timeout=10)

    assert summary([again]) == [("run-1", 2)]
    with pytest.raises(QueueUnavailable):
        await held.ack()
    await held.extend()  # lost with the connection; never raises
    # The dropped replica connects again by itself and takes part again.
    await eventually(lambda: _answers(dropped), timeout=15, interval=0.1)
    await dropped.submit("run-2")
    assert summary([await pull_one(dropped)]) == [("run-2", 1)]


async def test_a_replica_started_while_rabbitmq_is_down_works_once_it_is_up(
    rabbitmq_backend: RabbitBackend,
) -> None:
    await rabbitmq_backend.stop_broker()
    started_at = time.monotonic()
    queue = await rabbitmq_backend.queue()  # returns: the executor starts all the same

    assert time.monotonic() - started_at < 10
    with pytest.raises(QueueUnavailable):
        await queue.submit("run-1")
    await rabbitmq_backend.start_broker()  # returns once every replica answers
    await queue.submit("run-1")
    assert summary([await pull_one(queue)]) == [("run-1", 1)]


async def _answers(queue: RabbitRunQueue) -> bool:
    try:
        await queue.stats()
    except QueueUnavailable:
        return False
    return True


# ------------------------------------------------------------------ giving up


async def test_the_broker_dead_letters_a_run_past_its_delivery_limit(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(ack_wait=LONG, max_attempts=1)
    await queue.submit("run-1")
    for attempt in (1, 2):  # max_attempts + 1 deliveries, never settled
        delivery = await pull_one(queue)
        assert summary([delivery]) == [("run-1", attempt)]
        await delivery.retry(0)

    assert await queue.pull(1, timeout=1.0) == []
    assert await rabbitmq_backend.dead_letters() == [
        {"run_id": "run-1", "x-death": "delivery_limit"}
    ]
    stats = await queue.stats()
    assert (stats.pending, stats.dead_letters) == (0, 1)


async def test_without_a_delivery_limit_a_run_is_delivered_until_settled(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(ack_wait=LONG, max_attempts=1, max_deliver=-1)
    await queue.submit("run-1")
    for _ in range(4):
        await (await pull_one(queue)).retry(0)

    last = await pull_one(queue)

    assert summary([last]) == [("run-1", 5)]
    assert (await queue.stats()).dead_letters == 0


# ------------------------------------------------------------------ stats


async def test_stats_without_the_management_api_tell_no_depth_age_or_redeliveries(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(ack_wait=LONG)
    for run_id in ("run-a", "run-b"):
        await queue.submit(run_id)
    await pull_one(queue)

    assert await queue.stats() == QueueStats(
        depth=None, pending=1, oldest_age_seconds=None, redelivered=None, dead_letters=0
    )


async def test_stats_take_the_depth_from_the_management_api(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(
        ack_wait=LONG, management_url=rabbitmq_backend.server.management_url
    )
    for run_id in ("run-a", "run-b", "run-c"):
        await queue.submit(run_id)
    held = await pull_one(queue)

    async def depth_of_three() -> bool:
        return (await queue.stats()).depth == 3  # 2 ready, 1 held: as RabbitMQ reports it

    await eventually(depth_of_three, timeout=20, interval=0.2)
    stats = await queue.stats()
    # A quorum queue reports neither the age of its head nor the redeliveries in progress.
    assert (stats.pending, stats.oldest_age_seconds, stats.redelivered) == (2, None, None)
    await held.ack()


async def test_an_unanswering_management_api_leaves_only_the_depth_untold(
    rabbitmq_backend: RabbitBackend,
) -> None:
    queue = await rabbitmq_backend.queue(management_url="http://127.0.0.1:9")  # nothing there
    await queue.submit("run-1")

    assert await queue.stats() == QueueStats(
        depth=None, pending=1, oldest_age_seconds=None, redelivered=None, dead_letters=0
    )
