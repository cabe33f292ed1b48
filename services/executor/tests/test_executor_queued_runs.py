"""Queued runs in the application: submit, consume, turns, strategies, endings — on twins.

The run queue, event log, run store and agents are the in-memory twins; the model
is the offline provider; sessions are LangGraph's in-memory checkpointer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent_executor.adapters.memory import (
    InMemoryAgents,
    InMemoryRunStore,
    InMemoryTools,
    ListEventSink,
    LocalCancelBus,
    MemoryRunEventLog,
    MemoryRunQueue,
)
from agent_executor.adapters.models import ProviderModels
from agent_executor.adapters.proto_mapping import ProtoRequestCodec
from agent_executor.application.builtin.conversation import Conversation
from agent_executor.application.ports import ClaimOutcome, QueueUnavailable
from agent_executor.application.queued_runs import QueuedRuns, QueueOptions, QueueSettings
from agent_executor.application.runs import InputMessage, RunRequest, RunService, RunSettings
from agent_executor.application.templates import TemplateCatalog
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import RunFailed, RunRecord, RunStatus
from agent_executor.domain.services_config import parse_services_config
from agent_executor.errors import RunExists, SessionBusy, WebhooksDisabled
from agentrt_kit.concurrency import run_inline
from agentrt_kit.errors import InvalidArgument

AGENT = AgentSnapshot(
    id="agent-1", version=1, status="active", name="A", template_id="conversation", owner_id="o1"
)
MEMORY = AgentSnapshot(
    id="agent-m",
    version=1,
    status="active",
    name="M",
    template_id="conversation",
    conversation_config={"memory": True},
    owner_id="o1",
)


class Stack:
    """A run service with a queue consumer over the twins."""

    def __init__(self, latency_ms: float = 0.0, **queue: Any) -> None:
        config = parse_services_config(
            {
                "llm": {
                    "providers": {
                        "offline": {"type": "offline", "metadata": {"latency_ms": latency_ms}}
                    }
                }
            },
            {},
        )
        self.store = InMemoryRunStore(lease_seconds=5)
        self.sink = ListEventSink()
        self.log = MemoryRunEventLog(self.sink)
        self.queue = MemoryRunQueue(ack_wait=queue.pop("ack_wait", 5.0), max_attempts=3)
        self.webhooks = MemoryRunQueue()
        self.runs = RunService(
            agents=InMemoryAgents(AGENT, MEMORY),
            catalog=TemplateCatalog([Conversation]),
            models=ProviderModels(config),
            tools=InMemoryTools(),
            store=self.store,
            events=self.sink,
            cancel_bus=LocalCancelBus(),
            services=config,
            call_store=run_inline,
            checkpointer=InMemorySaver(),
            event_log=self.log,
            settings=RunSettings(executor_id="e1", max_concurrent_runs=4),
        )
        self.queued = QueuedRuns(
            self.runs,
            queue=self.queue,
            event_log=self.log,
            codec=ProtoRequestCodec(),
            webhooks=self.webhooks,
            settings=QueueSettings(poll_seconds=0.05, **queue),
        )
        self.stop = asyncio.Event()
        self.consumer: asyncio.Task[None] | None = None

    def start(self) -> Stack:
        self.consumer = asyncio.create_task(self.queued.consume(self.stop))
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.consumer is not None:
            await self.consumer
        await self.runs.shutdown(1.0)

    async def ended(self, run_id: str) -> RunRecord:
        for _ in range(500):
            record = self.store.get(run_id)
            if record is not None and record.status.terminal:
                return record
            await asyncio.sleep(0.01)
        raise AssertionError(f"run {run_id} did not end: {self.store.get(run_id)}")

    async def running(self, run_id: str) -> None:
        for _ in range(500):
            if run_id in self.runs.active:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"run {run_id} did not start")

    def events(self, run_id: str) -> list[Any]:
        return [e for e in self.sink.events if e.run_id == run_id]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    made = Stack().start()
    try:
        yield made
    finally:
        await made.close()


def request(text: str = "hello", agent: str = "agent-1", **values: Any) -> RunRequest:
    return RunRequest(agent, [InputMessage("user", text)], stream=False, **values)


async def test_a_webhook_is_refused_where_none_can_be_signed() -> None:
    stack = Stack()
    stack.queued.webhooks = None
    with pytest.raises(WebhooksDisabled):
        await stack.queued.submit(request(), QueueOptions(webhook_url="https://h.example/x"))
    assert stack.store.records == {}


async def test_a_submitted_run_is_queued_then_run_once_and_acknowledged(stack: Stack) -> None:
    enqueued = await stack.queued.submit(request(), QueueOptions(metadata={"k": "v"}))
    assert enqueued.created
    assert enqueued.record.status is RunStatus.QUEUED
    assert enqueued.record.metadata == {"k": "v"}
    record = await stack.ended(enqueued.record.run_id)
    assert record.status is RunStatus.SUCCEEDED
    assert record.output is not None
    assert record.output.content == "You said: hello"
    assert (record.attempts, record.executor_id, record.finish_reason) == (1, "e1", "stop")
    events = stack.events(record.run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].body.type == "run_started"
    assert "message_delta" in [e.body.type for e in events]  # followers see it being written
    assert events[-1].body.type == "run_completed"
    for _ in range(100):
        if (await stack.queue.stats()).depth == 0:
            break
        await asyncio.sleep(0.01)
    assert (await stack.queue.stats()).depth == 0  # acknowledged after its end was stored


async def test_a_retried_submit_answers_the_first_run_and_a_different_one_is_refused(
    stack: Stack,
) -> None:
    first = await stack.queued.submit(request(run_id="r-1"), QueueOptions())
    again = await stack.queued.submit(request(run_id="r-1"), QueueOptions())
    assert (again.created, again.record.run_id) == (False, first.record.run_id)
    # A retry that saw a later version of the agent is still the same request.
    later = await stack.queued.submit(request(run_id="r-1", min_agent_version=1), QueueOptions())
    assert later.created is False
    with pytest.raises(RunExists):
        await stack.queued.submit(request("other", run_id="r-1"), QueueOptions())
    await stack.ended("r-1")
    assert len([e for e in stack.events("r-1") if e.body.type == "run_started"]) == 1


async def test_bad_options_are_refused_naming_each_field(stack: Stack) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await stack.queued.submit(
            request(),
            QueueOptions(
                webhook_url="ftp://hooks.example.com/x",
                metadata={f"k{i}": "v" for i in range(17)},
                multitask_strategy="sideways",
            ),
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {"multitask_strategy", "webhook_url", "metadata"}
    assert stack.store.records == {}


async def test_runs_of_one_conversation_run_one_after_another_in_order() -> None:
    stack = Stack(latency_ms=150).start()
    try:
        options = QueueOptions(multitask_strategy="enqueue")
        ids = []
        for text in ("one", "two", "three"):
            enqueued = await stack.queued.submit(request(text, "agent-m", task_id="t1"), options)
            ids.append(enqueued.record.run_id)
        records = [await stack.ended(run_id) for run_id in ids]
        assert [r.status for r in records] == [RunStatus.SUCCEEDED] * 3
        for earlier, later in itertools.pairwise(records):
            assert earlier.finished_at is not None
            assert later.started_at is not None
            assert earlier.finished_at <= later.started_at
        assert records[2].output is not None
        assert records[2].output.content == "You said: three"
    finally:
        await stack.close()


async def test_reject_refuses_a_run_while_its_conversation_has_one() -> None:
    stack = Stack(latency_ms=300).start()
    try:
        first = await stack.queued.submit(request("one", "agent-m", task_id="t1"), QueueOptions())
        with pytest.raises(SessionBusy):
            await stack.queued.submit(request("two", "agent-m", task_id="t1"), QueueOptions())
        # Another conversation of the same agent is not held back.
        other = await stack.queued.submit(request("x", "agent-m", task_id="t2"), QueueOptions())
        assert (await stack.ended(first.record.run_id)).status is RunStatus.SUCCEEDED
        assert (await stack.ended(other.record.run_id)).status is RunStatus.SUCCEEDED
    finally:
        await stack.close()


async def test_interrupt_cancels_the_running_run_and_starts_the_new_one() -> None:
    stack = Stack(latency_ms=2000).start()
    try:
        first = await stack.queued.submit(request("one", "agent-m", task_id="t1"), QueueOptions())
        await stack.running(first.record.run_id)
        second = await stack.queued.submit(
            request("two", "agent-m", task_id="t1"), QueueOptions(multitask_strategy="interrupt")
        )
        interrupted = await stack.ended(first.record.run_id)
        assert interrupted.status is RunStatus.CANCELLED
        done = await stack.ended(second.record.run_id)
        assert done.status is RunStatus.SUCCEEDED
    finally:
        await stack.close()


async def test_cancelling_a_queued_run_ends_it_and_its_event_stream() -> None:
    stack = Stack()  # no consumer: the run stays queued
    enqueued = await stack.queued.submit(request(), QueueOptions())
    assert await stack.runs.cancel(enqueued.record.run_id) is True
    record = stack.store.get(enqueued.record.run_id)
    assert record is not None
    assert record.status is RunStatus.CANCELLED
    events = stack.events(record.run_id)
    assert [(e.sequence, type(e.body)) for e in events] == [(1, RunFailed)]
    stack.start()
    try:
        for _ in range(100):  # the consumer finds it ended and acknowledges it
            if (await stack.queue.stats()).depth == 0:
                break
            await asyncio.sleep(0.01)
        assert (await stack.queue.stats()).depth == 0
    finally:
        await stack.close()


async def test_a_run_started_too_often_is_failed_and_dead_lettered() -> None:
    stack = Stack()
    enqueued = await stack.queued.submit(request(), QueueOptions(webhook_url="https://h.example/x"))
    run_id = enqueued.record.run_id
    stack.store.records[run_id].attempts = 3  # three executors died running it
    stack.start()
    try:
        record = await stack.ended(run_id)
        assert (record.status, record.error_code) == (RunStatus.FAILED, "ATTEMPTS_EXHAUSTED")
        assert [type(e.body) for e in stack.events(run_id)] == [RunFailed]
        webhook = await stack.webhooks.pull(1, 1.0)
        assert [d.run_id for d in webhook] == [run_id]  # its webhook is still called
    finally:
        await stack.close()


async def test_a_run_whose_notice_was_lost_is_queued_again_by_the_sweep() -> None:
    stack = Stack(sweep_after_seconds=0.0)
    record = RunRecord(
        run_id="lost-1",
        agent_id="agent-1",
        agent_version=1,
        status=RunStatus.QUEUED,
        created_at=stack.runs.clock(),
        attempts=0,
        queued=True,
    )
    stack.store.enqueue(record, ProtoRequestCodec().encode(request()), reject_busy=False)
    await asyncio.sleep(0.01)
    assert await stack.queued.sweep() == 1
    stack.start()
    try:
        assert (await stack.ended("lost-1")).status is RunStatus.SUCCEEDED
    finally:
        await stack.close()


async def test_a_run_going_at_shutdown_is_handed_over_to_another_replica() -> None:
    stack = Stack(latency_ms=1500).start()
    enqueued = await stack.queued.submit(request(), QueueOptions())
    run_id = enqueued.record.run_id
    await stack.running(run_id)
    stack.stop.set()
    assert stack.consumer is not None
    await stack.consumer
    await stack.runs.shutdown(0.05)
    record = stack.store.get(run_id)
    assert record is not None
    assert (record.status, record.attempts) == (RunStatus.QUEUED, 1)
    redelivered = await stack.queue.pull(1, 1.0)
    assert [d.run_id for d in redelivered] == [run_id]


async def session_texts(stack: Stack) -> list[str]:
    saver = stack.runs.checkpointer
    assert saver is not None
    found = await saver.aget_tuple({"configurable": {"thread_id": "agent-m:t1"}})
    assert found is not None
    return [m.content for m in found.checkpoint["channel_values"]["messages"]]


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_rollback_undoes_the_interrupted_run_in_the_conversation(strategy: str) -> None:
    stack = Stack(latency_ms=400).start()
    try:
        first = await stack.queued.submit(request("one", "agent-m", task_id="t1"), QueueOptions())
        await stack.ended(first.record.run_id)
        second = await stack.queued.submit(request("two", "agent-m", task_id="t1"), QueueOptions())
        await stack.running(second.record.run_id)
        await asyncio.sleep(0.1)  # its input is in the session: it is mid model call
        third = await stack.queued.submit(
            request("three", "agent-m", task_id="t1"), QueueOptions(multitask_strategy=strategy)
        )
        interrupted = await stack.ended(second.record.run_id)
        assert interrupted.status is RunStatus.CANCELLED
        assert interrupted.rolled_back is (strategy == "rollback")
        assert (await stack.ended(third.record.run_id)).status is RunStatus.SUCCEEDED
        texts = await session_texts(stack)
        if strategy == "rollback":
            assert texts == ["one", "You said: one", "three", "You said: three"]
        else:
            assert "two" in texts
            assert texts[-2:] == ["three", "You said: three"]
    finally:
        await stack.close()


async def test_rolling_back_the_only_run_of_a_conversation_starts_it_afresh() -> None:
    stack = Stack(latency_ms=400).start()
    try:
        first = await stack.queued.submit(request("one", "agent-m", task_id="t1"), QueueOptions())
        await stack.running(first.record.run_id)
        await asyncio.sleep(0.1)
        assert await stack.runs.cancel(first.record.run_id, rollback=True)
        assert (await stack.ended(first.record.run_id)).rolled_back
        again = await stack.queued.submit(request("hi", "agent-m", task_id="t1"), QueueOptions())
        assert (await stack.ended(again.record.run_id)).status is RunStatus.SUCCEEDED
        assert await session_texts(stack) == ["hi", "You said: hi"]
    finally:
        await stack.close()


async def test_a_run_submitted_while_the_broker_is_down_is_accepted_and_queued_later() -> None:
    stack = Stack()
    stack.queue.available = False
    enqueued = await stack.queued.submit(request(), QueueOptions())
    assert enqueued.created  # recorded: accepted
    with pytest.raises(QueueUnavailable):
        await stack.queued.sweep()  # the broker is still down: it stays due
    stack.queue.available = True
    assert await stack.queued.sweep() == 1  # at the next sweep, not after sweep_after
    stack.start()
    try:
        assert (await stack.ended(enqueued.record.run_id)).status is RunStatus.SUCCEEDED
    finally:
        await stack.close()


async def test_a_retried_interrupting_submit_stops_nothing_again() -> None:
    stack = Stack(latency_ms=300).start()
    try:
        interrupting = QueueOptions(multitask_strategy="interrupt")
        first = await stack.queued.submit(
            request("one", "agent-m", task_id="t1", run_id="r-1"), interrupting
        )
        later = await stack.queued.submit(
            request("two", "agent-m", task_id="t1"), QueueOptions(multitask_strategy="enqueue")
        )
        again = await stack.queued.submit(
            request("one", "agent-m", task_id="t1", run_id="r-1"), interrupting
        )
        assert again.created is False
        assert (await stack.ended(first.record.run_id)).status is RunStatus.SUCCEEDED
        assert (await stack.ended(later.record.run_id)).status is RunStatus.SUCCEEDED
    finally:
        await stack.close()


async def test_a_notice_of_a_run_held_elsewhere_comes_back_once_its_lease_could_lapse() -> None:
    # RabbitMQ returns a dead executor's runs at once, while their lease still runs: the
    # notice comes back when the lease would have lapsed, not a whole ack-wait later.
    stack = Stack(ack_wait=300.0)
    enqueued = await stack.queued.submit(request(), QueueOptions())
    run_id = enqueued.record.run_id
    claim = stack.store.claim(run_id, "e2", stack.runs.clock(), max_attempts=3)
    assert claim.outcome is ClaimOutcome.CLAIMED
    delays: list[float] = []
    pull = stack.queue.pull

    async def recording_pull(max_count: int, timeout: float) -> Any:
        deliveries = await pull(max_count, timeout)
        for delivery in deliveries:
            retry = delivery.retry

            async def recorded(delay: float, retry: Any = retry) -> None:
                delays.append(delay)
                await retry(delay)

            delivery.retry = recorded  # type: ignore[method-assign]
        return deliveries

    stack.queue.pull = recording_pull  # type: ignore[method-assign]
    stack.start()
    try:
        for _ in range(500):
            if delays:
                break
            await asyncio.sleep(0.01)
        assert delays == [stack.runs.settings.lease_seconds]
        assert stack.store.get(run_id).executor_id == "e2"  # type: ignore[union-attr]
    finally:
        await stack.close()
