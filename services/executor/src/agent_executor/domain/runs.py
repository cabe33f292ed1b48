"""Domain: a run's lifecycle, its usage and the typed events it emits.

A run is one execution of one agent version. Its record (status, timings, usage,
error) is durable; its events are what a streaming client sees, in order, each
with a sequence number from 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from agent_executor.domain.client_tools import ToolCall


class RunStatus(StrEnum):
    """Where a run is in its lifecycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """True once the run has ended."""
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class FailureCode(StrEnum):
    """Why a run did not succeed (stable, machine-readable)."""

    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    TEMPLATE_FAILED = "TEMPLATE_FAILED"
    CODE_ERROR = "CODE_ERROR"  # the agent's own code (`custom` template) failed
    OUTPUT_INVALID = "OUTPUT_INVALID"
    EXECUTOR_LOST = "EXECUTOR_LOST"
    ATTEMPTS_EXHAUSTED = "ATTEMPTS_EXHAUSTED"
    INTERNAL = "INTERNAL"


class MultitaskStrategy(StrEnum):
    """What a queued run does when its task (conversation) already has a run going.

    The names and meanings are LangGraph Agent Server's: `reject` refuses the new
    run; `enqueue` runs it after the runs before it, in order; `interrupt` stops
    the running one (its progress is kept) and starts the new; `rollback` stops
    it and removes its record and progress, then starts the new.
    """

    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


STATUS_OF_FAILURE: dict[str, RunStatus] = {
    FailureCode.TIMEOUT: RunStatus.TIMED_OUT,
    FailureCode.CANCELLED: RunStatus.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a run used, as the model providers counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(slots=True)
class RunRecord:
    """The durable record of a run."""

    run_id: str
    agent_id: str
    agent_version: int
    status: RunStatus
    created_at: datetime
    task_id: str = ""
    context_id: str = ""
    session_key: str = ""
    executor_id: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    usage: Usage = field(default_factory=Usage)
    tool_calls: int = 0
    error_code: str = ""
    error_message: str = ""
    owner_id: str = ""  # the agent's owner when the run was admitted
    attempts: int = 1  # times the run was started
    queued: bool = False  # came through the run queue (StartRun)
    metadata: dict[str, str] = field(default_factory=dict)
    multitask_strategy: str = ""
    webhook_url: str = ""
    output: RunOutput | None = None  # the final message of a run that succeeded
    finish_reason: str = ""
    rolled_back: bool = False  # cancelled with its steps undone in its session

    def end(
        self,
        status: RunStatus,
        at: datetime,
        *,
        usage: Usage,
        tool_calls: int,
        error_code: str = "",
        error_message: str = "",
        output: RunOutput | None = None,
        finish_reason: str = "",
    ) -> None:
        """The run ended: how, when, and what it produced."""
        if self.status.terminal:
            raise ValueError(f"run {self.run_id} has ended already ({self.status})")
        self.status, self.finished_at, self.usage = status, at, usage
        self.tool_calls = tool_calls
        self.error_code, self.error_message = error_code, error_message
        self.output, self.finish_reason = output, finish_reason

    def stopped(self, status: RunStatus, at: datetime, code: str, message: str) -> None:
        """The run ended without its driver (cancelled, given up, lost): usage as counted."""
        self.end(
            status,
            at,
            usage=self.usage,
            tool_calls=self.tool_calls,
            error_code=code,
            error_message=message,
        )

    def claimed(self, executor_id: str, at: datetime) -> None:
        """An executor took the queued run (again, after one that stopped)."""
        if self.status.terminal:
            raise ValueError(f"run {self.run_id} has ended already ({self.status})")
        self.status, self.executor_id = RunStatus.RUNNING, executor_id
        self.started_at = self.started_at or at
        self.attempts += 1


@dataclass(frozen=True, slots=True)
class RunOutput:
    """The final assistant message of a run (with client tool calls to run, if any)."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a listing shows (empty fields match any run)."""

    agent_id: str = ""
    task_id: str = ""
    status: RunStatus | None = None
    owner_id: str = ""


@dataclass(frozen=True, slots=True)
class RunCursor:
    """Where a newest-first listing continues: after this run."""

    created_at: datetime
    run_id: str


# ------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The run was admitted and is running."""

    run_id: str
    agent_id: str
    agent_version: int
    task_id: str
    context_id: str
    type: str = "run_started"


@dataclass(frozen=True, slots=True)
class MessageDelta:
    """A piece of assistant text, as the model produced it."""

    content: str
    message_id: str = ""
    type: str = "message_delta"


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The agent called a tool."""

    tool_call_id: str
    tool_name: str
    arguments_json: str
    type: str = "tool_call_started"


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    """A tool call returned (ok) or failed (not ok; the agent sees the error)."""

    tool_call_id: str
    tool_name: str
    ok: bool
    result_preview: str
    type: str = "tool_call_finished"


@dataclass(frozen=True, slots=True)
class StepProgress:
    """A step of a multi-step template changed state."""

    step_id: str
    step_name: str
    state: str  # started | succeeded | failed | working | retrying | skipped
    attempt: int = 1
    detail: str = ""  # what the step reports about itself (a `custom` agent's progress text)
    type: str = "step_progress"


@dataclass(frozen=True, slots=True)
class MessageCompleted:
    """An assistant message is complete (the run's last one may call client tools)."""

    content: str
    message_id: str = ""
    role: str = "assistant"
    tool_calls: tuple[ToolCall, ...] = ()
    type: str = "message_completed"


@dataclass(frozen=True, slots=True)
class RunCompleted:
    """The run succeeded (the last event of a successful run).

    `finish_reason` is stop, length, or tool_calls when the final message calls
    client tools (the client runs them and continues the conversation).
    """

    finish_reason: str
    usage: Usage
    type: str = "run_completed"


@dataclass(frozen=True, slots=True)
class RunFailed:
    """The run failed, timed out or was cancelled (the last event of such a run)."""

    code: str
    message: str
    type: str = "run_failed"


EventBody = (
    RunStarted
    | MessageDelta
    | ToolCallStarted
    | ToolCallFinished
    | StepProgress
    | MessageCompleted
    | RunCompleted
    | RunFailed
)


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run with its place in the run's sequence."""

    run_id: str
    sequence: int
    occurred_at: datetime
    body: EventBody

    @property
    def terminal(self) -> bool:
        """True for the run's last event."""
        return isinstance(self.body, RunCompleted | RunFailed)
