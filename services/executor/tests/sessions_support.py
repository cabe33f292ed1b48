"""Sessions over a real checkpointer, for the session tests and `bench/sessions_bench.py`.

`SessionStack` is the application's run service (the `conversation` template, the offline
model) over the in-memory twins of the run store, agents, tools and events, with the
sessions in a real checkpointer: LangGraph's `InMemorySaver`, SQLite or PostgreSQL. The
probes read LangGraph's tables directly: what a session stores, and what nothing uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agent_executor.adapters.checkpointer import open_checkpointer, session_history
from agent_executor.adapters.memory import (
    InMemoryAgents,
    InMemoryRunStore,
    InMemorySessionHistory,
    InMemoryTools,
    ListEventSink,
    LocalCancelBus,
    MemoryRunEventLog,
    MemoryRunQueue,
)
from agent_executor.adapters.models import ProviderModels
from agent_executor.adapters.proto_mapping import ProtoRequestCodec
from agent_executor.application.builtin.conversation import Conversation
from agent_executor.application.ports import SessionHistory
from agent_executor.application.queued_runs import QueuedRuns, QueueSettings
from agent_executor.application.runs import InputMessage, RunRequest, RunService, RunSettings
from agent_executor.application.templates import TemplateCatalog
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import RunCompleted, RunFailed, RunRecord
from agent_executor.domain.services_config import parse_services_config
from agentrt_kit.concurrency import run_inline

AGENT = AgentSnapshot(
    id="agent-m",
    version=1,
    status="active",
    name="M",
    template_id="conversation",
    conversation_config={"memory": True},
    owner_id="o1",
)
TASK = "t1"
THREAD = f"{AGENT.id}:{TASK}"


@contextlib.asynccontextmanager
async def open_sessions(
    kind: str, *, tmp: Path | None = None, dsn: str = "", schema: str = "public"
) -> AsyncIterator[tuple[BaseCheckpointSaver[Any], SessionHistory]]:
    """A checkpointer of `kind` (memory, sqlite, postgres) and its session history."""
    if kind == "memory":
        saver = InMemorySaver()
        yield saver, InMemorySessionHistory(saver)
        return
    url = f"sqlite:///{tmp / 'sessions.sqlite3'}" if kind == "sqlite" and tmp else dsn
    async with open_checkpointer(url, schema=schema) as opened:
        yield opened, session_history(opened)


class SessionStack:
    """A run service over the twins whose sessions are in `saver` (pruned with `history`)."""

    def __init__(
        self,
        saver: BaseCheckpointSaver[Any],
        history: SessionHistory | None,
        *,
        keep: int = 3,
        provider: Mapping[str, Any] | None = None,
        store: InMemoryRunStore | None = None,
        queue: MemoryRunQueue | None = None,
        sink: ListEventSink | None = None,
        executor_id: str = "e1",
    ) -> None:
        config = parse_services_config(
            {"llm": {"providers": {"offline": {"type": "offline", **(provider or {})}}}}, {}
        )
        self.saver = saver
        self.store = store or InMemoryRunStore(lease_seconds=5)
        self.sink = sink or ListEventSink()
        self.queue = queue or MemoryRunQueue(ack_wait=5.0, max_attempts=3)
        self.runs = RunService(
            agents=InMemoryAgents(AGENT),
            catalog=TemplateCatalog([Conversation]),
            models=ProviderModels(config),
            tools=InMemoryTools(),
            store=self.store,
            events=self.sink,
            cancel_bus=LocalCancelBus(),
            services=config,
            call_store=run_inline,
            checkpointer=saver,
            history=history,
            event_log=MemoryRunEventLog(self.sink),
            settings=RunSettings(executor_id=executor_id, session_checkpoints_kept=keep),
        )
        self.queued = QueuedRuns(
            self.runs,
            queue=self.queue,
            event_log=MemoryRunEventLog(self.sink),
            codec=ProtoRequestCodec(),
            settings=QueueSettings(poll_seconds=0.05),
        )

    async def turn(self, text: str) -> str:
        """Run one turn of the session to its end (and its prune); the answer."""
        handle = await self.runs.start(request(text))
        async for event in handle:
            if isinstance(event.body, RunFailed):
                raise AssertionError(f"turn {text!r} failed: {event.body}")
            if isinstance(event.body, RunCompleted):
                break
        await self.settled()
        record = self.store.get(handle.run_id)
        assert record is not None
        assert record.output is not None
        return record.output.content

    async def settled(self) -> None:
        """Wait until the prunes under way are done."""
        if self.runs.sessions is not None:
            await self.runs.sessions.drain(30.0)

    async def messages(self) -> list[str]:
        """The session's conversation, as its newest checkpoint holds it."""
        found = await self.saver.aget_tuple({"configurable": {"thread_id": THREAD}})
        assert found is not None
        return [str(m.content) for m in found.checkpoint["channel_values"]["messages"]]

    def record(self, run_id: str) -> RunRecord:
        """A run's record."""
        record = self.store.get(run_id)
        assert record is not None
        return record


def request(text: str, **values: Any) -> RunRequest:
    """A turn of the session."""
    return RunRequest(AGENT.id, [InputMessage("user", text)], task_id=TASK, stream=False, **values)


# ---------------------------------------------------------------- probes


async def _rows(saver: BaseCheckpointSaver[Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if isinstance(saver, AsyncSqliteSaver):
        async with saver.lock, saver.conn.execute(sql, params) as cur:
            return [tuple(row) for row in await cur.fetchall()]
    assert isinstance(saver, AsyncPostgresSaver)
    async with saver.conn.connection() as conn:  # type: ignore[union-attr]
        cur = await conn.execute(sql.replace("?", "%s"), params)
        return [tuple(row.values()) for row in await cur.fetchall()]


async def checkpoint_ids(saver: BaseCheckpointSaver[Any], thread: str = THREAD) -> list[str]:
    """The thread's checkpoints (root namespace), newest first."""
    return [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(_config(thread))]


async def stored_bytes(saver: BaseCheckpointSaver[Any], thread: str = THREAD) -> int:
    """The bytes the thread's rows hold: checkpoints, their metadata, writes and blobs.

    SQLite: the values' lengths. PostgreSQL: their stored sizes (`pg_column_size`,
    compressed where PostgreSQL compressed them).
    """
    if isinstance(saver, InMemorySaver):
        checkpoints = saver.storage.get(thread, {}).get("", {}).values()
        return (
            sum(len(c[1]) + len(m[1]) for c, m, _ in checkpoints)
            + sum(len(v[1]) for k, w in saver.writes.items() if k[0] == thread for v in w.values())
            + sum(len(v[1]) for k, v in saver.blobs.items() if k[0] == thread)
        )
    if isinstance(saver, AsyncSqliteSaver):
        sql = (
            "SELECT (SELECT coalesce(sum(length(checkpoint) + length(metadata)), 0)"
            " FROM checkpoints WHERE thread_id = ?)"
            " + (SELECT coalesce(sum(length(value)), 0) FROM writes WHERE thread_id = ?)"
        )
        return int((await _rows(saver, sql, thread, thread))[0][0])
    sql = (
        "SELECT (SELECT coalesce(sum(pg_column_size(checkpoint) + pg_column_size(metadata)), 0)"
        " FROM checkpoints WHERE thread_id = ?)"
        " + (SELECT coalesce(sum(pg_column_size(blob)), 0) FROM checkpoint_writes"
        " WHERE thread_id = ?)"
        " + (SELECT coalesce(sum(pg_column_size(blob)), 0) FROM checkpoint_blobs"
        " WHERE thread_id = ?) AS bytes"
    )
    return int((await _rows(saver, sql, thread, thread, thread))[0][0])


async def orphans(saver: BaseCheckpointSaver[Any], thread: str = THREAD) -> list[Any]:
    """Pending writes of no stored checkpoint, and stored values no checkpoint uses."""
    if isinstance(saver, InMemorySaver):
        saved = saver.storage.get(thread, {}).get("", {})
        used = {
            (channel, version)
            for checkpoint, _, _ in saved.values()
            for channel, version in saver.serde.loads_typed(checkpoint)["channel_versions"].items()
        }
        return [k for k in saver.writes if k[0] == thread and k[2] not in saved] + [
            k for k in saver.blobs if k[0] == thread and (k[2], k[3]) not in used
        ]
    writes = "writes" if isinstance(saver, AsyncSqliteSaver) else "checkpoint_writes"
    found = await _rows(
        saver,
        f"SELECT checkpoint_id FROM {writes} w WHERE thread_id = ? AND NOT EXISTS ("
        " SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id"
        " AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)",
        thread,
    )
    if isinstance(saver, AsyncPostgresSaver):
        found += await _rows(
            saver,
            "SELECT channel, version FROM checkpoint_blobs b WHERE thread_id = ? AND NOT EXISTS ("
            " SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id"
            " AND c.checkpoint_ns = b.checkpoint_ns"
            " AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)",
            thread,
        )
    return found


def _config(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}
