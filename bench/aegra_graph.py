"""The benchmark agent as a self-contained LangGraph graph, for the peer server (Aegra).

The same agent as `executor_bench.plain_graph`: a fake chat model that calls `parse_url`
once and then answers with the tool's result, a ToolNode, an async router. It imports
only LangChain and LangGraph, so it loads in the peer's own virtualenv; the durable
benchmark copies it there (`graph` is what the peer's config names). The tool renders
a URL's parts as the tools service's `parse_url` does.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

URL = "https://docs.example.org/guide/start?page=2&lang=en"


@tool
async def parse_url(url: str) -> str:
    """Split a URL into scheme, host, port, path, query parameters and fragment."""
    parts = urlsplit(url)
    data = {
        "scheme": parts.scheme,
        "host": parts.hostname or "",
        "port": parts.port,
        "path": parts.path,
        "query": parse_qs(parts.query, keep_blank_values=True),
        "fragment": parts.fragment,
        "has_credentials": parts.username is not None,
    }
    return "\n".join(f"{k}: {v}" for k, v in data.items())


class ScriptedModel(BaseChatModel):
    """Calls `parse_url` on URL when the last message is not a tool result, else answers."""

    @property
    def _llm_type(self) -> str:
        return "bench-scripted"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any
    ) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"The URL points at {last.content}")
        else:
            call = {"name": "parse_url", "args": {"url": URL}, "id": f"call_{uuid.uuid4().hex}"}
            reply = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=reply)])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any
    ) -> ChatResult:
        return self._generate(messages)

    def bind_tools(self, tools: Any, **_: Any) -> Any:  # the script knows its one tool
        return self


def build() -> Any:
    """The compiled graph (no checkpointer: the server adds its own)."""
    model = ScriptedModel().bind_tools([parse_url])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    async def route(state: MessagesState) -> str:
        return "tools" if state["messages"][-1].tool_calls else END  # type: ignore[union-attr]

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([parse_url]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", END])
    builder.add_edge("tools", "agent")
    return builder.compile()


graph = build()
