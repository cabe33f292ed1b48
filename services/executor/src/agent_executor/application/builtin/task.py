"""Built-in template `task` (TaskAgent): a task worked through in steps, then one answer.

Application layer: this module owns the `task` template — its configuration
(camelCase keys), how its steps are scheduled (in order, or concurrently as
their dependencies finish), how step timeouts, retries and `strictMode` are
enforced, and how the final answer is synthesised and checked against
`outputFormat`.

How a run goes:

- The user's task is the latest human message. Each step is a model turn
  given the agent's system prompt, the step's instruction and the results it
  builds on — all earlier steps when they run in order, its `depends_on` steps
  when `parallelExecution` is on — in one system message, then the task as the
  human message. A step may call the agent's tools (the turn goes on until the
  model answers without a tool call); its answer is the step's result.
- An attempt that raises or outlasts `stepTimeout` is retried `retryCount`
  times. A step that still fails ends the run (`strictMode`) or is recorded as
  failed; the steps depending on it are skipped and the others go on.
- A synthesis call (step id `synthesis`) writes the answer from the step
  results. It is streamed to the client only when its text is the answer as
  is (`outputFormat` text and no failed step); otherwise the runtime checks or
  reshapes it first and the client gets the finished answer in one piece.
- `outputFormat`: `text` — the synthesis text, with a note naming failed steps;
  `json` — the answer must parse as JSON (a ```json fence is stripped); an
  invalid answer gets one correction call, then fails the run (`OutputInvalid`)
  in strict mode or is returned with a warning line; failed steps are told to
  the model, as a note would break the JSON; `structured` — the runtime returns
  `{"task", "steps": [{"id", "status", "result"}], "answer"}`, where a failed or
  skipped step's `result` says why.

Runtime corrections are system messages, so the task stays the latest human
message of every call: with the offline model every step call and the first
synthesis call are script step 0, a JSON correction is script step 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal, NotRequired, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from agent_executor.application.builtin.workflow import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    describe_error,
    gather_all,
    internal,
    tool_loop,
    topological_order,
)
from agent_executor.application.context import progress
from agent_executor.application.messages import text_of
from agent_executor.application.templates import AgentTemplate, AgentView, acyclic, ceiling
from agent_executor.errors import LimitExceeded, OutputInvalid, TemplateFailed

log = logging.getLogger(__name__)

MAX_STEPS = 20
SYNTHESIS_ID = "synthesis"
SYNTHESIS_NAME = "Synthesis"
FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL)

STEP_INSTRUCTION = (
    "You are working through the user's task one step at a time. Do only the current "
    "step; your reply is its result."
)
SYNTHESIS_INSTRUCTION = (
    "You have worked through the user's task in steps; their results are below. Write "
    "the final answer to the task from them."
)
JSON_INSTRUCTION = "Reply with only a JSON document: no prose around it, no code fence."
JSON_CORRECTION = "Your reply is not valid JSON ({error}). Reply again with only the JSON document."

StepText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class TaskStep(BaseModel):
    """A step given as an object."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, min_length=1, max_length=128, description="Unique step id (default: step_<n>)."
    )
    name: str | None = Field(
        None, min_length=1, max_length=200, description="The step's name (default: its id)."
    )
    instruction: StepText = Field(description="What the step must do.")
    depends_on: list[str] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="Ids of the steps whose results this step needs.",
    )


class TaskConfig(BaseModel):
    """Configuration of `task` (camelCase keys, as TaskAgent clients send them)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[StepText | TaskStep] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The steps: instructions, or {id?, name?, instruction, depends_on?}.",
        # The registry's view of `_check_dependencies` and `_plan`.
        json_schema_extra=acyclic(key=["id"], default_key="step_{n}", reserved=[SYNTHESIS_ID]),
    )
    step_timeout: int = Field(
        120,
        alias="stepTimeout",
        ge=10,
        le=3600,
        description="Seconds a step attempt may take.",
        json_schema_extra=ceiling("run_timeout_seconds"),
    )
    retry_count: int = Field(
        1, alias="retryCount", ge=0, le=5, description="Retries of a failed step."
    )
    parallel_execution: bool = Field(
        False,
        alias="parallelExecution",
        description="Run steps concurrently as soon as their dependencies are done.",
    )
    strict_mode: bool = Field(
        True,
        alias="strictMode",
        description="Fail the run when a step fails or the answer has the wrong format.",
    )
    output_format: Literal["text", "json", "structured"] = Field(
        "text", alias="outputFormat", description="How the final answer is shaped."
    )

    @field_validator("steps")
    @classmethod
    def _check_dependencies(cls, steps: list[str | TaskStep]) -> list[str | TaskStep]:
        plans = _plan(steps)
        ids = [p.id for p in plans]
        for i, plan in enumerate(plans):
            if plan.id == SYNTHESIS_ID:
                raise ValueError(f"steps[{i}]: id {SYNTHESIS_ID!r} is reserved for the answer")
            if plan.id in ids[:i]:
                raise ValueError(f"steps[{i}]: id {plan.id!r} is used by an earlier step")
            for j, dep in enumerate(plan.depends_on):
                where = f"steps[{i}].depends_on[{j}]"
                if dep == plan.id:
                    raise ValueError(f"{where}: a step cannot depend on itself")
                if dep not in ids:
                    raise ValueError(f"{where}: {dep!r} is not the id of a step")
        topological_order(ids, {p.id: p.depends_on for p in plans})
        return steps

    def plan(self) -> list[StepPlan]:
        """The steps with their ids, names and dependencies filled in, as configured."""
        return _plan(self.steps)


@dataclass(frozen=True, slots=True)
class StepPlan:
    """A step as the template runs it."""

    id: str
    name: str
    instruction: str
    depends_on: tuple[str, ...]


def _plan(steps: Sequence[str | TaskStep]) -> list[StepPlan]:
    out = []
    for n, step in enumerate(steps, start=1):
        if isinstance(step, str):
            out.append(StepPlan(f"step_{n}", f"Step {n}", step, ()))
        else:
            key = step.id or f"step_{n}"
            out.append(
                StepPlan(
                    key, step.name or key, step.instruction, tuple(dict.fromkeys(step.depends_on))
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What became of a step: status, its result (or why it has none), attempts made."""

    id: str
    name: str
    status: str  # succeeded | failed | skipped
    result: str = ""
    reason: str = ""
    attempts: int = 0


class TaskState(TypedDict):
    """The conversation plus this run's task and step outcomes."""

    messages: Annotated[list[AnyMessage], add_messages]
    task: NotRequired[str]
    step_results: NotRequired[list[dict[str, Any]]]


class _Task:
    """The nodes of one agent's task graph."""

    def __init__(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool], second: float
    ) -> None:
        config = agent.config
        assert isinstance(config, TaskConfig)
        self.config = config
        self.model = model
        self.tools = {t.name: t for t in tools}
        self.step_model = model.bind_tools(list(tools)) if tools else model
        self.system_prompt = agent.system_prompt
        plans = config.plan()
        by_id = {p.id: p for p in plans}
        order = topological_order([p.id for p in plans], {p.id: p.depends_on for p in plans})
        self.plans = [by_id[k] for k in order]
        self.timeout = config.step_timeout * second

    def graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        builder = StateGraph(TaskState)
        builder.add_node("steps", self.steps)
        builder.add_node("synthesis", self.synthesis)
        builder.add_edge(START, "steps")
        builder.add_edge("steps", "synthesis")
        builder.add_edge("synthesis", END)
        return builder.compile()

    # ----------------------------------------------------------------- steps

    async def steps(self, state: TaskState, config: RunnableConfig) -> dict[str, Any]:
        """Run every step; record the task and the outcomes."""
        task = next(
            (text_of(m) for m in reversed(state["messages"]) if isinstance(m, HumanMessage)), ""
        )
        if not task.strip():
            raise TemplateFailed("the task agent needs a user message stating the task")
        outcomes: dict[str, StepOutcome] = {}
        if self.config.parallel_execution:
            await self._in_waves(task, outcomes, config)
        else:
            for plan in self.plans:
                if not self._skipped(plan, outcomes):
                    context = list(outcomes.values())
                    outcomes[plan.id] = await self._run(plan, task, context, config)
        ordered = [asdict(outcomes[p.id]) for p in self.config.plan()]
        return {"task": task, "step_results": ordered}

    async def _in_waves(
        self, task: str, outcomes: dict[str, StepOutcome], config: RunnableConfig
    ) -> None:
        pending = list(self.plans)
        while pending:
            ready = [p for p in pending if all(d in outcomes for d in p.depends_on)]
            runnable = [p for p in ready if not self._skipped(p, outcomes)]
            done = await gather_all(
                self._run(p, task, [outcomes[d] for d in p.depends_on], config) for p in runnable
            )
            outcomes.update((o.id, o) for o in done)
            pending = [p for p in pending if p.id not in outcomes]

    def _skipped(self, plan: StepPlan, outcomes: dict[str, StepOutcome]) -> bool:
        """Record `plan` as skipped when a step it depends on did not succeed."""
        blocked = [outcomes[d].name for d in plan.depends_on if outcomes[d].status != SUCCEEDED]
        if not blocked:
            return False
        progress(plan.id, plan.name, SKIPPED, 0)
        outcomes[plan.id] = StepOutcome(
            plan.id, plan.name, SKIPPED, reason=f"depends on {', '.join(blocked)}, which failed"
        )
        return True

    async def _run(
        self, plan: StepPlan, task: str, context: Sequence[StepOutcome], config: RunnableConfig
    ) -> StepOutcome:
        parts = [
            self.system_prompt,
            STEP_INSTRUCTION,
            f"## Current step: {plan.name}\n{plan.instruction}",
        ]
        if context:
            parts.append("## Results so far\n\n" + "\n\n".join(_describe(o) for o in context))
        messages: list[BaseMessage] = [SystemMessage(_join(*parts)), HumanMessage(task)]
        attempts = self.config.retry_count + 1
        reason = ""
        progress(plan.id, plan.name, "started", 1)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                progress(plan.id, plan.name, "retrying", attempt)
            try:
                async with asyncio.timeout(self.timeout):
                    turn = await tool_loop(
                        self.step_model,
                        self.tools,
                        messages,
                        config,
                        label=f"task step {plan.name!r}",
                    )
                reply = turn[-1]
            except TimeoutError:
                reason = f"timed out after {self.config.step_timeout} s"
                continue
            except LimitExceeded:
                raise  # a run budget is not the step's fault: no retry
            except Exception as e:  # a provider error fails the attempt; a retry may get through
                log.warning("task step call failed", exc_info=True)
                reason = describe_error(e)
                continue
            progress(plan.id, plan.name, SUCCEEDED, attempt)
            return StepOutcome(plan.id, plan.name, SUCCEEDED, text_of(reply).strip(), "", attempt)
        progress(plan.id, plan.name, FAILED, attempts)
        if self.config.strict_mode:
            raise TemplateFailed(
                f"task step {plan.name!r} failed after {attempts} attempt(s): {reason}"
            )
        return StepOutcome(plan.id, plan.name, FAILED, "", reason, attempts)

    # ------------------------------------------------------------- synthesis

    async def synthesis(self, state: TaskState, config: RunnableConfig) -> dict[str, Any]:
        """Write the answer from the step results and shape it as `outputFormat` asks."""
        task = state.get("task", "")
        outcomes = [StepOutcome(**r) for r in state.get("step_results") or []]
        missed = [o for o in outcomes if o.status != SUCCEEDED]
        fmt = self.config.output_format
        streamed = fmt == "text" and not missed
        parts = [self.system_prompt, SYNTHESIS_INSTRUCTION]
        if fmt == "json":
            parts.append(JSON_INSTRUCTION)
        parts.append("## Step results\n\n" + "\n\n".join(_describe(o) for o in outcomes))
        messages: list[BaseMessage] = [SystemMessage(_join(*parts)), HumanMessage(task)]
        call_config = config if streamed else internal(config)
        progress(SYNTHESIS_ID, SYNTHESIS_NAME, "started", 1)
        reply, attempt = await self._synthesize(messages, call_config, 1)
        answer = text_of(reply)
        if fmt == "json":
            answer, attempt = await self._as_json(messages, answer, attempt, call_config)
        elif fmt == "structured":
            answer = json.dumps(
                {
                    "task": task,
                    "steps": [
                        {"id": o.id, "status": o.status, "result": o.result or o.reason}
                        for o in outcomes
                    ],
                    "answer": answer,
                },
                ensure_ascii=False,
            )
        elif missed:
            notes = "; ".join(f"{o.name} {o.status} ({o.reason})" for o in missed)
            answer = _join(answer, f"Note: not every step completed: {notes}.")
        progress(SYNTHESIS_ID, SYNTHESIS_NAME, SUCCEEDED, attempt)
        # The streamed reply keeps its id, so the client's deltas and the final message match.
        return {"messages": [reply if streamed else AIMessage(answer)]}

    async def _synthesize(
        self, messages: list[BaseMessage], config: RunnableConfig, first: int
    ) -> tuple[AIMessage, int]:
        """The synthesis reply with retries (attempts numbered from `first`) and its attempt."""
        last = first + self.config.retry_count
        reason = ""
        for attempt in range(first, last + 1):
            if attempt > 1:
                progress(SYNTHESIS_ID, SYNTHESIS_NAME, "retrying", attempt)
            try:
                async with asyncio.timeout(self.timeout):
                    return await self.model.ainvoke(messages, config), attempt
            except TimeoutError:
                reason = f"timed out after {self.config.step_timeout} s"
            except Exception as e:
                log.warning("task synthesis call failed", exc_info=True)
                reason = describe_error(e)
        progress(SYNTHESIS_ID, SYNTHESIS_NAME, FAILED, last)
        raise TemplateFailed(f"the synthesis failed after {last} attempt(s): {reason}")

    async def _as_json(
        self, messages: list[BaseMessage], answer: str, attempt: int, config: RunnableConfig
    ) -> tuple[str, int]:
        """The answer as JSON text, after one correction call if it is not JSON."""
        document, error = parse_json(answer)
        if document is not None:
            return document, attempt
        correction = [
            *messages,
            AIMessage(answer),
            SystemMessage(JSON_CORRECTION.format(error=error)),
        ]
        reply, attempt = await self._synthesize(correction, config, attempt + 1)
        answer = text_of(reply)
        document, error = parse_json(answer)
        if document is not None:
            return document, attempt
        if self.config.strict_mode:
            progress(SYNTHESIS_ID, SYNTHESIS_NAME, FAILED, attempt)
            raise OutputInvalid(f"the answer is not valid JSON after a correction: {error}")
        return f"Warning: the answer below is not valid JSON ({error}).\n\n{answer}", attempt


def parse_json(text: str) -> tuple[str | None, str]:
    """The JSON text of `text` (a code fence around it stripped), or None and why not."""
    body = text.strip()
    fenced = FENCE.fullmatch(body)
    if fenced is not None:
        body = fenced.group(1).strip()
    try:
        json.loads(body)
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at line {e.lineno} column {e.colno}"
    return body, ""


def _describe(outcome: StepOutcome) -> str:
    if outcome.status == SUCCEEDED:
        return f"### {outcome.name}\n{outcome.result or '(no text)'}"
    return f"### {outcome.name} ({outcome.status})\n{outcome.reason}"


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


class Task(AgentTemplate):
    """The TaskAgent: steps (in order or concurrently), then a synthesised answer."""

    id = "task"
    name = "Task agent"
    description = (
        "Works through configured steps (in order or in parallel, with timeouts and "
        "retries), then writes one answer as text, JSON or a structured report."
    )
    version = "1.0.0"
    Config = TaskConfig

    # How long one configured second lasts. Tests shorten it to exercise the step
    # timeout without waiting the 10 s minimum the configuration allows.
    second: ClassVar[float] = 1.0

    def build(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The task graph: the steps, then the synthesis."""
        return _Task(agent, model, tools, self.second).graph()
