"""The run event bus: a run's events read back, resumed after an id, from any replica.

One scenario suite runs against the in-memory twin (`ListEventSink` +
`MemoryRunEventLog`) and both real buses (`JetStreamRunEvents` +
`JetStreamRunEventLog` on a real nats-server, `RedisRunEvents` + `RedisRunEventLog`
on a real redis-server); cancel requests and run endings between replicas run on
both buses. The tests after those take the broker away or look inside it, so they
run on one bus each: JetStream, then Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from executor_support import eventually
from nats.js.api import DiscardPolicy

from agent_executor.adapters.memory import ListEventSink, MemoryRunEventLog
from agent_executor.adapters.nats_runs import (
    CONSUMER_INACTIVE_SECONDS,
    JetStreamRunEventLog,
    JetStreamRunEvents,
    NatsCancelBus,
    NatsRunEndings,
)
from agent_executor.adapters.proto_mapping import (
    run_event_of,
    stored_run_event,
    stream_event,
    timestamp,
)
from agent_executor.adapters.redis_runs import RedisBus, RedisRunEventLog, RedisRunEvents
from agent_executor.application.ports import QueueUnavailable, RunEndings, RunEventLog
from agent_executor.domain.client_tools import ToolCall
from agent_executor.domain.runs import (
    MessageCompleted,
    MessageDelta,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    StepProgress,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from agentrt.events.v1 import run_events_pb2
from agentrt_kit.concurrency import wait_event
from agentrt_kit.nats import Names, NatsClient, StreamLimits
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.redis_server import RedisServer

NOW = datetime(2025, 5, 1, 9, 30, 0, 123_456, tzinfo=UTC)
WAIT = 30.0  # a generous bound, so a broken read fails instead of hanging
LIMITS = StreamLimits(3_600.0, 64 * 1024**2)
LOGGER = "agent_executor.adapters.nats_runs"


def events_of(run_id: str, deltas: int = 3) -> list[RunEvent]:
    """A successful run: started, `deltas` pieces of text, completed."""
    body: list[Any] = [RunStarted(run_id, "agent-1", 2, "task-1", "ctx-1")]
    body += [MessageDelta(f"t{i} ", "m1") for i in range(deltas)]
    body.append(RunCompleted("stop", Usage(7, deltas)))
    return [
        RunEvent(run_id, seq, NOW + timedelta(milliseconds=seq), b)
        for seq, b in enumerate(body, start=1)
    ]


class Sink(Protocol):
    def publish(self, event: RunEvent, agent_id: str, agent_version: int) -> None: ...

    async def flush(self, run_id: str) -> None: ...


@dataclass
class EventStore:
    """A publisher and a log reading what it publishes."""

    sink: Sink
    log: RunEventLog

    async def publish(self, *events: RunEvent) -> None:
        for event in events:
            self.sink.publish(event, "agent-1", 2)
        if events:
            await self.sink.flush(events[-1].run_id)


async def read_all(log: RunEventLog, run_id: str, after: int = 0) -> list[RunEvent]:
    async def collect() -> list[RunEvent]:
        return [event async for event in log.read(run_id, after)]

    return await asyncio.wait_for(collect(), WAIT)


class Reader:
    """A read running in the background, its events arriving in a queue."""

    def __init__(self, log: RunEventLog, run_id: str, after: int = 0) -> None:
        self.got: asyncio.Queue[RunEvent] = asyncio.Queue()
        self.task = asyncio.create_task(self._read(log, run_id, after))

    async def _read(self, log: RunEventLog, run_id: str, after: int) -> None:
        async for event in log.read(run_id, after):
            self.got.put_nowait(event)

    async def next(self) -> RunEvent:
        return await asyncio.wait_for(self.got.get(), WAIT)

    async def take(self, count: int) -> list[RunEvent]:
        return [await self.next() for _ in range(count)]

    async def ended(self) -> bool:
        await asyncio.wait_for(self.task, WAIT)
        return self.got.empty()

    async def cancel(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[NatsClient]:
    client = NatsClient(url, name="run-event-log-test")
    await client.start()
    assert await client.wait_connected(10)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def jetstream(
    client: NatsClient, prefix: str, **sink_options: Any
) -> AsyncIterator[tuple[JetStreamRunEvents, JetStreamRunEventLog]]:
    names = Names(prefix)
    sink = JetStreamRunEvents(
        client, names, **{"ack_timeout": 5.0, "limits": LIMITS, **sink_options}
    )
    await sink.start()
    try:
        yield (
            sink,
            JetStreamRunEventLog(client, names, heartbeat_seconds=0.5, stream_poll_seconds=0.05),
        )
    finally:
        await sink.stop(timeout=1.0)


@pytest.fixture(params=["memory", "jetstream", "redis"])
async def store(
    request: pytest.FixtureRequest,
    nats_server: NatsServer,
    redis_server: RedisServer,
    nats_prefix: str,
) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        sink = ListEventSink()
        yield EventStore(sink, MemoryRunEventLog(sink))
        return
    if request.param == "redis":
        async with RedisBus(redis_server.url(), prefix=nats_prefix) as bus:
            yield EventStore(bus.events, bus.log)
        return
    async with connected(nats_server.url) as client, jetstream(client, nats_prefix) as (s, log):
        yield EventStore(s, log)


# ------------------------------------------------------------------ every implementation


async def test_a_reader_from_zero_replays_an_ended_run_from_its_first_event(
    store: EventStore,
) -> None:
    run = events_of("run-a")
    await store.publish(*events_of("other"), *run)

    assert await read_all(store.log, "run-a") == run


async def test_a_reader_resuming_after_an_id_gets_exactly_the_events_after_it(
    store: EventStore,
) -> None:
    run = events_of("run-b", deltas=5)
    await store.publish(*run)

    for after in (1, 2, 4, 6):
        assert await read_all(store.log, "run-b", after) == run[after:]


async def test_a_reader_after_the_last_event_gets_nothing_and_is_done(
    store: EventStore,
) -> None:
    run = events_of("run-c")
    await store.publish(*run)

    assert await read_all(store.log, "run-c", after=len(run)) == []
    assert await read_all(store.log, "run-c", after=len(run) + 10) == []


async def test_a_reader_after_a_sequence_the_run_has_not_reached_still_ends_with_it(
    store: EventStore,
) -> None:
    run = events_of("run-c2")
    await store.publish(*run[:2])
    reader = Reader(store.log, "run-c2", after=len(run) + 3)
    try:
        await asyncio.sleep(0.3)  # the reader waits: nothing after its sequence yet
        assert not reader.task.done()
        await store.publish(*run[2:])
        assert await reader.ended()  # the run's end ends it, with nothing to yield
    finally:
        await reader.cancel()


async def test_a_live_reader_gets_each_event_as_it_is_published(store: EventStore) -> None:
    run = events_of("run-d")
    reader = Reader(store.log, "run-d")
    try:
        for event in run:
            await store.publish(event)
            # Each event arrives before the next one exists: it came live.
            assert await reader.next() == event
        assert await reader.ended()
    finally:
        await reader.cancel()


async def test_concurrent_readers_each_get_every_event_once(store: EventStore) -> None:
    run = events_of("run-e", deltas=6)
    early = [Reader(store.log, "run-e") for _ in range(3)]
    resuming = Reader(store.log, "run-e", after=2)
    try:
        await store.publish(*run[:4])
        midway = Reader(store.log, "run-e")
        await store.publish(*run[4:])

        for reader in (*early, midway):
            assert await reader.take(len(run)) == run
            assert await reader.ended()
        assert await resuming.take(len(run) - 2) == run[2:]
        assert await resuming.ended()
    finally:
        for reader in (*early, resuming, midway):
            await reader.cancel()


async def test_last_sequence_is_zero_before_any_event_then_the_last_stored(
    store: EventStore,
) -> None:
    assert await store.log.last_sequence("run-f") == 0
    run = events_of("run-f", deltas=4)
    await store.publish(*run[:3])

    async def last_is(expected: int) -> bool:
        return await store.log.last_sequence("run-f") == expected

    await eventually(lambda: last_is(3), timeout=WAIT)
    await store.publish(*run[3:])
    assert await store.log.last_sequence("run-f") == len(run)
    assert await store.log.last_sequence("run-unknown") == 0


async def test_a_second_executor_continues_numbering_after_the_last_stored_event(
    store: EventStore,
) -> None:
    started, delta = events_of("run-g")[:2]
    await store.publish(started, delta)  # the first executor crashed here
    await eventually(lambda: last_is(store.log, "run-g", 2), timeout=WAIT)

    after = await store.log.last_sequence("run-g")
    rest = [
        RunEvent("run-g", after + 1, NOW, MessageDelta("again", "m2")),
        RunEvent("run-g", after + 2, NOW, RunFailed("EXECUTOR_LOST", "gave up")),
    ]
    await store.publish(*rest)

    assert [e.sequence for e in await read_all(store.log, "run-g")] == [1, 2, 3, 4]
    assert await read_all(store.log, "run-g", after=2) == rest


async def last_is(log: RunEventLog, run_id: str, expected: int) -> bool:
    return await log.last_sequence(run_id) == expected


@pytest.mark.parametrize("other_runs_first", [False, True])
async def test_a_reader_of_a_run_without_events_waits_for_them(
    store: EventStore, other_runs_first: bool
) -> None:
    if other_runs_first:
        await store.publish(*events_of("earlier"))
    reader = Reader(store.log, "run-h")
    try:
        await asyncio.sleep(0.3)  # the reader is waiting: nothing is there for it
        assert reader.got.empty()
        assert not reader.task.done()
        run = events_of("run-h")
        await store.publish(*run)
        assert await reader.take(len(run)) == run
        assert await reader.ended()
    finally:
        await reader.cancel()


async def test_a_repeated_event_is_read_once(store: EventStore) -> None:
    first, second, third, fourth, last = events_of("run-i")
    await store.publish(first, second, first, second, third, second, fourth, last)

    assert await read_all(store.log, "run-i") == [first, second, third, fourth, last]


async def test_a_gap_is_read_across_and_the_read_still_ends(store: EventStore) -> None:
    first, second, _, _, last = events_of("run-j")
    await store.publish(first, second, last)

    assert await read_all(store.log, "run-j") == [first, second, last]


async def test_the_memory_log_refuses_reads_while_unavailable_as_nats_does() -> None:
    sink = ListEventSink()
    log = MemoryRunEventLog(sink)
    await EventStore(sink, log).publish(*events_of("away"))
    log.available = False
    with pytest.raises(QueueUnavailable):
        await log.last_sequence("away")
    with pytest.raises(QueueUnavailable):
        await read_all(log, "away")
    log.available = True
    assert await read_all(log, "away") == events_of("away")


# ------------------------------------------------------------------ between replicas, every bus


class CancelListener(Protocol):
    async def start(self, on_cancel: Callable[[str], bool]) -> None: ...

    async def broadcast(self, run_id: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Replica:
    """One executor replica's ends of the bus, and the cancel requests it heard."""

    sink: Sink
    log: RunEventLog
    cancel: CancelListener
    endings: RunEndings
    heard: list[str] = field(default_factory=list)
    listening: bool = False

    def on_cancel(self, run_id: str) -> bool:
        if run_id == "warm-up":
            self.listening = True
            return False
        self.heard.append(run_id)
        return run_id.startswith("mine")

    async def publish(self, *events: RunEvent) -> None:
        await EventStore(self.sink, self.log).publish(*events)


@pytest.fixture(params=["nats", "redis"])
async def replicas(
    request: pytest.FixtureRequest,
    nats_server: NatsServer,
    redis_server: RedisServer,
    nats_prefix: str,
) -> AsyncIterator[Callable[[], Awaitable[Replica]]]:
    """Start replicas, each with its own connection to the bus, all on the test's prefix."""
    async with contextlib.AsyncExitStack() as stack:

        async def replica() -> Replica:
            if request.param == "redis":
                bus = RedisBus(redis_server.url(), prefix=nats_prefix)
                await stack.enter_async_context(bus)
                one = Replica(bus.events, bus.log, bus.cancel, bus.endings)
            else:
                client = await stack.enter_async_context(connected(nats_server.url))
                sink, log = await stack.enter_async_context(jetstream(client, nats_prefix))
                names = Names(nats_prefix)
                one = Replica(
                    sink, log, NatsCancelBus(client, names), NatsRunEndings(client, names)
                )
            await one.cancel.start(one.on_cancel)
            stack.push_async_callback(one.cancel.close)
            return one

        yield replica


async def test_a_cancel_broadcast_reaches_every_replica(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    a, b = await replicas(), await replicas()

    async def both_listen() -> bool:
        await a.cancel.broadcast("warm-up")
        await b.cancel.broadcast("warm-up")
        await asyncio.sleep(0.05)
        return a.listening and b.listening

    await eventually(both_listen, timeout=WAIT)
    await b.cancel.broadcast("run-42")
    await a.cancel.broadcast("mine-44")
    await eventually(lambda: len(a.heard) >= 2 and len(b.heard) >= 2, timeout=WAIT)
    await asyncio.sleep(0.1)  # nothing else arrives
    assert sorted(a.heard) == ["mine-44", "run-42"]  # two senders: no order between them
    assert sorted(b.heard) == ["mine-44", "run-42"]


async def test_a_run_end_is_heard_on_another_replica_and_only_by_its_watchers(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    runner, waiter = await replicas(), await replicas()
    run = events_of("ending")
    async with (
        waiter.endings.watch("ending") as ended,
        waiter.endings.watch("ending") as also_ended,
        waiter.endings.watch("other") as other,
    ):
        await runner.publish(*run[:-1])
        await asyncio.sleep(0.2)
        assert not ended.is_set()  # events before the last are no end
        await runner.publish(*events_of("unrelated"))
        await runner.publish(run[-1])

        assert await wait_event(ended, WAIT)
        assert await wait_event(also_ended, WAIT)
        assert not other.is_set()  # the unrelated run's end came first, and was not its


# ------------------------------------------------------------------ JetStream only


async def test_the_jetstream_log_reports_a_gap(
    nats_client: NatsClient, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    first, _, _, _, last = events_of("gap")
    async with jetstream(nats_client, nats_prefix) as (sink, log):
        await EventStore(sink, log).publish(first, last)
        assert [e.sequence for e in await read_all(log, "gap")] == [1, 5]

    missing = [r for r in caplog.records if r.getMessage() == "run events missing"]
    assert [(r.run_id, r.after, r.next) for r in missing] == [("gap", 1, 5)]  # type: ignore[attr-defined]


async def test_a_late_copy_stored_past_the_duplicate_window_is_skipped(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    run = events_of("late")
    async with jetstream(nats_client, nats_prefix) as (sink, log):
        store = EventStore(sink, log)
        await store.publish(*run[:3])
        # An old executor's copy of event 2, stored without its Msg-Id (as after the window).
        stale = run_events_pb2.RunEvent(
            event_id="late:2",
            run_id="late",
            sequence=2,
            occurred_at=timestamp(NOW),
            event=stream_event(RunEvent("late", 2, NOW, MessageDelta("stale"))),
        )
        await nats_client.js.publish(
            f"{nats_prefix}.runs.events.late", stale.SerializeToString(), stream=sink.stream
        )
        await store.publish(*run[3:])

        assert await read_all(log, "late") == run


def subscriptions(client: NatsClient) -> set[int]:
    return set(client.nc._subs)


async def consumers(client: NatsClient, stream: str) -> int:
    info = await client.js.stream_info(stream)
    return int(info.state.consumer_count)


async def test_a_reader_closed_or_cancelled_early_leaves_no_subscription_behind(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    async with jetstream(nats_client, nats_prefix) as (sink, log):
        store = EventStore(sink, log)
        await store.publish(*events_of("warm-up"))
        assert len(await read_all(log, "warm-up")) == 5
        await store.publish(*events_of("open")[:3])  # a run still going
        before = subscriptions(nats_client)

        # Closed after one event.
        reading = log.read("open", 0)
        assert (await asyncio.wait_for(anext(reading), WAIT)).sequence == 1
        assert len(subscriptions(nats_client)) == len(before) + 1
        await reading.aclose()
        assert subscriptions(nats_client) == before

        # Cancelled while it waits for the run's next event.
        reader = Reader(log, "open")
        assert len(await reader.take(3)) == 3
        assert len(subscriptions(nats_client)) == len(before) + 1
        await reader.cancel()
        assert subscriptions(nats_client) == before

        # Left unfinished inside an `async for` that breaks out.
        async def first_of_open() -> RunEvent:
            async with contextlib.aclosing(log.read("open", 0)) as events:
                async for event in events:
                    return event
            raise AssertionError("no event")

        assert (await asyncio.wait_for(first_of_open(), WAIT)).sequence == 1
        assert subscriptions(nats_client) == before

        # The server forgets the readers' consumers too.
        await eventually(lambda: consumers_are(nats_client, sink.stream, 0), timeout=WAIT)


async def consumers_are(client: NatsClient, stream: str, expected: int) -> bool:
    return await consumers(client, stream) == expected


async def test_events_published_while_nats_is_down_are_held_and_arrive_in_order(
    make_nats_server: Callable[[], NatsServer],
) -> None:
    server = make_nats_server()
    run = events_of("outage", deltas=6)
    async with connected(server.url) as client, jetstream(client, "outage") as (sink, log):
        store = EventStore(sink, log)
        live = Reader(log, "outage")
        try:
            await store.publish(*run[:2])
            assert await live.take(2) == run[:2]

            server.stop()  # same store directory when it comes back
            await eventually(lambda: not client.connected, timeout=WAIT)
            for event in run[2:]:
                sink.publish(event, "agent-1", 2)
            # flush gives up while NATS is away (bounded by ack_timeout), keeping the events.
            await asyncio.wait_for(sink.flush("outage"), WAIT)
            assert sink.published == 2
            assert sink.dropped == 0

            server.start()
            # The reader that was waiting across the outage gets the rest, in order.
            assert await live.take(len(run) - 2) == run[2:]
            assert await live.ended()
            # And so does a reader from the start: no gap.
            assert await read_all(log, "outage") == run
            assert await log.last_sequence("outage") == len(run)
            assert sink.published == len(run)
        finally:
            await live.cancel()


async def test_events_sent_as_nats_stops_are_sent_again_once_it_is_back(
    make_nats_server: Callable[[], NatsServer],
) -> None:
    server = make_nats_server()
    run = events_of("wire")
    async with connected(server.url) as client, jetstream(client, "wire") as (sink, log):
        store = EventStore(sink, log)
        await store.publish(*events_of("warm-up"))
        # The frozen server reads nothing, then dies: what the connection had is lost.
        with contextlib.suppress(ProcessLookupError), server.paused():
            await store.publish(*run[:3])  # handed to the connection, not confirmed
            server.kill()
        server.start()
        await eventually(lambda: client.nc.stats["reconnects"] == 1, timeout=WAIT)

        # Nothing more is published: the reconnect alone has them sent again.
        reader = Reader(log, "wire")
        try:
            assert await reader.take(3) == run[:3]
            await store.publish(*run[3:])
            assert await reader.take(2) == run[3:]
            assert await reader.ended()
        finally:
            await reader.cancel()


async def test_a_run_started_while_nats_is_down_is_stored_once_it_is_back(
    make_nats_server: Callable[[], NatsServer],
) -> None:
    server = make_nats_server()
    run = events_of("cold")
    async with connected(server.url) as client, jetstream(client, "cold") as (sink, log):
        server.stop()
        await eventually(lambda: not client.connected, timeout=WAIT)
        with pytest.raises(QueueUnavailable):
            await log.last_sequence("cold")
        with pytest.raises(QueueUnavailable):
            await read_all(log, "cold")
        for event in run:
            sink.publish(event, "agent-1", 2)

        server.start()
        await eventually(lambda: client.connected, timeout=WAIT)
        assert await read_all(log, "cold") == run


async def test_a_full_queue_drops_events_and_counts_them(
    make_nats_server: Callable[[], NatsServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    server = make_nats_server()
    run = events_of("full", deltas=4)
    async with (
        connected(server.url) as client,
        jetstream(client, "full", max_queued=3, ack_timeout=0.5) as (sink, log),
    ):
        server.stop()
        await eventually(lambda: not client.connected, timeout=WAIT)
        for event in run:
            sink.publish(event, "agent-1", 2)
        assert sink.dropped == 3  # the queue holds three
        await asyncio.wait_for(sink.flush("full"), WAIT)

        server.start()
        await eventually(lambda: client.connected, timeout=WAIT)
        await eventually(lambda: last_is(log, "full", 3), timeout=WAIT)

    lost = [r.lost for r in caplog.records if r.getMessage() == "run events lost"]  # type: ignore[attr-defined]
    assert lost == [3]


async def test_stopping_while_nats_never_comes_back_gives_up_and_says_so(
    make_nats_server: Callable[[], NatsServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    server = make_nats_server()
    async with connected(server.url) as client:
        sink = JetStreamRunEvents(client, Names("gone"), limits=LIMITS, ack_timeout=0.2)
        await sink.start()
        server.stop()
        await eventually(lambda: not client.connected, timeout=WAIT)
        for event in events_of("gone"):
            sink.publish(event, "agent-1", 2)
        await asyncio.wait_for(sink.flush("gone"), WAIT)
        await asyncio.wait_for(sink.stop(timeout=0.2), WAIT)

    unsent = [r for r in caplog.records if r.getMessage() == "run events not sent before stopping"]
    assert [r.events for r in unsent] == [5]  # type: ignore[attr-defined]
    assert [r.run_id for r in caplog.records if r.getMessage() == "run events not sent yet"] == [  # type: ignore[attr-defined]
        "gone"
    ]


async def test_the_stream_keeps_events_for_the_window_and_up_to_max_bytes(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    limits = StreamLimits(3600.0, 1_000_000)
    async with jetstream(nats_client, nats_prefix, limits=limits) as (sink, log):
        await EventStore(sink, log).publish(*events_of("sized"))
        config = (await nats_client.js.stream_info(sink.stream)).config
    assert config.max_age == 3600.0
    assert config.max_bytes == 1_000_000
    assert config.discard == DiscardPolicy.OLD  # an event log drops its oldest


async def test_a_read_consumer_is_removed_a_second_after_its_reader_leaves(
    nats_client: NatsClient, nats_prefix: str
) -> None:
    async with jetstream(nats_client, nats_prefix) as (sink, log):
        store = EventStore(sink, log)
        *going, last = events_of("read")
        await store.publish(*going)
        reader = Reader(log, "read")
        assert len(await reader.take(len(going))) == len(going)
        # Not the server's 5 s: each finished read's consumer holds ~40 KiB of its memory.
        (consumer,) = await nats_client.js.consumers_info(sink.stream)
        assert consumer.config.inactive_threshold == CONSUMER_INACTIVE_SECONDS
        await store.publish(last)
        assert (await reader.next()).sequence == last.sequence
        assert await reader.ended()
        await eventually(lambda: consumers_are(nats_client, sink.stream, 0), timeout=WAIT)


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    async with connected(nats_server.url) as client:
        yield client


# ------------------------------------------------------------------ Redis only

REDIS_LOGGER = "agent_executor.adapters.redis_runs"


@contextlib.asynccontextmanager
async def on_redis(
    url: str, prefix: str, **sink_options: Any
) -> AsyncIterator[tuple[RedisRunEvents, RedisRunEventLog]]:
    """A sink with `sink_options` and the log, on one bus's connections."""
    async with RedisBus(url, prefix=prefix) as bus:
        sink = RedisRunEvents(bus.client, prefix=prefix, **sink_options)
        await sink.start()
        try:
            yield sink, bus.log
        finally:
            await sink.stop(timeout=1.0)


async def test_a_run_is_one_stream_of_its_serialized_events_by_sequence(
    redis_server: RedisServer, nats_prefix: str
) -> None:
    first, second, third, fourth, last = events_of("laid-out")
    async with RedisBus(redis_server.url(), prefix=nats_prefix, retention_seconds=3600) as bus:
        for event in (first, second, first, third, second, fourth, last):
            bus.events.publish(event, "agent-1", 4)
        await bus.events.flush("laid-out")

        key = f"{nats_prefix}:runs:events:laid-out"
        entries = await bus.client.xrange(key)
        ttl = await bus.client.pttl(key)

    assert [entry_id for entry_id, _ in entries] == [b"1-1", b"2-1", b"3-1", b"4-1", b"5-1"]
    stored = [run_events_pb2.RunEvent.FromString(fields[b"event"]) for _, fields in entries]
    assert [m.event_id for m in stored] == [f"laid-out:{i}" for i in range(1, 6)]
    assert {(m.agent_id, m.agent_version) for m in stored} == {("agent-1", 4)}
    assert [m.type for m in stored] == ["run_started", *["message_delta"] * 3, "run_completed"]
    assert [run_event_of(m) for m in stored] == [first, second, third, fourth, last]
    assert 3_500_000 < ttl <= 3_600_000
    assert (bus.events.published, bus.events.dropped) == (7, 0)  # repeats are held already


async def test_each_write_keeps_the_run_for_the_retention_window_then_it_expires(
    redis_server: RedisServer, nats_prefix: str
) -> None:
    run = events_of("kept")
    key = f"{nats_prefix}:runs:events:kept"
    async with RedisBus(redis_server.url(), prefix=nats_prefix, retention_seconds=2.0) as bus:
        store = EventStore(bus.events, bus.log)
        await store.publish(*run[:2])
        await asyncio.sleep(0.3)
        before = await bus.client.pttl(key)
        await store.publish(*run[2:])
        assert await bus.client.pttl(key) > before  # the last write pushed the expiry back
        assert await bus.log.last_sequence("kept") == len(run)

        await eventually(lambda: last_is(bus.log, "kept", 0), timeout=WAIT)
        assert await bus.log.last_event("kept") is None


async def test_max_bytes_keeps_the_newest_events_of_a_run_and_the_read_spans_the_gap(
    redis_server: RedisServer, nats_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=REDIS_LOGGER)
    run = events_of("bounded", deltas=20)
    max_bytes = 500
    async with RedisBus(redis_server.url(), prefix=nats_prefix, max_bytes=max_bytes) as bus:
        await EventStore(bus.events, bus.log).publish(*run)
        sizes = {
            int(entry_id.split(b"-")[0]): len(fields[b"event"])
            for entry_id, fields in await bus.client.xrange(f"{nats_prefix}:runs:events:bounded")
        }
        got = await read_all(bus.log, "bounded")

    first_kept = min(sizes)
    assert first_kept > 1
    assert got == run[first_kept - 1 :]  # the newest events, up to the run's end
    assert sum(sizes.values()) <= max_bytes
    newest_trimmed = stored_run_event(run[first_kept - 2], "agent-1", 2).SerializeToString()
    assert sum(sizes.values()) + len(newest_trimmed) > max_bytes  # no more than it had to
    missing = [r for r in caplog.records if r.getMessage() == "run events missing"]
    assert [(r.run_id, r.after, r.next) for r in missing] == [("bounded", 0, first_kept)]  # type: ignore[attr-defined]


async def test_a_run_taken_over_keeps_its_earlier_events_while_within_max_bytes(
    redis_server: RedisServer, nats_prefix: str
) -> None:
    run = events_of("taken-over", deltas=4)
    async with (
        RedisBus(redis_server.url(), prefix=nats_prefix, max_bytes=5_000) as first,
        RedisBus(redis_server.url(), prefix=nats_prefix, max_bytes=5_000) as second,
    ):
        await EventStore(first.events, first.log).publish(*run[:3])  # then its executor stopped
        await EventStore(second.events, second.log).publish(*run[3:])

        assert await read_all(second.log, "taken-over") == run


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_events_published_while_redis_is_down_are_held_and_arrive_in_order(
    make_redis_server: Callable[[], RedisServer], outage: str
) -> None:
    server = make_redis_server()
    run = events_of("outage", deltas=6)
    async with on_redis(server.url(), "outage", flush_timeout=0.5) as (sink, log):
        store = EventStore(sink, log)
        live = Reader(log, "outage")
        try:
            await store.publish(*run[:2])
            assert await live.take(2) == run[:2]

            getattr(server, outage)()  # same port and append-only file when it comes back
            for event in run[2:]:
                sink.publish(event, "agent-1", 2)
            # flush gives up while Redis is away (bounded by flush_timeout), keeping the events.
            await asyncio.wait_for(sink.flush("outage"), WAIT)
            assert (sink.published, sink.unsent, sink.dropped) == (2, len(run) - 2, 0)

            server.start()
            # The reader that was waiting across the outage gets the rest, in order.
            assert await live.take(len(run) - 2) == run[2:]
            assert await live.ended()
            # And so does a reader from the start: no gap, no repeat.
            assert await read_all(log, "outage") == run
            assert await log.last_sequence("outage") == len(run)
            assert (sink.published, sink.unsent) == (len(run), 0)
        finally:
            await live.cancel()


async def test_a_run_started_while_redis_is_down_is_stored_once_it_is_back(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    run = events_of("cold")
    async with on_redis(server.url(), "cold") as (sink, log):
        server.stop()
        # The log says so at once (a few quick reconnects), rather than waiting for Redis.
        async with asyncio.timeout(5):
            with pytest.raises(QueueUnavailable):
                await log.last_sequence("cold")
            with pytest.raises(QueueUnavailable):
                await log.last_event("cold")
            with pytest.raises(QueueUnavailable):
                await read_all(log, "cold")
        for event in run:
            sink.publish(event, "agent-1", 2)

        server.start()
        assert await read_all(log, "cold") == run


async def test_a_full_redis_sink_queue_drops_events_and_counts_them(
    make_redis_server: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=REDIS_LOGGER)
    server = make_redis_server()
    run = events_of("full", deltas=4)
    async with on_redis(server.url(), "full", max_queued=3, flush_timeout=0.5) as (sink, log):
        server.stop()
        for event in run:
            sink.publish(event, "agent-1", 2)
        assert sink.dropped == 3  # the queue holds three
        await asyncio.wait_for(sink.flush("full"), WAIT)

        server.start()
        await eventually(lambda: last_is(log, "full", 3), timeout=WAIT)

    lost = [r.lost for r in caplog.records if r.getMessage() == "run events lost"]  # type: ignore[attr-defined]
    assert lost == [3]


async def test_stopping_while_redis_never_comes_back_gives_up_and_says_so(
    make_redis_server: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=REDIS_LOGGER)
    server = make_redis_server()
    async with RedisBus(server.url(), prefix="gone") as bus:
        sink = RedisRunEvents(bus.client, prefix="gone", flush_timeout=0.2)
        await sink.start()
        server.stop()
        for event in events_of("gone"):
            sink.publish(event, "agent-1", 2)
        await asyncio.wait_for(sink.flush("gone"), WAIT)
        await asyncio.wait_for(sink.stop(timeout=0.2), WAIT)

    unsent = [r for r in caplog.records if r.getMessage() == "run events not sent before stopping"]
    assert [r.events for r in unsent] == [5]  # type: ignore[attr-defined]
    assert [r.run_id for r in caplog.records if r.getMessage() == "run events not sent yet"] == [  # type: ignore[attr-defined]
        "gone"
    ]


async def test_a_reader_cancelled_while_it_waits_gives_its_connection_back(
    redis_server: RedisServer, nats_prefix: str
) -> None:
    async with RedisBus(redis_server.url(), prefix=nats_prefix) as bus:
        pool = bus.client.connection_pool
        await EventStore(bus.events, bus.log).publish(*events_of("open")[:3])  # a run going on
        before = len(pool._in_use_connections)

        reader = Reader(bus.log, "open")
        assert len(await reader.take(3)) == 3
        await eventually(lambda: len(pool._in_use_connections) == before + 1, timeout=WAIT)
        await reader.cancel()  # while blocked in XREAD
        assert len(pool._in_use_connections) == before


async def test_replicas_hear_cancel_requests_and_run_ends_again_after_redis_restarts(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    heard: list[str] = []
    async with (
        RedisBus(server.url(), prefix="again") as runner,
        RedisBus(server.url(), prefix="again") as waiter,
    ):
        await waiter.cancel.start(lambda run_id: bool(heard.append(run_id)))
        async with waiter.endings.watch("restarted") as ended:
            server.stop()
            server.start()

            async def cancel_heard() -> bool:
                await runner.cancel.broadcast("run-9")
                await asyncio.sleep(0.1)
                return "run-9" in heard

            await eventually(cancel_heard, timeout=WAIT)
            await EventStore(runner.events, runner.log).publish(*events_of("restarted"))
            assert await wait_event(ended, WAIT)


async def test_watching_and_cancelling_while_redis_is_down_never_fail(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    server.stop()
    async with RedisBus(server.url(), prefix="down") as bus, asyncio.timeout(WAIT):
        await bus.cancel.start(lambda run_id: False)
        async with bus.endings.watch("run-1") as ended:
            await bus.cancel.broadcast("run-1")
            assert not ended.is_set()


# ------------------------------------------------------------------ proto mapping

EVERY_BODY: Sequence[Any] = (
    RunStarted("run-x", "agent-1", 7, "task-1", "ctx-1"),
    MessageDelta("Hello, ", "msg-1"),
    ToolCallStarted("call-1", "search", '{"q": "nats"}'),
    ToolCallFinished("call-1", "search", True, "3 results"),
    ToolCallFinished("call-2", "fetch", False, "refused"),
    StepProgress("s1", "plan", "retrying", 2),
    StepProgress("code", "Agent code", "working", 1, "read 3 files"),
    MessageCompleted("Done.", "msg-1"),
    MessageCompleted(
        "",
        "msg-2",
        "assistant",
        (ToolCall("c1", "lookup", '{"id": 1}'), ToolCall("c2", "lookup", "{}")),
    ),
    RunCompleted("tool_calls", Usage(120, 35)),
    RunFailed("TIMEOUT", "run took longer than 300 s"),
)


@pytest.mark.parametrize("body", EVERY_BODY, ids=lambda b: str(b.type))
def test_a_run_event_survives_the_stored_message_round_trip(body: Any) -> None:
    event = RunEvent("run-x", 12, NOW, body)
    message = run_events_pb2.RunEvent(
        event_id="run-x:12",
        run_id="run-x",
        sequence=12,
        occurred_at=timestamp(NOW),
        type=body.type,
        event=stream_event(event),
    )

    decoded = run_event_of(run_events_pb2.RunEvent.FromString(message.SerializeToString()))

    assert decoded == event
    assert decoded.occurred_at.tzinfo is not None


def test_every_event_body_type_has_a_round_trip_case() -> None:
    oneof = run_events_pb2.RunEvent().event.DESCRIPTOR.oneofs_by_name["event"]
    assert {b.type for b in EVERY_BODY} == {field.name for field in oneof.fields}


def test_a_stored_event_without_a_known_body_is_refused() -> None:
    with pytest.raises(ValueError, match="no known body"):
        run_event_of(run_events_pb2.RunEvent(event_id="r:1", run_id="r", sequence=1))
