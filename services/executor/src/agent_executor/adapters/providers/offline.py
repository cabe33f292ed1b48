"""Adapter: a deterministic chat model that needs no network (the default provider).

Without a script it answers from the conversation: a user message
`/<tool> {json arguments}` calls that tool when it is bound, a tool result is
reported back, anything else is echoed. With a script (services config:
`llm.providers.<id>.metadata.script`, a list of `{content?, tool_calls?[{name,
args}]}`) the n-th reply after the latest user message is the script's n-th
step. In a step's content `{input}` (the latest user message), `{tool_result}`
(the latest tool result), `{first_input}` (the conversation's first user
message) and `{message_count}` (how many messages the model got) are filled in. Sampling
parameters act as a real model's would where they are observable: `max_tokens`
cuts the reply (finish reason `length`), `stop` ends it at a stop sequence.
Tokens are whitespace-led words; usage counts them.

Client tools — tools bound as OpenAI function dicts, which is how the runtime
binds a request's client tools (the agent's own tools are bound as LangChain
tools) — make function calling testable end to end, after the script:

- After tool results (the last message is a tool message) it answers in text
  naming each of those results: `<name> returned: <content>`, one per line.
- With `tool_choice` `required` it calls the first client tool; with a tool
  name it calls that tool. With `auto` (no tool choice) it calls the first
  client tool whose name the latest user message contains. The arguments are
  the minimal instance of the tool's parameters schema
  (`domain.client_tools.minimal_instance`): strings are the latest user
  message, numbers 1, booleans true, arrays empty, objects their required
  properties (all of them when none is required).
- A `response_format` shapes its own text answers (not scripted ones, so a
  script can answer off-format): `json_object` gives `{"answer": <text>}`,
  `json_schema` the minimal instance of the schema with strings as the text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field

from agent_executor.domain.client_tools import minimal_instance

TOKEN = re.compile(r"\s*\S+|\s+$")
MESSAGE_OVERHEAD = 4


def tokens(text: str) -> list[str]:
    """The offline model's tokens: each word with the whitespace before it."""
    return TOKEN.findall(text)


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


class ScriptedCall(BaseModel):
    """A tool call in a script step."""

    model_config = ConfigDict(extra="forbid")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class ScriptStep(BaseModel):
    """One scripted reply."""

    model_config = ConfigDict(extra="forbid")

    content: str = ""
    tool_calls: list[ScriptedCall] = Field(default_factory=list)


class OfflineChatModel(BaseChatModel):
    """The deterministic offline model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = "offline-echo"
    script: list[ScriptStep] = Field(default_factory=list)
    latency_ms: float = 0.0  # before a reply
    token_latency_ms: float = 0.0  # between streamed tokens

    @property
    def _llm_type(self) -> str:
        return "agentrt-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: their names, and the parameters of the client tools (the dicts)."""
        functions = [convert_to_openai_tool(t)["function"] for t in tools]
        client = [
            {"name": f["name"], "parameters": f.get("parameters") or {}}
            for t, f in zip(tools, functions, strict=True)
            if isinstance(t, Mapping)
        ]
        return self.bind(
            tools=[f["name"] for f in functions],
            client_tools=client,
            tool_choice=_chosen(tool_choice),
            **kwargs,
        )

    # ------------------------------------------------------------- replies

    def _reply(
        self,
        messages: list[BaseMessage],
        tools: Sequence[str],
        client_tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        last_human = max(
            (i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1
        )
        turn = sum(1 for m in messages[last_human + 1 :] if isinstance(m, AIMessage))
        calls_so_far = sum(1 for m in messages if isinstance(m, AIMessage))
        user = _text(messages[last_human]) if last_human >= 0 else ""
        tool_msgs = [m for m in messages[last_human + 1 :] if isinstance(m, ToolMessage)]
        tool_result = _text(tool_msgs[-1]) if tool_msgs else ""
        if turn < len(self.script):
            step = self.script[turn]
            first = next((_text(m) for m in messages if isinstance(m, HumanMessage)), "")
            content = (
                step.content.replace("{input}", user)
                .replace("{tool_result}", tool_result)
                .replace("{first_input}", first)
                .replace("{message_count}", str(len(messages)))
            )
            # Like a real model, it calls tools only when some are bound (a name it
            # was not given may still come out: models do that).
            calls = [
                {"name": c.name, "args": dict(c.args), "id": f"call_{calls_so_far}_{i}"}
                for i, c in enumerate(step.tool_calls)
                if tools
            ]
            return content, calls
        trailing: list[ToolMessage] = []
        for m in reversed(messages):
            if not isinstance(m, ToolMessage):
                break
            trailing.insert(0, m)
        if trailing:
            lines = [f"{m.name or 'the tool'} returned: {_text(m)[:2000]}" for m in trailing]
            return _formatted("\n".join(lines), response_format), []
        if tool_msgs:
            name = tool_msgs[-1].name or "the tool"
            return _formatted(f"{name} returned: {tool_result[:2000]}", response_format), []
        call = _client_call(client_tools, tool_choice, user)
        if call is not None:
            name, parameters = call
            args = minimal_instance(parameters, user)
            if not isinstance(args, dict):
                args = {}
            return "", [{"name": name, "args": args, "id": f"call_{calls_so_far}_0"}]
        if turn == 0 and user.startswith("/"):
            name, _, rest = user[1:].partition(" ")
            if name in tools:
                try:
                    args = json.loads(rest) if rest.strip() else {}
                except json.JSONDecodeError:
                    args = {"input": rest}
                if not isinstance(args, dict):
                    args = {"input": args}
                return "", [{"name": name, "args": args, "id": f"call_{calls_so_far}_0"}]
        return _formatted(f"You said: {user}" if user else "Hello.", response_format), []

    def _shape(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        tools: Sequence[str] | None,
        max_tokens: int | None,
        client: Mapping[str, Any],
    ) -> tuple[list[str], list[dict[str, Any]], str, UsageMetadata]:
        content, calls = self._reply(messages, tools or (), **client)
        finish = "tool_calls" if calls else "stop"
        for sequence in stop or ():
            if sequence and sequence in content:
                content = content[: content.index(sequence)]
        pieces = tokens(content)
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, finish = pieces[:max_tokens], "length"
        prompt = sum(len(tokens(_text(m))) + MESSAGE_OVERHEAD for m in messages)
        completion = len(pieces) + sum(len(json.dumps(c["args"])) // 4 + 1 for c in calls)
        usage = UsageMetadata(
            input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
        )
        return pieces, calls, finish, usage

    def _metadata(self, finish: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        sampling = {k: v for k, v in kwargs.items() if v is not None}
        return {"model_name": self.model_name, "finish_reason": finish, "sampling": sampling}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[str] | None = None,
        max_tokens: int | None = None,
        *,
        client_tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
        response_format: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        client = {
            "client_tools": client_tools,
            "tool_choice": tool_choice,
            "response_format": response_format,
        }
        pieces, calls, finish, usage = self._shape(messages, stop, tools, max_tokens, client)
        message = AIMessage(
            content="".join(pieces),
            tool_calls=calls,
            usage_metadata=usage,
            response_metadata=self._metadata(finish, {"max_tokens": max_tokens, **kwargs}),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        tools: Sequence[str] | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        return self._generate(messages, stop, None, tools, max_tokens, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        tools: Sequence[str] | None = None,
        max_tokens: int | None = None,
        *,
        client_tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
        response_format: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        client = {
            "client_tools": client_tools,
            "tool_choice": tool_choice,
            "response_format": response_format,
        }
        pieces, calls, finish, usage = self._shape(messages, stop, tools, max_tokens, client)
        for piece in pieces:
            if self.token_latency_ms:
                await asyncio.sleep(self.token_latency_ms / 1000)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=[
                    {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                    for i, c in enumerate(calls)
                ],
                usage_metadata=usage,
                response_metadata=self._metadata(finish, {"max_tokens": max_tokens, **kwargs}),
                chunk_position="last",
            )
        )


def _chosen(tool_choice: Any) -> str | None:
    """The tool choice as this model reads it: "required", a tool name, or None (auto)."""
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        return str(function.get("name")) if isinstance(function, Mapping) else None
    if tool_choice in ("required", "any"):
        return "required"
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "none"):
        return tool_choice
    return None


def _client_call(
    client_tools: Sequence[Mapping[str, Any]], tool_choice: str | None, user: str
) -> tuple[str, Mapping[str, Any]] | None:
    """The client tool to call (name, parameters schema), if the rules say one."""
    if not client_tools:
        return None
    if tool_choice == "required":
        wanted: list[Mapping[str, Any]] = list(client_tools[:1])
    elif tool_choice is not None:
        wanted = [t for t in client_tools if t["name"] == tool_choice]
    else:
        wanted = [t for t in client_tools if t["name"] in user]
    return (str(wanted[0]["name"]), wanted[0]["parameters"]) if wanted else None


def _formatted(text: str, response_format: Mapping[str, Any] | None) -> str:
    """`text` in the requested response format."""
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        return json.dumps({"answer": text}, ensure_ascii=False)
    if kind == "json_schema":
        schema = (response_format or {}).get("json_schema", {}).get("schema") or {}
        return json.dumps(minimal_instance(schema, text), ensure_ascii=False)
    return text
