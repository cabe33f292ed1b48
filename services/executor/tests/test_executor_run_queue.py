"""The `RunQueue` contract: one scenario suite run against every adapter.

Backends: the in-memory twin, NATS JetStream (a nats-server per test, so a test
can stop and restart it), Redis Streams (a redis-server per test,
`redis_queue_support.py`) and RabbitMQ (the run's private node, restarted by the
broker tests; `rabbitmq_queue_support.py`). To add one, write a `<name>_backend`
fixture yielding a `Backend` and add the name to `BACKENDS`. What a broker cannot
honour is an explicit branch on its name (RabbitMQ: `DUPLICATES_DELIVERED`,
`FIGURES_UNTOLD`), never a skip.
Timings: `ACK_WAIT` is short so redeliveries come quickly; bounds on how long
something takes are lower bounds or generous, since the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import nats
import pytest
from executor_support import eventually
from rabbitmq_queue_support import rabbitmq_backend  # noqa: F401
from redis_queue_support import redis_backend  # noqa: F401

from agent_executor.adapters.memory import MemoryRunQueue
from agent_executor.adapters.nats_queue import JetStreamRunQueue
from agent_executor.application.ports import (
    QueueDelivery,
    QueueStats,
    QueueUnavailable,
    RunQueue,
)
from agentrt_kit.nats import Names, NatsClient, StreamLimits
from agentrt_testkit.nats_server import NatsServer

ACK_WAIT = 1.0
LIMITS = StreamLimits(3_600.0, 16 * 1024**2)
MAX_ATTEMPTS = 3
BACKENDS = ["memory", "nats", "redis", "rabbitmq"]
# What a broker cannot honour, by `RunQueue.backend` (see its adapter's docstring).
# RabbitMQ has no duplicate detection (the run store's claim makes a copy harmless),
# and tells no age or redeliveries of a quorum queue (None), nor its depth without
# the management API, which the contract's RabbitMQ backend does not use.
DUPLICATES_DELIVERED = {"rabbitmq"}
FIGURES_UNTOLD = {"rabbitmq"}


class Backend(Protocol):
    """A run queue implementation and the broker behind it, as a test drives them."""

    async def queue(
        self, *, ack_wait: float = ACK_WAIT, max_attempts: int = MAX_ATTEMPTS
    ) -> RunQueue:
        """A new executor replica's handle on the one shared queue (closed after the test)."""
        ...

    async def vanish(self, queue: RunQueue) -> None:
        """The replica holding `queue` dies: it acknowledges nothing more."""
        ...

    async def stop_broker(self) -> None:
        """Take the broker away (every live replica has noticed when this returns)."""
        ...

    async def start_broker(self) -> None:
        """Bring it back with what it stored (every live replica is reconnected)."""
        ...

    async def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter records, oldest first."""
        ...


class MemoryBackend:
    """`MemoryRunQueue` handles on one shared queue."""

    def __init__(self) -> None:
        self.first: MemoryRunQueue | None = None

    async def queue(
        self, *, ack_wait: float = ACK_WAIT, max_attempts: int = MAX_ATTEMPTS
    ) -> MemoryRunQueue:
        if self.first is None:
            self.first = MemoryRunQueue(ack_wait=ack_wait, max_attempts=max_attempts)
            return self.first
        replica = self.first.replica()
        replica.ack_wait, replica.max_attempts = ack_wait, max_attempts
        return replica

    async def vanish(self, queue: RunQueue) -> None:
        assert isinstance(queue, MemoryRunQueue)
        await queue.close()

    async def stop_broker(self) -> None:
        assert self.first is not None
        self.first.available = False

    async def start_broker(self) -> None:
        assert self.first is not None
        self.first.available = True

    async def dead_letters(self) -> list[dict[str, Any]]:
        assert self.first is not None
        return list(self.first.dead_letters.values())


class NatsBackend:
    """`JetStreamRunQueue`s, each on its own connection, on a nats-server of the test's own."""

    def __init__(self, server: NatsServer, prefix: str) -> None:
        self.server = server
        self.names = Names(prefix)
        self.replicas: list[tuple[NatsClient, JetStreamRunQueue]] = []

    async def queue(
        self, *, ack_wait: float = ACK_WAIT, max_attempts: int = MAX_ATTEMPTS
    ) -> JetStreamRunQueue:
        client = NatsClient(self.server.url, name=f"executor-{len(self.replicas)}")
        await client.start()
        assert await client.wait_connected(10)
        queue = JetStreamRunQueue(
            client,
            self.names,
            ack_wait=ack_wait,
            max_attempts=max_attempts,
            limits=LIMITS,
            dead_letter_limits=LIMITS,
        )
        await queue.start()
        self.replicas.append((client, queue))
        return queue

    def _live(self) -> list[NatsClient]:
        return [client for client, _ in self.replicas if not client.nc.is_closed]

    async def vanish(self, queue: RunQueue) -> None:
        client = next(c for c, q in self.replicas if q is queue)
        await client.close()

    async def stop_broker(self) -> None:
        self.server.stop()
        await eventually(lambda: not any(c.connected for c in self._live()), timeout=10)

    async def start_broker(self) -> None:
        self.server.start()
        await eventually(lambda: all(c.connected for c in self._live()), timeout=15)

    async def dead_letters(self) -> list[dict[str, Any]]:
        nc = await nats.connect(self.server.url)
        try:
            js = nc.jetstream()
            stream = self.names.stream("run_dead_letters")
            state = (await js.stream_info(stream)).state
            records = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                message = await js.get_msg(stream, seq)
                assert message.subject == self.names.subject("runs", "dead")
                records.append(json.loads(message.data or b""))
            return records
        finally:
            await nc.close()

    async def close(self) -> None:
        for client, queue in self.replicas:
            await queue.close()
            await client.close()


@pytest.fixture
async def memory_backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def nats_backend(
    make_nats_server: Callable[[], NatsServer], nats_prefix: str
) -> AsyncIterator[NatsBackend]:
    backend = NatsBackend(make_nats_server(), nats_prefix)
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


async def pull_one(queue: RunQueue, timeout: float = 10.0) -> QueueDelivery:
    deliveries = await queue.pull(1, timeout=timeout)
    assert len(deliveries) == 1, f"no run delivered within {timeout} s"
    return deliveries[0]


async def pull_until(queue: RunQueue, count: int, timeout: float = 15.0) -> list[QueueDelivery]:
    """Pull until `count` deliveries came (each pull takes at most what is still missing)."""
    got: list[QueueDelivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{count} deliveries expected, got {got}"
        got += await queue.pull(count - len(got), timeout=min(left, 1.0))
    return got


def summary(deliveries: Sequence[QueueDelivery]) -> list[tuple[str, int]]:
    return [(d.run_id, d.attempt) for d in deliveries]


def told(queue: RunQueue, figure: Any) -> Any:
    """`figure`, or None where the queue's broker tells no depth, age or redeliveries."""
    return None if queue.backend in FIGURES_UNTOLD else figure


# ------------------------------------------------------------------ delivery


async def test_first_deliveries_come_in_submission_order(backend: Backend) -> None:
    queue = await backend.queue()
    runs = [f"run-{n}" for n in range(6)]
    for run_id in runs:
        await queue.submit(run_id)

    deliveries = await pull_until(queue, len(runs))

    assert summary(deliveries) == [(run_id, 1) for run_id in runs]


async def test_an_acknowledged_run_is_never_delivered_again(backend: Backend) -> None:
    queue = await backend.queue()
    await queue.submit("run-1")
    delivery = await pull_one(queue)

    await delivery.ack()
    await delivery.ack()  # a repeat does nothing

    assert await queue.pull(1, timeout=1.5 * ACK_WAIT) == []
    assert (await queue.stats()).depth == told(queue, 0)


async def test_an_unacknowledged_run_is_delivered_again_after_ack_wait(backend: Backend) -> None:
    queue = await backend.queue()
    await queue.submit("run-1")
    await pull_one(queue)
    held_since = time.monotonic()

    again = await pull_one(queue)

    assert (again.run_id, again.attempt) == ("run-1", 2)
    assert time.monotonic() - held_since >= ACK_WAIT / 2
    assert (await queue.stats()).redelivered == told(queue, 1)
    await again.ack()
    assert (await queue.stats()).redelivered == told(queue, 0)


async def test_extending_a_delivery_keeps_it_from_other_executors(backend: Backend) -> None:
    ack_wait = 1.5  # room for a loaded machine between two extensions
    mine = await backend.queue(ack_wait=ack_wait)
    other = await backend.queue(ack_wait=ack_wait)
    await mine.submit("run-1")
    delivery = await pull_one(mine)

    held_until = time.monotonic() + 1.5 * ack_wait
    while time.monotonic() < held_until:
        await delivery.extend()
        assert await other.pull(1, timeout=ack_wait / 5) == []

    # No more extensions: it goes to whoever pulls after ack_wait.
    again = await pull_one(other)
    assert (again.run_id, again.attempt) == ("run-1", 2)


async def test_a_retried_run_is_delivered_again_after_the_delay(backend: Backend) -> None:
    queue = await backend.queue()
    await queue.submit("run-1")
    delivery = await pull_one(queue)

    await delivery.retry(1.5)
    retried_at = time.monotonic()
    assert await queue.pull(1, timeout=0.3) == []
    again = await pull_one(queue)

    assert (again.run_id, again.attempt) == ("run-1", 2)
    assert time.monotonic() - retried_at >= 1.0


async def test_a_run_submitted_twice_is_delivered_once(backend: Backend) -> None:
    queue = await backend.queue()
    await queue.submit("run-1")
    await queue.submit("run-1")
    if queue.backend in DUPLICATES_DELIVERED:  # each copy once, then a late repeat too
        copies = await pull_until(queue, 2)
        assert summary(copies) == [("run-1", 1), ("run-1", 1)]
        for copy in copies:
            await copy.ack()
        await queue.submit("run-1")
        assert summary([await pull_one(queue)]) == [("run-1", 1)]
        return

    deliveries = await queue.pull(10, timeout=5)
    assert summary(deliveries) == [("run-1", 1)]
    assert (await queue.stats()).depth == 1
    await deliveries[0].ack()

    await queue.submit("run-1")  # a late repeat, after the run was done
    assert await queue.pull(10, timeout=0.5) == []


async def test_a_pull_takes_at_most_max_count(backend: Backend) -> None:
    queue = await backend.queue()
    for n in range(5):
        await queue.submit(f"run-{n}")

    batches = [await queue.pull(2, timeout=5)]
    while sum(map(len, batches)) < 5:
        batches.append(await queue.pull(2, timeout=5))
        assert batches[-1], "a queued run was not delivered"

    assert all(1 <= len(batch) <= 2 for batch in batches)
    assert [d.run_id for batch in batches for d in batch] == [f"run-{n}" for n in range(5)]


async def test_a_pull_returns_as_soon_as_one_run_is_queued(backend: Backend) -> None:
    executor = await backend.queue()
    submitter = await backend.queue()
    started = time.monotonic()
    assert await executor.pull(10, timeout=0.5) == []
    assert time.monotonic() - started >= 0.4  # an empty queue is waited on, not polled

    waiting = asyncio.create_task(executor.pull(10, timeout=60))
    await asyncio.sleep(0.2)
    submitted = time.monotonic()
    await submitter.submit("run-1")
    deliveries = await asyncio.wait_for(waiting, 70)

    assert summary(deliveries) == [("run-1", 1)]
    assert time.monotonic() - submitted < 30  # not the whole timeout, nor a full batch


async def test_a_run_held_by_a_vanished_executor_goes_to_another(backend: Backend) -> None:
    lost = await backend.queue()
    survivor = await backend.queue()
    await survivor.submit("run-1")
    held = await pull_one(lost)

    await backend.vanish(lost)
    await held.extend()  # lost with the connection; never raises into the run
    with pytest.raises(QueueUnavailable):
        await held.ack()
    with pytest.raises(QueueUnavailable):
        await lost.pull(1, timeout=0.1)

    again = await pull_one(survivor)
    assert (again.run_id, again.attempt) == ("run-1", 2)
    await again.ack()
    assert (await survivor.stats()).depth == told(survivor, 0)


# ------------------------------------------------------------------ giving up


async def test_a_dead_lettered_run_is_recorded_and_never_delivered_again(
    backend: Backend,
) -> None:
    queue = await backend.queue(max_attempts=1)
    await queue.submit("run-1")
    await pull_one(queue)
    second = await pull_one(queue)  # attempt 2 > max_attempts: the executor gives up
    assert second.attempt == 2

    await queue.dead_letter(second, "delivered 2 times")

    assert await backend.dead_letters() == [
        {"run_id": "run-1", "reason": "delivered 2 times", "attempt": 2}
    ]
    stats = await queue.stats()
    assert (stats.depth, stats.dead_letters) == (told(queue, 0), 1)
    assert await queue.pull(1, timeout=1.5 * ACK_WAIT) == []


async def test_a_run_is_delivered_at_most_one_time_past_max_attempts(backend: Backend) -> None:
    queue = await backend.queue(max_attempts=1)
    await queue.submit("run-1")
    await pull_one(queue)
    assert (await pull_one(queue)).attempt == 2

    # Never acknowledged nor dead-lettered: the broker stops delivering it anyway
    # (RabbitMQ dead-letters it: test_executor_rabbitmq_queue.py).
    assert await queue.pull(1, timeout=1.5 * ACK_WAIT) == []
    assert (await queue.stats()).depth == told(queue, 1)


# ------------------------------------------------------------------ stats


async def test_stats_count_waiting_and_held_runs_and_the_age_of_the_oldest(
    backend: Backend,
) -> None:
    queue = await backend.queue()
    empty = QueueStats(told(queue, 0), 0, told(queue, 0.0), told(queue, 0), 0)
    assert await queue.stats() == empty
    for run_id in ("run-a", "run-b", "run-c"):
        await queue.submit(run_id)

    async def aged() -> bool:
        return (await queue.stats()).oldest_age_seconds >= 0.6

    if queue.backend not in FIGURES_UNTOLD:
        await eventually(aged, timeout=10, interval=0.1)
    held = await pull_one(queue)

    stats = await queue.stats()
    assert (stats.depth, stats.pending, stats.redelivered, stats.dead_letters) == (
        told(queue, 3),
        2,
        told(queue, 0),
        0,
    )
    if queue.backend in FIGURES_UNTOLD:
        assert stats.oldest_age_seconds is None
    else:
        assert 0.5 <= stats.oldest_age_seconds < 60
    for delivery in [held, *await pull_until(queue, 2)]:
        await delivery.ack()
    assert await queue.stats() == empty


# ------------------------------------------------------------------ the broker goes away


async def test_queued_and_held_runs_are_delivered_after_a_broker_restart(
    backend: Backend,
) -> None:
    queue = await backend.queue()
    await queue.submit("run-held")
    await queue.submit("run-waiting")
    held = await pull_one(queue)
    assert held.run_id == "run-held"

    await backend.stop_broker()
    await backend.start_broker()

    deliveries = await pull_until(queue, 2)
    assert sorted(summary(deliveries)) == [("run-held", 2), ("run-waiting", 1)]


async def test_a_down_broker_is_reported_and_the_queue_works_again_after(
    backend: Backend,
) -> None:
    queue = await backend.queue()
    await queue.submit("run-1")
    held = await pull_one(queue)

    await backend.stop_broker()
    with pytest.raises(QueueUnavailable):
        await queue.pull(1, timeout=0.5)
    with pytest.raises(QueueUnavailable):
        await queue.submit("run-2")
    with pytest.raises(QueueUnavailable):
        await queue.stats()
    await held.extend()  # lost (or sent late); never raises into the run

    await backend.start_broker()
    await queue.submit("run-2")
    deliveries = await pull_until(queue, 2)
    assert sorted(summary(deliveries)) == [("run-1", 2), ("run-2", 1)]


# ------------------------------------------------------------------ JetStream specifics


async def test_the_jetstream_queue_declares_itself_again_on_a_nats_with_an_empty_store(
    make_nats_server: Callable[[], NatsServer], tmp_path: Path
) -> None:
    first = make_nats_server()
    (tmp_path / "fresh").mkdir()
    replacement = NatsServer(store_dir=str(tmp_path / "fresh"), port=first.port)
    backend = NatsBackend(first, "fresh")
    try:
        queue = await backend.queue()
        await queue.submit("run-1")
        await (await pull_one(queue)).ack()

        first.stop()
        await eventually(lambda: not backend.replicas[0][0].connected, timeout=10)
        backend.server = replacement  # same address, nothing stored
        await backend.start_broker()

        assert await queue.pull(1, timeout=0.2) == []
        await queue.submit("run-2")
        assert summary([await pull_one(queue)]) == [("run-2", 1)]
        assert (await queue.stats()).depth == 1
    finally:
        await backend.close()
        replacement.close()


async def test_the_jetstream_queue_declares_its_stream_again_when_it_is_deleted(
    nats_backend: NatsBackend,
) -> None:
    queue = await nats_backend.queue()
    await queue.submit("run-1")
    async with contextlib.AsyncExitStack() as stack:
        nc = await nats.connect(nats_backend.server.url)
        stack.push_async_callback(nc.close)
        await nc.jetstream().delete_stream(queue.stream)

    await queue.submit("run-2")
    assert summary([await pull_one(queue)]) == [("run-2", 1)]


async def test_jetstream_queues_of_different_names_are_separate(
    nats_backend: NatsBackend, nats_prefix: str
) -> None:
    runs = await nats_backend.queue()
    client = nats_backend.replicas[0][0]
    webhooks = JetStreamRunQueue(
        client,
        Names(nats_prefix),
        ack_wait=ACK_WAIT,
        limits=LIMITS,
        dead_letter_limits=LIMITS,
        name="webhook",
    )
    await webhooks.start()
    try:
        assert (runs.stream, webhooks.stream) == (
            f"{nats_prefix}_RUN_QUEUE".upper(),
            f"{nats_prefix}_WEBHOOK_QUEUE".upper(),
        )
        await runs.submit("run-1")
        await webhooks.submit("run-1")  # the same id, another queue: queued there too

        assert summary([await pull_one(webhooks)]) == [("run-1", 1)]
        assert summary([await pull_one(runs)]) == [("run-1", 1)]
    finally:
        await webhooks.close()


async def test_lost_extensions_are_logged_once_as_a_warning(
    nats_backend: NatsBackend, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await nats_backend.queue()
    await queue.submit("run-1")
    held = [await pull_one(queue)]
    await queue.submit("run-2")
    held.append(await pull_one(queue))
    await nats_backend.vanish(queue)
    caplog.set_level(logging.DEBUG, logger="agent_executor.adapters.nats_queue")

    for delivery in held * 2:
        await delivery.extend()

    lost = [r for r in caplog.records if r.getMessage() == "run queue signal lost"]
    assert [r.levelno for r in lost] == [logging.WARNING] + [logging.DEBUG] * 3
