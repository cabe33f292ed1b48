"""Application: the ReAct loop built-in chat templates share.

The model answers or calls tools; tool results go back to it until it answers.
The system prompt is added on every model call (never stored), so a session
kept in a checkpointer always runs with the agent's current prompt. The history
window keeps the latest messages before the current turn; the current turn is
never cut, so tool calls stay next to their results.

Client tools (the run's `ClientTools`, the graph's runtime context) are offered
next to the agent's own tools, client tools first. When the model's message
calls the agent's tools they run here (unknown names get an error result the
model reads); when it also or only calls client tools the graph ends after that,
and the run ends with `tool_calls`: the client runs them and sends the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from langgraph.runtime import get_runtime

from agent_executor.application.context import ClientTools, current_run


class ChatState(TypedDict):
    """A conversation."""

    messages: Annotated[list[AnyMessage], add_messages]


def window(messages: Sequence[AnyMessage], history: int | None) -> list[AnyMessage]:
    """The messages a model call sees: at most `history` before the current turn, then the turn."""
    messages = list(messages)
    if history is None:
        return messages
    turn = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
    start = max(0, turn - history)
    while start < turn and isinstance(messages[start], ToolMessage):
        start += 1  # never begin with tool results whose call was cut off
    return messages[start:]


def react_graph(
    model: BaseChatModel,
    tools: Sequence[BaseTool],
    *,
    system_prompt: str = "",
    history: int | None = None,
    reply_prefix: str = "",
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A compiled ReAct graph over `model`, `tools` and the run's client tools."""
    own = list(tools)
    bound = model.bind_tools(own) if own else model
    tool_node = ToolNode(own) if own else None

    async def agent(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        messages: list[AnyMessage] = window(state["messages"], history)
        if system_prompt:
            messages = [SystemMessage(system_prompt), *messages]
        ctx = current_run.get()
        if ctx is not None and reply_prefix:
            ctx.reply_prefix = reply_prefix
        client = _client()
        caller = bound
        if client.names:
            caller = model.bind_tools(
                [*client.functions(), *own], tool_choice=client.model_choice()
            )
        reply = await caller.ainvoke(messages, config)
        if reply_prefix and isinstance(reply.content, str) and reply.content:
            reply = reply.model_copy(update={"content": reply_prefix + reply.content})
        return {"messages": [reply]}

    async def run_tools(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        assert tool_node is not None
        names = _client().names
        server = [c for c in last.tool_calls if c["name"] not in names]
        # ToolNode runs every call of the message it is given: give it only the server ones.
        only_server = last.model_copy(update={"tool_calls": server})
        result: dict[str, Any] = await tool_node.ainvoke({"messages": [only_server]}, config)
        return result

    async def after_agent(state: ChatState) -> str:  # async: a sync one would run in a thread
        calls = getattr(state["messages"][-1], "tool_calls", None) or []
        names = _client().names
        # Without tools of its own the agent ends on any call (an unknown name included).
        return "tools" if own and any(c["name"] not in names for c in calls) else END

    async def after_tools(state: ChatState) -> str:
        asked = next(m for m in reversed(state["messages"]) if isinstance(m, AIMessage))
        names = _client().names
        return END if any(c["name"] in names for c in asked.tool_calls) else "agent"

    builder = StateGraph(ChatState, context_schema=ClientTools)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    if own:
        builder.add_node("tools", run_tools)
        builder.add_conditional_edges("agent", after_agent, ["tools", END])
        builder.add_conditional_edges("tools", after_tools, ["agent", END])
    else:
        builder.add_edge("agent", END)
    return builder.compile()


def _client() -> ClientTools:
    """The run's client tools (the graph's runtime context)."""
    # Runs without client tools (a template's unit test, an older caller) pass no context.
    context: ClientTools | None = get_runtime(ClientTools).context
    return context if context is not None else ClientTools()
