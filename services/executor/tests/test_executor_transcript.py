"""The run's conversation: request messages to graph messages, tool-call bookkeeping.

Pure functions, no graph: what the model is sent for a stateless request and for
a session's new turn, which tool messages a request may carry, and which calls
of a final message are the client's.
"""

from __future__ import annotations

import json

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent_executor.application.context import ClientTools
from agent_executor.application.transcript import (
    NO_RESULT,
    InputMessage,
    check_tool_messages,
    client_calls,
    graph_messages,
)
from agent_executor.domain.client_tools import ClientTool, ToolCall, ToolChoice, check_tool_call

WEATHER = ToolCall("call-1", "get_weather", '{"city": "Oslo"}')
TIME = ToolCall("call-2", "get_time", "{}")


def fields(problems: list) -> list[str]:
    return [p.field for p in problems]


def test_a_stateless_tool_result_answers_its_call_and_a_missing_one_gets_an_error() -> None:
    messages = graph_messages(
        [
            InputMessage("system", "be brief"),
            InputMessage("user", "weather and time?"),
            InputMessage("assistant", "", tool_calls=(WEATHER, TIME)),
            InputMessage("tool", "sunny", tool_call_id="call-1"),
        ]
    )

    assert [type(m) for m in messages] == [
        SystemMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        ToolMessage,
    ]
    call = messages[2]
    assert isinstance(call, AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in call.tool_calls] == [
        ("call-1", "get_weather", {"city": "Oslo"}),
        ("call-2", "get_time", {}),
    ]
    answer, missing = messages[3], messages[4]
    assert isinstance(answer, ToolMessage)
    assert isinstance(missing, ToolMessage)
    assert (answer.tool_call_id, answer.name, answer.content) == ("call-1", "get_weather", "sunny")
    assert (missing.tool_call_id, missing.status, missing.content) == ("call-2", "error", NO_RESULT)


def test_a_tool_message_answering_no_known_call_reaches_the_model_as_text() -> None:
    messages = graph_messages(
        [InputMessage("user", "hi"), InputMessage("tool", "42", name="calc", tool_call_id="x")]
    )

    assert messages[-1] == HumanMessage("Tool result (calc): 42")


def test_a_session_turn_answers_the_pending_call_once_and_drops_the_resent_history() -> None:
    stored = [
        HumanMessage("weather?"),
        AIMessage("", tool_calls=[{"id": "old", "name": "get_time", "args": {}}]),
        ToolMessage("noon", tool_call_id="old", name="get_time"),
        AIMessage("", tool_calls=[{"id": "call-1", "name": "get_weather", "args": {}}]),
    ]
    messages = graph_messages(
        [
            InputMessage("user", "weather?"),  # resent history, before the last assistant
            InputMessage("assistant", "", tool_calls=(ToolCall("old", "get_time"),)),
            InputMessage("tool", "noon", tool_call_id="old"),  # answered already: dropped
            InputMessage("tool", "sunny", tool_call_id="call-1"),
        ],
        stored,
    )

    assert len(messages) == 1
    answer = messages[0]
    assert isinstance(answer, ToolMessage)
    assert (answer.tool_call_id, answer.name, answer.content) == ("call-1", "get_weather", "sunny")


def test_a_session_turn_without_the_pending_result_gets_an_error_before_the_new_message() -> None:
    stored = [AIMessage("", tool_calls=[{"id": "call-1", "name": "get_weather", "args": {}}])]

    messages = graph_messages([InputMessage("user", "never mind")], stored)

    assert isinstance(messages[0], ToolMessage)
    assert (messages[0].tool_call_id, messages[0].content) == ("call-1", NO_RESULT)
    assert messages[1] == HumanMessage("never mind")


def test_tool_messages_must_answer_each_call_of_the_preceding_assistant_message_once() -> None:
    problems = check_tool_messages(
        [
            InputMessage("user", "q", tool_calls=(WEATHER,)),
            InputMessage("assistant", "", tool_calls=(WEATHER, TIME)),
            InputMessage("tool", "a", tool_call_id="call-1"),
            InputMessage("tool", "b", tool_call_id="call-1"),
            InputMessage("tool", "c", tool_call_id="nope"),
            InputMessage("user", "next"),
        ]
    )

    assert fields(problems) == [
        "input.messages[0].tool_calls",
        "input.messages[3].tool_call_id",
        "input.messages[4].tool_call_id",
        "input.messages[1].tool_calls[1]",
    ]
    assert problems[3].description == "has no tool message answering it"


def test_a_tool_message_after_no_assistant_call_is_left_to_the_session() -> None:
    assert check_tool_messages([InputMessage("tool", "sunny", tool_call_id="call-1")]) == []


def test_a_call_reusing_an_earlier_id_or_with_bad_arguments_is_refused_by_field() -> None:
    problems = check_tool_messages(
        [
            InputMessage("assistant", "", tool_calls=(WEATHER,)),
            InputMessage("tool", "sunny", tool_call_id="call-1"),
            InputMessage("assistant", "", tool_calls=(ToolCall("call-1", "", "[1]"),)),
            InputMessage("tool", "again", tool_call_id="call-1"),
        ]
    )

    assert [(p.field, p.description) for p in problems] == [
        ("input.messages[2].tool_calls[0].id", "is the id of an earlier call"),
        ("input.messages[2].tool_calls[0].name", "is required"),
        ("input.messages[2].tool_calls[0].arguments_json", "must be a JSON object"),
    ]


def test_a_tool_call_id_must_be_printable_and_arguments_json() -> None:
    problems = check_tool_call(ToolCall("has space", "f", "{oops"), "call")

    assert fields(problems) == ["call.id", "call.arguments_json"]
    assert problems[1].description.startswith("is not JSON: ")


def test_only_calls_of_offered_client_tools_are_client_calls() -> None:
    message = AIMessage(
        "",
        tool_calls=[
            {"id": "s-1", "name": "search", "args": {"q": "x"}},
            {"id": "c-1", "name": "get_weather", "args": {"city": "Zürich"}},
        ],
    )
    offered = ClientTools((ClientTool("get_weather"),))

    assert client_calls(message, offered) == (
        ToolCall("c-1", "get_weather", json.dumps({"city": "Zürich"}, ensure_ascii=False)),
    )
    assert client_calls(message, ClientTools(offered.tools, ToolChoice("none"))) == ()
    assert client_calls(message, None) == ()
