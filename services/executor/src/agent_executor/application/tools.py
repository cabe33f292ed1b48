"""Application: the agent's toolsets as LangChain tools that call the tools service.

Each call goes to the tools service with the run's context and the idempotency
key `<run_id>:<tool_call_id>`, so a retried or resumed call of an at-most-once
tool never acts twice. Tool errors, refusals and outages come back to the model
as an error it can read (a `ToolMessage` with status "error"); only the run's
tool-call budget ends the run. A successful call's `ToolMessage` also carries the
result as the tools service gave it (`artifact`: `{content, data, artifacts}`),
which models never see and agent code (the `custom` template) reads.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from pydantic import ConfigDict

from agent_executor.application.context import current_run, emit
from agent_executor.application.ports import ToolCallContext, ToolGateway, ToolSpec
from agent_executor.domain.services_config import ServicesConfig
from agentrt_kit.errors import AgentrtError, FieldViolation

PREVIEW_CHARS = 500
CUSTOM = "custom"

_tool_call_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "agentrt_tool_call_id", default=""
)


def render(content: str, data: Mapping[str, Any] | None, artifacts: Sequence[str]) -> str:
    """A tool result as the text the model reads."""
    parts = [content] if content else []
    if data and not content:
        parts.append(json.dumps(data, ensure_ascii=False, sort_keys=True))
    if artifacts:
        parts.append("Saved: " + ", ".join(artifacts))
    return "\n".join(parts) or "(no output)"


class RemoteTool(BaseTool):
    """A tool of the tools service, callable by any LangGraph graph."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    gateway: Any
    side_effect: str = "read_only"
    handle_tool_error: bool = True
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"

    async def ainvoke(
        self, input: str | dict[str, Any] | Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Invoke with a tool call (the usual way); its id becomes part of the idempotency key."""
        call_id = (
            input.get("id")
            if isinstance(input, dict) and input.get("type") == "tool_call"
            else None
        )
        token = _tool_call_id.set(str(call_id or ""))
        try:
            return await super().ainvoke(input, config, **kwargs)
        finally:
            _tool_call_id.reset(token)

    def _run(self, *args: Any, **kwargs: Any) -> str:
        raise ToolException(f"{self.name} runs on the tools service; call it asynchronously")

    async def _arun(self, *args: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        kwargs.pop("run_manager", None)
        arguments = dict(kwargs) if not args else {"input": args[0], **kwargs}
        ctx = current_run.get()
        if ctx is None:
            raise ToolException(f"{self.name} can only be called inside a run")
        ctx.count_tool_call(self.name)  # LimitExceeded ends the run
        call_id = _tool_call_id.get() or f"call-{ctx.tool_calls}"
        emit(
            "tool_call_started",
            tool_call_id=call_id,
            tool_name=self.name,
            arguments_json=json.dumps(arguments, ensure_ascii=False, sort_keys=True),
        )
        context = ToolCallContext(
            agent_id=ctx.agent_id,
            task_id=ctx.task_id,
            run_id=ctx.run_id,
            workspace=ctx.workspace,
            idempotency_key=f"{ctx.run_id}:{call_id}",
        )
        try:
            outcome = await self.gateway.invoke(self.name, arguments, context)
        except AgentrtError as e:
            text = _refusal(e)
            self._finished(call_id, ok=False, text=text)
            raise ToolException(text) from None
        if not outcome.ok:
            text = f"Error {outcome.error_code}: {outcome.error_message}"
            self._finished(call_id, ok=False, text=text)
            raise ToolException(text)
        text = render(outcome.content, outcome.data, outcome.artifacts)
        self._finished(call_id, ok=True, text=text)
        result = {
            "content": outcome.content,
            "data": dict(outcome.data or {}),
            "artifacts": list(outcome.artifacts),
        }
        return text, result

    def _finished(self, call_id: str, *, ok: bool, text: str) -> None:
        emit(
            "tool_call_finished",
            tool_call_id=call_id,
            tool_name=self.name,
            ok=ok,
            result_preview=text[:PREVIEW_CHARS],
        )


def _refusal(error: AgentrtError) -> str:
    fields = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
    return f"Error {error.reason}: {fields or error.message}"


class ToolsetProblem(ValueError):
    """An agent's toolsets name something this runtime cannot serve."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


def select_tools(
    toolsets: Sequence[str], offered: Sequence[ToolSpec], config: ServicesConfig
) -> list[ToolSpec]:
    """The tools an agent's `toolsets` select.

    `"custom"` selects every tool the services config allows (`toolsets.custom`:
    "all" or a list of names); a tool's own name selects that tool. MCP toolsets
    are not served by the tools service yet and are refused by name.

    Raises:
        ToolsetProblem: naming each toolset that cannot be served.
    """
    by_name = {t.name: t for t in offered}
    allowed = (
        set(by_name) if config.custom_tools is None else set(config.custom_tools) & set(by_name)
    )
    chosen: dict[str, ToolSpec] = {}
    problems: list[FieldViolation] = []
    for i, toolset in enumerate(toolsets):
        if toolset == CUSTOM:
            chosen.update((n, by_name[n]) for n in sorted(allowed))
        elif toolset in by_name and toolset in allowed:
            chosen[toolset] = by_name[toolset]
        elif toolset in by_name:
            problems.append(
                FieldViolation(
                    f"toolsets[{i}]", f"tool {toolset!r} is not allowed by toolsets.custom"
                )
            )
        elif toolset in config.mcp_toolsets:
            problems.append(
                FieldViolation(
                    f"toolsets[{i}]", f"MCP toolset {toolset!r} is not served by this runtime yet"
                )
            )
        else:
            problems.append(
                FieldViolation(f"toolsets[{i}]", f"no toolset or tool named {toolset!r}")
            )
    if problems:
        raise ToolsetProblem(problems)
    return list(chosen.values())


def remote_tools(specs: Sequence[ToolSpec], gateway: ToolGateway) -> list[BaseTool]:
    """LangChain tools for `specs`, calling `gateway`."""
    return [
        RemoteTool(
            name=spec.name,
            description=spec.description or spec.name,
            args_schema=spec.arguments_schema() or {"type": "object", "properties": {}},
            gateway=gateway,
            side_effect=spec.side_effect,
        )
        for spec in specs
    ]
