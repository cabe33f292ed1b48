"""Built-in template `conversation`: a ReAct chat agent with tools, prompt and history window.

History: `conversation_config.historyLength` bounds how many earlier messages a
model call sees. Server-side memory (`conversation_config.memory: true`) keeps
the conversation per `task_id` in the executor's checkpointer, so clients send
only the new turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field

from agent_executor.application.builtin.react import react_graph
from agent_executor.application.templates import AgentTemplate, AgentView


class ConversationConfig(BaseModel):
    """Configuration of `conversation`."""

    model_config = ConfigDict(extra="forbid")

    persona: str = Field(
        "", max_length=2_000, description="Who the assistant is; put before the system prompt."
    )
    instructions: str = Field(
        "", max_length=20_000, description="Standing instructions; put after the system prompt."
    )


class Conversation(AgentTemplate):
    """A ReAct chat agent."""

    id = "conversation"
    name = "Conversation"
    description = (
        "A chat agent with tools, a system prompt, a history window "
        "(conversation_config.historyLength) and optional server-side memory "
        "(conversation_config.memory)."
    )
    version = "1.0.0"
    Config = ConversationConfig
    client_tools = True

    def build(
        self, agent: AgentView, model: BaseChatModel, tools: Sequence[BaseTool]
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The ReAct graph."""
        config = agent.config
        assert isinstance(config, ConversationConfig)
        prompt = "\n\n".join(
            p for p in (config.persona, agent.system_prompt, config.instructions) if p
        )
        return react_graph(model, tools, system_prompt=prompt, history=agent.history_length)
