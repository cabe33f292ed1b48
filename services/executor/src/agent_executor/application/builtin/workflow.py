"""Built-in template `langgraph-workflow` (compatible): configured steps that report their state.

Application layer: this module owns the workflow template — its configuration
as old clients send it, the order its steps run in, the control lines its steps
answer with and how retries, timeouts and failures are enforced — plus small
helpers the `task` template shares (dependency ordering, internal model calls).

How a run goes:

- Routing (only when `workflow_responsibility` is set): one model call decides
  whether the user's latest request is in scope. Its reply ends with `SUCCESS`
  (run the steps) or `FAIL` (out of scope: the reply, without its control line,
  is the run's answer and every step is reported `skipped`). A routing call that
  keeps failing (timeout, provider error) fails the run whatever
  `fail_on_error` says: without a decision there is nothing sensible to run.
- Steps run one after another in dependency order (the configured order where
  the dependencies allow). A step is a small ReAct loop over its own tools; its
  reply ends with a control line `SUCCESS`, `FAIL` or `WORKING` — the last
  non-empty line, case-insensitive, punctuation around it ignored (`**FAIL**`).
  A reply without a control line counts as `SUCCESS`: models forget the line
  far more often than they fail silently, and old agents relied on this.
- `WORKING` calls the model again for the same step; an attempt gets at most
  `max_working_iterations` replies, and one still `WORKING` after that failed.
  `FAIL`, a timeout (`timeout`, else `step_timeout`) or a model error fails the
  attempt; the step is retried `retry_count` (else `max_retries`) times, each
  retry seeing the earlier attempts' replies and why they failed. A step that
  still fails ends the run (`fail_on_error`) or is recorded as failed, the
  steps depending on it are skipped and the others go on.
- The step model calls are internal (not streamed: they carry control lines).
  The graph ends by appending one `AIMessage`: the last successful step's reply
  without its control line, followed by a note naming the steps that did not
  complete. Per-step results live in the graph state, not in `messages`.

What a step's model call is given, in order: one system message (the agent's
system prompt, the workflow's standing instruction, the step's name and prompt,
the results of the steps it depends on), the conversation (`history_size`
messages before the user's latest turn, then that turn), then the attempt's own
transcript. Runtime nudges ("continue", "try again") are system messages, so the
user's latest message stays the latest human message of every call; the
offline model's scripts count replies from it (a step's first call is script
step 0, each reply of the same attempt one more, a retry starts after the
earlier attempts' replies).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, NotRequired, Protocol, TypedDict, TypeVar

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_executor.application.builtin.react import window
from agent_executor.application.context import INTERNAL_TAG, current_run, progress
from agent_executor.application.messages import text_of
from agent_executor.application.templates import AgentTemplate, AgentView, acyclic, ceiling
from agent_executor.errors import LimitExceeded, TemplateFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_STEPS = 20
# Graph steps a run takes besides one per configured step: LangGraph's entry step,
# the routing node and the answer node. Steps + this must fit the run's max_steps.
GRAPH_OVERHEAD = 3
ROUTING_ID = "routing"
ROUTING_NAME = "Routing"
SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"
CONTROL_LINE = re.compile(r"[\W_]*(SUCCESS|FAIL|WORKING)[\W_]*", re.IGNORECASE)

STANDING_INSTRUCTION = (
    "You are carrying out one step of a multi-step workflow. Work only on the current "
    "step; the text of your reply is the step's result. End your reply with a line "
    "holding one word: SUCCESS when the step is done, WORKING when you need another "
    "turn to finish it (you will be asked to continue), or FAIL when it cannot be done "
    "(say why above that line)."
)
ROUTING_INSTRUCTION = (
    "Before any work starts, decide whether the user's latest request is within this "
    "workflow's responsibility:\n{responsibility}\n\n"
    "If it is, reply with a short acknowledgement. If it is not, tell the user politely "
    "what you can help with instead. End your reply with a line holding one word: "
    "SUCCESS when the request is in scope, FAIL when it is not."
)
CONTINUE_NUDGE = (
    "Continue the current step where you left off (reply {iteration} of at most {cap}). "
    "End your reply with SUCCESS, WORKING or FAIL."
)
RETRY_NUDGE = "Attempt {attempt} of the current step failed: {reason}. Try the step again."
OUT_OF_SCOPE = "This request is outside what this workflow handles."
NOTHING_SUCCEEDED = "No step of the workflow succeeded."


# ------------------------------------------------------------ shared helpers


class DependencyCycle(ValueError):
    """Steps depend on each other in a circle; `cycle` lists it (first step repeated)."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("steps depend on each other in a cycle: " + " -> ".join(cycle))
        self.cycle = cycle


def topological_order(keys: Sequence[str], depends_on: Mapping[str, Iterable[str]]) -> list[str]:
    """`keys` so that each comes after what it depends on, keeping the given order otherwise.

    Raises:
        DependencyCycle: naming one cycle among the keys.
    """
    waiting = {k: set(depends_on.get(k, ())) & set(keys) for k in keys}
    order: list[str] = []
    while waiting:
        ready = next((k for k in keys if k in waiting and not waiting[k]), None)
        if ready is None:
            raise DependencyCycle(_a_cycle(waiting, keys))
        order.append(ready)
        del waiting[ready]
        for deps in waiting.values():
            deps.discard(ready)
    return order


def _a_cycle(waiting: Mapping[str, set[str]], keys: Sequence[str]) -> list[str]:
    # Every waiting key still waits on another waiting key, so following the first
    # dependency from any of them must come back to a key already on the path.
    path = [next(k for k in keys if k in waiting)]
    while True:
        nxt = next(k for k in keys if k in waiting[path[-1]])
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)


def internal(config: RunnableConfig) -> RunnableConfig:
    """The node's `config` for a model call whose tokens the client must not see streamed."""
    return merge_configs(config, {"tags": [INTERNAL_TAG]})


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all concurrently; on the first error cancel the rest before raising it."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def describe_error(error: BaseException) -> str:
    """A short description of why a model call failed, for progress and results."""
    text = str(error) or type(error).__name__
    return text[:300]


# ---------------------------------------------------------------- control lines


async def tool_loop(
    model: Runnable[LanguageModelInput, BaseMessage],
    tools: Mapping[str, BaseTool],
    messages: Sequence[BaseMessage],
    config: RunnableConfig,
    *,
    label: str,
) -> list[BaseMessage]:
    """The model's messages up to its next reply without tool calls, with the tool results.

    Model calls are internal (not streamed). Each turn may make at most the run's
    `max_steps` model calls, so a model that keeps calling tools cannot loop forever.
    """
    ctx = current_run.get()
    budget = ctx.limits.max_steps if ctx is not None else 0
    new: list[BaseMessage] = []
    calls = 0
    while True:
        calls += 1
        if budget and calls > budget:
            raise LimitExceeded(
                f"{label} made {budget} model calls in one turn (max steps {budget})"
            )
        reply = await model.ainvoke([*messages, *new], internal(config))
        new.append(reply)
        tool_calls = getattr(reply, "tool_calls", None) or []
        if not tool_calls:
            return new
        new.extend(await gather_all(_call_tool(tools, call, config) for call in tool_calls))


async def _call_tool(
    tools: Mapping[str, BaseTool], call: Mapping[str, Any], config: RunnableConfig
) -> ToolMessage:
    name = str(call.get("name", ""))
    call_id = str(call.get("id") or "")
    tool = tools.get(name)
    if tool is None:
        offered = ", ".join(tools) or "none"
        return ToolMessage(
            f"Error: {name!r} is not a tool of this step (its tools: {offered})",
            tool_call_id=call_id,
            name=name,
            status="error",
        )
    result = await tool.ainvoke({**call, "type": "tool_call"}, config)
    if isinstance(result, ToolMessage):
        return result
    return ToolMessage(str(result), tool_call_id=call_id, name=name)


class Control(StrEnum):
    """A step's control line."""

    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    WORKING = "WORKING"


def split_control(reply: str) -> tuple[Control | None, str]:
    """The reply's control line (None when it has none) and the reply without it."""
    lines = reply.rstrip().splitlines()
    if not lines:
        return None, ""
    match = CONTROL_LINE.fullmatch(lines[-1].strip())
    if match is None:
        return None, reply.strip()
    return Control(match.group(1).upper()), "\n".join(lines[:-1]).strip()


# ------------------------------------------------------------------ configuration


class WorkflowStep(BaseModel):
    """One configured step."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, min_length=1, max_length=128, description="Unique step id (default: the name)."
    )
    name: str = Field(min_length=1, max_length=200, description="The step's name.")
    prompt: str = Field(max_length=20_000, description="What the step must do.")
    tools: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Names of the agent's tools this step may call.",
    )
    depends_on: list[str] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="Ids or names of the steps whose results this step needs.",
    )
    timeout: int | None = Field(
        None,
        ge=1,
        description="Seconds an attempt may take (default: step_timeout).",
        json_schema_extra=ceiling("run_timeout_seconds"),
    )
    retry_count: int | None = Field(
        None, ge=0, le=10, description="Retries after a failed attempt (default: max_retries)."
    )

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @property
    def key(self) -> str:
        """The step's id (its name when no id is set)."""
        return self.id or self.name


class WorkflowConfig(BaseModel):
    """Configuration of `langgraph-workflow` (field names as old clients send them)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[WorkflowStep] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The steps, run in dependency order.",
        # The registry's view of `_check_dependencies` and of the graph's size.
        json_schema_extra={
            **acyclic(key=["id", "name"], aliases=["name"]),
            **ceiling("max_steps", reserve=GRAPH_OVERHEAD),
        },
    )
    workflow_responsibility: str = Field(
        "",
        max_length=5_000,
        description="What the workflow handles; when set, out-of-scope requests are declined.",
    )
    history_size: int = Field(10, ge=0, description="Earlier conversation messages each step sees.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries of a failed step.")
    step_timeout: int = Field(
        120,
        ge=1,
        description="Seconds a step attempt may take.",
        json_schema_extra=ceiling("run_timeout_seconds"),
    )
    fail_on_error: bool = Field(
        True, description="Fail the run when a step fails (else skip its dependants)."
    )
    max_working_iterations: int = Field(
        5, ge=1, le=20, description="Replies a step attempt may take while WORKING."
    )

    @field_validator("steps")
    @classmethod
    def _check_dependencies(cls, steps: list[WorkflowStep]) -> list[WorkflowStep]:
        keys = [s.key for s in steps]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(
                    f"steps[{i}]: id {key!r} is used by steps[{keys.index(key)}] too "
                    "(the id defaults to the name; set distinct ids)"
                )
        deps = _resolve_dependencies(steps)
        topological_order(keys, deps)
        return steps

    def dependencies(self) -> dict[str, list[str]]:
        """Each step's key → the keys of the steps it depends on."""
        return _resolve_dependencies(self.steps)


def _resolve_dependencies(steps: Sequence[WorkflowStep]) -> dict[str, list[str]]:
    ids = {s.key for s in steps}
    by_name: dict[str, list[str]] = {}
    for s in steps:
        by_name.setdefault(s.name, []).append(s.key)
    out: dict[str, list[str]] = {}
    for i, step in enumerate(steps):
        resolved: list[str] = []
        for j, ref in enumerate(step.depends_on):
            where = f"steps[{i}].depends_on[{j}]"
            if ref in ids:
                target = ref
            elif len(by_name.get(ref, ())) == 1:
                target = by_name[ref][0]
            elif ref in by_name:
                raise ValueError(f"{where}: name {ref!r} is shared by several steps; use an id")
            else:
                raise ValueError(f"{where}: {ref!r} is neither the id nor the name of a step")
            if target == step.key:
                raise ValueError(f"{where}: a step cannot depend on itself")
            if target not in resolved:
                resolved.append(target)
        out[step.key] = resolved
    return out


# ------------------------------------------------------------------ the graph


class WorkflowState(TypedDict):
    """The conversation plus this run's routing decision and step results."""

    messages: Annotated[list[AnyMessage], add_messages]
    in_scope: NotRequired[bool]
    routing_reply: NotRequired[str]
    step_results: NotRequired[dict[str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class _Step:
    key: str
    name: str
    prompt: str
    position: int  # 1-based, in run order
    depends_on: tuple[str, ...]
    tools: Mapping[str, BaseTool]
    model: Runnable[LanguageModelInput, AIMessage]
    timeout: float
    retries: int


class _StepNode(Protocol):
    async def __call__(self, state: WorkflowState, config: RunnableConfig) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Attempt:
    ok: bool
    result: str  # the reply without its control line
    reply: str  # the last reply as the model wrote it ("" when there was none)
    reason: str  # why it failed


class _Workflow:
    """The nodes of one agent's workflow graph."""

    def __init__(self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]) -> None:
        config = agent.config
        assert isinstance(config, WorkflowConfig)
        self.config = config
        self.model = model
        self.system_prompt = agent.system_prompt
        offered = {t.name: t for t in tools}
        index = {s.key: i for i, s in enumerate(config.steps)}
        deps = config.dependencies()
        self.order = topological_order([s.key for s in config.steps], deps)
        self.steps: list[_Step] = []
        for position, key in enumerate(self.order, start=1):
            i = index[key]
            step = config.steps[i]
            chosen: dict[str, BaseTool] = {}
            for j, name in enumerate(step.tools):
                if name not in offered:
                    known = ", ".join(sorted(offered)) or "none"
                    raise ValueError(
                        f"template_config.steps[{i}].tools[{j}]: the agent has no tool "
                        f"{name!r} (its tools: {known})"
                    )
                chosen[name] = offered[name]
            self.steps.append(
                _Step(
                    key=key,
                    name=step.name,
                    prompt=step.prompt,
                    position=position,
                    depends_on=tuple(deps[key]),
                    tools=chosen,
                    model=model.bind_tools(list(chosen.values())) if chosen else model,
                    timeout=float(step.timeout or config.step_timeout),
                    retries=config.max_retries if step.retry_count is None else step.retry_count,
                )
            )

    def graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        builder = StateGraph(WorkflowState)
        builder.add_node("route", self.route)
        builder.add_node("finish", self.finish)
        names = [f"step_{s.position}" for s in self.steps]
        for name, step in zip(names, self.steps, strict=True):
            builder.add_node(name, self._node(step))
        builder.add_edge(START, "route")

        async def after_route(state: WorkflowState) -> str:  # async: a sync one runs in a thread
            return names[0] if state.get("in_scope", True) else "finish"

        builder.add_conditional_edges("route", after_route, [names[0], "finish"])
        for here, there in zip(names, [*names[1:], "finish"], strict=True):
            builder.add_edge(here, there)
        builder.add_edge("finish", END)
        return builder.compile()

    # --------------------------------------------------------------- routing

    async def route(self, state: WorkflowState, config: RunnableConfig) -> dict[str, Any]:
        """Reset this run's state; decide whether the request is in scope."""
        fresh: dict[str, Any] = {"in_scope": True, "routing_reply": "", "step_results": {}}
        responsibility = self.config.workflow_responsibility.strip()
        if not responsibility:
            return fresh
        instruction = ROUTING_INSTRUCTION.format(responsibility=responsibility)
        messages: list[BaseMessage] = [
            SystemMessage(_join(self.system_prompt, instruction)),
            *window(state["messages"], self.config.history_size),
        ]
        progress(ROUTING_ID, ROUTING_NAME, "started", 1)
        attempts = self.config.max_retries + 1
        reason = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                progress(ROUTING_ID, ROUTING_NAME, "retrying", attempt)
            try:
                async with asyncio.timeout(self.config.step_timeout):
                    reply = await self.model.ainvoke(messages, internal(config))
            except TimeoutError:
                reason = f"timed out after {self.config.step_timeout} s"
                continue
            except Exception as e:  # no tools here, so no run budget to respect
                log.warning("workflow routing call failed", exc_info=True)
                reason = describe_error(e)
                continue
            control, text = split_control(text_of(reply))
            progress(ROUTING_ID, ROUTING_NAME, "succeeded", attempt)
            if control is Control.FAIL:
                for step in self.steps:
                    progress(step.key, step.name, "skipped", 0)
                return {**fresh, "in_scope": False, "routing_reply": text}
            return {**fresh, "routing_reply": text}
        progress(ROUTING_ID, ROUTING_NAME, "failed", attempts)
        raise TemplateFailed(f"the routing step failed after {attempts} attempt(s): {reason}")

    # ----------------------------------------------------------------- steps

    def _node(self, step: _Step) -> _StepNode:
        async def node(state: WorkflowState, config: RunnableConfig) -> dict[str, Any]:
            results = dict(state.get("step_results") or {})
            results[step.key] = await self.run_step(step, state["messages"], results, config)
            return {"step_results": results}

        return node

    async def run_step(
        self,
        step: _Step,
        conversation: Sequence[AnyMessage],
        results: Mapping[str, Mapping[str, Any]],
        config: RunnableConfig,
    ) -> dict[str, Any]:
        """Run one step with its retries; its result record."""
        blocked = [d for d in step.depends_on if results.get(d, {}).get("status") != SUCCEEDED]
        if blocked:
            progress(step.key, step.name, SKIPPED, 0)
            names = ", ".join(str(results.get(d, {}).get("name", d)) for d in blocked)
            return _record(step, SKIPPED, "", f"depends on {names}, which did not succeed", 0)
        base = self._messages(step, conversation, results)
        earlier: list[BaseMessage] = []  # what failed attempts said, for the next one
        attempts = step.retries + 1
        progress(step.key, step.name, "started", 1)
        outcome = _Attempt(False, "", "", "")
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                progress(step.key, step.name, "retrying", attempt)
            try:
                async with asyncio.timeout(step.timeout):
                    outcome = await self._attempt(step, [*base, *earlier], attempt, config)
            except TimeoutError:
                outcome = _Attempt(False, "", "", f"timed out after {step.timeout:g} s")
            except LimitExceeded:
                raise
            except Exception as e:  # a provider error fails the attempt; a retry may get through
                log.warning("workflow step call failed", exc_info=True)
                outcome = _Attempt(False, "", "", describe_error(e))
            if outcome.ok:
                progress(step.key, step.name, SUCCEEDED, attempt)
                return _record(step, SUCCEEDED, outcome.result, "", attempt)
            if outcome.reply:
                earlier.append(AIMessage(outcome.reply))
            earlier.append(
                SystemMessage(RETRY_NUDGE.format(attempt=attempt, reason=outcome.reason))
            )
        progress(step.key, step.name, FAILED, attempts)
        if self.config.fail_on_error:
            raise TemplateFailed(
                f"workflow step {step.name!r} failed after {attempts} attempt(s): {outcome.reason}"
            )
        return _record(step, FAILED, "", outcome.reason, attempts)

    def _messages(
        self,
        step: _Step,
        conversation: Sequence[AnyMessage],
        results: Mapping[str, Mapping[str, Any]],
    ) -> list[BaseMessage]:
        header = f"## Current step: {step.name} (step {step.position} of {len(self.steps)})"
        parts = [self.system_prompt, STANDING_INSTRUCTION, f"{header}\n{step.prompt}".strip()]
        if step.depends_on:
            parts.append(
                "## Results of the steps it depends on\n\n"
                + "\n\n".join(
                    f"### {results[d]['name']}\n{results[d]['result'] or '(no text)'}"
                    for d in step.depends_on
                )
            )
        return [SystemMessage(_join(*parts)), *window(conversation, self.config.history_size)]

    async def _attempt(
        self, step: _Step, messages: list[BaseMessage], attempt: int, config: RunnableConfig
    ) -> _Attempt:
        cap = self.config.max_working_iterations
        transcript = list(messages)
        reply, result = "", ""
        for iteration in range(1, cap + 1):
            transcript.extend(
                await tool_loop(
                    step.model, step.tools, transcript, config, label=f"workflow step {step.name!r}"
                )
            )
            reply = text_of(transcript[-1])
            control, result = split_control(reply)
            if control is Control.FAIL:
                return _Attempt(False, result, reply, f"the step replied FAIL: {_brief(result)}")
            if control is not Control.WORKING:
                return _Attempt(True, result, reply, "")
            if iteration < cap:
                progress(step.key, step.name, "working", attempt)
                transcript.append(
                    SystemMessage(CONTINUE_NUDGE.format(iteration=iteration + 1, cap=cap))
                )
        return _Attempt(False, result, reply, f"still WORKING after {cap} replies")

    # ---------------------------------------------------------------- finish

    def finish(self, state: WorkflowState) -> dict[str, Any]:
        """Append the workflow's one answer to the conversation."""
        if not state.get("in_scope", True):
            return {"messages": [AIMessage(state.get("routing_reply") or OUT_OF_SCOPE)]}
        results = state.get("step_results") or {}
        ran = [results[k] for k in self.order if k in results]
        done = [r for r in ran if r["status"] == SUCCEEDED]
        answer = str(done[-1]["result"]) if done else NOTHING_SUCCEEDED
        missed = [r for r in ran if r["status"] != SUCCEEDED]
        if missed:
            notes = "; ".join(f"{r['name']} {r['status']} ({r['reason']})" for r in missed)
            answer = _join(answer, f"Steps that did not complete: {notes}.")
        return {"messages": [AIMessage(answer)]}


def _record(step: _Step, status: str, result: str, reason: str, attempts: int) -> dict[str, Any]:
    return {
        "name": step.name,
        "status": status,
        "result": result,
        "reason": reason,
        "attempts": attempts,
    }


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _brief(text: str) -> str:
    line = text.strip().splitlines()[-1] if text.strip() else "no reason given"
    return line[:200]


class Workflow(AgentTemplate):
    """The configured-steps workflow (the old runtime's `langgraph-workflow`)."""

    id = "langgraph-workflow"
    name = "LangGraph workflow"
    description = (
        "Runs configured steps in dependency order; each step's reply ends with SUCCESS, "
        "WORKING or FAIL. Retries, timeouts and fail_on_error are enforced; an optional "
        "routing step declines requests outside workflow_responsibility."
    )
    version = "2.0.0"
    Config = WorkflowConfig

    def build(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The workflow graph: routing, one node per step in run order, the answer.

        Raises:
            ValueError: a step names a tool the agent does not have.
        """
        return _Workflow(agent, model, tools).graph()
