"""Sessions keep a bounded history of checkpoints, pruned after each run.

The port's scenarios run on every implementation: LangGraph's in-memory saver (the twin),
SQLite and PostgreSQL. The session scenarios drive the run service (the `conversation`
template, the offline model) over the real SQLite and PostgreSQL checkpointers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from executor_support import StartSystem, eventually, offline, run_input, services_config
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from sessions_support import (
    THREAD,
    SessionStack,
    checkpoint_ids,
    open_sessions,
    orphans,
    request,
    stored_bytes,
)

from agent_executor.adapters.checkpointer import open_checkpointer
from agent_executor.application.ports import RUN_ID_KEY, SessionHistory
from agent_executor.application.queued_runs import QueueOptions
from agent_executor.config import Settings
from agent_executor.domain.runs import RunStatus
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt_kit.settings import ConfigError, load_settings
from agentrt_testkit.postgres import PostgresDatabase

Opened = tuple[BaseCheckpointSaver[Any], SessionHistory]
SEEN = {"metadata": {"script": [{"content": "seen {message_count}"}]}}


@contextlib.asynccontextmanager
async def opened(kind: str, request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Opened]:
    """Sessions of `kind`; on PostgreSQL, in the test's schema."""
    if kind == "postgres":
        db: PostgresDatabase = request.getfixturevalue("postgres_db")
        schema: str = request.getfixturevalue("postgres_schema")
        async with open_sessions(kind, dsn=db.dsn, schema=schema) as found:
            yield found
    else:
        async with open_sessions(kind, tmp=tmp) as found:
            yield found


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opened]:
    """A checkpointer and its session history, on each implementation."""
    async with opened(request.param, request, tmp_path) as found:
        yield found


@pytest.fixture(params=["sqlite", "postgres"])
async def stored(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opened]:
    """A real checkpointer (SQLite, PostgreSQL) and its session history."""
    async with opened(request.param, request, tmp_path) as found:
        yield found


def text(seed: int | str) -> str:
    """A user message PostgreSQL cannot compress away (random, seeded)."""
    return f"message {seed}: " + base64.b64encode(random.Random(seed).randbytes(96)).decode()


# ---------------------------------------------------------------- the port


def chat(saver: BaseCheckpointSaver[Any]) -> Any:
    async def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"seen {len(state['messages'])}")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=saver)


async def say(saver: BaseCheckpointSaver[Any], run_id: str) -> list[str]:
    """One turn as run `run_id` (three checkpoints); the conversation after it."""
    config = {"configurable": {"thread_id": THREAD}, "metadata": {RUN_ID_KEY: run_id}}
    state = await chat(saver).ainvoke({"messages": [HumanMessage(text(run_id))]}, config)
    return [str(m.content) for m in state["messages"]]


async def loads_whole(saver: BaseCheckpointSaver[Any], messages: int) -> bool:
    """Whether every checkpoint left loads (its values all there) and the newest has it all."""
    tuples = [t async for t in saver.alist({"configurable": {"thread_id": THREAD}})]
    newest = tuples[0].checkpoint["channel_values"]["messages"]
    return len(newest) == messages and all(
        "messages" in t.checkpoint["channel_values"] for t in tuples
    )


async def test_a_prune_keeps_the_newest_checkpoints_up_to_the_runs_last_and_all_after(
    sessions: Opened,
) -> None:
    saver, history = sessions
    for run_id in ("r1", "r2", "r3"):
        await say(saver, run_id)
    before = await checkpoint_ids(saver)
    assert len(before) == 9  # three per turn: input, start, answer
    full = await stored_bytes(saver)
    assert await history.prune(THREAD, keep=2, through_run="r2") == 4
    # r3's three stay (a later run's); of the rest, r2's newest two.
    assert await checkpoint_ids(saver) == before[:5]
    assert await orphans(saver) == []  # the pending writes and values went along
    assert await stored_bytes(saver) < full
    assert await loads_whole(saver, 6)
    # The conversation goes on from the newest checkpoint, all of it there.
    assert await say(saver, "r4") == conversation("r1", "r2", "r3", "r4")


def conversation(*run_ids: str) -> list[str]:
    """What `say` leaves after turns of these runs."""
    return [m for n, run_id in enumerate(run_ids) for m in (text(run_id), f"seen {2 * n + 1}")]


async def test_a_prune_through_a_run_that_wrote_nothing_deletes_nothing(
    sessions: Opened,
) -> None:
    saver, history = sessions
    await say(saver, "r1")
    assert await history.prune(THREAD, keep=1, through_run="elsewhere") == 0
    assert await history.prune("agent-x:unknown", keep=1, through_run="r1") == 0
    assert len(await checkpoint_ids(saver)) == 3
    with pytest.raises(ValueError, match="at least its newest checkpoint"):
        await history.prune(THREAD, keep=0, through_run="r1")


def extend(state: list[str] | None, writes: Any) -> list[str]:
    return [*(state or []), *(item for write in writes for item in write)]


class Items(TypedDict):
    items: Annotated[list[str], DeltaChannel(extend)]


async def test_a_thread_whose_graph_uses_a_delta_channel_is_left_whole(
    sessions: Opened,
) -> None:
    # A DeltaChannel rebuilds its value from the writes of older checkpoints.
    saver, history = sessions
    graph = StateGraph(Items)
    graph.add_node("add", lambda state: {"items": ["b"]})
    graph.add_edge(START, "add")
    graph.add_edge("add", END)
    compiled = graph.compile(checkpointer=saver)
    for n in range(3):
        config = {"configurable": {"thread_id": THREAD}, "metadata": {RUN_ID_KEY: f"r{n}"}}
        await compiled.ainvoke({"items": [f"a{n}"]}, config)
    assert await history.prune(THREAD, keep=1, through_run="r2") == 0
    state = await compiled.aget_state({"configurable": {"thread_id": THREAD}})
    assert state.values["items"] == ["a0", "b", "a1", "b", "a2", "b"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_replicas_pruning_while_a_turn_is_saved_leave_the_thread_whole(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Two checkpointers on one database stand for two replicas.
    async with (
        opened(kind, request, tmp_path) as (saver, history),
        opened(kind, request, tmp_path) as (other, other_history),
    ):
        for run_id in ("r1", "r2", "r3"):
            await say(saver, run_id)
        last_of_r3 = (await checkpoint_ids(saver))[0]
        *deleted, _ = await asyncio.gather(
            history.prune(THREAD, keep=1, through_run="r1"),
            other_history.prune(THREAD, keep=1, through_run="r2"),
            history.prune(THREAD, keep=1, through_run="r3"),
            other_history.prune(THREAD, keep=1, through_run="r3"),
            say(other, "r4"),
        )
        left = await checkpoint_ids(saver)
        assert len(left) == 4  # r4's three, whenever they were saved, and r3's last
        assert left[-1] == last_of_r3
        assert sum(deleted) == 8  # each of the others deleted once
        assert await orphans(saver) == []
        assert await loads_whole(saver, 8)


# ---------------------------------------------------------------- sessions


async def test_a_long_session_keeps_n_checkpoints_and_its_whole_conversation(
    stored: Opened,
) -> None:
    saver, history = stored
    stack = SessionStack(saver, history, keep=3, provider=SEEN)
    for turn in range(1, 33):
        # The model got every earlier message, and the new one.
        assert await stack.turn(text(turn)) == f"seen {2 * turn - 1}"
        assert len(await checkpoint_ids(saver)) <= 3
    assert await stack.messages() == [
        m for turn in range(1, 33) for m in (text(turn), f"seen {2 * turn - 1}")
    ]
    assert await orphans(saver) == []


async def test_stored_bytes_grow_linearly_with_the_bound_and_quadratically_without(
    stored: Opened, tmp_path: Path
) -> None:
    saver, history = stored
    grown = []
    for kept in (history, None):  # the unbounded session shows what the bound changes
        stack = SessionStack(saver, kept, keep=3)
        before = await stored_bytes(saver)
        sizes = []
        for turn in range(1, 41):
            await stack.turn(text(turn))
            if turn in (20, 40):
                sizes.append(await stored_bytes(saver) - before)
        grown.append(sizes[1] / sizes[0])
        # The next session starts on a clean thread.
        await saver.adelete_thread(THREAD)
    bounded, unbounded = grown
    assert bounded < 2.5, grown
    assert unbounded > 3, grown


async def test_a_rolled_back_run_is_undone_though_it_wrote_more_checkpoints_than_kept(
    stored: Opened,
) -> None:
    # One kept checkpoint: had the rolled-back run's session been pruned, the checkpoint
    # before it would be gone, and the conversation would start afresh.
    saver, history = stored
    stack = SessionStack(saver, history, keep=1, provider={"metadata": {"latency_ms": 300}})
    assert await stack.turn("one") == "You said: one"
    handle = await stack.runs.start(request("two"))

    async def written() -> bool:  # its input and start steps, then the model call
        tuples = [t async for t in saver.alist({"configurable": {"thread_id": THREAD}})]
        return sum(t.metadata.get(RUN_ID_KEY) == handle.run_id for t in tuples) >= 2

    await eventually(written)
    assert await stack.runs.cancel(handle.run_id, rollback=True)
    async for _ in handle:
        pass
    await stack.settled()
    assert stack.record(handle.run_id).rolled_back
    assert await stack.turn("three") == "You said: three"
    assert await stack.messages() == ["one", "You said: one", "three", "You said: three"]
    assert len(await checkpoint_ids(saver)) == 1
    assert await orphans(saver) == []


async def test_a_session_run_resumed_from_its_checkpoint_finishes_with_pruning_on(
    stored: Opened,
) -> None:
    saver, history = stored
    slow = {"metadata": {"latency_ms": 500}}
    first = SessionStack(saver, history, keep=1, provider=slow)
    for turn in (1, 2):
        await first.turn(f"turn {turn}")
    stop = asyncio.Event()
    consumer = asyncio.create_task(first.queued.consume(stop))
    enqueued = await first.queued.submit(request("turn 3"), QueueOptions())
    run_id = enqueued.record.run_id

    async def mid_model_call() -> bool:
        state = await saver.aget_tuple({"configurable": {"thread_id": THREAD}})
        return state is not None and state.metadata.get(RUN_ID_KEY) == run_id

    await eventually(mid_model_call)
    stop.set()
    await consumer
    await first.runs.shutdown(0.05)  # handed over: queued again, not ended
    assert first.record(run_id).status is RunStatus.QUEUED
    # Another replica (same store, queue and sessions) takes it and resumes it.
    second = SessionStack(
        saver,
        history,
        keep=1,
        provider=slow,
        store=first.store,
        queue=first.queue,
        sink=first.sink,
        executor_id="e2",
    )
    consumer = asyncio.create_task(second.queued.consume(stop := asyncio.Event()))
    try:
        await eventually(lambda: first.record(run_id).status.terminal, timeout=20)
        await second.settled()
    finally:
        stop.set()
        await consumer
    record = first.record(run_id)
    assert (record.status, record.attempts, record.executor_id) == (RunStatus.SUCCEEDED, 2, "e2")
    assert await second.messages() == [
        "turn 1",
        "You said: turn 1",
        "turn 2",
        "You said: turn 2",
        "turn 3",
        "You said: turn 3",
    ]
    assert len(await checkpoint_ids(saver)) == 1
    assert await orphans(saver) == []


# ---------------------------------------------------------------- wiring and settings


async def test_the_executor_prunes_its_sessions_as_configured(
    make_system: StartSystem,
) -> None:
    system = await make_system(
        services_config=services_config(scripted=offline(SEEN["metadata"]["script"][0])),
        session_checkpoints_kept=2,
    )
    agent = await system.create_agent(
        template_id="conversation", conversation_config={"memory": True}
    )
    for turn in range(1, 6):
        reply = await system.executor.Execute(
            pb.ExecuteRequest(input=run_input(agent.id, f"turn {turn}", task_id="t1"))
        )
        assert reply.message.content == f"seen {2 * turn - 1}"
    async with open_checkpointer(system.sessions_url) as saver:

        async def pruned() -> bool:
            return len(await checkpoint_ids(saver, f"{agent.id}:t1")) == 2

        await eventually(pruned)


def test_the_bound_of_a_session_is_read_from_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(Settings).session_checkpoints_kept == 3
    monkeypatch.setenv("AGENTRT_EXECUTOR_SESSION_CHECKPOINTS_KEPT", "12")
    assert load_settings(Settings).session_checkpoints_kept == 12
    monkeypatch.setenv("AGENTRT_EXECUTOR_SESSION_CHECKPOINTS_KEPT", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings)
    assert "AGENTRT_EXECUTOR_SESSION_CHECKPOINTS_KEPT" in str(caught.value)
