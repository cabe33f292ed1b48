"""Built-in template `custom`: the agent is its own code, run in the tools service's sandbox.

Application layer: this module owns the `custom` template — its configuration
(camelCase keys: `codeSource`, `runtime`), the graph that runs the code once per
turn, and how the code's events become run events and its end the run's end.

How a turn goes: the graph's one node sends the conversation (the agent's system
prompt first, as a system message, when it has one; the history window applied)
and the agent (`{id, name, version, config}`) to the tools service, which calls
the code's entry point in a fresh sandbox. While it runs:

- each progress line (printed, or `agent.progress(text)`) is a `step_progress`
  event of step `code` in state `working`, the text in `detail`;
- each tool call is made through the agent's own tool of that name, as a model's
  would be: same budget, same `tool_call_*` events, same idempotency key
  (`<run_id>:code-<call id>`: a resumed run that runs the code again gets the
  first run's results of at-most-once tools from the ledger). The code gets
  `{content, data, artifacts, error}`; a name the agent has no tool for gets
  `error.code` `UNKNOWN_TOOL` and the code goes on.

The entry point's return value is the turn's assistant message. A failure ends
the run: the code raised, did not parse, lacks its entry point or its file is
missing → `CODE_ERROR`; it ran out of time → `TIMEOUT`; a memory, CPU, process
or output limit stopped it → `LIMIT_EXCEEDED`; the tools service has no sandbox
or cannot be reached → `TEMPLATE_FAILED`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agent_executor.application.builtin.react import ChatState, window
from agent_executor.application.context import current_run, progress
from agent_executor.application.messages import text_of
from agent_executor.application.ports import (
    SANDBOX_UNAVAILABLE,
    AgentCodeStart,
    CodeFinished,
    CodeProgress,
    CodeReport,
    CodeToolCall,
    ToolCallContext,
    ToolGateway,
    ToolOutcome,
)
from agent_executor.application.templates import AgentTemplate, AgentView, ceiling
from agent_executor.domain.runs import FailureCode
from agent_executor.errors import CodeFailed, LimitExceeded, RunFailure, TemplateFailed
from agentrt_kit.errors import AgentrtError

CODE_KEYWORD = "x-agentrt-code"  # where the registry finds the code and its runtime
MAX_CODE_CHARS = 262_144
MAX_PATH_CHARS = 1_024
ENTRY_POINT = r"^[A-Za-z_$][A-Za-z0-9_$]{0,127}$"  # a JavaScript identifier
PYTHON_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
STEP_ID = "code"
STEP_NAME = "Agent code"
MAX_DETAIL_CHARS = 2_000
MAX_FAILURE_CHARS = 4_000
STDERR_CHARS = 1_000
UNKNOWN_TOOL = "UNKNOWN_TOOL"
CALL_PREFIX = "code-"
PLAIN_CALL_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# How RemoteTool words an error (its `ToolMessage` text): "Error <CODE>: <message>".
TOOL_ERROR = re.compile(r"Error ([A-Z][A-Z0-9_]*): (.*)", re.DOTALL)
CODE_ERRORS = {"CODE_ERROR": "raised", "INVALID_CODE": "is invalid", "NOT_FOUND": "was not found"}
ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}

Dependency = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class CodeSource(BaseModel):
    """Where the agent's code is, and what it needs."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["inline", "file"] = Field(
        description="inline: `content` is the source; file: `content` is a workspace path."
    )
    content: str = Field(
        min_length=1,
        max_length=MAX_CODE_CHARS,
        description="The source (inline), or the path of the source file in the agent's "
        "workspace (file).",
    )
    entry_point: str = Field(
        "main",
        alias="entryPoint",
        pattern=ENTRY_POINT,
        description="The function called with (messages, agent).",
    )
    dependencies: list[Dependency] = Field(
        default_factory=list,
        max_length=100,
        description="Modules the code imports; each must be offered by the sandbox's runtime.",
    )

    @model_validator(mode="after")
    def _check_path(self) -> CodeSource:
        if self.type == "file":
            path = self.content
            if len(path) > MAX_PATH_CHARS or any(c in path for c in "\0\n\r"):
                raise ValueError(
                    f"content: a file path is one line of at most {MAX_PATH_CHARS} characters"
                )
            if path.startswith("/") or ".." in path.replace("\\", "/").split("/"):
                raise ValueError("content: a file path is relative to the workspace, without '..'")
        return self


class Runtime(BaseModel):
    """What runs the code, and its limits."""

    model_config = ConfigDict(extra="forbid")

    language: Literal["python", "javascript"] = Field(
        description="python (def main or async def main) or javascript (CommonJS async function)."
    )
    version: str = Field(
        "", max_length=32, description="The runtime version the code needs (empty: any)."
    )
    timeout: int = Field(
        30,
        ge=1,
        le=300,
        description="Seconds the code may run per turn.",
        json_schema_extra=ceiling("run_timeout_seconds"),
    )
    memory_limit: int = Field(
        256, alias="memoryLimit", ge=64, le=2048, description="Memory the code may use, in MiB."
    )


class CustomConfig(BaseModel):
    """Configuration of `custom` (camelCase keys)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={CODE_KEYWORD: {"source": "codeSource", "runtime": "runtime"}},
    )

    code_source: CodeSource = Field(alias="codeSource", description="The agent's code.")
    runtime: Runtime = Field(description="The language and limits the code runs with.")

    @model_validator(mode="after")
    def _check_entry_point(self) -> CustomConfig:
        name = self.code_source.entry_point
        if self.runtime.language == "python" and not PYTHON_NAME.fullmatch(name):
            raise ValueError(f"codeSource.entryPoint: {name!r} is not a Python identifier")
        return self


class Custom(AgentTemplate):
    """An agent that is its own code, run in the tools service's sandbox."""

    id = "custom"
    name = "Custom code"
    description = (
        "The agent is your code (Python or JavaScript): its entry point gets the "
        "conversation and an agent object (tools, progress, config) and returns the reply. "
        "It runs in the tools service's sandbox, with a timeout and a memory limit."
    )
    version = "1.0.0"
    Config = CustomConfig

    def __init__(self, gateway: ToolGateway) -> None:
        self._gateway = gateway

    def build(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """One node: run the code on the conversation; its reply is the assistant message."""
        settings = agent.config
        assert isinstance(settings, CustomConfig)
        by_name = {t.name: t for t in tools}
        gateway = self._gateway

        async def code(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
            start = _start(agent, settings, state["messages"])
            progress(STEP_ID, STEP_NAME, "started")
            try:
                finished = await _play(gateway, start, by_name, config)
                reply = _reply(finished, settings.runtime.timeout)
            except RunFailure as e:
                progress(STEP_ID, STEP_NAME, "failed", detail=_clip(e.message))
                raise
            progress(STEP_ID, STEP_NAME, "succeeded", detail=_usage(finished.report))
            return {"messages": [AIMessage(reply)]}

        builder = StateGraph(ChatState)
        builder.add_node("code", code)
        builder.add_edge(START, "code")
        builder.add_edge("code", END)
        return builder.compile()


def _start(
    agent: AgentView, config: CustomConfig, messages: Sequence[AnyMessage]
) -> AgentCodeStart:
    ctx = current_run.get()
    if ctx is None:
        raise TemplateFailed("agent code runs only inside a run")
    conversation = (
        [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
    )
    conversation += [
        {"role": ROLES[m.type], "content": text_of(m)}
        for m in window(messages, agent.history_length)
        if m.type in ROLES
    ]
    source = config.code_source
    return AgentCodeStart(
        language=config.runtime.language,
        entry_point=source.entry_point,
        messages=conversation,
        agent={
            "id": agent.id,
            "name": agent.name,
            "version": agent.version,
            "config": config.model_dump(mode="json", by_alias=True),
        },
        context=ToolCallContext(
            agent_id=ctx.agent_id,
            task_id=ctx.task_id,
            run_id=ctx.run_id,
            workspace=ctx.workspace,
            idempotency_key="",
        ),
        code=source.content if source.type == "inline" else "",
        code_path=source.content if source.type == "file" else "",
        timeout_seconds=config.runtime.timeout,
        memory_mb=config.runtime.memory_limit,
    )


async def _play(
    gateway: ToolGateway,
    start: AgentCodeStart,
    tools: Mapping[str, BaseTool],
    config: RunnableConfig,
) -> CodeFinished:
    """Run the code to its end: progress reported, tool calls answered."""
    finished: CodeFinished | None = None
    try:
        async with gateway.run_agent_code(start) as session:
            async for event in session:
                if isinstance(event, CodeProgress):
                    if event.text:
                        progress(STEP_ID, STEP_NAME, "working", detail=_clip(event.text))
                elif isinstance(event, CodeToolCall):
                    await session.answer(event.call_id, await _call_tool(tools, event, config))
                else:
                    finished = event
    except AgentrtError as e:
        if e.reason == SANDBOX_UNAVAILABLE:
            raise TemplateFailed(f"the tools service cannot run agent code: {e.message}") from None
        raise TemplateFailed(
            f"the tools service could not run the agent's code: [{e.reason}] {e.message}"
        ) from None
    if finished is None:
        raise TemplateFailed("the tools service ended the agent's code without its result")
    return finished


async def _call_tool(
    tools: Mapping[str, BaseTool], call: CodeToolCall, config: RunnableConfig
) -> ToolOutcome:
    """The code's tool call made through the agent's tool of that name."""
    tool = tools.get(call.name)
    if tool is None:
        offered = ", ".join(sorted(tools)) or "none"
        return ToolOutcome(
            error_code=UNKNOWN_TOOL,
            error_message=f"{call.name!r} is not a tool of this agent (its tools: {offered})",
        )
    request = {
        "type": "tool_call",
        "id": code_call_id(call.call_id),
        "name": call.name,
        "args": dict(call.arguments),
    }
    # LimitExceeded (the run's tool-call budget) ends the run, and so the code.
    return outcome_of(await tool.ainvoke(request, config))


def code_call_id(call_id: str) -> str:
    """The run's id of the code's tool call: the same for the same call when the code runs again."""
    if PLAIN_CALL_ID.fullmatch(call_id):
        return CALL_PREFIX + call_id
    return CALL_PREFIX + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def outcome_of(result: Any) -> ToolOutcome:
    """What the code gets back from a tool's `ToolMessage`."""
    if not isinstance(result, ToolMessage):
        return ToolOutcome(content=str(result))
    if result.status == "error":
        text = text_of(result)
        match = TOOL_ERROR.fullmatch(text)
        if match is None:
            return ToolOutcome(error_code="TOOL_ERROR", error_message=text)
        return ToolOutcome(error_code=match[1], error_message=match[2])
    artifact = result.artifact
    if isinstance(artifact, Mapping):
        return ToolOutcome(
            content=str(artifact.get("content", "")),
            data=dict(artifact.get("data") or {}),
            artifacts=tuple(str(a) for a in artifact.get("artifacts") or ()),
        )
    return ToolOutcome(content=text_of(result))


def _reply(finished: CodeFinished, timeout: int) -> str:
    """The code's reply, or the failure that ends the run."""
    code, message = finished.error_code, finished.error_message
    if not code:
        return finished.reply
    if code == "TIMEOUT":
        raise RunFailure(f"the agent's code exceeded its {timeout} s timeout", FailureCode.TIMEOUT)
    if code == "LIMIT_EXCEEDED":
        limit = finished.report.killed_reason or "a sandbox"
        raise LimitExceeded(
            _clip(
                f"the agent's code was stopped by the {limit} limit: {message}", MAX_FAILURE_CHARS
            )
        )
    if code in CODE_ERRORS:
        text = f"the agent's code {CODE_ERRORS[code]} ({code}): {message}"
        tail = finished.stderr_tail.strip()
        if tail and tail not in message:
            text += f"\nstderr: {tail[-STDERR_CHARS:]}"
        raise CodeFailed(_clip(text, MAX_FAILURE_CHARS))
    raise TemplateFailed(_clip(f"the code sandbox failed ({code}): {message}", MAX_FAILURE_CHARS))


def _clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _usage(report: CodeReport) -> str:
    return (
        f"exit code {report.exit_code}, {report.duration_ms} ms, CPU {report.cpu_ms} ms, "
        f"max RSS {report.max_rss_kb} KiB"
    )
