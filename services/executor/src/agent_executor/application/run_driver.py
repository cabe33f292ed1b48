"""Application: driving one admitted run's graph to its end.

`RunDriver.run` turns the graph's stream into typed run events (each with the
next sequence number of the run), enforces the run's timeout and budgets, and
records how the run ended before its last event is sent. A run resumed after
its executor stopped (a queued run, redelivered) continues from its last
checkpoint, numbering its events after the last one stored; a run handed over
at shutdown records nothing: its queue gives it to another executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.types import StateSnapshot

from agent_executor.application.context import (
    EVENT_KEY,
    INTERNAL_TAG,
    ClientTools,
    RunContext,
    current_run,
)
from agent_executor.application.messages import text_of
from agent_executor.application.ports import RUN_ID_KEY, RunEventSink, RunStore
from agent_executor.application.transcript import client_calls, graph_messages
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import (
    STATUS_OF_FAILURE,
    EventBody,
    FailureCode,
    MessageCompleted,
    MessageDelta,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunOutput,
    RunRecord,
    RunStarted,
    RunStatus,
    StepProgress,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from agent_executor.errors import OutputInvalid, RunFailure
from agentrt_kit.errors import Unavailable
from agentrt_kit.resilience import jittered_backoff

log = logging.getLogger(__name__)

BlockingCall = Callable[..., Awaitable[Any]]
UNLIMITED_STEPS = 10_000
HANDOVER = "the executor is handing the run over"
# How long a run's end is stored again while the store is unavailable, before it is handed
# over (its queue brings it back): a database restart, not an outage.
END_PATIENCE_SECONDS = 30.0
CUSTOM_EVENTS: dict[str, type[EventBody]] = {
    "tool_call_started": ToolCallStarted,
    "tool_call_finished": ToolCallFinished,
    "step_progress": StepProgress,
}


class RunHandle:
    """A started run: its identity and, by iteration, its events up to the last.

    A background run has no listener (`listening=False`): its events only go to the
    sink; nor has a run whose caller left it (`detach`). `on_end(record, ended)` is
    awaited once the run has ended and been recorded (`ended=True`) or was handed
    over unfinished (`ended=False`).
    """

    def __init__(
        self,
        record: RunRecord,
        agent: AgentSnapshot,
        *,
        listening: bool = True,
        after_sequence: int = 0,
        on_end: Callable[[RunRecord, bool], Awaitable[None]] | None = None,
    ) -> None:
        self.record = record
        self.agent = agent
        self.listening = listening
        # None: the listener left (`detach`); the run goes on without it.
        self.queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.sequence = after_sequence
        self.finished = False
        self.handover = False
        self.on_end = on_end

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.record.run_id

    async def __aiter__(self) -> AsyncIterator[RunEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event
            if event.terminal:
                return

    def detach(self) -> None:
        """Let the run go on without its listener (who left): its events go to the sink only."""
        self.listening = False
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)  # a listener still parked on the queue stops

    async def aclose(self, reason: str = "the caller went away") -> None:
        """Cancel the run if it is still going and wait until it is recorded."""
        if self.task is not None and not self.task.done():
            self.task.cancel(reason)
            await asyncio.wait({self.task})

    def hand_over(self) -> bool:
        """Stop the run without ending it (its queue redelivers it); True when it was going."""
        if self.task is None or self.task.done() or self.finished:
            return False
        self.handover = True
        self.task.cancel(HANDOVER)
        return True


@dataclass(frozen=True, slots=True)
class Drive:
    """What to run: the graph, its context, the input messages, and how."""

    graph: Any
    ctx: RunContext
    messages: Sequence[Any]  # the request's InputMessages
    stream: bool
    client: ClientTools | None
    response_format_problem: Callable[[str], str | None]
    thread_id: str = ""  # the checkpointer thread (a session, or the queued run's own)
    resume: bool = False  # continue from the thread's last checkpoint of this run
    fresh_thread: bool = False  # the thread is the run's own and new: nothing to read


class RunDriver:
    """Runs admitted runs: events in order, limits, and the record's last word."""

    def __init__(
        self,
        *,
        store: RunStore,
        events: RunEventSink,
        call_store: BlockingCall,
        clock: Callable[[], datetime],
        released: Callable[[RunHandle], None] = lambda handle: None,
        end_patience: float = END_PATIENCE_SECONDS,
    ) -> None:
        self.store = store
        self.end_patience = end_patience
        self.released = released
        self.events = events
        self.call_store = call_store
        self.clock = clock
        self._flushes: set[asyncio.Task[None]] = set()

    def emit(self, handle: RunHandle, body: EventBody) -> None:
        """Send the run's next event to its listener and the sink."""
        handle.sequence += 1
        event = RunEvent(handle.run_id, handle.sequence, self.clock(), body)
        if handle.listening:
            handle.queue.put_nowait(event)
        self.events.publish(event, handle.agent.id, handle.agent.version)

    async def run(self, handle: RunHandle, drive: Drive) -> None:
        """Drive the run to its end and record it (the run's task)."""
        ctx = drive.ctx
        token = current_run.set(ctx)
        record = handle.record
        limits = ctx.limits
        config: RunnableConfig = {
            "recursion_limit": limits.max_steps or UNLIMITED_STEPS,
            "metadata": {RUN_ID_KEY: record.run_id, "agent_id": record.agent_id},
        }
        if drive.thread_id:
            config["configurable"] = {"thread_id": drive.thread_id}
        output: RunOutput | None = None
        terminal: RunCompleted | RunFailed | None = None
        try:
            if record.attempts <= 1 or handle.sequence == 0:
                self.emit(
                    handle,
                    RunStarted(
                        record.run_id,
                        record.agent_id,
                        record.agent_version,
                        ctx.task_id,
                        record.context_id,
                    ),
                )
            async with asyncio.timeout(limits.timeout_seconds):
                final = await self._final(handle, drive, config)
            terminal, output = self._answer(handle, drive, final)
        except TimeoutError:
            terminal = RunFailed(
                FailureCode.TIMEOUT, f"the run exceeded its {limits.timeout_seconds:g} s timeout"
            )
        except asyncio.CancelledError as e:
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            if handle.handover:
                terminal = None
            else:
                reason = str(e.args[0]) if e.args else "cancelled"
                terminal = RunFailed(FailureCode.CANCELLED, f"the run was cancelled: {reason}")
        except GraphRecursionError:
            terminal = RunFailed(
                FailureCode.LIMIT_EXCEEDED, f"max graph steps ({limits.max_steps}) reached"
            )
        except RunFailure as e:
            terminal = RunFailed(e.code, e.message)
        except Exception:
            # The run's one log line, at ERROR with the traceback (the WARNING below skips it).
            log.exception("run failed", extra=failure_fields(record, FailureCode.INTERNAL))
            terminal = RunFailed(
                FailureCode.INTERNAL,
                f"the agent failed unexpectedly; see the executor log for run {record.run_id}",
            )
        finally:
            current_run.reset(token)
        if terminal is None:
            await self._hand_over(handle)
            return
        status = RunStatus.SUCCEEDED
        if isinstance(terminal, RunFailed):
            status = STATUS_OF_FAILURE.get(terminal.code, RunStatus.FAILED)
            output = None
            if terminal.code not in (FailureCode.CANCELLED, FailureCode.INTERNAL):
                log.warning("run failed", extra=failure_fields(record, terminal.code))
        await self._finish(handle, status, terminal, ctx=ctx, output=output)

    async def _final(self, handle: RunHandle, drive: Drive, config: RunnableConfig) -> AIMessage:
        """Run the graph (or resume it) to its final assistant message."""
        inputs, known, done = await self._inputs(drive, config)
        if done is not None:  # the graph had finished before its executor stopped
            self.emit(handle, MessageCompleted(text_of(done), done.id or ""))
            return done
        return await self._drive(handle, drive, inputs, config, known=known)

    def _answer(
        self, handle: RunHandle, drive: Drive, final: AIMessage
    ) -> tuple[RunCompleted, RunOutput]:
        """How a run whose graph finished ends, and its output."""
        ctx = drive.ctx
        calls = client_calls(final, drive.client)
        if calls:
            # No answer yet: the client runs its tools and continues the conversation.
            self.emit(handle, MessageCompleted(text_of(final), final.id or "", tool_calls=calls))
            return RunCompleted("tool_calls", _usage(ctx)), RunOutput(text_of(final), tuple(calls))
        problem = drive.response_format_problem(text_of(final))
        if problem is not None:
            raise OutputInvalid(problem)
        return RunCompleted(_finish_reason(final), _usage(ctx)), RunOutput(text_of(final))

    async def _inputs(
        self, drive: Drive, config: RunnableConfig
    ) -> tuple[dict[str, Any] | None, set[str], AIMessage | None]:
        """The graph's input (None: resume from the checkpoint) and the known message ids.

        The third value is the final message when a resumed run's graph had finished.
        """
        stored: Sequence[BaseMessage] = []
        graph = drive.graph
        if drive.thread_id and not drive.fresh_thread:
            state = await graph.aget_state(config)
            if state is not None and not drive.resume:
                state = await self._before_rolled_back(graph, config, state)
            values = (state.values or {}) if state else {}
            stored = values.get("messages", [])
            ours = bool(state) and (state.metadata or {}).get(RUN_ID_KEY) == drive.ctx.run_id
            if drive.resume and ours:
                _count_earlier_attempts(drive.ctx, stored)
                known = {m.id for m in stored if m.id and not isinstance(m, AIMessage)}
                if state.next:
                    return None, {m.id for m in stored if m.id}, None
                final = next((m for m in reversed(stored) if isinstance(m, AIMessage)), None)
                if final is not None:
                    return None, known, final
        known = {m.id for m in stored if m.id}
        messages = graph_messages(drive.messages, stored)
        for message in messages:
            message.id = message.id or uuid.uuid4().hex
            known.add(message.id)
        return {"messages": messages}, known, None

    async def _before_rolled_back(
        self, graph: Any, config: RunnableConfig, state: StateSnapshot
    ) -> StateSnapshot | None:
        """The session's state before the rolled-back runs at its head (None: empty).

        The run then starts from that checkpoint (`checkpoint_id` in its config): what
        the rolled-back runs wrote stays in the history, no longer at its head.
        """
        verdicts: dict[str, bool] = {}

        async def rolled_back(run_id: str) -> bool:
            if run_id not in verdicts:
                record = await self.call_store(self.store.get, run_id) if run_id else None
                verdicts[run_id] = record is not None and record.rolled_back
            return verdicts[run_id]

        if not await rolled_back(_run_of(state)):
            return state
        async for snapshot in graph.aget_state_history(config):
            if not await rolled_back(_run_of(snapshot)):
                config["configurable"]["checkpoint_id"] = snapshot.config["configurable"][
                    "checkpoint_id"
                ]
                found: StateSnapshot = snapshot
                return found
        # Nothing before them: the conversation starts afresh.
        await graph.checkpointer.adelete_thread(config["configurable"]["thread_id"])
        return None

    async def _drive(
        self,
        handle: RunHandle,
        drive: Drive,
        inputs: dict[str, Any] | None,
        config: RunnableConfig,
        *,
        known: set[str],
    ) -> AIMessage:
        """Run the graph, turning its stream into run events; the final assistant message.

        A message calling client tools is completed by the caller, with the calls.
        """
        ctx, client, stream = drive.ctx, drive.client, drive.stream
        modes = ["messages", "custom", "values"] if stream else ["custom", "values"]
        streamed: set[str] = set()
        last: AIMessage | None = None
        async for mode, data in drive.graph.astream(
            inputs, config, stream_mode=modes, context=client
        ):
            if mode == "messages":
                chunk, meta = data
                if not isinstance(chunk, AIMessageChunk) or INTERNAL_TAG in meta.get("tags", ()):
                    continue
                text = text_of(chunk)
                if not text:
                    continue
                message_id = chunk.id or ""
                if message_id not in streamed:
                    streamed.add(message_id)
                    if ctx.reply_prefix:
                        self.emit(handle, MessageDelta(ctx.reply_prefix, message_id))
                self.emit(handle, MessageDelta(text, message_id))
            elif mode == "custom":
                body = _custom_event(data)
                if body is not None:
                    self.emit(handle, body)
            elif mode == "values" and isinstance(data, Mapping):
                for message in data.get("messages", ()):
                    if not isinstance(message, AIMessage) or message.id in known:
                        continue
                    known.add(message.id or "")
                    last = message
                    content = text_of(message)
                    if content:
                        if stream and (message.id or "") not in streamed:
                            self.emit(handle, MessageDelta(content, message.id or ""))
                        if not client_calls(message, client):
                            self.emit(handle, MessageCompleted(content, message.id or ""))
        if last is None:
            raise RunFailure("the agent produced no assistant message", FailureCode.TEMPLATE_FAILED)
        if not text_of(last) and not client_calls(last, client):
            self.emit(handle, MessageCompleted("", last.id or ""))
        return last

    async def _finish(
        self,
        handle: RunHandle,
        status: RunStatus,
        terminal: RunCompleted | RunFailed,
        *,
        ctx: RunContext,
        output: RunOutput | None,
    ) -> None:
        record = handle.record
        code, message = (
            (terminal.code, terminal.message) if isinstance(terminal, RunFailed) else ("", "")
        )
        reason = terminal.finish_reason if isinstance(terminal, RunCompleted) else ""
        record.end(
            status,
            self.clock(),
            usage=_usage(ctx),
            tool_calls=ctx.tool_calls,
            error_code=code,
            error_message=message,
            output=output,
            finish_reason=reason,
        )
        if not await self._record_end(
            record,
            status,
            usage=record.usage,
            tool_calls=record.tool_calls,
            error_code=code,
            error_message=message,
            output=output,
            finish_reason=reason,
        ):
            # Not stored: acknowledging the run now would leave it running for good. Handed
            # over instead, it comes back from its queue and ends from its last checkpoint.
            await self._hand_over(handle)
            return
        self.emit(handle, terminal)
        handle.finished = True
        self.released(handle)
        await self._ended(handle, ended=True)

    async def _record_end(self, record: RunRecord, status: RunStatus, **end: Any) -> bool:
        """Store how the run ended, again while the store is unavailable; whether it was.

        A database that is down for less than `end_patience` seconds costs a run a late
        end, not a lost one. Storing an end twice is harmless: the second finds it ended.
        """
        delays = jittered_backoff(0.2, 2.0)
        give_up = time.monotonic() + self.end_patience
        while True:
            try:
                await asyncio.shield(
                    self.call_store(
                        self.store.finish,
                        record.run_id,
                        status,
                        finished_at=record.finished_at,
                        executor_id=record.executor_id if record.queued else "",
                        **end,
                    )
                )
                return True
            except Unavailable as e:
                if time.monotonic() >= give_up:
                    log.error(
                        "the end of a run could not be stored; handed over",
                        extra={"run_id": record.run_id, "error": str(e)},
                    )
                    return False
                log.warning(
                    "storing the end of a run failed, retrying",
                    extra={"run_id": record.run_id, "error": str(e)},
                )
                await asyncio.sleep(next(delays))
            except Exception:
                log.exception("recording the end of a run failed", extra={"run_id": record.run_id})
                return True  # not the store being down: retrying would not help

    async def _hand_over(self, handle: RunHandle) -> None:
        record = handle.record
        try:
            await asyncio.shield(
                self.call_store(self.store.release, record.run_id, record.executor_id)
            )
        except Exception:
            log.exception("handing a run over failed", extra={"run_id": record.run_id})
        handle.finished = True
        self.released(handle)
        await self._ended(handle, ended=False)

    async def _ended(self, handle: RunHandle, *, ended: bool) -> None:
        flush = asyncio.create_task(self.events.flush(handle.run_id))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)
        if handle.on_end is not None:
            try:
                await asyncio.shield(handle.on_end(handle.record, ended))
            except Exception:
                log.exception("after-run step failed", extra={"run_id": handle.run_id})

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until ended runs' events are stored."""
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=timeout)


# ---------------------------------------------------------------- helpers


def _custom_event(data: Any) -> EventBody | None:
    if not isinstance(data, Mapping):
        return None
    kind = data.get(EVENT_KEY)
    cls = CUSTOM_EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    fields = {k: v for k, v in data.items() if k != EVENT_KEY}
    try:
        return cls(**fields)
    except TypeError:
        log.warning("malformed custom run event dropped", extra={"event": kind})
        return None


def _count_earlier_attempts(ctx: RunContext, stored: Sequence[BaseMessage]) -> None:
    """Count what the run's earlier attempts did (its messages after its input).

    A resumed run's record then counts all its tool calls and tokens, and its
    budgets go on from there instead of starting again.
    """
    last_input = max((i for i, m in enumerate(stored) if isinstance(m, HumanMessage)), default=-1)
    for message in stored[last_input + 1 :]:
        if isinstance(message, ToolMessage):
            ctx.tool_calls += 1
        elif isinstance(message, AIMessage):
            ctx.count_usage(message.usage_metadata)


def _run_of(snapshot: StateSnapshot) -> str:
    """The run that wrote a checkpoint ("" when none of ours did)."""
    run_id = (snapshot.metadata or {}).get(RUN_ID_KEY, "")
    return run_id if isinstance(run_id, str) else ""


def _finish_reason(message: AIMessage) -> str:
    reason = message.response_metadata.get("finish_reason")
    return "length" if reason == "length" else "stop"


def _usage(ctx: RunContext) -> Usage:
    return Usage(ctx.prompt_tokens, ctx.completion_tokens)


def failure_fields(record: RunRecord, code: str) -> dict[str, Any]:
    """The structured fields of a failed run's log line."""
    return {
        "error_code": str(code),
        "agent_id": record.agent_id,
        "agent_version": record.agent_version,
        "run_id": record.run_id,
    }
