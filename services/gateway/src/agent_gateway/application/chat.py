"""Application: running agents for HTTP callers — admission, limits, outcomes.

A chat completion runs the agent named by `model` when the caller may see it. A
non-streamed run that ends without an answer is a `RunFailed` with the run's error
code; a streamed one has started when `stream` returns (an unknown agent is refused
before any byte), holds one of the caller's stream slots until it is closed, and
reports its end in its events. A background run is queued (`start`) and answered at
once; it runs on whichever executor replica takes it.

Idempotent requests: a run id the gateway derived from the caller's Idempotency-Key
names the same run on every retry. Queued, the executor answers the existing run when
the request is the same one. Run in the foreground, the executor refuses the taken id
(RUN_EXISTS) and the retry joins the first run: its result, or its stream replayed from
the first event. A key sent with another request is refused (`key_reused`).

Read-your-writes: where the agent was read for the visibility check, its version is the
least one the executor may run.

A run outlives the request that started it. A client that leaves a stream cancels its
run (`ChatStream.close`); a gateway that is stopping does not: once `draining` is set, a
completion still waiting is answered `GatewayStopping`, naming its run (the gateway
names every foreground run before starting it), and a stream is detached from its run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

from agent_gateway.application.agents import Agents
from agent_gateway.application.draining import Drained, unless_drained
from agent_gateway.application.ports import Runner, RunRecords, RunStream
from agent_gateway.application.runs import take_slot
from agent_gateway.domain.auth import Principal
from agent_gateway.domain.chat import (
    FINISHED_WELL,
    Composed,
    ComposeInput,
    Delta,
    Finished,
    Progress,
    RunInput,
    RunResult,
    Started,
    ToolCalls,
    Usage,
    failure_text,
)
from agent_gateway.domain.limits import StreamSlots
from agent_gateway.domain.runs import OPEN, RunRecord, RunStart, new_run_id
from agent_gateway.domain.stats import ExecutionStats, Measurement
from agent_gateway.errors import GatewayStopping, RunFailed, bad_field, key_reused
from agentrt_kit.errors import AgentrtError, AlreadyExists, DeadlineExceeded

log = logging.getLogger(__name__)

MAX_JOIN_SECONDS = 300.0  # the longest the executor's WaitRun waits in one call


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """What one run may carry and take."""

    run_timeout: float = 300.0
    max_messages: int = 100
    max_message_chars: int = 32_000

    def check(self, run: RunInput) -> None:
        """Refuse a run carrying more messages, or longer ones, than allowed."""
        if len(run.messages) > self.max_messages:
            raise bad_field("body.messages", f"at most {self.max_messages} messages are accepted")
        for index, message in enumerate(run.messages):
            if len(message.content) > self.max_message_chars:
                raise bad_field(
                    f"body.messages.{index}.content",
                    f"at most {self.max_message_chars} characters",
                )


class ChatStream:
    """A started streamed run: its events, counted in the stats; `close` frees its slot.

    `cancel` stops the run (None for a replayed run, which its readers never stop).
    """

    def __init__(
        self,
        stream: RunStream,
        slots: StreamSlots,
        caller: Principal,
        measured: Measurement,
        cancel: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        self._stream = stream
        self._slots = slots
        self._caller = caller
        self._measured = measured
        self._cancel = cancel
        self._closed = self._detached = False
        self.started: Started = stream.started
        self.failure = ""  # why the run failed, once its end is known

    @property
    def sequence(self) -> int:
        """The sequence number of the last of the run's events read (where to resume)."""
        return self._stream.sequence

    async def events(self) -> AsyncIterator[Delta | ToolCalls | Progress | Finished]:
        """The run's events; a stream that breaks off ends with a `Finished` error."""
        measured = self._measured
        try:
            async for event in self._stream.events():
                if isinstance(event, Finished):
                    measured.finished = True
                    if event.finish_reason not in FINISHED_WELL:
                        measured.failed = True
                        self.failure = failure_text(event)
                yield event
        except AgentrtError as e:  # the executor went away mid-stream
            measured.finished = measured.failed = True
            self.failure = e.message
            yield Finished("error", Usage(), e.reason, e.message)

    def detach(self) -> None:
        """Leave the run to go on without this stream (the gateway is stopping)."""
        self._detached = True

    async def close(self) -> None:
        """Release the call, the stream slot and the measurement (once).

        A run this stream started and left before its end, not detached, is cancelled:
        its client went away.
        """
        if self._closed:
            return
        self._closed = True
        self._stream.close()
        self._slots.release(self._caller.id)
        measured = self._measured
        measured.end(failed=measured.failed or not measured.finished)
        if self._cancel is None or measured.finished or self._detached:
            return
        try:
            await self._cancel()
        except AgentrtError as e:  # the run ends at its deadline then
            log.warning(
                "the run of a stream its client left was not cancelled",
                extra={"run_id": self.started.run_id, "reason": e.reason},
            )


class Chat:
    """Runs agents for callers; drafts agents with the model."""

    def __init__(
        self,
        agents: Agents,
        runner: Runner,
        records: RunRecords,
        *,
        slots: StreamSlots,
        stats: ExecutionStats,
        limits: ChatLimits,
        draining: asyncio.Event | None = None,
    ) -> None:
        self._agents = agents
        self._runner = runner
        self._records = records
        self._slots = slots
        self.stats = stats
        self.limits = limits
        self._draining = draining or asyncio.Event()

    def _accepting(self) -> None:
        """Refuse new work once the gateway answers what it still has (it is stopping)."""
        if self._draining.is_set():
            raise GatewayStopping()

    async def _admitted(self, caller: Principal, run: RunInput) -> RunInput:
        """The run, once its input fits the limits and the caller may run its agent."""
        self.limits.check(run)
        agent = await self._agents.visible(caller, run.agent_id)
        if agent is None:  # not read (an unbound caller): the executor's latest will do
            return run
        return replace(run, min_agent_version=agent.version)

    async def complete(self, caller: Principal, run: RunInput) -> RunResult:
        """Run to the end (or, for a retried idempotent request, join the first run).

        Raises:
            RunFailed: the run ended without an answer (its error code is the reason).
            InvalidArgument: IDEMPOTENCY_KEY_REUSED, the run id names another request's run.
            DeadlineExceeded: a joined run has not ended within the run timeout.
            GatewayStopping: the gateway is stopping; the run (named) goes on.
        """
        self._accepting()
        run = await self._admitted(caller, run)
        keyed = bool(run.run_id)
        if not keyed:  # named before it starts, so that a stopping gateway can point to it
            run = replace(run, run_id=new_run_id())
        self._accepting()  # again: the drain point may have passed during admission
        with self.stats.measure() as measured:
            try:
                result = await unless_drained(self._draining, self._result(caller, run, keyed))
            except Drained:
                raise GatewayStopping(run.run_id, run.task_id, retry_joins=keyed) from None
            if result.finish_reason not in FINISHED_WELL:
                measured.failed = True
                raise RunFailed(
                    failure_text(result),
                    reason=result.error_code or "EXECUTION_ERROR",
                    metadata={
                        "run_id": result.run_id,
                        "task_id": result.task_id,
                        "finish_reason": result.finish_reason,
                    },
                )
        return result

    async def _result(self, caller: Principal, run: RunInput, keyed: bool) -> RunResult:
        """How the run ends; a retried idempotent request joins the run it started first."""
        try:
            return await self._runner.execute(run, timeout=self.limits.run_timeout)
        except AlreadyExists as e:
            if not (keyed and _taken(run, e)):
                raise
            return await self._join(caller, run)

    async def _join(self, caller: Principal, run: RunInput) -> RunResult:
        """The result of the run a retried request started first."""
        timeout = min(self.limits.run_timeout, MAX_JOIN_SECONDS)
        record = _same_request(caller, await self._records.wait_run(run.run_id, timeout), run)
        if record.status in OPEN:
            raise DeadlineExceeded(
                f"run {run.run_id!r} has not ended within {timeout:g} s; join it at "
                f"/v1/runs/{run.run_id}/wait",
                reason="TIMEOUT_ERROR",
                metadata={"run_id": run.run_id},
            )
        return record.result()

    async def stream(self, caller: Principal, run: RunInput, *, progress: bool) -> ChatStream:
        """Start a streamed run; it holds one of the caller's stream slots until closed.

        A retried idempotent request replays the first run's stream from its start.

        Raises:
            ResourceExhausted: the caller has every stream slot in use.
            InvalidArgument: IDEMPOTENCY_KEY_REUSED, the run id names another request's run.
            GatewayStopping: the gateway is stopping (nothing was started).
        """
        self._accepting()
        run = await self._admitted(caller, run)
        self._accepting()
        slots = self._slots
        take_slot(slots, caller.id, "streams")
        measured = self.stats.begin()
        timeout = self.limits.run_timeout
        replayed = False
        try:
            try:
                stream = await self._runner.stream(run, timeout=timeout, progress=progress)
            except AlreadyExists as e:
                if not _taken(run, e):
                    raise
                _same_request(caller, await self._records.get_run(run.run_id), run)
                stream = await self._runner.replay(run.run_id, timeout=timeout, progress=progress)
                replayed = True
        except BaseException:
            slots.release(caller.id)
            measured.end(failed=True)
            raise
        cancel = None if replayed else partial(self._records.cancel_run, stream.started.run_id)
        return ChatStream(stream, slots, caller, measured, cancel)

    async def start(self, caller: Principal, start: RunStart) -> tuple[RunRecord, bool]:
        """Queue a run (a background run); its record, and whether this request made it.

        Raises:
            InvalidArgument: IDEMPOTENCY_KEY_REUSED, the run id names another request's run.
        """
        run = await self._admitted(caller, start.input)
        try:
            record, created = await self._runner.start(replace(start, input=run))
        except AlreadyExists as e:
            if _taken(run, e):
                raise key_reused(run.run_id) from None
            raise
        return record, created

    async def compose(self, request: ComposeInput) -> Composed:
        """Draft an agent with the model; validates it, creates nothing.

        Raises:
            GatewayStopping: the gateway is stopping (nothing was created: send it again).
        """
        self._accepting()
        try:
            return await unless_drained(
                self._draining, self._runner.compose(request, timeout=self.limits.run_timeout)
            )
        except Drained:
            raise GatewayStopping() from None


def _taken(run: RunInput, error: AlreadyExists) -> bool:
    """Whether the executor refused the run because the gateway's run id is taken."""
    return bool(run.run_id) and error.reason == "RUN_EXISTS"


def _same_request(caller: Principal, record: RunRecord, run: RunInput) -> RunRecord:
    """The run a retried foreground request started, when it is that request's.

    Execute keeps no fingerprint of its request: the agent, the conversation and the
    kind of run are compared (a queued run was started by another route).
    """
    same = (record.agent_id, record.task_id) == (run.agent_id, run.task_id)
    if not same or record.queued or not caller.sees(record.owner_id):
        raise key_reused(run.run_id)
    return record
