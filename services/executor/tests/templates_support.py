"""Test helpers for the built-in multi-step templates: a step-aware offline model and a runner.

`Scripted` sends each call to the `OfflineChatModel` whose key occurs in the
call's system message (a step's prompt or instruction, the routing
responsibility, ...), so each step has its own script with the offline model's
own indexing, and records every call. `run_agent` runs a template end to end
through `RunService` with the in-memory ports and the real `RoutedChatModel`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from agent_executor.adapters.memory import (
    InMemoryAgents,
    InMemoryRunStore,
    InMemoryTools,
    ListEventSink,
    LocalCancelBus,
    ToolFunction,
)
from agent_executor.adapters.providers.offline import OfflineChatModel, ScriptStep
from agent_executor.application.model import Route, RoutedChatModel
from agent_executor.application.ports import ToolSpec
from agent_executor.application.runs import InputMessage, RunRequest, RunService
from agent_executor.application.templates import AgentTemplate, TemplateCatalog
from agent_executor.domain.agents import AgentSnapshot
from agent_executor.domain.runs import (
    MessageCompleted,
    MessageDelta,
    RunEvent,
    RunFailed,
    RunRecord,
    StepProgress,
)
from agent_executor.domain.services_config import ServicesConfig, parse_services_config
from agent_executor.errors import ProviderFailed
from agentrt_kit.concurrency import run_inline
from agentrt_kit.resilience import CircuitBreaker


def offline(*replies: str | dict[str, Any], latency_ms: float = 0.0) -> OfflineChatModel:
    """An offline model whose script is `replies` (text, or a full script step)."""
    steps = [
        ScriptStep(content=r) if isinstance(r, str) else ScriptStep.model_validate(r)
        for r in replies
    ]
    return OfflineChatModel(script=steps, latency_ms=latency_ms)


class Scripted(BaseChatModel):
    """Sends each call to the offline model keyed by text in its system message."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    routes: dict[str, OfflineChatModel] = Field(default_factory=dict)
    default: OfflineChatModel = Field(default_factory=OfflineChatModel)
    # key -> how many of its first calls raise (a provider outage)
    failures: dict[str, int] = Field(default_factory=dict)
    # key -> seconds each of its next calls waits before answering (one entry per call)
    delays: dict[str, list[float]] = Field(default_factory=dict)
    calls: list[tuple[str, list[BaseMessage]]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "test-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self.bind(tools=names)

    async def _pick(self, messages: list[BaseMessage]) -> OfflineChatModel:
        head = messages[0].content if messages and isinstance(messages[0], SystemMessage) else ""
        key = next((k for k in self.routes if k in str(head)), "")
        self.calls.append((key, list(messages)))
        if self.delays.get(key):
            await asyncio.sleep(self.delays[key].pop(0))
        if self.failures.get(key, 0) > 0:
            self.failures[key] -= 1
            # What RoutedChatModel makes of an outage of its only provider.
            raise ProviderFailed(f"provider down (call {len(self.calls)})")
        return self.routes.get(key, self.default)

    def messages_of(self, key: str, call: int = 0) -> list[BaseMessage]:
        """The messages of `key`'s `call`-th call."""
        return [m for k, m in self.calls if k == key][call]

    def count(self, key: str) -> int:
        """How many calls went to `key`'s model."""
        return sum(1 for k, _ in self.calls if k == key)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise NotImplementedError("the templates call models asynchronously")

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await (await self._pick(messages))._agenerate(messages, stop, None, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in (await self._pick(messages))._astream(messages, stop, None, **kwargs):
            yield chunk


class Models:
    """The `ModelFactory` port: every agent gets `model` behind the real `RoutedChatModel`."""

    def __init__(self, model: BaseChatModel) -> None:
        self.model = model

    def for_agent(self, agent: AgentSnapshot) -> RoutedChatModel:
        return RoutedChatModel.over(
            [Route("offline", self.model, CircuitBreaker(5, 30))], transient=lambda e: True
        )


@dataclass
class Outcome:
    """A finished run: its record and events."""

    record: RunRecord
    events: list[RunEvent]
    tools: InMemoryTools

    @property
    def bodies(self) -> list[Any]:
        return [e.body for e in self.events]

    @property
    def answer(self) -> str:
        """The last completed assistant message."""
        done = [b for b in self.bodies if isinstance(b, MessageCompleted)]
        assert done, f"no message completed: {self.bodies}"
        return done[-1].content

    @property
    def completed(self) -> list[str]:
        return [b.content for b in self.bodies if isinstance(b, MessageCompleted)]

    @property
    def deltas(self) -> str:
        return "".join(b.content for b in self.bodies if isinstance(b, MessageDelta))

    @property
    def progress(self) -> list[tuple[str, str, int]]:
        """(step id, state, attempt) of every step_progress event, in order."""
        return [(b.step_id, b.state, b.attempt) for b in self.bodies if isinstance(b, StepProgress)]

    def states(self, step_id: str) -> list[str]:
        return [s for i, s, _ in self.progress if i == step_id]

    @property
    def failure(self) -> RunFailed | None:
        last = self.bodies[-1]
        return last if isinstance(last, RunFailed) else None


@dataclass
class Harness:
    """One RunService over in-memory ports, for one template.

    A template made with the tools gateway (`custom`) is given as an instance over `tools`.
    """

    template: type[AgentTemplate] | AgentTemplate
    model: BaseChatModel
    tool_functions: Mapping[str, ToolFunction] = field(default_factory=dict)
    services: ServicesConfig = field(default_factory=lambda: parse_services_config({}, {}))
    checkpointer: Any = None
    tools: InMemoryTools = field(default_factory=InMemoryTools)

    def __post_init__(self) -> None:
        self.agents = InMemoryAgents()
        for name, function in self.tool_functions.items():
            schema = {"type": "object", "properties": {"q": {"type": "string"}}}
            self.tools.add(ToolSpec.of(name, f"The {name} tool", schema), function)
        self.store = InMemoryRunStore()
        self.sink = ListEventSink()
        self.service = RunService(
            agents=self.agents,
            catalog=TemplateCatalog([self.template]),
            models=Models(self.model),
            tools=self.tools,
            store=self.store,
            events=self.sink,
            cancel_bus=LocalCancelBus(),
            services=self.services,
            call_store=run_inline,
            checkpointer=self.checkpointer,
        )

    def agent(
        self,
        config: Mapping[str, Any],
        *,
        system_prompt: str = "You are a careful assistant.",
        conversation_config: Mapping[str, Any] | None = None,
    ) -> AgentSnapshot:
        agent = AgentSnapshot(
            id="agent-1",
            version=1,
            status="active",
            name="Agent",
            template_id=self.template.id,
            template_config=dict(config),
            system_prompt=system_prompt,
            conversation_config=dict(conversation_config or {}),
            toolsets=("custom",) if self.tool_functions else (),
        )
        self.agents.put(agent)
        return agent

    async def run(
        self,
        config: Mapping[str, Any],
        *messages: str | InputMessage,
        stream: bool = False,
        task_id: str = "",
        **agent: Any,
    ) -> Outcome:
        """Run the agent configured with `config` on `messages` (user text by default)."""
        self.agent(config, **agent)
        inputs = [m if isinstance(m, InputMessage) else InputMessage("user", m) for m in messages]
        handle = await self.service.start(
            RunRequest(
                "agent-1", inputs or [InputMessage("user", "hello")], stream=stream, task_id=task_id
            )
        )
        events = [event async for event in handle]
        record = self.store.get(handle.run_id)
        assert record is not None
        return Outcome(record, events, self.tools)
