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
    OUTPUT_INVALID = "OUTPUT_INVALID"
    EXECUTOR_LOST = "EXECUTOR_LOST"
    INTERNAL = "INTERNAL"


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
