"""Application: running agents — admission, limits, streaming, cancellation, records.

`RunService.start` admits a run (valid input, a runnable agent, a served
template, the concurrency limits), records it and starts it in its own task; the
returned `RunHandle` yields the run's events in order until the last one
(`RunCompleted` or `RunFailed`). Every event also goes to the run event sink.
A run stops at its timeout, its step and tool-call budgets, on `cancel` from any
replica, or when the caller of a streamed run goes away; however it ends, its
record says how before its last event is sent.

Client tools: a request may bring functions the client runs itself. Templates
that support them get them as the graph's runtime context (`ClientTools`); a run
whose final message calls one ends with finish reason `tool_calls`, and the
final `MessageCompleted` carries those calls. The client answers with tool
messages; with a session the results answer the session's pending calls exactly
once (the conversation module turns the request's messages into the graph's).
A response format is checked against the final
answer of every template; an answer that does not meet it fails the run with
`OUTPUT_INVALID`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError

from agent_executor.application.context import (
    EVENT_KEY,
    INTERNAL_TAG,
    ClientTools,
    RunContext,
    Sampling,
    current_run,
)
from agent_executor.application.messages import text_of
from agent_executor.application.model import agent_sampling
from agent_executor.application.ports import (
    Admission,
    AgentSource,
    CancelBus,
    ModelFactory,
    ModelProblem,
    RunEventSink,
    RunStore,
    ToolGateway,
)
from agent_executor.application.templates import (
    ConfigViolations,
    LoadedTemplate,
    TemplateCatalog,
)
from agent_executor.application.tools import ToolsetProblem, remote_tools, select_tools
from agent_executor.application.transcript import (
    InputMessage,
    check_tool_messages,
    client_calls,
    graph_messages,
)
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.client_tools import (
    ClientTool,
    ResponseFormat,
    ToolChoice,
    check_client_tools,
    check_collisions,
    check_response_format,
)
from agent_executor.domain.limits import LimitProblem, RunLimits
from agent_executor.domain.runs import (
    STATUS_OF_FAILURE,
    EventBody,
    FailureCode,
    MessageCompleted,
    MessageDelta,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunRecord,
    RunStarted,
    RunStatus,
    StepProgress,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from agent_executor.domain.services_config import ServicesConfig
from agent_executor.errors import (
    AgentMisconfigured,
    AgentNotRunnable,
    ClientToolsUnsupported,
    ExecutorClosing,
    OutputInvalid,
    RunFailure,
    RunNotFound,
    TemplateUnavailable,
    TooManyRuns,
)
from agentrt_kit.concurrency import wait_event
from agentrt_kit.errors import FieldViolation, InvalidArgument, invalid

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
BlockingCall = Callable[..., Awaitable[Any]]

ROLES = ("system", "user", "assistant", "tool")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_MESSAGES = 1_000
UNLIMITED_STEPS = 10_000
CUSTOM_EVENTS: dict[str, type[EventBody]] = {
    "tool_call_started": ToolCallStarted,
    "tool_call_finished": ToolCallFinished,
    "step_progress": StepProgress,
}


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What a caller asks to run."""

    agent_id: str
    messages: Sequence[InputMessage]
    sampling: Sampling = field(default_factory=Sampling)
    task_id: str = ""
    context_id: str = ""
    user_id: str = ""
    run_id: str = ""
    stream: bool = True
    client_tools: Sequence[ClientTool] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How this executor runs agents."""

    limits: RunLimits = field(default_factory=RunLimits)
    max_concurrent_runs: int = 64
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    executor_id: str = "executor"
    graph_cache_size: int = 512


class RunHandle:
    """A started run: its identity and, by iteration, its events up to the last."""

    def __init__(self, record: RunRecord, agent: AgentSnapshot) -> None:
        self.record = record
        self.agent = agent
        self.queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.sequence = 0
        self.finished = False

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.record.run_id

    async def __aiter__(self) -> AsyncIterator[RunEvent]:
        while True:
            event = await self.queue.get()
            yield event
            if event.terminal:
                return

    async def aclose(self, reason: str = "the caller went away") -> None:
        """Cancel the run if it is still going and wait until it is recorded."""
        if self.task is not None and not self.task.done():
            self.task.cancel(reason)
            await asyncio.wait({self.task})


class RunService:
    """Starts, streams and cancels runs (`RunQueries` reads them)."""

    def __init__(
        self,
        *,
        agents: AgentSource,
        catalog: TemplateCatalog,
        models: ModelFactory,
        tools: ToolGateway,
        store: RunStore,
        events: RunEventSink,
        cancel_bus: CancelBus,
        services: ServicesConfig,
        call_store: BlockingCall,
        checkpointer: BaseCheckpointSaver[Any] | None = None,
        settings: RunSettings | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.agents = agents
        self.catalog = catalog
        self.models = models
        self.tools = tools
        self.store = store
        self.events = events
        self.cancel_bus = cancel_bus
        self.services = services
        self.call_store = call_store
        self.checkpointer = checkpointer
        self.settings = settings or RunSettings()
        self.clock = clock
        self.active: dict[str, RunHandle] = {}
        self._graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._flushes: set[asyncio.Task[None]] = set()
        self.closing = False

    # ------------------------------------------------------------ admission

    async def start(self, request: RunRequest) -> RunHandle:
        """Admit and start a run.

        Raises:
            InvalidArgument: the request is malformed (the field is named).
            AgentNotFound, AgentNotRunnable, AgentMisconfigured, TemplateUnavailable:
                the agent cannot run here.
            TooManyRuns, SessionBusy, RunExists: admission refused.
            RegistryUnavailable, ToolsUnavailable: a dependency is down.
        """
        if self.closing:
            raise ExecutorClosing("this executor is shutting down; retry on another replica")
        _check_request(request)
        agent = await self.agents.get(request.agent_id)
        if not agent.runnable:
            raise AgentNotRunnable(agent.id, agent.status)
        try:
            limits = self.settings.limits.tightened_by(agent.limit_overrides)
        except LimitProblem as e:
            raise AgentMisconfigured(agent.id, [FieldViolation(e.field, e.description)]) from None
        for i, message in enumerate(request.messages):
            if len(message.content) > limits.max_message_chars:
                raise invalid(
                    f"input.messages[{i}].content",
                    f"is longer than {limits.max_message_chars} characters",
                )
        loaded = self._template(agent)
        if request.client_tools and not loaded.template.client_tools:
            raise ClientToolsUnsupported(loaded.id)
        graph, own_tools = await self._graph(agent, loaded)
        if collisions := check_collisions(request.client_tools, own_tools):
            raise _invalid(collisions)
        if len(self.active) >= self.settings.max_concurrent_runs:
            raise TooManyRuns(
                f"this executor runs {self.settings.max_concurrent_runs} runs at most; retry later",
                reason="EXECUTOR_BUSY",
            )
        now = self.clock()
        task_id = request.task_id or uuid.uuid4().hex
        record = RunRecord(
            run_id=request.run_id or uuid.uuid4().hex,
            agent_id=agent.id,
            agent_version=agent.version,
            status=RunStatus.RUNNING,
            created_at=now,
            started_at=now,
            task_id=task_id,
            context_id=request.context_id,
            session_key=f"{agent.id}:{task_id}" if agent.memory else "",
            executor_id=self.settings.executor_id,
            owner_id=agent.owner_id,
        )
        handle = RunHandle(record, agent)
        self.active[record.run_id] = handle  # holds the slot while admitting
        try:
            await self.call_store(
                self.store.admit,
                record,
                Admission(
                    max_runs_per_agent=limits.max_concurrent_runs,
                    session_key=record.session_key,
                    lease_seconds=self.settings.lease_seconds,
                ),
            )
        except BaseException:
            self.active.pop(record.run_id, None)
            raise
        ctx = RunContext(
            run_id=record.run_id,
            agent_id=agent.id,
            agent_version=agent.version,
            task_id=task_id,
            workspace=agent.id,
            limits=limits,
            sampling=request.sampling,
            agent_sampling=agent_sampling(agent.conversation_config),
            response_format=request.response_format,
        )
        client = ClientTools(tuple(request.client_tools), request.tool_choice)
        handle.task = asyncio.create_task(
            self._run(
                handle, graph, ctx, request, client if loaded.template.client_tools else None
            ),
            name=f"run-{record.run_id}",
        )
        return handle

    def _template(self, agent: AgentSnapshot) -> LoadedTemplate:
        loaded = self.catalog.get(agent.template_id)
        if loaded is None:
            raise TemplateUnavailable(
                f"template {agent.template_id!r} is not served by this executor",
                metadata={"template_id": agent.template_id},
            )
        if agent.template_version and agent.template_version != loaded.version:
            raise TemplateUnavailable(
                f"agent {agent.id!r} is pinned to {agent.template_id} {agent.template_version}; "
                f"this executor serves {loaded.version}",
                reason="TEMPLATE_VERSION_UNAVAILABLE",
                metadata={"template_id": agent.template_id, "served": loaded.version},
            )
        return loaded

    async def _graph(
        self, agent: AgentSnapshot, loaded: LoadedTemplate
    ) -> tuple[Any, tuple[str, ...]]:
        """The agent's compiled graph and the names of its own tools."""
        offered = await self.tools.list_tools() if agent.toolsets else ()
        key = (agent.id, agent.version, id(loaded), tuple(offered))
        cached: tuple[Any, tuple[str, ...]] | None = self._graphs.get(key)
        if cached is not None:
            self._graphs.move_to_end(key)
            return cached
        problems: list[FieldViolation] = []
        try:
            view = loaded.template.view(agent)
        except ConfigViolations as e:
            problems.extend(e.violations)
        try:
            model = self.models.for_agent(agent)
        except ModelProblem as e:
            problems.append(FieldViolation("llm_config_id", str(e)))
        try:
            specs = select_tools(agent.toolsets, offered, self.services)
        except ToolsetProblem as e:
            problems.extend(e.violations)
        if problems:
            raise AgentMisconfigured(agent.id, problems)
        try:
            graph = loaded.template.build(view, model, remote_tools(specs, self.tools))
        except Exception as e:
            log.exception("template build failed", extra={"template_id": loaded.id})
            raise AgentMisconfigured(
                agent.id,
                [FieldViolation("template_id", f"{loaded.id} could not build a graph: {e}"[:500])],
                reason="TEMPLATE_BUILD_FAILED",
            ) from None
        if agent.memory and self.checkpointer is not None:
            graph = graph.copy({"checkpointer": self.checkpointer})
        entry = (graph, tuple(spec.name for spec in specs))
        self._graphs[key] = entry
        while len(self._graphs) > self.settings.graph_cache_size:
            self._graphs.popitem(last=False)
        return entry

    # ------------------------------------------------------------- running

    def _emit(self, handle: RunHandle, body: EventBody) -> None:
        handle.sequence += 1
        event = RunEvent(handle.run_id, handle.sequence, self.clock(), body)
        handle.queue.put_nowait(event)
        self.events.publish(event, handle.agent.id, handle.agent.version)

    async def _inputs(
        self, graph: Any, request: RunRequest, session: bool, config: RunnableConfig
    ) -> tuple[dict[str, Any], set[str]]:
        """The graph's input and the ids of the messages that were there before the run."""
        stored: Sequence[BaseMessage] = []
        if session:
            state = await graph.aget_state(config)
            stored = (state.values or {}).get("messages", []) if state else []
        known = {m.id for m in stored if m.id}
        messages = graph_messages(request.messages, stored)
        for message in messages:
            message.id = message.id or uuid.uuid4().hex
            known.add(message.id)
        return {"messages": messages}, known

    async def _run(
        self,
        handle: RunHandle,
        graph: Any,
        ctx: RunContext,
        request: RunRequest,
        client: ClientTools | None,
    ) -> None:
        token = current_run.set(ctx)
        record = handle.record
        limits = ctx.limits
        config: RunnableConfig = {
            "recursion_limit": limits.max_steps or UNLIMITED_STEPS,
            "metadata": {"agentrt_run_id": record.run_id, "agent_id": record.agent_id},
        }
        if record.session_key and self.checkpointer is not None:
            config["configurable"] = {"thread_id": record.session_key}
        status = RunStatus.SUCCEEDED
        terminal: RunCompleted | RunFailed
        try:
            self._emit(
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
                inputs, known = await self._inputs(graph, request, bool(record.session_key), config)
                final = await self._drive(
                    handle, graph, inputs, config, known=known, stream=request.stream, client=client
                )
            calls = client_calls(final, client)
            if calls:
                # No answer yet: the client runs its tools and continues the conversation.
                self._emit(
                    handle, MessageCompleted(text_of(final), final.id or "", tool_calls=calls)
                )
                terminal = RunCompleted("tool_calls", _usage(ctx))
            else:
                problem = request.response_format.problem_with(text_of(final))
                if problem is not None:
                    raise OutputInvalid(problem)
                terminal = RunCompleted(_finish_reason(final), _usage(ctx))
        except TimeoutError:
            terminal = RunFailed(
                FailureCode.TIMEOUT, f"the run exceeded its {limits.timeout_seconds:g} s timeout"
            )
        except asyncio.CancelledError as e:
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
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
            log.exception("run failed", extra=_failure_fields(record, FailureCode.INTERNAL))
            terminal = RunFailed(
                FailureCode.INTERNAL,
                f"the agent failed unexpectedly; see the executor log for run {record.run_id}",
            )
        finally:
            current_run.reset(token)
        if isinstance(terminal, RunFailed):
            status = STATUS_OF_FAILURE.get(terminal.code, RunStatus.FAILED)
            if terminal.code not in (FailureCode.CANCELLED, FailureCode.INTERNAL):
                log.warning("run failed", extra=_failure_fields(record, terminal.code))
        await self._finish(handle, status, terminal, usage=_usage(ctx), ctx=ctx)

    async def _drive(
        self,
        handle: RunHandle,
        graph: Any,
        inputs: dict[str, Any],
        config: RunnableConfig,
        *,
        known: set[str],
        stream: bool,
        client: ClientTools | None,
    ) -> AIMessage:
        """Run the graph, turning its stream into run events; the final assistant message.

        A message calling client tools is completed by the caller, with the calls.
        """
        ctx = current_run.get()
        modes = ["messages", "custom", "values"] if stream else ["custom", "values"]
        streamed: set[str] = set()
        last: AIMessage | None = None
        async for mode, data in graph.astream(inputs, config, stream_mode=modes, context=client):
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
                    if ctx is not None and ctx.reply_prefix:
                        self._emit(handle, MessageDelta(ctx.reply_prefix, message_id))
                self._emit(handle, MessageDelta(text, message_id))
            elif mode == "custom":
                body = _custom_event(data)
                if body is not None:
                    self._emit(handle, body)
            elif mode == "values" and isinstance(data, Mapping):
                for message in data.get("messages", ()):
                    if not isinstance(message, AIMessage) or message.id in known:
                        continue
                    known.add(message.id or "")
                    last = message
                    content = text_of(message)
                    if content:
                        if stream and (message.id or "") not in streamed:
                            self._emit(handle, MessageDelta(content, message.id or ""))
                        if not client_calls(message, client):
                            self._emit(handle, MessageCompleted(content, message.id or ""))
        if last is None:
            raise RunFailure("the agent produced no assistant message", FailureCode.TEMPLATE_FAILED)
        if not text_of(last) and not client_calls(last, client):
            self._emit(handle, MessageCompleted("", last.id or ""))
        return last

    async def _finish(
        self,
        handle: RunHandle,
        status: RunStatus,
        terminal: RunCompleted | RunFailed,
        *,
        usage: Usage,
        ctx: RunContext,
    ) -> None:
        record = handle.record
        record.status, record.finished_at, record.usage = status, self.clock(), usage
        record.tool_calls = ctx.tool_calls
        if isinstance(terminal, RunFailed):
            record.error_code, record.error_message = terminal.code, terminal.message
        try:
            await asyncio.shield(
                self.call_store(
                    self.store.finish,
                    record.run_id,
                    status,
                    finished_at=record.finished_at,
                    usage=usage,
                    tool_calls=ctx.tool_calls,
                    error_code=record.error_code,
                    error_message=record.error_message,
                )
            )
        except Exception:
            log.exception("recording the end of a run failed", extra={"run_id": record.run_id})
        self._emit(handle, terminal)
        handle.finished = True
        self.active.pop(record.run_id, None)
        flush = asyncio.create_task(self.events.flush(record.run_id))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)

    # ------------------------------------------------------------- cancel

    def cancel_local(self, run_id: str, reason: str = "cancel requested") -> bool:
        """Cancel `run_id` if this executor runs it; True when it did."""
        handle = self.active.get(run_id)
        if handle is None or handle.task is None or handle.task.done() or handle.finished:
            return False
        handle.task.cancel(reason)
        return True

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run wherever it runs; False when it had ended already.

        Raises:
            RunNotFound: no run has this id.
        """
        if self.cancel_local(run_id):
            return True
        if not RUN_ID.fullmatch(run_id):  # no run has such an id (nor a NUL for the database)
            raise RunNotFound(run_id)
        found: tuple[RunRecord, bool] | None = await self.call_store(
            self.store.request_cancel, run_id, self.clock()
        )
        if found is None:
            raise RunNotFound(run_id)
        record, live = found
        if live and not record.status.terminal:
            await self.cancel_bus.broadcast(run_id)
        return live

    async def maintain(self, stop: asyncio.Event) -> None:
        """Renew the leases of this executor's runs, act on cancel flags, expire lost runs."""
        interval = self.settings.heartbeat_seconds
        while not await wait_event(stop, interval):
            try:
                now = self.clock()
                flagged = await self.call_store(self.store.heartbeat, list(self.active), now)
                for run_id in flagged:
                    self.cancel_local(run_id)
                lost_before = now - timedelta(seconds=self.settings.lease_seconds)
                expired = await self.call_store(self.store.expire, lost_before, now)
                if expired:
                    log.warning("runs of a lost executor ended", extra={"count": expired})
            except Exception:
                log.exception("run maintenance failed")

    async def shutdown(self, grace: float) -> None:
        """Refuse new runs, let runs finish for `grace` seconds, cancel the rest.

        Cancelled runs are recorded and their callers get the `RunFailed` event;
        then the runs' events are flushed to the sink.
        """
        self.closing = True
        tasks = [h.task for h in self.active.values() if h.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel("the executor is shutting down")
            if pending:
                await asyncio.wait(pending)
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=grace)


# ---------------------------------------------------------------- helpers


def _check_request(request: RunRequest) -> None:
    problems: list[FieldViolation] = []
    if not request.agent_id:
        problems.append(FieldViolation("input.agent_id", "is required"))
    if not request.messages:
        problems.append(FieldViolation("input.messages", "must hold at least one message"))
    if len(request.messages) > MAX_MESSAGES:
        problems.append(FieldViolation("input.messages", f"must hold at most {MAX_MESSAGES}"))
    for i, message in enumerate(request.messages[:MAX_MESSAGES]):
        if message.role not in ROLES:
            problems.append(
                FieldViolation(f"input.messages[{i}].role", f"must be one of {', '.join(ROLES)}")
            )
    problems.extend(check_tool_messages(request.messages[:MAX_MESSAGES]))
    problems.extend(check_client_tools(request.client_tools, request.tool_choice))
    problems.extend(check_response_format(request.response_format))
    if request.run_id and not RUN_ID.fullmatch(request.run_id):
        problems.append(
            FieldViolation("input.run_id", "must be 1-128 of [A-Za-z0-9._:-], alphanumeric first")
        )
    if request.task_id and not TASK_ID.fullmatch(request.task_id):
        problems.append(
            FieldViolation("input.task_id", "must be 1-128 of [A-Za-z0-9._:-], alphanumeric first")
        )
    problems.extend(_check_sampling(request.sampling))
    if problems:
        raise _invalid(problems)


def _invalid(problems: list[FieldViolation]) -> InvalidArgument:
    text = "; ".join(f"{p.field}: {p.description}" for p in problems)
    return InvalidArgument(text, violations=problems)


def _check_sampling(s: Sampling) -> list[FieldViolation]:
    out = []
    checks: list[tuple[str, float | None, float, float]] = [
        ("temperature", s.temperature, 0.0, 2.0),
        ("top_p", s.top_p, 0.0, 1.0),
        ("frequency_penalty", s.frequency_penalty, -2.0, 2.0),
        ("presence_penalty", s.presence_penalty, -2.0, 2.0),
    ]
    for name, value, low, high in checks:
        if value is not None and not low <= value <= high:
            out.append(FieldViolation(f"input.sampling.{name}", f"must be in [{low:g}, {high:g}]"))
    if s.max_tokens is not None and s.max_tokens < 1:
        out.append(FieldViolation("input.sampling.max_tokens", "must be at least 1"))
    if len(s.stop) > 4:
        out.append(FieldViolation("input.sampling.stop", "must hold at most 4 sequences"))
    return out


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


def _finish_reason(message: AIMessage) -> str:
    reason = message.response_metadata.get("finish_reason")
    return "length" if reason == "length" else "stop"


def _usage(ctx: RunContext) -> Usage:
    return Usage(ctx.prompt_tokens, ctx.completion_tokens)


def _failure_fields(record: RunRecord, code: str) -> dict[str, Any]:
    """The structured fields of a failed run's log line."""
    return {
        "error_code": str(code),
        "agent_id": record.agent_id,
        "agent_version": record.agent_version,
        "run_id": record.run_id,
    }


__all__ = [
    "InputMessage",
    "RunHandle",
    "RunRequest",
    "RunService",
    "RunSettings",
]
