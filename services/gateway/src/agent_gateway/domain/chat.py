"""Domain: agent runs as chat completions see them — the input, the result, the events.

A request names the agent in `model`. Besides its messages a run may carry the
client's own function tools (`ClientTool`, run by the client: a call to one ends the
run with `finish_reason: "tool_calls"`), a `ToolChoice` and a `ResponseFormat` the
final answer must meet. A streamed run yields `Started`, then `Delta`s, `Progress`
(tool calls and workflow steps, for clients that opt in), the client `ToolCalls`,
and `Finished`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a client tool the model made: the client runs it and sends the result."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the conversation a client sends."""

    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    tool_calls: Sequence[ToolCall] = ()


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A function the client offers the model and runs itself (OpenAI `tools[]`)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None  # JSON Schema of the arguments
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`auto`, `none`, `required`, or `function` with the client tool to call."""

    mode: str = "auto"
    function_name: str = ""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """`text`, `json_object`, or `json_schema` with the schema the answer must meet."""

    type: str = "text"
    name: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class RunInput:
    """What the executor runs."""

    agent_id: str
    messages: Sequence[Message]
    sampling: Mapping[str, Any] = field(default_factory=dict)
    task_id: str = ""
    context_id: str = ""
    user_id: str = ""
    client_tools: Sequence[ClientTool] = ()
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    run_id: str = ""  # chosen by the gateway for an idempotent request; else the executor's
    min_agent_version: int = 0  # read-your-writes: this agent version or a later one


@dataclass(frozen=True, slots=True)
class ComposeInput:
    """What an agent draft is made from."""

    template_id: str
    instructions: str
    suggested_name: str = ""
    suggested_tools: Sequence[str] = ()
    llm_config_id: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a run."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a non-streamed run ended."""

    run_id: str
    content: str
    finish_reason: str
    usage: Usage
    task_id: str
    context_id: str
    error_code: str = ""
    error_message: str = ""
    tool_calls: Sequence[ToolCall] = ()
    agent_version: int = 0


@dataclass(frozen=True, slots=True)
class Composed:
    """An agent draft (create-shaped), whether its config validates, and why not."""

    draft: Mapping[str, Any]
    valid: bool
    warnings: Sequence[str]
    usage: Usage


@dataclass(frozen=True, slots=True)
class Started:
    """The run started (the stream's first event)."""

    run_id: str
    task_id: str
    context_id: str


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of assistant text."""

    content: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended: `finish_reason` stop, length, error or cancelled."""

    finish_reason: str
    usage: Usage
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """The model called client tools: the run ends with `tool_calls` after this."""

    calls: Sequence[ToolCall]


@dataclass(frozen=True, slots=True)
class Progress:
    """A tool call of the agent's own, or a workflow/task step (`type` says which)."""

    type: str  # tool_call_started | tool_call_finished | step_progress
    data: Mapping[str, Any]


RunEvent = Started | Delta | ToolCalls | Progress | Finished
FINISHED_WELL = ("stop", "length", "tool_calls")


def new_task_id() -> str:
    """A task id for a conversation the client did not name."""
    return uuid.uuid4().hex


def failure_text(finished: Finished | RunResult) -> str:
    """The error text of a run that did not end with a message."""
    code = finished.error_code or "EXECUTION_ERROR"
    return f"[{code}] {finished.error_message or 'the run failed'}"
