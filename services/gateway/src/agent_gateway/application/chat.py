"""Application: running agents for HTTP callers — admission, limits, outcomes.

A chat completion runs the agent named by `model` when the caller may see it. A
non-streamed run that ends without an answer is a `RunFailed` with the run's error
code; a streamed one has started when `stream` returns (an unknown agent is refused
before any byte), holds one of the caller's stream slots until it is closed, and
reports its end in its events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent_gateway.application.agents import Agents
from agent_gateway.application.ports import Runner, RunStream
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
from agent_gateway.domain.stats import ExecutionStats, Measurement
from agent_gateway.errors import RunFailed, bad_field, over_limit
from agentrt_kit.errors import AgentrtError


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """What one run may carry and take."""

    run_timeout: float = 300.0
    max_messages: int = 100
    max_message_chars: int = 32_000


class ChatStream:
    """A started streamed run: its events, counted in the stats; `close` frees its slot."""

    def __init__(
        self,
        stream: RunStream,
        slots: StreamSlots,
        caller: Principal,
        measured: Measurement,
    ) -> None:
        self._stream = stream
        self._slots = slots
        self._caller = caller
        self._measured = measured
        self._closed = False
        self.started: Started = stream.started
        self.failure = ""  # why the run failed, once its end is known

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

    def close(self) -> None:
        """Release the call, the stream slot and the measurement (once)."""
        if not self._closed:
            self._closed = True
            self._stream.close()
            self._slots.release(self._caller.id)
            measured = self._measured
            measured.end(failed=measured.failed or not measured.finished)


class Chat:
    """Runs agents for callers; drafts agents with the model."""

    def __init__(
        self,
        agents: Agents,
        runner: Runner,
        *,
        slots: StreamSlots,
        stats: ExecutionStats,
        limits: ChatLimits,
    ) -> None:
        self._agents = agents
        self._runner = runner
        self._slots = slots
        self.stats = stats
        self.limits = limits

    def _admit(self, run: RunInput) -> None:
        limits = self.limits
        if len(run.messages) > limits.max_messages:
            raise bad_field("body.messages", f"at most {limits.max_messages} messages are accepted")
        for index, message in enumerate(run.messages):
            if len(message.content) > limits.max_message_chars:
                raise bad_field(
                    f"body.messages.{index}.content",
                    f"at most {limits.max_message_chars} characters",
                )

    async def complete(self, caller: Principal, run: RunInput) -> RunResult:
        """Run to the end.

        Raises:
            RunFailed: the run ended without an answer (its error code is the reason).
        """
        self._admit(run)
        await self._agents.visible(caller, run.agent_id)
        with self.stats.measure() as measured:
            result = await self._runner.execute(run, timeout=self.limits.run_timeout)
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

    async def stream(self, caller: Principal, run: RunInput, *, progress: bool) -> ChatStream:
        """Start a streamed run; it holds one of the caller's stream slots until closed.

        Raises:
            ResourceExhausted: the caller has every stream slot in use.
        """
        self._admit(run)
        await self._agents.visible(caller, run.agent_id)
        slots = self._slots
        if not slots.acquire(caller.id):
            raise over_limit(
                f"at most {slots.limit} streams may be open per key",
                {"scope": "streams", "limit": str(slots.limit)},
            )
        measured = self.stats.begin()
        try:
            stream = await self._runner.stream(
                run, timeout=self.limits.run_timeout, progress=progress
            )
        except BaseException:
            slots.release(caller.id)
            measured.end(failed=True)
            raise
        return ChatStream(stream, slots, caller, measured)

    async def compose(self, request: ComposeInput) -> Composed:
        """Draft an agent with the model; validates it, creates nothing."""
        return await self._runner.compose(request, timeout=self.limits.run_timeout)
