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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver

from agent_executor.application.context import (
    ClientTools,
    RunContext,
    Sampling,
)
from agent_executor.application.model import agent_sampling
from agent_executor.application.ports import (
    Admission,
    AgentSource,
    CancelBus,
    ModelFactory,
    ModelProblem,
    QueueUnavailable,
    RunEventLog,
    RunEventSink,
    RunStore,
    SessionHistory,
    ToolGateway,
)
from agent_executor.application.run_driver import Drive, RunDriver, RunHandle
from agent_executor.application.sessions import SessionPruner
from agent_executor.application.templates import (
    ConfigViolations,
    LoadedTemplate,
    TemplateCatalog,
)
from agent_executor.application.tools import ToolsetProblem, remote_tools, select_tools
from agent_executor.application.transcript import (
    InputMessage,
    check_tool_messages,
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
    EventBody,
    FailureCode,
    RunEvent,
    RunFailed,
    RunRecord,
    RunStatus,
    StepProgress,
    ToolCallFinished,
    ToolCallStarted,
)
from agent_executor.domain.services_config import ServicesConfig
from agent_executor.errors import (
    AgentMisconfigured,
    AgentNotRunnable,
    ClientToolsUnsupported,
    ExecutorClosing,
    RunNotFound,
    TemplateUnavailable,
    TooManyRuns,
)
from agentrt_kit.concurrency import wait_event
from agentrt_kit.context import outliving_the_call
from agentrt_kit.errors import FieldViolation, InvalidArgument, Unavailable, invalid

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
    min_agent_version: int = 0
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
    # A queued run whose executor stopped is redelivered by its queue; only one the
    # queue lost too (no executor took it for this long) is ended as EXECUTOR_LOST.
    queued_lost_seconds: float = 600.0
    # The newest checkpoints each session keeps after a run (see `SessionPruner`).
    session_checkpoints_kept: int = 3


@dataclass(frozen=True, slots=True)
class Prepared:
    """An admissible request: its agent, limits, template and compiled graph."""

    agent: AgentSnapshot
    limits: RunLimits
    loaded: LoadedTemplate
    graph: Any


class RunService:
    """Admits, starts and cancels runs (`RunQueries` reads them, `QueuedRuns` queues them)."""

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
        history: SessionHistory | None = None,
        event_log: RunEventLog | None = None,
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
        self.event_log = event_log
        self.settings = settings or RunSettings()
        self.clock = clock
        self.active: dict[str, RunHandle] = {}
        self.slot_freed = asyncio.Event()
        self.driver = RunDriver(
            store=store, events=events, call_store=call_store, clock=clock, released=self._released
        )
        # The checkpointer's threads, pruned after each session run (None: kept whole).
        self.sessions = (
            SessionPruner(
                history,
                keep=self.settings.session_checkpoints_kept,
                store=store,
                call_store=call_store,
            )
            if history is not None
            else None
        )
        self._graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.closing = False

    def _released(self, handle: RunHandle) -> None:
        self.active.pop(handle.run_id, None)
        self.slot_freed.set()
        # Ended, not handed over: a run handed over goes on elsewhere from its checkpoint.
        if self.sessions is not None and handle.record.status.terminal:
            self.sessions.run_ended(handle.record)

    @property
    def free_slots(self) -> int:
        """How many more runs this executor takes now."""
        return 0 if self.closing else self.settings.max_concurrent_runs - len(self.active)

    # ------------------------------------------------------------ admission

    async def prepare(self, request: RunRequest, *, durable: bool = False) -> Prepared:
        """Check a request and build its agent's graph (checkpointed when `durable`).

        Raises:
            ExecutorClosing: this replica is stopping.
            InvalidArgument: the request is malformed (the field is named).
            AgentNotFound, AgentNotRunnable, AgentMisconfigured, TemplateUnavailable:
                the agent cannot run here.
            RegistryUnavailable, ToolsUnavailable: a dependency is down.
        """
        if self.closing:
            raise ExecutorClosing("this executor is shutting down; retry on another replica")
        _check_request(request)
        agent = await self.agents.get(request.agent_id, request.min_agent_version)
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
        graph, own_tools = await self._graph(agent, loaded, durable=durable)
        if collisions := check_collisions(request.client_tools, own_tools):
            raise _invalid(collisions)
        return Prepared(agent, limits, loaded, graph)

    async def start(self, request: RunRequest) -> RunHandle:
        """Admit and start a run now, here (its caller listens to it).

        Raises:
            InvalidArgument: the request is malformed (the field is named).
            AgentNotFound, AgentNotRunnable, AgentMisconfigured, TemplateUnavailable:
                the agent cannot run here.
            TooManyRuns, SessionBusy, RunExists: admission refused.
            RegistryUnavailable, ToolsUnavailable: a dependency is down.
        """
        prepared = await self.prepare(request)
        agent = prepared.agent
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
            session_key=session_key(agent, task_id),
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
                    max_runs_per_agent=prepared.limits.max_concurrent_runs,
                    session_key=record.session_key,
                    lease_seconds=self.settings.lease_seconds,
                ),
            )
        except BaseException:
            self.active.pop(record.run_id, None)
            raise
        thread = record.session_key if self.checkpointer is not None else ""
        self.launch(handle, prepared, request, thread_id=thread)
        return handle

    def launch(
        self,
        handle: RunHandle,
        prepared: Prepared,
        request: RunRequest,
        *,
        thread_id: str = "",
        resume: bool = False,
        fresh_thread: bool = False,
    ) -> None:
        """Start an admitted (recorded) run in its own task.

        `fresh_thread`: the checkpointer thread is the run's own and new (nothing to read).
        """
        record, agent = handle.record, prepared.agent
        self.active[record.run_id] = handle
        ctx = RunContext(
            run_id=record.run_id,
            agent_id=agent.id,
            agent_version=agent.version,
            task_id=record.task_id,
            workspace=agent.id,
            limits=prepared.limits,
            sampling=request.sampling,
            agent_sampling=agent_sampling(agent.conversation_config),
            response_format=request.response_format,
        )
        client = ClientTools(tuple(request.client_tools), request.tool_choice)
        drive = Drive(
            graph=prepared.graph,
            ctx=ctx,
            messages=request.messages,
            stream=request.stream,
            client=client if prepared.loaded.template.client_tools else None,
            response_format_problem=request.response_format.problem_with,
            thread_id=thread_id,
            resume=resume,
            fresh_thread=fresh_thread,
        )
        # The run outlives a detached call, and records its end after a streamed one's.
        handle.task = asyncio.create_task(
            self.driver.run(handle, drive),
            name=f"run-{record.run_id}",
            context=outliving_the_call(),
        )

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
        self, agent: AgentSnapshot, loaded: LoadedTemplate, *, durable: bool = False
    ) -> tuple[Any, tuple[str, ...]]:
        """The agent's compiled graph and the names of its own tools.

        The graph checkpoints every step when the agent has memory (its session) or
        the run is `durable` (a queued run resumes from its last step).
        """
        offered = await self.tools.list_tools() if agent.toolsets else ()
        durable = durable or agent.memory
        key = (agent.id, agent.version, id(loaded), tuple(offered), durable)
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
        if durable and self.checkpointer is not None:
            graph = graph.copy({"checkpointer": self.checkpointer})
        entry = (graph, tuple(spec.name for spec in specs))
        self._graphs[key] = entry
        while len(self._graphs) > self.settings.graph_cache_size:
            self._graphs.popitem(last=False)
        return entry

    # ------------------------------------------------------------- cancel

    def cancel_local(self, run_id: str, reason: str = "cancel requested") -> bool:
        """Cancel `run_id` if this executor runs it; True when it did."""
        handle = self.active.get(run_id)
        if handle is None or handle.task is None or handle.task.done() or handle.finished:
            return False
        handle.task.cancel(reason)
        return True

    async def cancel(self, run_id: str, *, rollback: bool = False) -> bool:
        """Cancel a run wherever it runs; False when it had ended already.

        With `rollback`, the run is also undone in its session: the next run of the
        conversation starts from the state before it.

        Raises:
            RunNotFound: no run has this id.
        """
        if not rollback and self.cancel_local(run_id):
            return True
        if not RUN_ID.fullmatch(run_id):  # no run has such an id (nor a NUL for the database)
            raise RunNotFound(run_id)
        found: tuple[RunRecord, bool] | None = await self.call_store(
            self.store.request_cancel, run_id, self.clock(), rollback=rollback
        )
        if found is None:
            raise RunNotFound(run_id)
        record, live = found
        if live and not record.status.terminal:
            if not self.cancel_local(run_id):
                await self.cancel_bus.broadcast(run_id)
        elif live:  # ended here and now: it was queued, or its executor had stopped
            await self.announce_end(record)
        return live

    async def announce_end(self, record: RunRecord) -> None:
        """Send the last event of a run that ended without its driver (never raises).

        A run that was queued, lost or given up ends in its record; its event stream
        must end too, after the events its executors stored.
        """
        after = 0
        if self.event_log is not None:
            try:
                after = await self.event_log.last_sequence(record.run_id)
            except QueueUnavailable:
                log.warning("run end not announced", extra={"run_id": record.run_id})
                return
        body = RunFailed(record.error_code or FailureCode.INTERNAL, record.error_message)
        event = RunEvent(record.run_id, after + 1, self.clock(), body)
        self.events.publish(event, record.agent_id, record.agent_version)
        await self.events.flush(record.run_id)

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
                queued_lost_before = now - timedelta(seconds=self.settings.queued_lost_seconds)
                expired = await self.call_store(
                    self.store.expire, lost_before, now, queued_stale_before=queued_lost_before
                )
                for record in expired:
                    log.warning("run of a lost executor ended", extra={"run_id": record.run_id})
                    await self.announce_end(record)
            except Unavailable as e:  # the database is down: the next tick tries again
                log.warning("run maintenance skipped", extra={"error": str(e)})
            except Exception:
                log.exception("run maintenance failed")

    async def shutdown(self, grace: float) -> None:
        """Refuse new runs, let runs finish for `grace` seconds, then stop the rest.

        A queued run still going is handed over: released to its queue, which gives
        it to another executor (it resumes from its last checkpoint). Any other run is
        cancelled and recorded, and its caller gets the `RunFailed` event. Then the
        runs' events are flushed to the sink.
        """
        self.closing = True
        handles = [h for h in self.active.values() if h.task is not None]
        if handles:
            _, pending = await asyncio.wait([h.task for h in handles if h.task], timeout=grace)
            for handle in handles:
                if handle.task in pending and not (handle.record.queued and handle.hand_over()):
                    handle.task.cancel("the executor is shutting down")
            if pending:
                await asyncio.wait(pending)
        await self.driver.drain(grace)
        if self.sessions is not None:
            await self.sessions.drain(grace)


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


def session_key(agent: AgentSnapshot, task_id: str) -> str:
    """The conversation a run of `agent` on `task_id` continues ("" without memory)."""
    return f"{agent.id}:{task_id}" if agent.memory else ""


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


__all__ = [
    "InputMessage",
    "RunHandle",
    "RunRequest",
    "RunService",
    "RunSettings",
]
