"""Application: the run's conversation — the request's messages as the graph's LangChain messages.

This module owns how a request's messages (`InputMessage`) become the messages a
graph starts from, and the tool-call bookkeeping that goes with it: which calls
of an assistant message the tool messages after it answer (`check_tool_messages`,
before a run is admitted), which calls a session left pending and which it has
answered (`graph_messages`, so every call is answered exactly once and none is
left without a result), and which calls of a final message are the client's own
(`client_calls`). The checks of a single call's fields are domain rules
(`domain.client_tools.check_tool_call`). Everything here is a pure function.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from agent_executor.application.context import ClientTools
from agent_executor.domain.client_tools import ToolCall, check_tool_call
from agentrt_kit.errors import FieldViolation

NO_RESULT = "Error: the client sent no result for this call."


@dataclass(frozen=True, slots=True)
class InputMessage:
    """A message of the request's conversation."""

    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message's calls of client tools


def check_tool_messages(messages: Sequence[InputMessage]) -> list[FieldViolation]:
    """What is wrong with the request's tool calls and the tool messages answering them.

    Each assistant tool call must be well-formed with an id no earlier call has,
    and be answered exactly once by the tool messages right after its message;
    only assistant messages carry tool calls. A tool message right after an
    assistant message with tool calls must name one of them in `tool_call_id`.
    Other tool messages are not checked here: they may answer a session's pending
    call, or be the old runtime's text form (see `graph_messages`).

    Args:
        messages: The request's messages, in order.

    Returns:
        The violations, each naming its field (`input.messages[i]...`); empty when
        the messages are fine.
    """
    problems: list[FieldViolation] = []
    ids: set[str] = set()
    # id -> (where the call is, answered?) for the latest assistant message with calls
    open_calls: dict[str, list[Any]] | None = None

    def close() -> None:
        for where, done in (open_calls or {}).values():
            if not done:
                problems.append(FieldViolation(where, "has no tool message answering it"))

    for i, message in enumerate(messages):
        here = f"input.messages[{i}]"
        if message.tool_calls and message.role != "assistant":
            problems.append(
                FieldViolation(f"{here}.tool_calls", "only assistant messages carry tool calls")
            )
        if message.role == "tool":
            if open_calls is None:
                continue
            call = open_calls.get(message.tool_call_id)
            if call is None:
                problems.append(
                    FieldViolation(
                        f"{here}.tool_call_id",
                        "must name a tool call of the preceding assistant message",
                    )
                )
            elif call[1]:
                problems.append(
                    FieldViolation(f"{here}.tool_call_id", "answers a call answered already")
                )
            else:
                call[1] = True
            continue
        close()
        open_calls = None
        if message.role != "assistant" or not message.tool_calls:
            continue
        open_calls = {}
        for j, tool_call in enumerate(message.tool_calls):
            where = f"{here}.tool_calls[{j}]"
            problems.extend(check_tool_call(tool_call, where, earlier_ids=ids))
            ids.add(tool_call.id)
            open_calls[tool_call.id] = [where, False]
    close()
    return problems


def graph_messages(
    inputs: Sequence[InputMessage], stored: Sequence[BaseMessage] = ()
) -> list[BaseMessage]:
    """The request's messages as the graph's input messages, answering every tool call once.

    With a session (`stored` not empty) the session holds the history, so only the
    new turn — the messages after the request's last assistant message — is added;
    clients that resend the whole conversation do no harm. A tool message naming
    an open call (of the assistant message before it, or one the session left
    pending) becomes its `ToolMessage`. One naming a call the session has answered
    already is a resend and is dropped. Any other is the old runtime's form and
    reaches the model as text. A call still open when the next non-tool message
    comes, or at the end, gets the error result `NO_RESULT`, so a provider never
    sees a call without its result.

    Args:
        inputs: The request's messages, in order (checked by `check_tool_messages`).
        stored: The session's messages so far; empty without a session.

    Returns:
        The LangChain messages to add to the graph's state, without ids.
    """
    pending: dict[str, str] = {}
    answered: set[str] = set()
    if stored:
        last_ai = max((i for i, m in enumerate(inputs) if m.role == "assistant"), default=-1)
        inputs = inputs[last_ai + 1 :]
        pending, answered = _open_calls(stored)
    out: list[BaseMessage] = []
    open_calls = pending
    for message in inputs:
        if message.role == "tool":
            call_id = message.tool_call_id
            if call_id and call_id in open_calls:
                out.append(
                    ToolMessage(message.content, tool_call_id=call_id, name=open_calls.pop(call_id))
                )
            elif not (call_id and call_id in answered):
                label = f"Tool result ({message.name or 'tool'})"
                out.append(HumanMessage(f"{label}: {message.content}"))
            continue
        out.extend(_no_results(open_calls))
        open_calls = {}
        name = message.name or None
        if message.role == "system":
            out.append(SystemMessage(message.content, name=name))
        elif message.role == "assistant":
            calls = [
                {
                    "id": c.id,
                    "name": c.name,
                    "args": json.loads(c.arguments_json or "{}"),
                    "type": "tool_call",
                }
                for c in message.tool_calls
            ]
            out.append(AIMessage(message.content, name=name, tool_calls=calls))
            open_calls = {c.id: c.name for c in message.tool_calls}
        else:
            out.append(HumanMessage(message.content, name=name))
    out.extend(_no_results(open_calls))
    return out


def client_calls(message: AIMessage, client: ClientTools | None) -> tuple[ToolCall, ...]:
    """The message's calls of the run's client tools, which the client runs itself.

    Args:
        message: An assistant message of the run.
        client: The run's client tools; None when its template takes none.

    Returns:
        The calls of tools in `client.names`, in the message's order, with their
        arguments as JSON text; empty when the message calls none.
    """
    names = client.names if client is not None else frozenset()
    return tuple(
        ToolCall(c.get("id") or "", c["name"], json.dumps(c["args"], ensure_ascii=False))
        for c in message.tool_calls
        if c["name"] in names
    )


def _open_calls(stored: Sequence[BaseMessage]) -> tuple[dict[str, str], set[str]]:
    """The session's pending tool calls (id -> name) and the ids of every call it has answered.

    Pending calls are those of the session's last assistant message that no tool
    message answers yet: client calls the run ended on, or calls a cancelled run
    left behind.
    """
    answered = {m.tool_call_id for m in stored if isinstance(m, ToolMessage)}
    last_ai = next((m for m in reversed(stored) if isinstance(m, AIMessage)), None)
    calls = last_ai.tool_calls if last_ai is not None else []
    pending = {c["id"]: c["name"] for c in calls if c["id"] and c["id"] not in answered}
    return pending, answered


def _no_results(open_calls: Mapping[str, str]) -> list[ToolMessage]:
    return [
        ToolMessage(NO_RESULT, tool_call_id=call_id, name=name, status="error")
        for call_id, name in open_calls.items()
    ]


__all__ = ["NO_RESULT", "InputMessage", "check_tool_messages", "client_calls", "graph_messages"]
