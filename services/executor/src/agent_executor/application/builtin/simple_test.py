"""Built-in template `simple-test` (compatible): a ReAct agent that prefixes its replies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field

from agent_executor.application.builtin.react import react_graph
from agent_executor.application.templates import AgentTemplate, AgentView


class SimpleTestConfig(BaseModel):
    """Configuration of `simple-test`."""

    model_config = ConfigDict(extra="forbid")

    response_prefix: str = Field("", max_length=50, description="Put before every reply.")
    system_prompt: str = Field(
        "", max_length=20_000, description="Used when the agent has no system prompt."
    )


class SimpleTest(AgentTemplate):
    """A ReAct agent with the agent's tools whose replies start with `response_prefix`."""

    id = "simple-test"
    name = "Simple test"
    description = "A ReAct agent with the agent's tools; every reply starts with response_prefix."
    version = "1.0.0"
    Config = SimpleTestConfig
    client_tools = True

    def build(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The ReAct graph."""
        config = agent.config
        assert isinstance(config, SimpleTestConfig)
        return react_graph(
            model,
            tools,
            system_prompt=agent.system_prompt or config.system_prompt,
            history=agent.history_length,
            reply_prefix=config.response_prefix,
        )
