"""Application: what the code inside a graph knows about the run it serves.

LangGraph runs nodes in tasks that inherit the caller's contextvars, so the run's
context (its id, the request's sampling parameters, its tool-call budget) reaches
models and tools without threading it through every template. Events that must
keep their place among the streamed model tokens (tool calls, step progress) go
through LangGraph's custom stream writer.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langgraph.config import get_stream_writer

from agent_executor.domain.client_tools import ClientTool, ResponseFormat, ToolChoice
from agent_executor.domain.limits import RunLimits
from agent_executor.errors import LimitExceeded

EVENT_KEY = "agentrt_event"
INTERNAL_TAG = "agentrt:internal"  # model calls whose tokens are not streamed to the client


@dataclass(frozen=True, slots=True)
class Sampling:
    """Request-level sampling parameters (None: the agent's or provider's default)."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] = ()

    def as_kwargs(self) -> dict[str, Any]:
        """The parameters that are set, as model keyword arguments."""
        values: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        out = {k: v for k, v in values.items() if v is not None}
        if self.stop:
            out["stop"] = list(self.stop)
        return out


@dataclass(slots=True)
class RunContext:
    """The run a graph is executing, as models and tools need it."""

    run_id: str
    agent_id: str
    agent_version: int
    task_id: str
    workspace: str
    limits: RunLimits
    sampling: Sampling = field(default_factory=Sampling)
    agent_sampling: Mapping[str, Any] = field(default_factory=dict)
    # The format the client wants the answer in; sent with the run's model calls
    # whose text the client sees (not with internal ones).
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    tool_calls: int = 0
    reply_prefix: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def count_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Add a model call's token usage (LangChain `usage_metadata`) to the run's."""
        if usage:
            self.prompt_tokens += int(usage.get("input_tokens", 0) or 0)
            self.completion_tokens += int(usage.get("output_tokens", 0) or 0)

    def count_tool_call(self, tool_name: str) -> None:
        """Count one tool call against the budget.

        Raises:
            LimitExceeded: when the call would exceed `max_tool_calls`.
        """
        limit = self.limits.max_tool_calls
        if limit and self.tool_calls >= limit:
            raise LimitExceeded(f"max tool calls ({limit}) reached; {tool_name} not called")
        self.tool_calls += 1


@dataclass(frozen=True, slots=True)
class ClientTools:
    """The client's tools for one run, handed to graphs as their LangGraph runtime context.

    Templates that support client tools (`AgentTemplate.client_tools`) read it from
    `runtime.context`, offer `functions()` to the model next to the agent's own
    tools with `model_choice()`, and end the run when the model calls one of `names`.
    """

    tools: tuple[ClientTool, ...] = ()
    choice: ToolChoice = field(default_factory=ToolChoice)

    @property
    def names(self) -> frozenset[str]:
        """The names of the tools offered (none when the choice is `none`)."""
        return frozenset(t.name for t in self.tools) if self.choice.offers_tools else frozenset()

    def functions(self) -> list[dict[str, Any]]:
        """The tools offered, in OpenAI's wire form (how a model binds them)."""
        return [t.function() for t in self.tools] if self.choice.offers_tools else []

    def model_choice(self) -> str | None:
        """The tool choice the model gets when the client's tools are offered."""
        return self.choice.model_choice()


current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "agentrt_run", default=None
)


def emit(event: str, **data: Any) -> None:
    """Send a run event from inside a graph, in order with the streamed tokens.

    Outside a graph (a template's unit test calling a node directly) it is dropped.
    """
    try:
        writer = get_stream_writer()
    except RuntimeError:
        return
    writer({EVENT_KEY: event, **data})


def progress(step_id: str, step_name: str, state: str, attempt: int = 1, detail: str = "") -> None:
    """Report a step's state: started, succeeded, failed, working, retrying or skipped.

    `detail` is what the step says about itself (a `custom` agent's progress text).
    """
    emit(
        "step_progress",
        step_id=step_id,
        step_name=step_name,
        state=state,
        attempt=attempt,
        detail=detail,
    )


def set_reply_prefix(prefix: str) -> None:
    """Prefix every assistant message of this run with `prefix` (streamed first)."""
    ctx = current_run.get()
    if ctx is not None:
        ctx.reply_prefix = prefix
