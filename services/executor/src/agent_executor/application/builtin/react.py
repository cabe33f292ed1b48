"""Application: the ReAct loop built-in chat templates share.

The model answers or calls tools; tool results go back to it until it answers.
The system prompt is added on every model call (never stored), so a session
kept in a checkpointer always runs with the agent's current prompt. The history
window keeps the latest messages before the current turn; the current turn is
never cut, so tool calls stay next to their results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

from agent_executor.application.context import current_run


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
    """A compiled ReAct graph over `model` and `tools`."""
    bound = model.bind_tools(list(tools)) if tools else model

    async def agent(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
        messages: list[AnyMessage] = window(state["messages"], history)
        if system_prompt:
            messages = [SystemMessage(system_prompt), *messages]
        ctx = current_run.get()
        if ctx is not None and reply_prefix:
            ctx.reply_prefix = reply_prefix
        reply = await bound.ainvoke(messages, config)
        if reply_prefix and isinstance(reply.content, str) and reply.content:
            reply = reply.model_copy(update={"content": reply_prefix + reply.content})
        return {"messages": [reply]}

    async def route(state: ChatState) -> str:  # async: LangGraph runs a sync one in a thread
        last = state["messages"][-1]
        return "tools" if getattr(last, "tool_calls", None) else END

    builder = StateGraph(ChatState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    if tools:
        builder.add_node("tools", ToolNode(list(tools)))
        builder.add_conditional_edges("agent", route, ["tools", END])
        builder.add_edge("tools", "agent")
    else:
        builder.add_edge("agent", END)
    return builder.compile()
